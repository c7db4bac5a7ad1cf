"""A trained exit head inside the vLLM model (``vllm-depth train-exits`` writes its weights).

At exit layer ``L`` the head maps the residual stream to a normed hidden state
that the model's own (shared) LM head turns into the exit distribution:

    h = RMSNorm_L(x);  h = h + W h;  h = h + down(silu(up(h)))   (the MLP when mlp_width > 0)
    h = h + P f                                                  (a draft head: ``prev_state``)

where ``f`` is the final (normed) hidden state of the token before, which the
verifier has just computed (EAGLE drafts from such features).

Weights: ``model.exit_heads.<L>.{norm,proj,up,down,prev}.weight`` (and ``.other``
with a reduced vocabulary, whose ids are ``model.exit_vocab.ids``) in
``depth/exit_heads.safetensors`` in the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ReplicatedLinear

from vllm_depth.compat.kernels import rows_product


class ExitHead(nn.Module):
    def __init__(self, hidden_size: int, eps: float, mlp_width: int, reduced: bool = False, prefix: str = "",
                 prev_state: bool = False):
        super().__init__()
        self.norm = RMSNorm(hidden_size, eps=eps)
        if reduced:  # the logit of the mass outside the reduced vocabulary (ExitVocab)
            self.other = nn.Parameter(torch.zeros(1, hidden_size), requires_grad=False)
        self.proj = ReplicatedLinear(hidden_size, hidden_size, bias=False, prefix=f"{prefix}.proj")
        self.mlp_width = mlp_width
        if mlp_width:
            self.up = ReplicatedLinear(hidden_size, mlp_width, bias=False, prefix=f"{prefix}.up")
            self.down = ReplicatedLinear(mlp_width, hidden_size, bias=False, prefix=f"{prefix}.down")
        self.prev_state = prev_state
        if prev_state:
            self.prev = ReplicatedLinear(hidden_size, hidden_size, bias=False, prefix=f"{prefix}.prev")

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        h = h + self.proj(h)[0]
        if self.mlp_width:
            h = h + self.down(F.silu(self.up(h)[0]))[0]
        if self.prev_state:
            if prev is None:
                raise ValueError("a prev_state exit head drafts from the previous token's final state; none given")
            h = h + self.prev(prev.to(h.dtype))[0]
        return h


class ExitVocab(nn.Module):
    """The reduced vocabulary of the exit heads: ``ids`` (the ``vocab`` most frequent tokens of
    the training text), whose rows of the model's LM head give the heads' logits."""

    def __init__(self, size: int):
        super().__init__()
        self.ids = nn.Parameter(torch.zeros(size, dtype=torch.long), requires_grad=False)
        self._gemm = None  # (lm_head rows of ``ids``, their product), made on first use

    def _rows_gemm(self, lm_head: nn.Module):
        """The LM head's rows of ``ids`` and ``x -> x rows^T`` (``compat.kernels.rows_product``: vLLM's
        own GEMM on the CPU), made on first use."""
        if self._gemm is None:
            self._gemm = rows_product(lm_head.weight.data[self.ids.data])
        return self._gemm

    def reduced_logits(self, lm_head: nn.Module, head: ExitHead, normed: torch.Tensor):
        """Logits over ``ids`` (column j: token ``ids[j]``) and the "other" logit."""
        rows, product = self._rows_gemm(lm_head)
        sub = product(normed.to(rows.dtype), rows, None)
        return sub, (normed @ head.other.t().to(normed.dtype))[:, 0]

    def logits(self, lm_head: nn.Module, head: ExitHead, normed: torch.Tensor, vocab_size: int):
        """Full-size logits (-inf outside the reduced vocabulary) and the "other" logit."""
        sub, rest = self.reduced_logits(lm_head, head, normed)
        logits = sub.new_full((normed.shape[0], vocab_size), float("-inf"))
        logits[:, self.ids.data] = sub
        return logits, rest
