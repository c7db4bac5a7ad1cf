"""The exit check: per token, how confident is the exit distribution?

``exit_stats(hidden, norm_weight, eps, lm_head)`` applies the final RMSNorm and
the LM head to exit hidden states and returns per token the argmax, the max
probability and the top-2 margin (p1 - p2), without materialising the
``[tokens x vocab]`` logits: the vocabulary is walked tile by tile with an
online softmax (running max, running sum of exponentials, best two logits).

The vocabulary is reduced in parts (tiles, Triton splits, or the shards of a
vocabulary-parallel LM head under tensor parallelism): each part gives its
``Partials`` (max logit, sum of exponentials, best logit and id, second best),
``merge`` combines parts, and ``gather_merge`` combines ranks with one
all-gather of ``[T, 5]`` per rank, never the logits.

``saturation(prev, cur)`` is the cosine similarity between the hidden states of
two successive exit points (no LM head).

Each has a Triton kernel and a torch path; ``use_triton()`` picks (Triton on
CUDA, or anywhere under ``TRITON_INTERPRET=1``; torch otherwise).  The Triton
check is two kernels: per (block of tokens, run of vocabulary tiles) the partials,
each tile one product on the tensor cores; then per token the merge into
``ExitStats`` (``finish_triton``).

Where the full logits already exist (one process on the CPU), ``probs_of_logits``
reduces them; on the CPU it and ``saturation`` are native functions
(``kernels.cpu_reduce``), with torch ops as the fallback.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch

from vllm_depth.early_exit.kernels import cpu_reduce


class ExitStats(NamedTuple):
    argmax: torch.Tensor  # [T] int64
    max_prob: torch.Tensor  # [T] float32
    margin: torch.Tensor  # [T] float32, p1 - p2


class Partials(NamedTuple):
    """The online softmax of a part of the vocabulary, per token and part ([T, parts])."""

    m: torch.Tensor  # max logit
    s: torch.Tensor  # sum of exp(logit - m)
    t1: torch.Tensor  # best logit (= m)
    i1: torch.Tensor  # its vocab id, int64
    t2: torch.Tensor  # second best logit


def merge(p: Partials) -> Partials:
    """Merge the parts of each token into one ([T, 1]); parts are in vocabulary order, so a tie
    goes to the lowest vocab id."""
    gm = p.m.max(dim=1, keepdim=True).values
    total = (p.s * torch.exp(p.m - gm)).sum(1, keepdim=True)
    best = p.t1.argmax(dim=1, keepdim=True)  # first part with the max
    top1, idx = p.t1.gather(1, best), p.i1.gather(1, best)
    others = p.t1.scatter(1, best, float("-inf")).max(1, keepdim=True).values
    top2 = torch.maximum(others, p.t2.gather(1, best))
    return Partials(gm, total, top1, idx, top2)


def finish(p: Partials) -> ExitStats:
    """Per-token statistics from merged partials."""
    p1 = torch.exp(p.t1 - p.m) / p.s
    p2 = torch.exp(p.t2 - p.m) / p.s
    return ExitStats(p.i1[:, 0], p1[:, 0], (p1 - p2)[:, 0])


def gather_merge(p: Partials, gather) -> Partials:
    """Merge across ranks that each hold a vocabulary shard: one all-gather of ``[T, 5]`` per rank
    (never the logits).  ``gather(x)`` concatenates the ranks' ``x`` along the last dim, in rank
    (= vocabulary) order."""
    p = merge(p)
    t = p.m.shape[0]
    ids = p.i1.to(torch.int32).view(torch.float32)  # the id's bits ride in a float32 column, unchanged
    packed = torch.cat([p.m.float(), p.s.float(), p.t1.float(), ids, p.t2.float()], dim=1)
    g = gather(packed).view(t, -1, 5)
    f = lambda j: g[:, :, j].contiguous()  # noqa: E731
    return merge(Partials(f(0), f(1), f(2), f(3).view(torch.int32).long(), f(4)))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(device: torch.device) -> bool:
    return _interpreting() or device.type == "cuda"


# -- torch path ----------------------------------------------------------------------------


def fused_rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The RMSNorm the fused check applies before the LM head, in float32 (the Triton kernel's, in
    torch): ``exit_stats(hidden, norm_weight, eps, ...)`` with a Llama-style final norm."""
    h = hidden.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return h * weight.float()


