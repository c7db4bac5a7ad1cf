"""Per-request depth controls: ``SamplingParams(extra_args={...})`` / ``vllm_xargs``.

Flat keys, all optional:

- ``depth_exit`` (bool; over HTTP also 1/0 or "true"/"false"): false runs this request at full depth;
- ``depth_exit_threshold`` (float in [0, 1]): overrides the model's ``exit_threshold``;
- ``depth_min_layer`` (int >= 0): overrides the model's ``min_layer``.

They are checked by the front end of an engine that serves the depth model, before the request
reaches the engine core (HTTP 400 on the server); other ``depth_*`` keys are refused there.  A stock
engine ignores them all, as it ignores every unknown extra arg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALLOWED = {
    "depth_exit": "true or false (1 or 0)",
    "depth_exit_threshold": "a number from 0.0 (always exit) to 1.0 (never exit)",
    "depth_min_layer": "an int >= 0",
}


@dataclass(frozen=True)
class RequestDepth:
    exit: bool = True
    exit_threshold: float | None = None  # None: the model's
    min_layer: int | None = None  # None: the model's


DEFAULT = RequestDepth()


def _fail(key: str, value: Any) -> ValueError:
    return ValueError(f"extra_args.{key}: {value!r} is not allowed; allowed: {ALLOWED[key]}")


def parse_request_args(extra_args: dict[str, Any] | None) -> RequestDepth:
    """The depth controls of one request; ``ValueError`` naming the key on a bad value."""
    if not extra_args:
        return DEFAULT
    keys = [k for k in extra_args if isinstance(k, str) and k.startswith("depth_")]
    if not keys:
        return DEFAULT
    unknown = sorted(set(keys) - set(ALLOWED))
    if unknown:
        raise ValueError(f"extra_args: unknown depth key(s) {unknown}; allowed: {sorted(ALLOWED)}")
    exit_ = extra_args.get("depth_exit", True)
    # over HTTP, vllm_xargs values are str | int | float: a JSON false arrives as 0
    if not isinstance(exit_, bool):
        if exit_ in (0, 1) and isinstance(exit_, int):
            exit_ = bool(exit_)
        elif isinstance(exit_, str) and exit_.lower() in ("true", "false"):
            exit_ = exit_.lower() == "true"
        else:
            raise _fail("depth_exit", exit_)
    threshold = extra_args.get("depth_exit_threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise _fail("depth_exit_threshold", threshold)
        threshold = float(threshold)
    min_layer = extra_args.get("depth_min_layer")
    if min_layer is not None and (isinstance(min_layer, bool) or not isinstance(min_layer, int) or min_layer < 0):
        raise _fail("depth_min_layer", min_layer)
    return RequestDepth(exit_, threshold, min_layer)
