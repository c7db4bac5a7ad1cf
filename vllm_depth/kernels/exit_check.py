"""The exit check: per token, how confident is the exit distribution?

``exit_stats(hidden, norm_weight, eps, lm_head)`` applies the final RMSNorm and
the LM head to exit hidden states and returns per token the argmax, the max
probability and the top-2 margin (p1 - p2), without materialising the
``[tokens x vocab]`` logits: the vocabulary is walked tile by tile with an
online softmax (running max, running sum of exponentials, best two logits).

``saturation(prev, cur)`` is the cosine similarity between the hidden states of
two successive exit points (no LM head).

Each has a Triton kernel and a torch path; ``use_triton()`` picks (Triton on
CUDA, or anywhere under ``TRITON_INTERPRET=1``; torch otherwise).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch


class ExitStats(NamedTuple):
    argmax: torch.Tensor  # [T] int64
    max_prob: torch.Tensor  # [T] float32
    margin: torch.Tensor  # [T] float32, p1 - p2


def use_triton(device: torch.device) -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type == "cuda"


# -- torch path ----------------------------------------------------------------------------


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = hidden.float()
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def exit_stats_torch(hidden, norm_weight, eps, lm_head, tile: int = 8192) -> ExitStats:
    """Online softmax over vocabulary tiles: at most ``[T x tile]`` logits exist at once."""
    x = rms_norm(hidden, norm_weight, eps)
    t = x.shape[0]
    dev = x.device
    m = torch.full((t,), float("-inf"), device=dev)
    s = torch.zeros(t, device=dev)
    top1 = torch.full((t,), float("-inf"), device=dev)
    top2 = torch.full((t,), float("-inf"), device=dev)
    idx = torch.zeros(t, dtype=torch.long, device=dev)
    xw = x.to(lm_head.dtype)  # the product in the weights' dtype, the softmax in fp32
    for v0 in range(0, lm_head.shape[0], tile):
        logits = (xw @ lm_head[v0 : v0 + tile].t()).float()
        targ = logits.argmax(-1)  # first maximal index: ties go to the lower vocab id
        tmax = logits.gather(1, targ[:, None])[:, 0]
        tsec = logits.scatter(1, targ[:, None], float("-inf")).max(-1).values
        new_m = torch.maximum(m, tmax)
        s = s * torch.exp(m - new_m) + torch.exp(logits - new_m[:, None]).sum(-1)
        m = new_m
        better = tmax > top1  # strict: an earlier tile keeps a tie
        top2 = torch.where(better, torch.maximum(top1, tsec), torch.maximum(top2, tmax))
        idx = torch.where(better, targ + v0, idx)
        top1 = torch.where(better, tmax, top1)
    p1 = torch.exp(top1 - m) / s
    p2 = torch.exp(top2 - m) / s
    return ExitStats(idx, p1, p1 - p2)


def saturation_torch(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(prev.float(), cur.float(), dim=-1)


# -- Triton path ---------------------------------------------------------------------------

_kernels = None


def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def exit_partials_kernel(
        h_ptr, w_norm_ptr, head_ptr, m_out, s_out, t1_out, i1_out, t2_out,
        H, V, eps, n_splits, tiles_per_split,
        stride_h, stride_head,
        BLOCK_H: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        tok = tl.program_id(0)
        split = tl.program_id(1)
        offs_h = tl.arange(0, BLOCK_H)
        hmask = offs_h < H
        x = tl.load(h_ptr + tok * stride_h + offs_h, mask=hmask, other=0.0).to(tl.float32)
        var = tl.sum(x * x, axis=0) / H
        w = tl.load(w_norm_ptr + offs_h, mask=hmask, other=0.0).to(tl.float32)
        x = x * tl.rsqrt(var + eps) * w

        m = float("-inf")
        s = 0.0
        t1 = float("-inf")
        t2 = float("-inf")
        i1 = 0
        for j in range(0, tiles_per_split):
            v0 = (split * tiles_per_split + j) * BLOCK_V
            offs_v = v0 + tl.arange(0, BLOCK_V)
            vmask = offs_v < V
            wt = tl.load(
                head_ptr + offs_v[:, None] * stride_head + offs_h[None, :],
                mask=vmask[:, None] & hmask[None, :], other=0.0,
            ).to(tl.float32)
            logits = tl.sum(wt * x[None, :], axis=1)
            logits = tl.where(vmask, logits, float("-inf"))
            tmax = tl.max(logits, axis=0)
            targ = tl.argmax(logits, axis=0) + v0
            # second best of the tile: the max with the argmax masked out
            tsec = tl.max(tl.where(offs_v == targ, float("-inf"), logits), axis=0)
            new_m = tl.maximum(m, tmax)
            s = s * tl.exp(m - new_m) + tl.sum(tl.where(vmask, tl.exp(logits - new_m), 0.0), axis=0)
            m = new_m
            better = tmax > t1
            t2 = tl.where(better, tl.maximum(t1, tsec), tl.maximum(t2, tmax))
            i1 = tl.where(better, targ, i1)
            t1 = tl.where(better, tmax, t1)
        out = tok * n_splits + split
        tl.store(m_out + out, m)
        tl.store(s_out + out, s)
        tl.store(t1_out + out, t1)
        tl.store(i1_out + out, i1)
        tl.store(t2_out + out, t2)

    @triton.jit
    def saturation_kernel(a_ptr, b_ptr, out_ptr, H, stride_a, stride_b, BLOCK_H: tl.constexpr):
        tok = tl.program_id(0)
        offs = tl.arange(0, BLOCK_H)
        mask = offs < H
        a = tl.load(a_ptr + tok * stride_a + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + tok * stride_b + offs, mask=mask, other=0.0).to(tl.float32)
        dot = tl.sum(a * b, axis=0)
        na = tl.sqrt(tl.sum(a * a, axis=0))
        nb = tl.sqrt(tl.sum(b * b, axis=0))
        tl.store(out_ptr + tok, dot / tl.maximum(na * nb, 1e-8))

    return exit_partials_kernel, saturation_kernel


def _get_kernels():
    global _kernels
    if _kernels is None:
        _kernels = _build()
    return _kernels


def exit_stats_triton(hidden, norm_weight, eps, lm_head, block_v: int = 128, n_splits: int | None = None) -> ExitStats:
    import triton

    kernel, _ = _get_kernels()
    t, h = hidden.shape
    v = lm_head.shape[0]
    n_tiles = triton.cdiv(v, block_v)
    if n_splits is None:
        n_splits = min(n_tiles, 64)
    tiles_per_split = triton.cdiv(n_tiles, n_splits)
    n_splits = triton.cdiv(n_tiles, tiles_per_split)
    dev = hidden.device
    m = torch.empty(t, n_splits, device=dev, dtype=torch.float32)
    s, t1, t2 = torch.empty_like(m), torch.empty_like(m), torch.empty_like(m)
    i1 = torch.empty(t, n_splits, device=dev, dtype=torch.int64)
    hidden = hidden.contiguous()
    lm_head = lm_head.contiguous()
    kernel[(t, n_splits)](
        hidden, norm_weight, lm_head, m, s, t1, i1, t2,
        h, v, eps, n_splits, tiles_per_split, hidden.stride(0), lm_head.stride(0),
        BLOCK_H=triton.next_power_of_2(h), BLOCK_V=block_v,
    )
    return _combine(m, s, t1, i1, t2)


def _combine(m, s, t1, i1, t2) -> ExitStats:
    """Merge per-split partials ([T, splits]) into per-token statistics."""
    gm = m.max(dim=1).values
    total = (s * torch.exp(m - gm[:, None])).sum(1)
    best = t1.argmax(dim=1)  # first split with the max: the lowest vocab id on ties
    top1 = t1.gather(1, best[:, None])[:, 0]
    idx = i1.gather(1, best[:, None])[:, 0]
    others = t1.scatter(1, best[:, None], float("-inf"))
    top2 = torch.maximum(others.max(1).values, t2.gather(1, best[:, None])[:, 0])
    p1 = torch.exp(top1 - gm) / total
    p2 = torch.exp(top2 - gm) / total
    return ExitStats(idx, p1, p1 - p2)


def saturation_triton(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    import triton

    _, kernel = _get_kernels()
    t, h = cur.shape
    out = torch.empty(t, device=cur.device, dtype=torch.float32)
    prev, cur = prev.contiguous(), cur.contiguous()
    kernel[(t,)](prev, cur, out, h, prev.stride(0), cur.stride(0), BLOCK_H=triton.next_power_of_2(h))
    return out


# -- dispatch ------------------------------------------------------------------------------


def exit_stats(hidden, norm_weight, eps, lm_head) -> ExitStats:
    if use_triton(hidden.device):
        return exit_stats_triton(hidden, norm_weight, eps, lm_head)
    return exit_stats_torch(hidden, norm_weight, eps, lm_head)


def saturation(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    if use_triton(cur.device):
        return saturation_triton(prev, cur)
    return saturation_torch(prev, cur)