def exit_partials_torch(x, lm_head, norm_weight=None, eps=0.0, *, valid=None, offset=0, tile=8192) -> Partials:
    """Per-tile partials of the first ``valid`` rows of ``lm_head`` (vocab ids from ``offset``).

    ``norm_weight``: apply the RMSNorm first (else ``x`` is the LM head's input).
    At most ``[T x tile]`` logits exist at once.
    """
    if norm_weight is not None:
        x = fused_rms_norm(x, norm_weight, eps)
    xw = x.to(lm_head.dtype)  # the product in the weights' dtype, the softmax in fp32
    v = lm_head.shape[0] if valid is None else valid
    parts = [logit_partials((xw @ lm_head[v0 : min(v0 + tile, v)].t()).float(), v0 + offset)
             for v0 in range(0, v, tile)]
    return _stacked(parts)


def logit_partials(logits: torch.Tensor, first_id: int = 0) -> tuple:
    """The partials of one part of the vocabulary from its fp32 logits (vocab ids from ``first_id``),
    one value per token: max, sum of exp(logit - max), best logit, its id, second best."""
    targ = logits.argmax(-1)  # first maximal index: ties go to the lower vocab id
    tmax = logits.gather(1, targ[:, None])[:, 0]
    tsec = logits.scatter(1, targ[:, None], float("-inf")).max(-1).values
    s = torch.exp(logits - tmax[:, None]).sum(-1)
    return tmax, s, tmax, targ + first_id, tsec


def _stacked(parts: list[tuple]) -> Partials:
    return Partials(*(torch.stack(col, dim=1) for col in zip(*parts)))


def exit_stats_torch(hidden, norm_weight, eps, lm_head, tile: int = 8192) -> ExitStats:
    return finish(merge(exit_partials_torch(hidden, lm_head, norm_weight, eps, tile=tile)))


def probs_of_logits(logits: torch.Tensor, rest: torch.Tensor | None = None, margin: bool = False) -> torch.Tensor:
    """Per row, the max probability of ``softmax(logits)`` (``margin``: top-1 minus top-2
    probability), in fp32.

    The exit check's path when the full logits exist (one process on the CPU: the LM head's own
    GEMM made them, and they are reused as the step's logits, so they are not modified).
    ``rest``: a reduced-vocabulary head's "other" logit, in the softmax's mass but never a top
    token.  On the CPU one native call (``kernels.cpu_reduce``: no fp32 copy of the logits, and
    no torch op, each of which costs tens of microseconds when the caches are cold after decoder
    layers; benchmarks/exit_check.py); torch ops elsewhere, and where it cannot be built.
    """
    if logits.device.type == "cpu":
        p = cpu_reduce.confidence(logits, rest, margin)
        if p is not None:
            return p
    return probs_torch(logits, rest, margin)


