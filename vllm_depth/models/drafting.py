"""What the self-draft reaches of a depth model: one object (``DepthForCausalLM.drafting``) handed to
the proposer (``spec_decode.self_draft.SelfDraft``), which reaches the model through it only.

A draft is the model's own early positions (a prefix or a skip set, run compiled or eagerly), a
draft head over their state (an exit head, one that also reads the previous token's final state), or
the attention draft head with its own paged KV.  Heads run eagerly with the platform kernels of their
own ops (switching every layer's, about 120, would cost ~0.2 ms a draft token).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vllm_depth.compat.kernels import NativeKernels
from vllm_depth.models.layers import run_draft


class DraftLogits(NamedTuple):
    """What a draft's head gives: ``logits``; ``rest``, a reduced head's "other" logit (None: full
    vocabulary); ``columns``, the token id of each logit column (None: the vocabulary's order);
    ``normed``, the LM head's input."""

    logits: torch.Tensor
    rest: torch.Tensor | None
    columns: torch.Tensor | None
    normed: torch.Tensor


class Drafting:
    """The draft side of one ``DepthForCausalLM``: its draft forwards and their logits."""

    def __init__(self, causal_lm):
        self._lm = causal_lm
        self._decoder = causal_lm.model
        self._kernels = None  # the platform kernels of the heads and the final norm (made on first use)

    @property
    def attends(self) -> bool:
        """Whether drafts come from the attention draft head (``attend``)."""
        return self._decoder.draft_head is not None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                draft: tuple[int, ...] | None = None) -> torch.Tensor:
        """The residual-stream state of draft tokens (in the forward context of the draft's attention
        metadata): the compiled draft (``draft`` None), or schedule positions ``draft`` run eagerly
        with vLLM's platform kernels (``()``: the embedding; no layer runs, no K/V is written)."""
        d = self._decoder
        if draft == ():
            return d.embed_input_ids(input_ids)
        if draft is None:
            return d.draft_stack(input_ids, positions)
        with self._lm.native_kernels():
            return run_draft(d, input_ids, positions, draft)

    def logits(self, state: torch.Tensor, point: int | None, prev: torch.Tensor | None = None) -> DraftLogits:
        """Logits of a draft from its state: the exit head after ``point`` positions (a prefix
        draft) when the checkpoint has one, else the final norm and LM head; ``prev``: the previous
        token's final (normed) state, which a ``prev_state`` head reads."""
        head = self._head(point)
        with self._head_kernels():
            return self._head_logits(head, self._decoder.norm(state) if head is None else head(state, prev))

    def attend(self, input_ids: torch.Tensor, positions: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """The attention draft head's normed states (in the forward context of its attention metadata):
        row ``j`` reads token ``input_ids[j]`` and ``prev[j]``, the final state at ``positions[j]``."""
        d = self._decoder
        with self._head_kernels():
            return d.draft_head(positions, d.embed_input_ids(input_ids), prev)

    def head_logits(self, normed: torch.Tensor) -> DraftLogits:
        """Logits of the attention draft head's normed states (over its reduced vocabulary, if any)."""
        return self._head_logits(self._decoder.draft_head, normed)

    def reads_prev_state(self, point: int | None) -> bool:
        """Whether the draft head after ``point`` positions reads the previous token's final state."""
        head = self._head(point)
        return head is not None and head.prev_state

    def _head(self, point: int | None) -> nn.Module | None:
        """The exit head after ``point`` positions (None: a skip-set draft, or no head there)."""
        heads = self._decoder.exit_heads
        return heads[str(point)] if point is not None and str(point) in heads else None

    def _head_logits(self, head: nn.Module | None, normed: torch.Tensor) -> DraftLogits:
        """Logits of a draft head's output ``normed``: over its reduced vocabulary (and "other"), or the
        LM head's (no head, or no reduced vocabulary)."""
        lm, vocab = self._lm, self._decoder.exit_vocab
        if head is None or vocab is None:
            return DraftLogits(lm.logits_processor(lm.lm_head, normed), None, None, normed)
        logits, rest = vocab.reduced_logits(lm.lm_head, head, normed)
        return DraftLogits(logits, rest, vocab.ids.data, normed)

    def _head_kernels(self) -> NativeKernels:
        if self._kernels is None:
            d = self._decoder
            self._kernels = NativeKernels(nn.ModuleList([d.exit_heads, d.norm, *filter(None, [d.draft_head])]))
        return self._kernels
