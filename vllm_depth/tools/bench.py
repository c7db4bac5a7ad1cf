"""The side-by-side bench: stock vLLM and a depth configuration, same prompts, one run.

Both engines are alive at once and the timed rounds alternate in ABBA order
(stock, depth, depth, stock, ...), so machine noise and drift fall on both
alike; the ratio is what to read, not the absolute figures.  Each round's own
ratio is reported too (``round_speedups``), to show the spread.
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from vllm_depth.compat.requests import user_request_id
from vllm_depth.compat.runner import (
    forget_suffix_responses,
    kv_cache_layout,
    worker_drafter,
    worker_model,
)
from vllm_depth.config import depth_config_of
from vllm_depth.request_args import parse_request_args
from vllm_depth.spec_decode.policy import ratio
from vllm_depth.tools.checkpoints import resolve_model

# Keys of --engine-args that belong to the depth engine only.
DEPTH_ONLY_ARGS = ("speculative_config", "hf_overrides", "model_impl")
DEFAULT_ENGINE_ARGS = {"gpu_memory_utilization": 0.3, "max_model_len": 2048, "seed": 0}


@dataclass
class Prompt:
    text: str | None = None
    messages: list | None = None
    extra_args: dict | None = None


def load_prompts(path: str) -> list[Prompt]:
    """Read FILE.jsonl: one object per line with "prompt" or "messages", optional "extra_args"."""
    prompts = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(obj, dict) or ("prompt" in obj) == ("messages" in obj):
                raise ValueError(f'{path}:{n}: expected an object with exactly one of "prompt" or "messages"')
            extra = obj.get("extra_args")
            if extra is not None and not isinstance(extra, dict):
                raise ValueError(f'{path}:{n}: "extra_args" must be an object')
            prompts.append(Prompt(obj.get("prompt"), obj.get("messages"), extra))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def token_agreement(a: list[int], b: list[int]) -> float:
    """Fraction of positions (over the longer output) where the tokens are equal."""
    n = max(len(a), len(b))
    if n == 0:
        return 1.0
    return sum(x == y for x, y in zip(a, b)) / n


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _peak_rss_mb(pids: set[int]) -> float | None:
    """Peak resident memory (VmHWM) of the engine's processes, in MB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1) if total else None


def _model_param_bytes(worker) -> int:
    """Runs inside the engine's worker, where vLLM is loaded."""
    from vllm_depth.compat.kernels import (
        model_weight_bytes,  # vLLM's modules: only in the worker
    )

    return model_weight_bytes(worker_model(worker))


def _exit_counters(worker, reset: bool) -> dict | None:
    """Runs inside the engine's worker: the depth model's exit counters (None: not a depth model)."""
    exits = getattr(worker_model(worker), "exits", None)
    return exits.take_counters(reset) if exits is not None else None


def exit_counters(llm, reset: bool = False) -> dict | None:
    """Cumulative exit counters of ``llm``'s depth model (``reset``: start them again)."""
    return llm.collective_rpc(_exit_counters, args=(reset,))[0]


def _exit_trace(worker, start: bool) -> dict | None:
    return worker_model(worker).exits.trace_exits(start)


def start_exit_trace(llm) -> None:
    """Record the exit layer of every decode token, per request, until ``take_exit_trace``."""
    llm.collective_rpc(_exit_trace, args=(True,))


def take_exit_trace(llm) -> dict[str, list[int]]:
    """{request id (as ``RequestOutput.request_id``): exit layer of each decode token}; stops recording."""
    raw = llm.collective_rpc(_exit_trace, args=(False,))[0] or {}
    return {user_request_id(key): layers for key, layers in raw.items()}


def mean_exit_layer(counters: dict, generated_tokens: int, full_depth: int) -> float | None:
    """Mean layers run per generated token: exited tokens at their exit layer, the rest at full depth."""
    if not generated_tokens:
        return None
    exits = counters.get("exits", {})
    exited = sum(exits.values())
    return (sum(layer * n for layer, n in exits.items()) + full_depth * (generated_tokens - exited)) / generated_tokens


def _draft_counters(worker, reset: bool) -> dict | None:
    """Runs inside the engine's worker: the self-draft proposer's counters (None: no self-draft)."""
    take = getattr(worker_drafter(worker), "take_counters", None)
    return take(reset) if take is not None else None


def draft_counters(llm, reset: bool = False) -> dict | None:
    """Drafts proposed and accepted by ``llm``'s self-draft since the last reset."""
    return llm.collective_rpc(_draft_counters, args=(reset,))[0]


def forget_responses(llm) -> int:
    """Suffix decoding forgets the responses of finished requests; how many it forgot."""
    return llm.collective_rpc(forget_suffix_responses)[0]


