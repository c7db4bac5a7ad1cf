"""Token-level early exit of one depth model, one step at a time (``DepthForCausalLM.exits``).

The step goes one way: the model runner hands it in before the forward (``begin``) and reads its
exits out once its tokens are sampled (``finish``), which ends it.  In between the model asks for the
step's exit candidates (``plan``), records what left where (``record``: counters, trace, /metrics)
and takes the exit logits computed by the check, which are the step's logits for the exited tokens
(``take_logits``).
"""

from __future__ import annotations

import torch

from vllm_depth import metrics
from vllm_depth.early_exit.step import DepthStep, ExitCounters, ExitStep, plan_step


class ExitController:
    """The exit side of one depth model; ``counters`` are the ones its decoder counts checks and fills in."""

    def __init__(self, depth, *, full_depth: int, last_stage: bool, counters: ExitCounters):
        self.depth = depth
        self.full_depth = full_depth  # schedule positions: the exit layer of a token that did not exit
        self.last_stage = last_stage  # where every exit of the step is known
        self.counters = counters
        self.trace: dict[str, list[int]] | None = None  # request id -> exit layers, while recording
        self._step: DepthStep | None = None
        self._exits: dict[str, int] | None = None
        self._logits: tuple[torch.Tensor, torch.Tensor] | None = None

    def begin(self, step: DepthStep) -> None:
        """The runner's step, before its forward."""
        self._step, self._exits, self._logits = step, None, None

    def finish(self) -> dict[str, int] | None:
        """The step's exits, ``{request id: layers run}`` of its decode tokens, once its tokens are
        sampled (None: no decode token); the step ends."""
        exits = self._exits
        self._step, self._exits, self._logits = None, None, None
        return exits

    @property
    def groups(self) -> dict:
        """Each layer's attention group of the step in flight."""
        return self._step.groups

    def plan(self) -> ExitStep | None:
        """The step's exit candidates, or None when no token can exit (then no check runs)."""
        step, depth = self._step, self.depth
        if step is None or not step.requests or step.query_start_loc is None:
            return None
        return plan_step(step.requests, step.query_start_loc, thresholds=depth.thresholds(),
                         min_layer=depth.min_layer, exit_layers=depth.exit_layers)

    def record(self, run, checks: int = 0, fill_seconds: float = 0.0) -> None:
        """What the step's forward did (``run``: its ``ExitRun``, None when no token could exit): each
        decode token's exit layer (on the last pipeline stage, where every exit is known) to the step,
        the trace and /metrics, and the exit logits the step's sampling takes."""
        requests = self._step.requests if self._step is not None else None
        if run is not None:
            self._logits = run.cached_logits()
        if not requests or not self.last_stage:
            return
        exits, per_layer = {}, {}
        if run is not None:
            for reqs, point in zip(run.exit_reqs, run.exit_layers):
                exits.update(dict.fromkeys(reqs.tolist(), point))
                per_layer[point] = reqs.numel()
        layers = [(req.req_id, exits.get(r, self.full_depth)) for r, req in enumerate(requests) if req.decode]
        self._exits = dict(layers)
        if self.trace is not None:
            for req_id, point in layers:
                self.trace.setdefault(req_id, []).append(point)
        if metrics.enabled():
            metrics.record_step([point for _, point in layers], self.full_depth, per_layer, checks, fill_seconds)

    def take_logits(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(request indices, logits) of the step's exited tokens whose exit logits the check computed,
        once: the step's sampling (one row per request: early exit runs without speculative decoding)."""
        logits, self._logits = self._logits, None
        return logits

    def take_counters(self, reset: bool = False) -> dict:
        """The cumulative exit counters (``reset``: start them again); read by the bench and tests."""
        out = self.counters.as_dict()
        if reset:
            self.counters.reset()
        return out

    def trace_exits(self, start: bool) -> dict[str, list[int]] | None:
        """The exit layers recorded per engine request id since the last call; ``start``: record
        from now on (else stop)."""
        out, self.trace = self.trace, ({} if start else None)
        return out
