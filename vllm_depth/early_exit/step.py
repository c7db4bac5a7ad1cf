"""One decode step with token-level early exit: its requests, its exit candidates, and the
bookkeeping of the tokens that leave (``ExitRun``).

Exit layers are layer counts: exit layer ``L`` means "after the first ``L`` schedule positions have
run".  A decode token (its request's last token in the step, which samples the next one; with
``kv_fill: "recompute"`` the token before it may be an exited one run again) may exit at an exit
layer ``L >= min_layer`` when its confidence (``early_exit.criteria``) is strictly greater than its
request's threshold.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field

import torch

from vllm_depth.early_exit.criteria import CRITERIA
from vllm_depth.request_args import RequestDepth


@dataclass
class StepRequest:
    """What the model needs to know of one request of the step (from the runner)."""

    req_id: str
    depth: RequestDepth
    decode: bool  # its last scheduled token samples a new token after the prompt


@dataclass(frozen=True)
class DepthStep:
    """What the model runner (``patches.worker.model_runner``) hands the depth model's exit controller
    (``early_exit.controller``) before a step's forward."""

    requests: list[StepRequest]  # in token-layout order
    groups: dict  # layer name -> its attention group (``compat.attention.attention_groups_by_layer``)
    query_start_loc: torch.Tensor | None  # CPU; None in profiling runs


@dataclass
class ExitStep:
    """The candidates of one step: decode tokens that may exit (Python values: the step's
    bookkeeping runs on them, where a torch op would cost tens of microseconds)."""

    candidates: list[tuple[int, tuple[float, ...], int]]  # (token row, threshold per exit layer, min layer)
    qsl: list[int]  # query_start_loc: request r has rows qsl[r] .. qsl[r + 1] - 1
    num_reqs: int


def exit_plan(depth: RequestDepth, *, thresholds: tuple[float, ...], min_layer: int,
              exit_layers: tuple[int, ...]) -> tuple[tuple[float, ...], int] | None:
    """A request's (threshold per exit layer, min layer), or None when none of its tokens can exit.

    ``thresholds``: the model's, one per exit layer; a request's ``depth_exit_threshold`` replaces
    all of them.
    """
    if not depth.exit:
        return None
    t = thresholds if depth.exit_threshold is None else (depth.exit_threshold,) * len(exit_layers)
    m = min_layer if depth.min_layer is None else depth.min_layer
    # confidence > 1.0 is impossible: a request with no layer it may exit at never exits
    if all(x >= 1.0 or layer < m for x, layer in zip(t, exit_layers)):
        return None
    return tuple(t), m


def plan_step(requests: list[StepRequest], query_start_loc: torch.Tensor, *, thresholds: tuple[float, ...],
              min_layer: int, exit_layers: tuple[int, ...]) -> ExitStep | None:
    """The step's exit candidates (``exit_plan`` of its decode requests), or None when no token can
    exit (then no check runs)."""
    qsl = query_start_loc.cpu().tolist()
    candidates = []
    for r, req in enumerate(requests):
        if not req.decode:
            continue
        plan = exit_plan(req.depth, thresholds=thresholds, min_layer=min_layer, exit_layers=exit_layers)
        if plan is not None:
            # the request's last row (before it: the token kv_fill 'recompute' re-runs)
            candidates.append((qsl[r + 1] - 1, *plan))
    if not candidates:
        return None
    return ExitStep(candidates, qsl, len(requests))


@dataclass
class ExitCounters:
    """Cumulative exit statistics of one model (read by the bench and /metrics)."""

    exits: dict[int, int] = field(default_factory=dict)  # exit layer -> tokens
    checked: int = 0  # candidate tokens that reached the exit check
    fill_tokens: int = 0  # (token, layer) K/V pairs filled by propagation
    fill_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"exits": dict(self.exits), "checked": self.checked,
                "fill_tokens": self.fill_tokens, "fill_seconds": self.fill_seconds}

    def reset(self) -> None:
        self.exits, self.checked, self.fill_tokens, self.fill_seconds = {}, 0, 0, 0.0


def _subset(indices: list[int], n: int) -> torch.Tensor | None:
    """The index tensor of ``indices`` among ``n`` rows, or None when they are all of them, in order."""
    return None if indices == list(range(n)) else torch.tensor(indices, dtype=torch.long)


