"""KV fill for the positions an exited token skipped: state propagation (CALM).

For every skipped position, the token's exit hidden state goes through that
position's input norm, K/V projections (with its low-rank delta, if any) and
rotary embedding, and the result is written into the position's paged cache at
the token's slot, so later tokens attend to a complete cache.

The exit position itself needs nothing extra: its K/V come out of the segment
that ends there (see ``DepthSegment``).  The positions after it are filled
with few matrix products: each position's RMSNorm gain is folded into its K/V
projection rows (``W diag(g)``), and the rows of the positions between two exit
points are stacked, at load time, into one vLLM ``ReplicatedLinear`` (so vLLM
packs it for its GEMM like any other layer).  A token exiting after ``L``
positions runs ``rmsnorm(h)`` through the stacks from ``L`` on and gets its K
and V at every skipped position.  The copy costs 2 x kv_size x hidden weights
per position after the first exit point (SmolLM2, exit at 15: 3.1M, 2.3%).
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.model_executor.layers.linear import ReplicatedLinear

from vllm_depth.compat.attention import write_kv
from vllm_depth.models.layers import per_head, rms_norm


class KVPropagator(nn.Module):
    def __init__(self, decoder, starts: list[int], stop: int, prefix: str = ""):
        """Stacks for the fills that begin at ``starts`` (the position after each exit point; on a
        later pipeline stage also its first position) and run to ``stop`` (the stage's end)."""
        super().__init__()
        bounds = sorted({min(a, stop) for a in starts}) + [stop]
        # stack k covers positions bounds[k] .. bounds[k + 1] - 1
        self.spans = [(a, b) for a, b in zip(bounds, bounds[1:])]
        some = decoder.layers[decoder.schedule.physical[decoder.schedule.local.start]]
        self.kv_size = some.self_attn.kv_size
        self.eps = some.input_layernorm.variance_epsilon
        self.stacks = nn.ModuleList()
        for k, (a, b) in enumerate(self.spans):
            if b == a:  # an exit point at the last position: nothing after it to fill
                self.stacks.append(nn.Identity())
                continue
            rows = torch.cat([self._folded_rows(decoder, i) for i in range(a, b)])
            stack = ReplicatedLinear(rows.shape[1], rows.shape[0], bias=False, params_dtype=rows.dtype,
                                     prefix=f"{prefix}.stacks.{k}")
            stack.weight.data.copy_(rows)
            self.stacks.append(stack)
        attns = [decoder.layers[decoder.schedule.physical[i]].self_attn for i in range(bounds[0], stop)]
        # one rotary call for all filled positions when they share it (vLLM caches RoPE modules)
        self.shared_rope = all(a.rotary_emb is attns[0].rotary_emb for a in attns) and not any(
            hasattr(a, "k_norm") for a in attns)

    @staticmethod
    def _folded_rows(decoder, i: int) -> torch.Tensor:
        """K and V rows of position ``i``'s projection (plus its delta), times its input-norm gain."""
        layer = decoder.layers[decoder.schedule.physical[i]]
        sa = layer.self_attn
        w = sa.qkv_proj.weight[sa.q_size :].float()  # [2 kv, hidden]: k rows, then v rows
        delta = decoder.position_delta[i]
        if delta is not None:
            w = w + torch.cat([delta.k_a.float() @ delta.k_b.float(), delta.v_a.float() @ delta.v_b.float()])
        return (w * decoder.family.gain(layer.input_layernorm)[None, :]).to(sa.qkv_proj.weight.dtype)

    def fill(self, decoder, start: int, states: torch.Tensor, positions: torch.Tensor, slots_of) -> None:
        """Write the K/V of exit ``states`` into positions ``start`` .. the end of the stage."""
        stop = self.spans[-1][1]
        if start >= stop:
            return
        k0 = next(k for k, (a, _) in enumerate(self.spans) if a == start)
        normed = rms_norm(states, None, self.eps).to(states.dtype)
        parts = [self.stacks[k](normed)[0] for k in range(k0, len(self.spans)) if self.spans[k][1] > self.spans[k][0]]
        kv = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        t, n = states.shape[0], stop - start
        kv = kv.view(t, n, 2, self.kv_size)
        keys, values = kv[:, :, 0].reshape(t, n * self.kv_size), kv[:, :, 1]
        if self.shared_rope:  # every position's k heads side by side: RoPE is per head
            keys, _ = decoder.layers[decoder.schedule.physical[start]].self_attn.rotary_emb(positions, keys, None)
        # position-major, so that each position's rows are contiguous: two copies, not two per position
        keys = keys.view(t, n, self.kv_size).transpose(0, 1).contiguous()
        values = values.transpose(0, 1).contiguous()
        for j, i in enumerate(range(start, stop)):
            k, v = keys[j], values[j]
            if not self.shared_rope:
                sa = decoder.layers[decoder.schedule.physical[i]].self_attn
                if hasattr(sa, "k_norm"):  # Qwen3, Gemma 3: per-head norm of k before rotary
                    k = per_head(sa.k_norm, k, sa.head_dim)
                _, k = sa.rotary_emb(positions, k.clone(), k)
            attn = decoder.position_attn[i]
            write_kv(attn, k, v, slots_of(attn))