def probs_torch(logits: torch.Tensor, rest: torch.Tensor | None = None, margin: bool = False) -> torch.Tensor:
    """``probs_of_logits`` as torch ops: the logits are one part of the fused check's online softmax,
    and a reduced head's "other" logit another that adds to the mass but holds no top token."""
    parts = [logit_partials(logits.float())]
    if rest is not None:
        r = rest.float().reshape(-1)
        none = torch.full_like(r, float("-inf"))
        parts.append((r, torch.ones_like(r), none, torch.full_like(r, -1, dtype=torch.long), none))
    stats = finish(merge(_stacked(parts)))
    return stats.margin if margin else stats.max_prob


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
        T, H, V, eps, n_splits, tiles_per_split, offset,
        stride_h, stride_head,
        BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
        APPLY_NORM: tl.constexpr, IEEE: tl.constexpr,
    ):
        """Program (token block, split): the tiles of one run of the vocabulary for BLOCK_T tokens,
        each tile one ``[BLOCK_T, H] x [H, BLOCK_V]`` product on the tensor cores (the LM head is
        read once per token block, not once per token)."""
        rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        split = tl.program_id(1)
        rmask = rows < T
        offs_k = tl.arange(0, BLOCK_K)
        scale = tl.full([BLOCK_T], 1.0, tl.float32)
        if APPLY_NORM:  # the RMSNorm's per-token scale; the gain is applied chunk by chunk below
            sq = tl.zeros([BLOCK_T], tl.float32)
            for k0 in range(0, H, BLOCK_K):
                kk = k0 + offs_k
                x = tl.load(h_ptr + rows[:, None] * stride_h + kk[None, :],
                            mask=rmask[:, None] & (kk < H)[None, :], other=0.0).to(tl.float32)
                sq += tl.sum(x * x, axis=1)
            scale = tl.rsqrt(sq / H + eps)

        m = tl.full([BLOCK_T], float("-inf"), tl.float32)  # running max logit
        s = tl.zeros([BLOCK_T], tl.float32)  # running sum of exp(logit - m)
        t1 = tl.full([BLOCK_T], float("-inf"), tl.float32)  # best logit
        t2 = tl.full([BLOCK_T], float("-inf"), tl.float32)  # second best
        i1 = tl.zeros([BLOCK_T], tl.int32)  # id of the best
        for j in range(0, tiles_per_split):
            v0 = (split * tiles_per_split + j) * BLOCK_V
            offs_v = v0 + tl.arange(0, BLOCK_V)
            vmask = offs_v < V
            acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
            for k0 in range(0, H, BLOCK_K):
                kk = k0 + offs_k
                kmask = kk < H
                x = tl.load(h_ptr + rows[:, None] * stride_h + kk[None, :],
                            mask=rmask[:, None] & kmask[None, :], other=0.0)
                if APPLY_NORM:
                    g = tl.load(w_norm_ptr + kk, mask=kmask, other=0.0).to(tl.float32)
                    x = x.to(tl.float32) * scale[:, None] * g[None, :]
                x = x.to(head_ptr.dtype.element_ty)  # the product in the weights' dtype, as the torch path
                w = tl.load(head_ptr + offs_v[None, :] * stride_head + kk[:, None],
                            mask=kmask[:, None] & vmask[None, :], other=0.0)  # [BLOCK_K, BLOCK_V]
                if IEEE:  # fp32 weights: a full-precision product (not TF32); the interpreter: any dtype
                    acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(x, w, acc)
            logits = tl.where(vmask[None, :], acc, float("-inf"))
            tmax = tl.max(logits, axis=1)
            targ = tl.argmax(logits, axis=1, tie_break_left=True) + v0  # ties: the lower vocab id
            # second best of the tile: the max with the argmax masked out
            tsec = tl.max(tl.where(offs_v[None, :] == targ[:, None], float("-inf"), logits), axis=1)
            new_m = tl.maximum(m, tmax)
            e = tl.where(vmask[None, :], tl.exp(logits - new_m[:, None]), 0.0)
            s = s * tl.exp(m - new_m) + tl.sum(e, axis=1)
            m = new_m
            better = tmax > t1
            t2 = tl.where(better, tl.maximum(t1, tsec), tl.maximum(t2, tmax))
            i1 = tl.where(better, targ, i1)
            t1 = tl.where(better, tmax, t1)
        out = rows * n_splits + split
        tl.store(m_out + out, m, mask=rmask)
        tl.store(s_out + out, s, mask=rmask)
        tl.store(t1_out + out, t1, mask=rmask)
        tl.store(i1_out + out, i1.to(tl.int64) + offset, mask=rmask)
        tl.store(t2_out + out, t2, mask=rmask)

    @triton.jit
    def finish_kernel(m_ptr, s_ptr, t1_ptr, i1_ptr, t2_ptr, idx_out, p1_out, margin_out, n_splits,
                      BLOCK_S: tl.constexpr):
        """Program per token: ``merge`` and ``finish`` of its splits in one kernel (no torch ops
        between the product and the statistics)."""
        tok = tl.program_id(0)
        offs = tl.arange(0, BLOCK_S)
        smask = offs < n_splits
        base = tok * n_splits
        m = tl.load(m_ptr + base + offs, mask=smask, other=float("-inf"))
        s = tl.load(s_ptr + base + offs, mask=smask, other=0.0)
        t1 = tl.load(t1_ptr + base + offs, mask=smask, other=float("-inf"))
        t2 = tl.load(t2_ptr + base + offs, mask=smask, other=float("-inf"))
        gm = tl.max(m, axis=0)
        total = tl.sum(tl.where(smask, s * tl.exp(m - gm), 0.0), axis=0)
        best = tl.argmax(t1, axis=0, tie_break_left=True)  # first split with the max: the lower id
        top1 = tl.max(t1, axis=0)
        top2 = tl.maximum(tl.max(tl.where(offs == best, float("-inf"), t1), axis=0),
                          tl.max(tl.where(offs == best, t2, float("-inf")), axis=0))
        p1 = tl.exp(top1 - gm) / total
        p2 = tl.exp(top2 - gm) / total
        tl.store(idx_out + tok, tl.load(i1_ptr + base + best))
        tl.store(p1_out + tok, p1)
        tl.store(margin_out + tok, p1 - p2)

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

    return exit_partials_kernel, finish_kernel, saturation_kernel


