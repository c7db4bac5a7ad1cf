"""vLLM 0.32 ``GPUModelRunner._sample`` and ``_bookkeeping_sync`` on the CPU: seeded requests whose
prefill is split into chunks.

A request whose prompt is only partly computed in a step still gets a token sampled, which is then
discarded; for a request with its own seed vLLM takes back the draws that token cost by rewinding
its generator (``gen.set_offset(gen.get_offset() - 4)``).  A CPU ``torch.Generator`` has no offset
("CPU Generator does not use offset"): the worker fails and the engine dies, for any engine of the
CPU build that serves a seeded request with chunked prefill.  In a depth engine the generator of
such a request is saved before sampling (``get_state``) and put back after it instead, so that the
seeded request draws what it would draw with its prompt in one step; other engines keep vLLM's
methods.
"""

from __future__ import annotations

from vllm.platforms import current_platform
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_depth.compat.runner import discarded_generators
from vllm_depth.patches.base import patch

_SAVED = "_depth_discarded_generator_states"


def _serves_depth(runner) -> bool:
    return hasattr(runner.get_model(), "depth_config")


def _sample(original):
    def method(self, *args, **kwargs):
        if _serves_depth(self):
            self.__dict__[_SAVED] = {i: gen.get_state() for i, gen in discarded_generators(self).items()}
        return original(self, *args, **kwargs)

    return method


def _bookkeeping_sync(original):
    def method(self, *args, **kwargs):
        saved = self.__dict__.pop(_SAVED, None)
        if not saved:
            return original(self, *args, **kwargs)
        generators = self.input_batch.generators
        held = {i: generators.pop(i) for i in saved if i in generators}  # vLLM's rewind skips them
        try:
            return original(self, *args, **kwargs)
        finally:
            for i, gen in held.items():
                gen.set_state(saved[i])
                generators[i] = gen

    return method


def install() -> None:
    if not current_platform.is_cpu():
        return
    patch(GPUModelRunner, "_sample", _sample)
    patch(GPUModelRunner, "_bookkeeping_sync", _bookkeeping_sync)
