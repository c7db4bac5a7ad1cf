"""Prometheus metrics of early exit, recorded in the worker, shown on the server's ``/metrics``.

- ``vllm_depth:exit_layer`` (histogram): layers run per decode token (full depth when it did not exit);
- ``vllm_depth:exited_tokens_total{exit_layer}``: tokens that left at each exit point;
- ``vllm_depth:exit_checks_total``: exit checks computed (one per candidate token and exit point);
- ``vllm_depth:kv_fill_seconds_total``: time spent filling skipped layers' KV (state propagation).

The model runs in vLLM's worker process, not in the API server's; the server's
``/metrics`` shows them when ``PROMETHEUS_MULTIPROC_DIR`` names an empty
directory in the environment of ``vllm serve`` (prometheus_client's
multiprocess mode, which vLLM's ``/metrics`` reads when the variable is set).
"""

from __future__ import annotations

import os

_metrics = None


def _get(full_depth: int):
    global _metrics
    if _metrics is None:
        from prometheus_client import Counter, Histogram

        _metrics = {
            "layer": Histogram("vllm_depth:exit_layer", "Layers run per decode token (early exit)",
                               buckets=[float(b) for b in range(1, full_depth + 1)]),
            "exits": Counter("vllm_depth:exited_tokens", "Decode tokens that exited, per exit layer",
                             ["exit_layer"]),
            "checks": Counter("vllm_depth:exit_checks", "Exit checks computed"),
            "fill": Counter("vllm_depth:kv_fill_seconds", "Seconds spent filling skipped layers' KV"),
        }
    return _metrics


def enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def record_step(layers: list[int], full_depth: int, exits: dict[int, int], checks: int, fill_seconds: float) -> None:
    """One step: the layers each decode token ran, exits per layer, checks and fill time of the step."""
    m = _get(full_depth)
    for layer in layers:
        m["layer"].observe(layer)
    for layer, n in exits.items():
        m["exits"].labels(exit_layer=str(layer)).inc(n)
    if checks:
        m["checks"].inc(checks)
    if fill_seconds:
        m["fill"].inc(fill_seconds)
