"""Every adaptation of vLLM internals, in one place.

Each patch names the vLLM version and the function it adapts, and
``tests/test_vllm_compat.py`` fails when vLLM changes under it.  All patches
are idempotent and are no-ops unless ``model_impl == "depth"``.

Relied on without a patch (and tested): vLLM 0.32 ``ModelConfig.compute_hash``,
the key of the torch.compile / AOT cache, hashes ``hf_config`` and so the
``depth`` object in it; two schedules on one checkpoint never share a graph.
"""

from __future__ import annotations

import functools

import vllm

from vllm_depth.config import depth_config_of
from vllm_depth.models.families import SUPPORTED_ARCHITECTURES

VLLM_VERSION = "0.32"
MODEL_IMPL = "depth"
_PATCHED = "__vllm_depth_patched__"


def depth_arch(architecture: str) -> str:
    return "Depth" + architecture


def _is_depth(model_config) -> bool:
    return str(getattr(model_config, "model_impl", "")) == MODEL_IMPL


def _depth_architectures(architectures, model_config) -> list[str]:
    """Map HF architectures to the plugin's, validating the depth config first."""
    if isinstance(architectures, str):
        architectures = [architectures]
    supported = [a for a in architectures if a in SUPPORTED_ARCHITECTURES]
    if not supported:
        raise ValueError(
            f"--model-impl depth cannot run architecture(s) {list(architectures)}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    # Refuse a bad depth config here: this runs while the engine config is
    # built, before any process is started or any weight loaded.
    depth_config_of(model_config.hf_config)
    return [depth_arch(a) for a in supported]


def _patch(owner, name: str, make_wrapper) -> None:
    original = getattr(owner, name)
    if getattr(original, _PATCHED, False):
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, _PATCHED, True)
    setattr(owner, name, wrapper)


def _patch_registry() -> None:
    """vLLM 0.32 ``_ModelRegistry.inspect_model_cls`` / ``resolve_model_cls``.

    vLLM routes ``model_impl`` values it knows ("auto", "vllm", "transformers",
    "terratorch") and ignores others; for "depth" we map each architecture to
    the plugin's ``Depth<Arch>`` class before vLLM's own lookup.
    """
    from vllm.model_executor.models.registry import _ModelRegistry

    def routed(original):
        def method(self, architectures, model_config):
            if _is_depth(model_config):
                architectures = _depth_architectures(architectures, model_config)
            return original(self, architectures, model_config)

        return method

    _patch(_ModelRegistry, "inspect_model_cls", routed)
    _patch(_ModelRegistry, "resolve_model_cls", routed)


def install() -> None:
    """Apply every patch (idempotent)."""
    if not vllm.__version__.startswith(VLLM_VERSION):
        import warnings

        warnings.warn(
            f"vllm-depth was written against vLLM {VLLM_VERSION}.x; found {vllm.__version__}",
            stacklevel=2,
        )
    _patch_registry()
