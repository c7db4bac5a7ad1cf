"""What a self-speculative engine is started with: its depth config and ``speculative_config``."""

from __future__ import annotations

from vllm_depth.config import DRAFT_DEFAULTS, PROPOSER

DRAFT_KEYS = ("draft_layers", "draft_schedule", "draft_threshold", "draft_backoff")  # depth fields --self-spec sets


SELF_SPEC_KEYS = (*DRAFT_KEYS, "num_speculative_tokens")


def self_spec_engine_args(depth: dict | None, spec: dict) -> tuple[dict, dict]:
    """The depth config and ``speculative_config`` of a self-speculative engine.

    ``depth`` is the depth object to start from (the checkpoint's own, or
    ``--depth``); ``spec`` overrides its draft (``draft_layers`` or
    ``draft_schedule``, ``draft_threshold``, ``draft_backoff``) and its
    speculation length (``num_speculative_tokens``, stored as ``draft_tokens``).
    Raises ValueError naming the key for anything else.
    """
    unknown = sorted(set(spec) - set(SELF_SPEC_KEYS))
    if unknown:
        raise ValueError(f"--self-spec: unknown key(s) {unknown}; allowed: {list(SELF_SPEC_KEYS)}")
    out = dict(depth or {})
    for key in ("draft_layers", "draft_schedule"):
        if key in spec:
            out.pop("draft_schedule" if key == "draft_layers" else "draft_layers", None)
    for key in DRAFT_KEYS:
        if key in spec:
            out[key] = spec[key]
    if "num_speculative_tokens" in spec:
        out["draft_tokens"] = spec["num_speculative_tokens"]
    if "draft_layers" not in out and "draft_schedule" not in out:
        raise ValueError("--self-spec: the checkpoint's depth config names no draft; allowed: "
                         "--self-spec '{\"draft_layers\": E, \"num_speculative_tokens\": K}' "
                         "(or draft_schedule), or run vllm-depth tune-draft first")
    k = out.get("draft_tokens", DRAFT_DEFAULTS["draft_tokens"])
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"--self-spec: num_speculative_tokens {k!r} is not an int >= 1")
    return out, {"model": PROPOSER, "num_speculative_tokens": k}