def _rows(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``x[index]``, or ``x`` itself for None (all rows: no index op)."""
    return x if index is None else x[index]


class ExitRun:
    """The active rows of one step and the tokens that left, with their exit states.

    The bookkeeping (who is active, who may exit where) is kept in Python lists:
    at decode batch sizes each torch op here would cost more than the work it does.
    """

    def __init__(self, step: ExitStep, input_ids: torch.Tensor, positions: torch.Tensor, criterion: str, embed,
                 exit_layers: tuple[int, ...]):
        t = input_ids.shape[0]
        self.criterion = CRITERIA[criterion]
        self.exit_points = exit_layers  # the model's exit layers (threshold columns)
        self.qsl = step.qsl
        self.num_reqs = step.num_reqs
        self.row_list = list(range(t))  # the active rows (token rows of the step), in order
        self.num_real = min(self.qsl[-1], t)  # rows past the last request's are padding: no request
        # (active index, thresholds, min layer) of each candidate: active index = row until rows leave
        self.candidates = step.candidates
        self.positions = positions
        self._rows = self._req_of_row = None
        # saturation compares with the previous checked exit point; before the first, the embedding
        self.prev = embed(input_ids) if criterion == "saturation" else None
        # active-row indices (before compaction) of the last check's exits; None: all the active rows
        self.last_exited = None
        # the exited tokens, in exit order
        self.exit_rows: list[torch.Tensor] = []
        self.exit_reqs: list[torch.Tensor] = []
        self.exit_layers: list[int] = []
        self.exit_states: list[torch.Tensor] = []
        self.exit_normed: list[torch.Tensor] = []
        self.exit_logits: list[torch.Tensor] = []
        self.exit_positions: list[torch.Tensor] = []

    @property
    def num_active(self) -> int:
        return len(self.row_list)

    @property
    def rows(self) -> torch.Tensor:
        """The active rows as a tensor (made when asked)."""
        if self._rows is None:
            self._rows = torch.tensor(self.row_list, dtype=torch.long)
        return self._rows

    @property
    def req_of_row(self) -> torch.Tensor:
        """The request index of every active row (-1: padding)."""
        if self._req_of_row is None:
            self._req_of_row = torch.tensor([self._req(r) for r in self.row_list], dtype=torch.long)
        return self._req_of_row

    def _req(self, row: int) -> int:
        r = bisect.bisect_right(self.qsl, row) - 1
        return r if r < self.num_reqs and row < self.qsl[-1] else -1

    def take_exited(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of ``x`` (laid out as the active rows before the last check) that just exited."""
        return _rows(x, self.last_exited)

    def check(self, layer: int, states, norm, logits_of, counters: ExitCounters, shortcut: bool = True,
              stats_of=None):
        """The exit check after ``layer`` positions (``states``: the active rows' residual stream).

        ``norm`` maps exit states to the normed hidden states whose LM head
        output is the exit distribution (the final norm, or the layer's exit head).
        ``shortcut``: certain exits may skip the check (their logits are the LM head's
        on the normed state, computed with the step's); not for reduced-vocabulary heads.
        ``stats_of``: normed states -> ``ExitStats`` (the cross-rank reduction of a
        vocabulary-parallel head); when given, criteria that have ``from_stats`` use it
        and no logits are kept.
        Returns the kept active rows (an index tensor; the run is compacted), or None when none exits.
        """
        col = self.exit_points.index(layer)
        eligible = [(a, thr[col]) for a, thr, m in self.candidates if thr[col] < 1.0 and m <= layer]
        if not eligible:
            return None
        idx_list = [a for a, _ in eligible]
        idx = _subset(idx_list, self.num_active)
        state = _rows(states, idx)
        normed = norm(state)
        fire = [shortcut and bool(self.criterion.certain(x)) for _, x in eligible]
        todo = [j for j, f in enumerate(fire) if not f]
        logits = None
        if todo:
            sel = _subset(todo, len(fire))
            if stats_of is not None and self.criterion.from_stats is not None:
                confidence = self.criterion.from_stats(stats_of(_rows(normed, sel)))
            else:
                logits, rest = logits_of(_rows(normed, sel)) if self.criterion.needs_logits else (None, None)
                prev = None if self.prev is None else _rows(_rows(self.prev, idx), sel)
                confidence = self.criterion.confidence(logits, _rows(state, sel), prev, rest)
            if isinstance(confidence, torch.Tensor):
                confidence = confidence.tolist()
            # compared as float32 (thresholds rounded as a float32 tensor would hold them), in Python:
            # right after decoder layers every torch op costs microseconds
            thresholds = array("f", [eligible[j][1] for j in todo])
            passed = [c > x for c, x in zip(confidence, thresholds)]
            for j, p in zip(todo, passed):
                fire[j] = p
            counters.checked += len(todo)
        if self.prev is not None:
            if idx is None:
                self.prev.copy_(state)
            else:
                self.prev[idx] = state
        if not any(fire):
            return None
        chosen = [j for j, f in enumerate(fire) if f]
        out = [idx_list[j] for j in chosen]
        counters.exits[layer] = counters.exits.get(layer, 0) + len(out)
        pick = _subset(chosen, len(fire))
        # the exit logits are reused as the step's logits (when no row's exit was certain)
        return self.leave(out, layer, _rows(state, pick), _rows(normed, pick),
                          _rows(logits, pick) if logits is not None and len(todo) == len(fire) else None)

    def leave(self, out: list[int], layer: int, states, normed, logits):
        """Active rows ``out`` leave after ``layer`` positions with these exit states; compacts the
        run and returns the kept active rows (an index tensor)."""
        n = self.num_active
        self.last_exited = _subset(out, n)
        rows = [self.row_list[a] for a in out]
        self.exit_rows.append(torch.tensor(rows, dtype=torch.long))
        self.exit_reqs.append(torch.tensor([self._req(r) for r in rows], dtype=torch.long))
        self.exit_layers.append(layer)
        self.exit_states.append(states)
        self.exit_normed.append(normed)
        self.exit_logits.append(logits)
        self.exit_positions.append(self.take_exited(self.positions))
        # compact: exited rows leave, and so do padding rows (no request, no attention)
        gone = set(out)
        kept = [a for a in range(min(n, self.num_real)) if a not in gone]
        keep = torch.tensor(kept, dtype=torch.long)
        new_index = {a: i for i, a in enumerate(kept)}
        self.candidates = [(new_index[a], thr, m) for a, thr, m in self.candidates if a in new_index]
        self.row_list = [self.row_list[a] for a in kept]
        self.num_real = len(kept)
        self._rows = self._req_of_row = None
        if kept:
            self.positions = self.positions[keep]
            if self.prev is not None:
                self.prev = self.prev[keep]
        return keep

    def output(self, final: torch.Tensor | None, total: int, hidden_size: int, like: torch.Tensor):
        """The normed final hidden state of every row: exit states for the exited tokens."""
        if final is None and len(self.exit_rows) == 1 and self.last_exited is None:
            if len(self.exit_normed[0]) == total:
                return self.exit_normed[0]  # every row left at one exit point, in order
        out = like.new_zeros(total, hidden_size)
        if final is not None and self.num_active:
            out[self.rows] = final
        for rows, normed in zip(self.exit_rows, self.exit_normed):
            out[rows] = normed
        return out

    def stage_output(self, final, total: int, hidden_size: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """What an earlier pipeline stage sends on: the active rows' ``final`` (hidden, residual), and
        for exited tokens their exit state as the hidden state and their exit layer in ``depth_exit``."""
        hidden = like.new_zeros(total, hidden_size)
        residual = like.new_zeros(total, hidden_size)
        exited = torch.zeros(total)
        if final is not None and self.num_active:
            hidden[self.rows], residual[self.rows] = final
        for rows, layer, states in zip(self.exit_rows, self.exit_layers, self.exit_states):
            hidden[rows] = states.to(hidden.dtype)
            exited[rows] = float(layer)
        return {"hidden_states": hidden, "residual": residual, "depth_exit": exited}

    def cached_logits(self):
        """(request indices, logits) of exited tokens whose exit logits were computed, or None."""
        pairs = [(r, lg) for r, lg in zip(self.exit_reqs, self.exit_logits) if lg is not None]
        if not pairs:
            return None
        return torch.cat([r for r, _ in pairs]), torch.cat([lg for _, lg in pairs])
