"""The depth-aware scheduler: vLLM's scheduler, carrying per-request depth statistics back.

Installed for ``--model-impl depth`` when no other scheduler class is asked
for (``vllm_compat._patch_engine_args``).  Each step the worker reports the
exit layer of every decode token (``ModelRunnerOutput.depth_exits``); this
scheduler sums them per request and, when the request finishes, returns
``{"depth": {"mean_exit_layer": ..., "decode_tokens": ...}}`` in the output's
``kv_transfer_params`` (vLLM's one free-form per-request field that reaches
``RequestOutput`` and the OpenAI responses).

Batching itself is vLLM's: the worker compacts exited tokens by index, so the
order of requests in the batch does not change the work on the CPU backend (no
reordering variant was built to measure), and per-request depth settings are
applied in the model.
"""

from __future__ import annotations

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler


class _DepthStats:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._depth: dict[str, list[int]] = {}  # req_id -> [sum of layers, decode tokens]

    def update_from_output(self, scheduler_output, model_runner_output):
        for req_id, layer in (getattr(model_runner_output, "depth_exits", None) or {}).items():
            acc = self._depth.setdefault(req_id, [0, 0])
            acc[0] += layer
            acc[1] += 1
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        for engine_outputs in outputs.values():
            for out in engine_outputs.outputs:
                if out.finish_reason is None:
                    continue
                acc = self._depth.pop(out.request_id, None)
                if acc is None:
                    continue
                stats = {"mean_exit_layer": round(acc[0] / acc[1], 3), "decode_tokens": acc[1]}
                out.kv_transfer_params = {**(out.kv_transfer_params or {}), "depth": stats}
        return outputs

    def finish_requests(self, request_ids, finished_status):
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids or [])
        for req_id in ids:
            self._depth.pop(req_id, None)
        return super().finish_requests(request_ids, finished_status)


class DepthScheduler(_DepthStats, Scheduler):
    pass


class DepthAsyncScheduler(_DepthStats, AsyncScheduler):
    pass