def _kv_cache(worker) -> dict:
    """Runs inside the engine's worker: the paged KV cache's blocks and bytes per token slot."""
    return kv_cache_layout(worker)


def kv_cache(llm) -> dict | None:
    try:
        return llm.collective_rpc(_kv_cache)[0]
    except Exception:  # an executor that cannot run a callable
        return None


def param_bytes(llm) -> int | None:
    try:
        return int(llm.collective_rpc(_model_param_bytes)[0])
    except Exception:  # an executor that cannot run a callable: report nothing rather than guess
        return None


@dataclass
class Engine:
    name: str
    llm: Any
    pids: set[int]
    tokenizer: Any = None
    seconds: float = 0.0
    tokens: int = 0
    outputs: list = field(default_factory=list)
    token_ids: list = field(default_factory=list)
    counters: dict | None = None  # exit counters of the timed rounds (depth engines)
    drafts: dict | None = None  # self-draft counters of the timed rounds (self-speculative engines)
    extra: dict | None = None  # per-request extra_args of every prompt (a sweep point)
    round_tokens_per_s: list = field(default_factory=list)  # each timed round's own figure

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def start_engine(name: str, **kwargs) -> Engine:
    # the bench asks its own local engines for their parameter bytes with a
    # function (collective_rpc), which vLLM only pickles when this is set
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    from vllm import LLM

    before = _children()
    llm = LLM(**kwargs)
    pids = (_children() - before) or {os.getpid()}
    return Engine(name, llm, pids, llm.get_tokenizer())


def shutdown(llm) -> None:
    """Stop an ``LLM``'s engine processes now rather than at garbage collection."""
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    gc.collect()


def stop_engine(engine: Engine) -> None:
    shutdown(engine.llm)
    engine.llm = None


def _texts(engine: Engine, prompts: list[Prompt]) -> list[str]:
    out = []
    for p in prompts:
        if p.messages is not None:
            out.append(
                engine.tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
            )
        else:
            out.append(p.text)
    return out


def round_order(engines: list, r: int) -> list:
    """The engines of timed round ``r`` in ABBA order: every other round in reverse, so that a
    machine drifting in speed during the run favours neither side."""
    return engines if r % 2 == 0 else engines[::-1]


def run_round(engine: Engine, prompts: list[Prompt], max_tokens: int, batch_size: int,
              per_request: bool, progress=None, record: bool = True, extra: dict | None = None) -> None:
    from vllm import SamplingParams

    texts = _texts(engine, prompts)
    outputs: list = []
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        chunk = prompts[i : i + batch_size]
        params = [
            SamplingParams(
                temperature=0.0,
                max_tokens=max_tokens,
                ignore_eos=False,
                extra_args=({**(p.extra_args or {}), **(extra or {})} or None) if per_request else None,
            )
            for p in chunk
        ]
        outputs += engine.llm.generate(texts[i : i + batch_size], params, use_tqdm=False)
        if progress is not None:
            progress.update(len(chunk))
    dt = time.perf_counter() - t0
    if record:
        if engine.counters is not None:
            _add_counters(engine.counters, exit_counters(engine.llm, reset=True))
        if engine.drafts is not None:
            new = draft_counters(engine.llm, reset=True)
            for k in ("proposals", "drafted", "accepted", "judged", "first_accepted", "draft_forwards", "seconds"):
                engine.drafts[k] = engine.drafts.get(k, 0) + new[k]
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        engine.seconds += dt
        engine.tokens += tokens
        engine.round_tokens_per_s.append(tokens / dt if dt else 0.0)
        engine.outputs = [o.outputs[0].text for o in outputs]
        engine.token_ids = [list(o.outputs[0].token_ids) for o in outputs]


def _add_counters(total: dict, new: dict | None) -> None:
    if not new:
        return
    for layer, n in new["exits"].items():
        total["exits"][layer] = total["exits"].get(layer, 0) + n
    for k in ("checked", "fill_tokens", "fill_seconds"):
        total[k] = total.get(k, 0) + new[k]


def _depth_report(engine: Engine, full_depth: int) -> dict:
    c = engine.counters or {"exits": {}}
    return {
        "tokens_per_s": round(engine.tokens_per_s, 3),
        "outputs": engine.outputs,
        "mean_exit_layer": (round(mean_exit_layer(c, engine.tokens, full_depth), 3)
                            if engine.counters is not None and engine.tokens else None),
        "exits_per_layer": {str(k): v for k, v in sorted(c["exits"].items())},
        "kv_fill_seconds": round(c.get("fill_seconds", 0.0), 4),
        **_draft_report(engine.drafts),
    }


