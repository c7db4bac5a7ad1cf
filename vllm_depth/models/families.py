"""Model families the depth path runs: how to build their decoder layers, and their anatomy.

Each family uses vLLM's own decoder-layer class (weights, parallel linears,
rotary embedding, MLP, norms) and its own weight mapper; the depth model only
decides which layers to build and in which order to run them.  What differs
between families' layers is declared here, in ``Family``, and read by the
layer loop (``models.layers``), the K/V fill (``models.kv_fill``) and the
decoder (``models.decoder``), nowhere else:

- the RMSNorm's gain: ``w`` (Llama, Qwen) or ``1 + w`` (Gemma), ``norm_offset``;
- the embedding scaled by ``sqrt(hidden)`` (Gemma), ``embed_scale``;
- norms after attention and after the MLP as well as before them (Gemma), ``sandwich_norms``;
- per-head q/k norms (Qwen3, Gemma 3): read from the attention module (``q_norm``, ``k_norm``);
- rotary base and sliding window per layer (Gemma 3): in each layer's own ``rotary_emb`` and
  ``Attention`` (``per_layer_sliding_window``), which vLLM builds from the layer's index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vllm_depth.config import DepthConfigError


def depth_arch(architecture: str) -> str:
    """The name the plugin registers for a HF architecture with vLLM (``--model-impl depth``)."""
    return "Depth" + architecture


@dataclass(frozen=True)
class Family:
    name: str
    make_layer: Callable[..., nn.Module]  # (vllm_config, prefix) -> decoder layer
    mapper: object  # vLLM WeightsMapper for the family's checkpoints
    norm_offset: float = 0.0  # an RMSNorm's gain is weight + norm_offset
    embed_scale: bool = False  # token embeddings times sqrt(hidden_size)
    sandwich_norms: bool = False  # post_attention_layernorm on the attention output, then
    # pre_feedforward_layernorm (adding the residual) and post_feedforward_layernorm on the MLP output

    def make_norm(self, hidden_size: int, eps: float) -> nn.Module:
        """The family's RMSNorm module (the final norm)."""
        # vLLM's layers load when a model is built, not when the plugin registers its architectures
        from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm

        return (GemmaRMSNorm if self.norm_offset else RMSNorm)(hidden_size, eps=eps)

    def gain(self, norm: nn.Module) -> torch.Tensor:
        """The effective float32 gain of one of the family's RMSNorm modules."""
        return norm.weight.float() + self.norm_offset


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


def _gemma3() -> Family:
    from vllm.model_executor.models.gemma3 import Gemma3DecoderLayer, Gemma3Model

    def make(vllm_config, prefix):
        return Gemma3DecoderLayer(vllm_config.model_config.hf_config, vllm_config.cache_config,
                                  vllm_config.quant_config, prefix=prefix)

    return Family("gemma3", make, Gemma3Model.hf_to_vllm_mapper, norm_offset=1.0, embed_scale=True,
                  sandwich_norms=True)


# HF architecture -> family factory.  Mistral's HF checkpoints are Llama-shaped.
FAMILIES: dict[str, Callable[[], Family]] = {
    "LlamaForCausalLM": _llama,
    "MistralForCausalLM": _llama,
    "Qwen2ForCausalLM": _qwen("Qwen2DecoderLayer", "Qwen2Model", "qwen2"),
    "Qwen3ForCausalLM": _qwen("Qwen3DecoderLayer", "Qwen3Model", "qwen3"),
    "Gemma3ForCausalLM": _gemma3,
}
SUPPORTED_ARCHITECTURES = tuple(FAMILIES)


def check_family(family: Family, depth) -> None:
    """Refuse the depth settings a family cannot run (``depth``: its ``DepthConfig``), while the engine
    config is built (``patches.registry``) and again when the model is built."""
    heads = depth.exit_heads
    if heads is not None and heads.attention and family.norm_offset:
        # the attention draft head's layer is a Llama decoder layer (models.draft_head,
        # tools.train_draft_attention): no sandwich norms, no scaled embedding
        raise DepthConfigError(f"depth.exit_heads: attention (the attention draft head) is not available for the "
                               f"{family.name} family; allowed: attention false (exit heads and prev_state draft "
                               "heads), or a Llama, Mistral, Qwen2 or Qwen3 checkpoint")


def family_of(architecture: str) -> Family:
    try:
        return FAMILIES[architecture]()
    except KeyError:
        raise ValueError(
            f"--model-impl depth cannot run architecture {architecture!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        ) from None
