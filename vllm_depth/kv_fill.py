"""KV fill for the positions an exited token skipped: state propagation (CALM).

For every skipped position, the token's exit hidden state goes through that
position's input norm, K/V projections (with its low-rank delta, if any) and
rotary embedding, and the result is written into the position's paged cache at
the token's slot, so later tokens attend to a complete cache.
"""

from __future__ import annotations

import torch

from vllm_depth.vllm_compat import write_kv


def propagate(layer, attn, delta, states: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> None:
    from vllm_depth.models.decoder import project_qkv

    x = layer.input_layernorm(states)
    _, k, v = project_qkv(layer.self_attn, positions, x, delta)
    write_kv(attn, k, v, slots)