def _draft_report(d: dict | None) -> dict:
    """Acceptance of the self-draft in the timed rounds (None without one)."""
    if d is None:
        return {"acceptance_rate": None}
    return {
        "acceptance_rate": ratio(d["accepted"], d["drafted"]),
        "mean_accepted_length": ratio(d["accepted"], d["proposals"]),
        # of the drafts judged, the share whose first token was accepted: about a one-token draft's acceptance
        "first_token_acceptance": ratio(d.get("first_accepted", 0), d.get("judged", 0)),
        "drafts": {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()},
    }


def _full_depth(llm) -> int:

    cfg = llm.llm_engine.model_config.hf_config
    return len(depth_config_of(cfg).schedule(cfg.num_hidden_layers))


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """``exit_threshold=0.5,0.7,0.9`` or ``min_layer=8,16``: per-request settings of one depth engine."""
    keys = {"exit_threshold": ("depth_exit_threshold", float), "min_layer": ("depth_min_layer", int)}
    name, _, values = text.partition("=")
    if name not in keys or not values:
        raise ValueError(f"--sweep: {text!r}; allowed: {' or '.join(k + '=V1,V2,...' for k in keys)}")
    try:
        parsed = [keys[name][1](v) for v in values.split(",")]
    except ValueError:
        raise ValueError(f"--sweep: {name} values must be {keys[name][1].__name__}s, got {values!r}") from None

    for v in parsed:
        parse_request_args({keys[name][0]: v})  # the same checks as a request's
    return keys[name][0], parsed


def compare(baseline: Engine, depth: Engine) -> dict:
    n = len(baseline.outputs)
    agreements = [token_agreement(a, b) for a, b in zip(baseline.token_ids, depth.token_ids)]
    same = [a == b for a, b in zip(baseline.token_ids, depth.token_ids)]
    per_round = [round(d / b, 4) for b, d in zip(baseline.round_tokens_per_s, depth.round_tokens_per_s) if b]
    return {
        "speedup": round(depth.tokens_per_s / baseline.tokens_per_s, 4) if baseline.tokens_per_s else None,
        "round_speedups": per_round,  # round i of the depth engine against round i of stock
        "token_agreement": round(sum(agreements) / n, 4),
        "identical": sum(same),
        "identical_per_prompt": same,
    }


def run_bench(
    model: str,
    prompts_path: str,
    max_tokens: int = 64,
    batch_size: int = 1,
    depth: dict | None = None,
    engine_args: dict | None = None,
    baseline_model: str | None = None,
    rounds: int = 2,
    sweep: tuple[str, list] | None = None,
) -> dict:
    prompts = load_prompts(prompts_path)
    model_dir = resolve_model(model)
    baseline_dir = resolve_model(baseline_model) if baseline_model else model_dir
    common = {**DEFAULT_ENGINE_ARGS, **{k: v for k, v in (engine_args or {}).items() if k not in DEPTH_ONLY_ARGS}}
    depth_kwargs = {**DEFAULT_ENGINE_ARGS, **(engine_args or {}), "model_impl": "depth"}
    if depth is not None:
        depth_kwargs["hf_overrides"] = {**depth_kwargs.get("hf_overrides", {}), "depth": depth}

    baseline = start_engine("baseline", model=baseline_dir, **common)
    depth_engine = start_engine("depth", model=model_dir, **depth_kwargs)
    try:
        depth_engine.counters = {"exits": {}} if exit_counters(depth_engine.llm) is not None else None
        speculative = draft_counters(depth_engine.llm) is not None
        depth_engine.drafts = {} if speculative else None
        points = [depth_engine]
        if sweep is not None:  # one depth engine, one timed record per value (per-request settings)
            key, values = sweep
            points = [Engine(f"{key}={v}", depth_engine.llm, depth_engine.pids, depth_engine.tokenizer,
                             counters={"exits": {}} if depth_engine.counters is not None else None,
                             extra={key: v}) for v in values]
        engines = [baseline, *points]
        for e in (baseline, depth_engine):  # warm-up: one short request (compiles, fills caches)
            run_round(e, prompts[:1], 4, 1, per_request=e is depth_engine, record=False)
        if depth_engine.counters is not None:
            exit_counters(depth_engine.llm, reset=True)
        if speculative:
            draft_counters(depth_engine.llm, reset=True)
        total = rounds * len(engines) * len(prompts)
        with tqdm(total=total, desc="bench", unit="prompt") as bar:
            for r in range(rounds):
                for e in round_order(engines, r):
                    run_round(e, prompts, max_tokens, batch_size, per_request=e is not baseline,
                              progress=bar, extra=e.extra)
        full = _full_depth(depth_engine.llm)
        result = {
            "n": len(prompts),
            "model": model_dir,
            "baseline_model": baseline_dir,
            "max_tokens": max_tokens,
            "batch_size": batch_size,
            "rounds": rounds,
            "depth_config": depth,
            "baseline": {"tokens_per_s": round(baseline.tokens_per_s, 3), "outputs": baseline.outputs},
            "full_depth": full,
        }
        if sweep is None:
            result["depth"] = _depth_report(depth_engine, full)
            result.update(compare(baseline, depth_engine))
        else:
            result["sweep"] = {"key": sweep[0], "points": [
                {"value": e.extra[sweep[0]], **_depth_report(e, full), **compare(baseline, e)} for e in points
            ]}
        result.update({
            "peak_rss_mb": {"baseline": _peak_rss_mb(baseline.pids), "depth": _peak_rss_mb(depth_engine.pids)},
            "param_bytes": {"baseline": param_bytes(baseline.llm), "depth": param_bytes(depth_engine.llm)},
            "kv_cache": {"baseline": kv_cache(baseline.llm), "depth": kv_cache(depth_engine.llm)},
        })
    finally:
        for e in (depth_engine, baseline):
            stop_engine(e)
    return result


