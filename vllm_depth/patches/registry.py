"""vLLM 0.32 ``_ModelRegistry.inspect_model_cls`` / ``resolve_model_cls``: ``--model-impl depth``.

vLLM routes ``model_impl`` values it knows ("auto", "vllm", "transformers", "terratorch") and
ignores others; for "depth" each architecture is mapped to the plugin's ``Depth<Arch>`` class
before vLLM's own lookup, and the depth config is validated there: while the engine config is
built, before any process starts or any weight loads.
"""

from __future__ import annotations

from vllm.model_executor.models.registry import _ModelRegistry

from vllm_depth.config import depth_config_of
from vllm_depth.models.families import SUPPORTED_ARCHITECTURES, check_family, depth_arch, family_of
from vllm_depth.patches.base import is_depth, patch


def depth_architectures(architectures, model_config) -> list[str]:
    """Map HF architectures to the plugin's, validating the depth config first."""
    if isinstance(architectures, str):
        architectures = [architectures]
    supported = [a for a in architectures if a in SUPPORTED_ARCHITECTURES]
    if not supported:
        raise ValueError(
            f"--model-impl depth cannot run architecture(s) {list(architectures)}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    check_family(family_of(supported[0]), depth_config_of(model_config.hf_config))
    return [depth_arch(a) for a in supported]


def install() -> None:
    def routed(original):
        def method(self, architectures, model_config):
            if is_depth(model_config):
                architectures = depth_architectures(architectures, model_config)
            return original(self, architectures, model_config)

        return method

    patch(_ModelRegistry, "inspect_model_cls", routed)
    patch(_ModelRegistry, "resolve_model_cls", routed)
