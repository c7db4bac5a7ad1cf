"""The depth-aware scheduler: vLLM's scheduler, carrying per-request depth statistics back.

Installed for ``--model-impl depth`` when no other scheduler class is asked
for (``patches.engine_args``).  Each step the worker reports the
exit layer of every decode token (``ModelRunnerOutput.depth_exits``); this
scheduler sums them per request and, when the request finishes, returns
``{"depth": {"mean_exit_layer": ..., "decode_tokens": ...}}`` in the output's
``kv_transfer_params`` (vLLM's one free-form per-request field that reaches
``RequestOutput`` and the OpenAI responses).

With prefix caching on, the blocks a request that may exit generates are cached under a key of its
own (``add_request``): their K/V may be filled by propagation, so no other request may reuse them.
Its prompt's blocks, computed at full depth, are shared as usual.

With ``kv_fill: "recompute"`` it also schedules a token that exited early
once more, with the next token of its request, so the layers it skipped run
for real (``_rerun_exited``).

Batching itself is vLLM's: the worker compacts exited tokens by index, so the
order of requests in the batch does not change the work on the CPU backend (no
reordering variant was built to measure), and per-request depth settings are
applied in the model.
"""

from __future__ import annotations

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from vllm_depth.compat.requests import keep_generated_blocks_private, recompute_last_token
from vllm_depth.config import depth_config_of
from vllm_depth.early_exit.step import exit_plan
from vllm_depth.request_args import parse_request_args

_NONE = object()  # the step's output brought no drafts


class _DepthStats:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hf = self.vllm_config.model_config.hf_config
        depth = depth_config_of(hf)
        self._full = len(depth.schedule(hf.num_hidden_layers))
        # kv_fill 'recompute': an exited token is scheduled again with the next one
        self._recompute = depth.recomputes()
        # the exit settings a request's own are checked against (None: no token exits on this engine)
        exits = depth.exit_layers is not None and self.vllm_config.speculative_config is None
        self._exit_settings = dict(thresholds=depth.thresholds(), min_layer=depth.min_layer,
                                   exit_layers=depth.exit_layers) if exits else None
        self._depth: dict[str, list[int]] = {}  # req_id -> [sum of layers, decode tokens, tokens re-run]
        # the self-draft's drafts, when they came back with the step's output (``take_depth_drafts``)
        self._drafts = _NONE

    def add_request(self, request) -> None:
        if self._may_exit(request):
            keep_generated_blocks_private(request)
        super().add_request(request)

    def _may_exit(self, request) -> bool:
        """Whether a token of ``request`` may leave early: then the K/V of what it generates may be
        filled by propagation (or wait a step for ``recompute``), and its blocks past the prompt are
        kept out of other requests' reach in the prefix cache (``keep_generated_blocks_private``)."""
        if self._exit_settings is None:
            return False
        params = request.sampling_params
        try:
            depth = parse_request_args(params.extra_args if params is not None else None)
        except ValueError:  # refused by the front end; counted as exiting all the same
            return True
        return exit_plan(depth, **self._exit_settings) is not None

    def update_from_output(self, scheduler_output, model_runner_output):
        exits = getattr(model_runner_output, "depth_exits", None) or {}
        self._drafts = getattr(model_runner_output, "depth_drafts", _NONE)
        for req_id, layer in exits.items():
            acc = self._depth.setdefault(req_id, [0, 0, 0])
            acc[0] += layer
            acc[1] += 1
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        if self._recompute:
            self._rerun_exited(exits)
        for engine_outputs in outputs.values():
            for out in engine_outputs.outputs:
                if out.finish_reason is None:
                    continue
                acc = self._depth.pop(out.request_id, None)
                if acc is None:
                    continue
                stats = {"mean_exit_layer": round(acc[0] / acc[1], 3), "decode_tokens": acc[1]}
                if self._recompute:
                    stats["recomputed_tokens"] = acc[2]
                out.kv_transfer_params = {**(out.kv_transfer_params or {}), "depth": stats}
        return outputs

    def _rerun_exited(self, exits: dict[str, int]) -> None:
        """kv_fill 'recompute': a running request whose last token exited early counts that token as
        not computed (``compat.requests.recompute_last_token``), so the next step schedules it again,
        before the new token, at full depth: its K/V is written again at every layer (exact where
        propagation had filled it).  The depth engine runs without async scheduling here
        (``patches.engine_args``)."""
        for req_id, layer in exits.items():
            request = self.requests.get(req_id)
            if layer >= self._full or request is None or request.is_finished():
                continue
            if recompute_last_token(request):
                self._depth[req_id][2] += 1

    def take_depth_drafts(self):
        """``(True, drafts)`` when the last step's output brought the self-draft's drafts (a
        ``DraftTokenIds`` or None), for the engine core (``patches.engine_core``); else ``(False, None)``."""
        drafts, self._drafts = self._drafts, _NONE
        return (False, None) if drafts is _NONE else (True, drafts)

    def finish_requests(self, request_ids, finished_status):
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids or [])
        for req_id in ids:
            self._depth.pop(req_id, None)
        return super().finish_requests(request_ids, finished_status)


class DepthScheduler(_DepthStats, Scheduler):
    pass


class DepthAsyncScheduler(_DepthStats, AsyncScheduler):
    pass
