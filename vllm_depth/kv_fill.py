"""KV fill for the positions an exited token skipped: state propagation (CALM).

For every skipped position, the token's exit hidden state goes through that
position's input norm, K/V projections (with its low-rank delta, if any) and
rotary embedding, and the result is written into the position's paged cache at
the token's slot, so later tokens attend to a complete cache.

All skipped positions are filled with one matrix product: the RMSNorm gain of
each position is folded into its K/V projection rows (``W diag(g)``), and the
rows of every position from the first exit layer on are stacked, at load time,
into ``kv_fold`` [positions x 2 kv, hidden].  A token exiting after ``L``
positions takes rows from ``L`` on: ``rmsnorm(h) @ kv_fold[L:].T`` gives its K
and V at every skipped position.  The copy costs 2 x kv_size x hidden weights
per such position (SmolLM2, exit from 15: 3.3M, 2.5% of the model).
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_depth.vllm_compat import write_kv


class KVPropagator(nn.Module):
    def __init__(self, decoder, first: int):
        super().__init__()
        self.first = first
        self.positions = range(first, len(decoder.schedule.physical))
        rows = [self._folded_rows(decoder, i) for i in self.positions]
        self.register_buffer("kv_fold", torch.cat(rows).contiguous(), persistent=False)
        attn0 = decoder.layers[decoder.schedule.physical[first]].self_attn
        self.kv_size = attn0.kv_size
        self.eps = decoder.layers[decoder.schedule.physical[first]].input_layernorm.variance_epsilon
        attns = [decoder.layers[decoder.schedule.physical[i]].self_attn for i in self.positions]
        # one rotary call for all skipped positions when they share it (vLLM caches RoPE modules)
        self.shared_rope = (
            all(a.rotary_emb is attn0.rotary_emb for a in attns) and not any(hasattr(a, "k_norm") for a in attns)
        )

    @staticmethod
    def _folded_rows(decoder, i: int) -> torch.Tensor:
        """K and V rows of position ``i``'s projection (plus its delta), times its input-norm gain."""
        layer = decoder.layers[decoder.schedule.physical[i]]
        sa = layer.self_attn
        w = sa.qkv_proj.weight[sa.q_size :].float()  # [2 kv, hidden]: k rows, then v rows
        delta = decoder.position_delta[i]
        if delta is not None:
            w = w + torch.cat([delta.k_a.float() @ delta.k_b.float(), delta.v_a.float() @ delta.v_b.float()])
        return (w * layer.input_layernorm.weight.float()[None, :]).to(sa.qkv_proj.weight.dtype)

    def fill(self, decoder, start: int, states: torch.Tensor, positions: torch.Tensor, slots_of) -> None:
        """Write K/V of ``states`` (exited after ``start`` positions) into positions ``start..``."""
        h = states.float()
        normed = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(states.dtype)
        kv = normed @ self.kv_fold[(start - self.first) * 2 * self.kv_size :].t()
        t, n = states.shape[0], self.positions.stop - start
        kv = kv.view(t, n, 2, self.kv_size)
        keys, values = kv[:, :, 0].reshape(t, n * self.kv_size), kv[:, :, 1]
        if self.shared_rope:  # every position's k heads side by side: RoPE is per head
            keys, _ = decoder.layers[decoder.schedule.physical[start]].self_attn.rotary_emb(positions, keys, None)
        keys = keys.view(t, n, self.kv_size)
        for j, i in enumerate(range(start, self.positions.stop)):
            k, v = keys[:, j].contiguous(), values[:, j].contiguous()
            if not self.shared_rope:
                sa = decoder.layers[decoder.schedule.physical[i]].self_attn
                if hasattr(sa, "k_norm"):  # Qwen3: per-head norm of k before rotary
                    hd = sa.head_dim
                    k = sa.k_norm(k.view(-1, k.shape[-1] // hd, hd)).view(k.shape)
                _, k = sa.rotary_emb(positions, k.clone(), k)
            attn = decoder.position_attn[i]
            write_kv(attn, k, v, slots_of(attn))
