"""The exit distribution of a depth model: what the exit check reads after an exit point.

Logits through the LM head (or an exit head's reduced vocabulary), or, for the fused check, the
softmax statistics of the vocabulary-parallel LM head without materialising the logits.  The ops an
exit step runs outside its compiled segments use vLLM's platform kernels (``kernels``).
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.distributed import get_tensor_model_parallel_world_size, tensor_model_parallel_all_gather

from vllm_depth.compat.kernels import NativeKernels
from vllm_depth.early_exit.kernels.exit_check import exit_stats


class ExitOutputs:
    """The exit distribution of one ``DepthForCausalLM`` at its exit points."""

    def __init__(self, causal_lm):
        self._lm = causal_lm
        self._decoder = causal_lm.model
        self._kernels = None  # made on first use

    def norm(self, point: int) -> nn.Module:
        """What turns the state after ``point`` positions into the LM head's input: its exit head,
        or the final norm."""
        heads = self._decoder.exit_heads
        return heads[str(point)] if str(point) in heads else self._decoder.norm

    def reduced(self, point: int) -> bool:
        """Whether the exit head at ``point`` predicts over a reduced vocabulary."""
        return self._decoder.exit_vocab is not None and str(point) in self._decoder.exit_heads

    def logits(self, point: int, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The exit distribution's logits after ``point`` positions, and a reduced head's "other" logit."""
        lm, heads, vocab = self._lm, self._decoder.exit_heads, self._decoder.exit_vocab
        if not self.reduced(point):
            return lm.logits_processor(lm.lm_head, normed), None
        return vocab.logits(lm.lm_head, heads[str(point)], normed, lm.config.vocab_size)

    def fused(self) -> bool:
        """``depth.exit_check``: the fused check (no logits) or the LM head's logits.  "auto" fuses
        on GPUs, where the fused kernel costs about the LM-head product and a softmax over
        materialised logits 1.3-4x it (benchmarks/exit_check.py), and under tensor parallelism,
        where the logits are not gathered; on the CPU vLLM's LM-head GEMM is faster than any fused
        product here, and its logits are reused as the step's for exited tokens."""
        mode = self._decoder.depth.exit_check
        if mode == "auto":
            return get_tensor_model_parallel_world_size() > 1 or self._lm.lm_head.weight.is_cuda
        return mode == "fused"

    def stats(self, normed: torch.Tensor):
        """The exit check over the vocabulary-parallel LM head: each rank reduces its shard, then
        one all-gather of ``[T, 5]`` partials per rank (the full logits are never gathered)."""
        lm = self._lm
        shard = lm.lm_head.shard_indices
        scale = lm.logits_processor.scale
        x = normed * scale if scale != 1.0 else normed
        return exit_stats(x, None, 0.0, lm.lm_head.weight, valid=shard.num_org_elements,
                          offset=shard.org_vocab_start_index, gather=tensor_model_parallel_all_gather)

    def kernels(self) -> NativeKernels:
        """The platform kernels of the ops an exit step runs outside its compiled segments: the final
        norm and exit heads (the check), the embedding (saturation) and the K/V fill's rotary and
        k-norms (switching every layer's op, about 120, costs more than the exit saves)."""
        if self._kernels is None:
            d = self._decoder
            attns = [d.layers[d.schedule.physical[i]].self_attn for i in d.schedule.local]
            fill = {id(m): m for a in attns for m in (a.rotary_emb, getattr(a, "k_norm", None)) if m is not None}
            self._kernels = NativeKernels(nn.ModuleList([d.norm, d.exit_heads, d.embed_tokens, *fill.values()]))
        return self._kernels
