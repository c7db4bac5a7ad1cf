"""The layers of a depth model: vLLM's decoder layers, run one schedule position at a time.

Physical layers are vLLM's own decoder-layer modules.  Each schedule position has its own
``Attention`` module (so its own KV cache) and, in a relaxed-sharing checkpoint, its own low-rank
delta; ``run_positions`` is the one loop over positions that the full graph, the exit segments and
the self-draft all run.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention


class LowRankDelta(nn.Module):
    """A position's rank-R correction ``x @ B.T @ A.T`` to each projection of a shared layer.

    Relaxed Recursive Transformers: positions that share one weight set keep a
    small delta each, fitted (by ``vllm-depth compress --relax-rank``) to the
    weights that position had originally.  Parameters ``<proj>_a`` [out, R] and
    ``<proj>_b`` [R, in] for q, k, v, o, gate, up, down.
    """

    def __init__(self, self_attn: nn.Module, hidden: int, intermediate: int, rank: int, dtype):
        super().__init__()
        q, kv = self_attn.q_size, self_attn.kv_size
        shapes = {"q": (q, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, q),
                  "gate": (intermediate, hidden), "up": (intermediate, hidden), "down": (hidden, intermediate)}
        for name, (out_f, in_f) in shapes.items():
            self.register_parameter(f"{name}_a", nn.Parameter(torch.zeros(out_f, rank, dtype=dtype), requires_grad=False))
            self.register_parameter(f"{name}_b", nn.Parameter(torch.zeros(rank, in_f, dtype=dtype), requires_grad=False))

    def apply(self, names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x @ getattr(self, f"{n}_b").t()) @ getattr(self, f"{n}_a").t() for n in names], dim=-1)


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm in float32 (``weight`` None: no gain): the norm of the families' layers, in plain torch
    (the K/V fill, with its gains folded into the projections; the trainers' heads)."""
    h = hidden.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return h if weight is None else h * weight.float()


def per_head(norm: nn.Module, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``norm`` over each head of ``x`` (q/k norms of Qwen3 and Gemma 3 attention)."""
    return norm(x.view(*x.shape[:-1], x.shape[-1] // head_dim, head_dim)).view(x.shape)


def project_qkv(self_attn: nn.Module, positions, hidden_states, delta=None):
    """q, k, v of vLLM's ``LlamaAttention`` / ``Qwen3Attention`` / ``Gemma3Attention`` (q/k norms, rotary),
    plus the delta."""
    qkv, _ = self_attn.qkv_proj(hidden_states)
    if delta is not None:
        qkv = qkv + delta.apply(("q", "k", "v"), hidden_states)
    q, k, v = qkv.split([self_attn.q_size, self_attn.kv_size, self_attn.kv_size], dim=-1)
    if hasattr(self_attn, "q_norm"):
        q = per_head(self_attn.q_norm, q, self_attn.head_dim)
        k = per_head(self_attn.k_norm, k, self_attn.head_dim)
    q, k = self_attn.rotary_emb(positions, q, k)
    return q, k, v


def mlp_forward(mlp: nn.Module, x: torch.Tensor, delta: LowRankDelta | None) -> torch.Tensor:
    """vLLM's ``LlamaMLP.forward`` plus the position's delta (vLLM's own when there is none)."""
    if delta is None:
        return mlp(x)
    gate_up, _ = mlp.gate_up_proj(x)
    h = mlp.act_fn(gate_up + delta.apply(("gate", "up"), x))
    out, _ = mlp.down_proj(h)
    return out + delta.apply(("down",), h)


def pre_attention(layer: nn.Module, positions, hidden_states, residual, delta=None):
    """The first half of vLLM's decoder layer: input norm (adding the residual), q, k, v.

    Returns q, k, v and the residual stream (the state entering the layer).
    """
    if residual is None:
        residual = hidden_states
        hidden_states = layer.input_layernorm(hidden_states)
    else:
        hidden_states, residual = layer.input_layernorm(hidden_states, residual)
    q, k, v = project_qkv(layer.self_attn, positions, hidden_states, delta)
    return q, k, v, residual


def post_attention(layer: nn.Module, attn: Attention, q, k, v, residual, delta=None, sandwich: bool = False):
    """The second half: attention (the position's module, so its KV cache), o_proj, MLP.

    ``sandwich`` (``Family.sandwich_norms``, vLLM's ``Gemma3DecoderLayer``): the attention output and
    the MLP output are normed too, and the residual joins before the MLP's own pre-norm."""
    a = attn(q, k, v)
    out, _ = layer.self_attn.o_proj(a)
    if delta is not None:
        out = out + delta.apply(("o",), a)
    if not sandwich:
        hidden_states, residual = layer.post_attention_layernorm(out, residual)
        return mlp_forward(layer.mlp, hidden_states, delta), residual
    hidden_states, residual = layer.pre_feedforward_layernorm(layer.post_attention_layernorm(out), residual)
    return layer.post_feedforward_layernorm(mlp_forward(layer.mlp, hidden_states, delta)), residual


def layer_forward(layer: nn.Module, attn: Attention, positions, hidden_states, residual, delta=None,
                  sandwich: bool = False):
    """vLLM's decoder-layer forward (``LlamaDecoderLayer``, ``Qwen3DecoderLayer``, ``Gemma3DecoderLayer``),
    with the position's attention module (and delta)."""
    q, k, v, residual = pre_attention(layer, positions, hidden_states, residual, delta)
    return post_attention(layer, attn, q, k, v, residual, delta, sandwich)


def repeat_attention(template: Attention, vllm_config: VllmConfig, prefix: str) -> Attention:
    """A fresh attention module (own KV cache) shaped like ``template``."""
    return Attention(
        template.num_heads,
        template.head_size,
        template.impl.scale,
        num_kv_heads=template.num_kv_heads,
        cache_config=vllm_config.cache_config,
        quant_config=vllm_config.quant_config,
        per_layer_sliding_window=template.sliding_window,
        attn_type=template.attn_type,
        prefix=prefix,
    )


def run_positions(decoder, positions_run, positions, hidden, residual):
    """Schedule positions ``positions_run`` (in order) of ``decoder`` on the given rows, each with its
    own attention module (so its own KV cache) and delta."""
    sandwich = decoder.family.sandwich_norms
    for i in positions_run:
        layer = decoder.layers[decoder.schedule.physical[i]]
        hidden, residual = layer_forward(layer, decoder.position_attn[i], positions, hidden, residual,
                                         decoder.position_delta[i], sandwich)
    return hidden, residual


def run_draft(decoder, input_ids: torch.Tensor, positions: torch.Tensor, draft: tuple[int, ...]) -> torch.Tensor:
    """The residual-stream state after schedule positions ``draft`` of ``decoder`` (the embedding for none)."""
    hidden, residual = run_positions(decoder, draft, positions, decoder.embed_input_ids(input_ids), None)
    return hidden if residual is None else hidden + residual