def format_table(result: dict) -> str:
    if "sweep" in result:
        return _format_sweep(result)
    rows = [
        ("", "stock vLLM", "depth"),
        ("tokens/s", f'{result["baseline"]["tokens_per_s"]:.2f}', f'{result["depth"]["tokens_per_s"]:.2f}'),
        ("peak RSS (MB)", str(result["peak_rss_mb"]["baseline"]), str(result["peak_rss_mb"]["depth"])),
        ("weights (MB)", *(f"{b / 1e6:.1f}" if b else "?" for b in result["param_bytes"].values())),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    if result["depth"].get("acceptance_rate") is not None:
        kv = result.get("kv_cache") or {}
        per_token = [(kv.get(k) or {}).get("bytes_per_token") for k in ("baseline", "depth")]
        lines.append(f'acceptance rate {result["depth"]["acceptance_rate"]:.3f}   mean accepted length '
                     f'{result["depth"]["mean_accepted_length"]:.2f}   KV bytes/token {per_token[0]} vs {per_token[1]}')
    if result["depth"]["mean_exit_layer"] is not None:
        lines.append(f'mean exit layer {result["depth"]["mean_exit_layer"]:.2f} of {result["full_depth"]}   '
                     f'exits per layer {result["depth"]["exits_per_layer"]}')
    lines.append(
        f'speedup {result["speedup"]:.3f}x   token agreement {result["token_agreement"]:.3f}   '
        f'identical {result["identical"]}/{result["n"]}   '
        f'(batch {result["batch_size"]}, {result["max_tokens"]} new tokens, {result["rounds"]} rounds)'
    )
    if len(result.get("round_speedups") or ()) > 1:
        lines.append("per round " + " ".join(f"{x:.3f}x" for x in result["round_speedups"]))
    return "\n".join(lines)


def _format_sweep(result: dict) -> str:
    key = result["sweep"]["key"]
    rows = [(key, "tokens/s", "speedup", "agreement", "identical", "mean exit layer")]
    rows.append(("stock vLLM", f'{result["baseline"]["tokens_per_s"]:.2f}', "1.000", "1.000", "", str(result["full_depth"])))
    for p in result["sweep"]["points"]:
        rows.append((str(p["value"]), f'{p["tokens_per_s"]:.2f}', f'{p["speedup"]:.3f}', f'{p["token_agreement"]:.3f}',
                     f'{p["identical"]}/{result["n"]}', f'{p["mean_exit_layer"]:.2f}' if p["mean_exit_layer"] else "?"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.append(f'(batch {result["batch_size"]}, {result["max_tokens"]} new tokens, {result["rounds"]} rounds)')
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "sweep" in result:
        return _plot_sweep(result, path, plt)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = ["stock vLLM", "depth"]
    vals = [result["baseline"]["tokens_per_s"], result["depth"]["tokens_per_s"]]
    ax.bar(names, vals, color=["#888888", "#2a7ab0"])
    ax.set_ylabel("tokens/s")
    ax.set_title(
        f'speedup {result["speedup"]:.2f}x, agreement {result["token_agreement"]:.2f} '
        f'(batch {result["batch_size"]})'
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_sweep(result: dict, path: str, plt) -> None:
    """Speed against token agreement, one point per swept value."""
    pts = result["sweep"]["points"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([p["token_agreement"] for p in pts], [p["speedup"] for p in pts], "o-", color="#2a7ab0")
    for p in pts:
        ax.annotate(f'{p["value"]} (L {p["mean_exit_layer"]:.1f})' if p["mean_exit_layer"] else str(p["value"]),
                    (p["token_agreement"], p["speedup"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(1.0, color="#888888", lw=0.8, ls="--", label="stock vLLM")
    ax.set_xlabel("token agreement with stock vLLM")
    ax.set_ylabel("speedup (tokens/s vs stock)")
    ax.set_title(f'sweep of {result["sweep"]["key"]} (batch {result["batch_size"]})')
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
