"""The compiled pieces of a depth model besides its full-depth graph: the stretches between exit
points (``DepthSegment``) and the self-draft's positions (``DraftStack``).

Each is its own vLLM ``support_torch_compile`` graph (``compat.compile.compiled_class``); the layers
belong to the decoder (``_owner`` is a tuple, not a submodule: one weight set).
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig

from vllm_depth.models.layers import (
    post_attention,
    pre_attention,
    run_draft,
    run_positions,
)


class DepthSegment(nn.Module):
    """The stretch between two exit points, compiled as one graph.

    With exit layers, a step where some token may exit runs as a chain of
    segments, each its own vLLM ``support_torch_compile`` graph: compiled code
    between the (eager) exit checks, on fewer rows after each.  Steps where no
    token can exit run the decoder's single full-depth graph, exactly as
    without exit layers.

    A segment is cut where vLLM's piecewise compilation already cuts the full
    graph, at an attention op: segment k runs the attention and the rest of
    position ``start`` (the exit point ``L_k``; segment 0 starts from the
    embedding instead), every position up to the next exit point ``end``, and
    the first half of position ``end`` (input norm, q, k, v).  On a later
    pipeline stage, segment 0 starts from the state the previous stage sent
    (``hidden`` in the ``v`` slot, and ``residual``).  So each compiled
    piece is the full graph's own piece (the same fusions, the same numbers),
    the state after ``end`` positions is the residual it returns, and the K/V
    of position ``end`` is exact for every row, exited or not.  The last
    segment ends with the final norm; on an earlier pipeline stage, with the
    state it sends on (``hidden, residual``).  The layers belong to the decoder
    (``_owner`` is a tuple, not a submodule: one weight set).
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", owner=None, start=0, end=0, last=False,
                 stage_end=False):
        super().__init__()
        self._owner = (owner,)
        self.start, self.end, self.last, self.stage_end = start, end, last, stage_end

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, q: torch.Tensor | None,
                k: torch.Tensor | None, v: torch.Tensor | None, residual: torch.Tensor | None):
        d = self._owner[0]
        if input_ids is not None:  # segment 0
            hidden, residual = run_positions(d, range(self.end), positions, d.embed_input_ids(input_ids), None)
        elif q is None:  # segment 0 of a later pipeline stage: v is the hidden state received
            hidden, residual = run_positions(d, range(self.start, self.end), positions, v, residual)
        else:
            i = self.start
            layer = d.layers[d.schedule.physical[i]]
            hidden, residual = post_attention(layer, d.position_attn[i], q, k, v, residual, d.position_delta[i],
                                              d.family.sandwich_norms)
            hidden, residual = run_positions(d, range(self.start + 1, self.end), positions, hidden, residual)
        if self.last:
            return d.norm(hidden, residual)[0]
        if self.stage_end:
            return hidden, residual
        i = self.end
        return pre_attention(d.layers[d.schedule.physical[i]], positions, hidden, residual, d.position_delta[i])


class DraftStack(nn.Module):
    """The self-draft's positions (``depth.draft_layers`` / ``draft_schedule``), compiled as one graph.

    Returns the residual-stream state after the last draft position; each
    position attends (and writes its K/V) through its own attention module,
    the verifier's.  The layers belong to the decoder (``_owner``).
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", owner=None, draft=()):
        super().__init__()
        self._owner = (owner,)
        self.draft = tuple(draft)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return run_draft(self._owner[0], input_ids, positions, self.draft)
