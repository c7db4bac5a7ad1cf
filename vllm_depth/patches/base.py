"""How a patch wraps a vLLM function: idempotent, marked, the original kept as ``__wrapped__``."""

from __future__ import annotations

import functools

MODEL_IMPL = "depth"
PATCHED = "__vllm_depth_patched__"


def patch(owner, name: str, make_wrapper) -> None:
    """Replace ``owner.name`` by ``make_wrapper(original)``, once."""
    original = getattr(owner, name)
    if getattr(original, PATCHED, False):
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, PATCHED, True)
    setattr(owner, name, wrapper)


def is_depth(model_config) -> bool:
    """Whether the engine serves the depth model (``--model-impl depth``)."""
    return str(getattr(model_config, "model_impl", "")) == MODEL_IMPL
