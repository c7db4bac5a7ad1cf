"""Model families the depth path runs, and how to build their decoder layers.

Each family uses vLLM's own decoder-layer class (weights, parallel linears,
rotary embedding, MLP, norms) and its own weight mapper; the depth model only
decides which layers to build and in which order to run them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


def depth_arch(architecture: str) -> str:
    """The name the plugin registers for a HF architecture with vLLM (``--model-impl depth``)."""
    return "Depth" + architecture


@dataclass(frozen=True)
class Family:
    name: str
    make_layer: Callable[..., nn.Module]  # (vllm_config, prefix) -> decoder layer
    mapper: object  # vLLM WeightsMapper for the family's checkpoints


def _llama() -> Family:
    from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaModel

    return Family(
        "llama",
        lambda vllm_config, prefix: LlamaDecoderLayer(vllm_config=vllm_config, prefix=prefix),
        LlamaModel.hf_to_vllm_mapper,
    )


def _qwen(decoder_cls_name: str, model_cls_name: str, module: str) -> Callable[[], Family]:
    def build() -> Family:
        import importlib

        mod = importlib.import_module(f"vllm.model_executor.models.{module}")
        layer_cls = getattr(mod, decoder_cls_name)
        model_cls = getattr(mod, model_cls_name)

        def make(vllm_config, prefix):
            return layer_cls(
                config=vllm_config.model_config.hf_config,
                cache_config=vllm_config.cache_config,
                quant_config=vllm_config.quant_config,
                prefix=prefix,
            )

        return Family(module, make, model_cls.hf_to_vllm_mapper)

    return build


# HF architecture -> family factory.  Mistral's HF checkpoints are Llama-shaped.
FAMILIES: dict[str, Callable[[], Family]] = {
    "LlamaForCausalLM": _llama,
    "MistralForCausalLM": _llama,
    "Qwen2ForCausalLM": _qwen("Qwen2DecoderLayer", "Qwen2Model", "qwen2"),
    "Qwen3ForCausalLM": _qwen("Qwen3DecoderLayer", "Qwen3Model", "qwen3"),
}
SUPPORTED_ARCHITECTURES = tuple(FAMILIES)


def family_of(architecture: str) -> Family:
    try:
        return FAMILIES[architecture]()
    except KeyError:
        raise ValueError(
            f"--model-impl depth cannot run architecture {architecture!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        ) from None