def _get_kernels():
    global _kernels
    if _kernels is None:
        _kernels = _build()
    return _kernels


class TritonConfig(NamedTuple):
    """Tile sizes of the exit-check kernel."""

    block_v: int = 128
    block_k: int = 64
    splits: int = 528  # at most this many runs of tiles per token block
    num_warps: int = 4


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_config(tokens: int, hidden_size: int, device: torch.device) -> TritonConfig:
    """Tiles chosen by ``benchmarks/exit_check.py --sweep`` on an H200 (bf16, 1-64 tokens): 128
    vocabulary rows per tile and about four runs of tiles per multiprocessor; K chunks of 128 with
    8 warps for large hidden sizes up to 16 tokens (64 and 4 where the size is not a multiple of
    128, e.g. SmolLM2's 576); over 16 tokens of a large hidden size, 256 rows per tile in chunks of
    64, two runs per multiprocessor."""
    sms = _multiprocessors(device) if device.type == "cuda" else 132
    wide = hidden_size >= 1024 and hidden_size % 128 == 0
    if wide and tokens > 16:
        return TritonConfig(block_v=256, block_k=64, splits=2 * sms, num_warps=4)
    return TritonConfig(block_v=128, block_k=128 if wide else 64, splits=4 * sms, num_warps=8 if wide else 4)


def exit_partials_triton(x, lm_head, norm_weight=None, eps=0.0, *, valid=None, offset=0,
                         config: TritonConfig | None = None, n_splits: int | None = None) -> Partials:
    """``exit_partials_torch`` as one Triton kernel: ``[T, splits]`` partials, each split a run of tiles."""
    import triton

    kernel = _get_kernels()[0]
    t, h = x.shape
    config = config or default_config(t, h, x.device)
    v = lm_head.shape[0] if valid is None else valid
    n_tiles = triton.cdiv(v, config.block_v)
    tiles_per_split = triton.cdiv(n_tiles, n_splits or min(n_tiles, config.splits))
    n_splits = triton.cdiv(n_tiles, tiles_per_split)
    block_t = min(64, max(16, triton.next_power_of_2(t)))  # tl.dot's smallest tile is 16
    dev = x.device
    m = torch.empty(t, n_splits, device=dev, dtype=torch.float32)
    s, t1, t2 = torch.empty_like(m), torch.empty_like(m), torch.empty_like(m)
    i1 = torch.empty(t, n_splits, device=dev, dtype=torch.int64)
    x = x.contiguous()
    lm_head = lm_head.contiguous()
    norm = norm_weight is not None
    kernel[(triton.cdiv(t, block_t), n_splits)](
        x, norm_weight if norm else x, lm_head, m, s, t1, i1, t2,
        t, h, v, eps, n_splits, tiles_per_split, offset, x.stride(0), lm_head.stride(0),
        BLOCK_T=block_t, BLOCK_K=config.block_k, BLOCK_V=config.block_v, APPLY_NORM=norm,
        # the interpreter's product of bf16 tiles is wrong (Triton 3.9): it multiplies them in fp32,
        # which is exact for bf16 and fp16 inputs summed in fp32
        IEEE=lm_head.dtype == torch.float32 or _interpreting(), num_warps=config.num_warps,
    )
    return Partials(m, s, t1, i1, t2)


def finish_triton(p: Partials) -> ExitStats:
    """``finish(merge(p))`` as one Triton kernel."""
    import triton

    kernel = _get_kernels()[1]
    t, n = p.m.shape
    idx = torch.empty(t, device=p.m.device, dtype=torch.int64)
    p1, margin = torch.empty(t, device=p.m.device), torch.empty(t, device=p.m.device)
    kernel[(t,)](p.m, p.s, p.t1, p.i1, p.t2, idx, p1, margin, n, BLOCK_S=triton.next_power_of_2(n))
    return ExitStats(idx, p1, margin)


def exit_stats_triton(hidden, norm_weight, eps, lm_head, config: TritonConfig | None = None,
                      n_splits: int | None = None) -> ExitStats:
    return finish_triton(exit_partials_triton(hidden, lm_head, norm_weight, eps, config=config, n_splits=n_splits))


def saturation_triton(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    import triton

    kernel = _get_kernels()[2]
    t, h = cur.shape
    out = torch.empty(t, device=cur.device, dtype=torch.float32)
    prev, cur = prev.contiguous(), cur.contiguous()
    kernel[(t,)](prev, cur, out, h, prev.stride(0), cur.stride(0), BLOCK_H=triton.next_power_of_2(h))
    return out


# -- dispatch ------------------------------------------------------------------------------


def exit_stats(hidden, norm_weight, eps, lm_head, *, valid=None, offset=0, gather=None) -> ExitStats:
    """Argmax, max probability and top-2 margin of ``softmax(lm_head @ norm(hidden))``.

    ``norm_weight`` None: ``hidden`` is already the LM head's input.  For a
    vocabulary-parallel head, ``lm_head`` is this rank's shard (its first
    ``valid`` rows are real, from vocab id ``offset``) and ``gather`` the
    all-gather across the shards' ranks (``gather_merge``).
    """
    triton = use_triton(hidden.device)
    partials = exit_partials_triton if triton else exit_partials_torch
    p = partials(hidden, lm_head, norm_weight, eps, valid=valid, offset=offset)
    if gather is not None:
        return finish(gather_merge(p, gather))
    return finish_triton(p) if triton else finish(merge(p))


def saturation(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of successive exit states: Triton on GPUs (and under the interpreter);
    on the CPU one native call (``kernels.cpu_reduce``: the torch ops cost tens of microseconds
    each right after a decoder layer), torch ops where it cannot be built."""
    if use_triton(cur.device):
        return saturation_triton(prev, cur)
    out = cpu_reduce.saturation(prev, cur) if cur.device.type == "cpu" else None
    return saturation_torch(prev, cur) if out is None else out


def saturation_values(prev: torch.Tensor, cur: torch.Tensor) -> list[float]:
    """``saturation`` as a list of floats, the engine's call: on the CPU the native function
    writes them with no tensor made, and torch ops where it cannot (also under the Triton
    interpreter, which is for testing the kernels; ``is_cpu``: ``.device`` builds an object)."""
    if cur.is_cpu:
        out = cpu_reduce.saturation_values(prev, cur)
        return saturation_torch(prev, cur).tolist() if out is None else out
    return saturation(prev, cur).tolist()
