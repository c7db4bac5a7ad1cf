"""vLLM 0.32 ``GPUModelRunner`` (the CPU runner subclasses it): the depth model's step, and the
self-draft's hooks.  Each wrapper acts only when the runner's model or drafter has the capability
it serves; otherwise it calls vLLM's method unchanged.

- ``_model_forward``: before the forward, a model with an exit controller (``exits``: early exit)
  is handed the step (``early_exit.step.DepthStep``): its requests in token-layout order with their
  per-request depth controls, and each layer's attention group, whose builder narrows its metadata.
- ``sample_tokens``: the controller's exits of the step end it; the step output
  (``ModelRunnerOutput``, a plain dataclass pickled to the engine core) carries them as
  ``depth_exits`` ({request id: layers run} of the step's decode tokens, for the depth scheduler)
  and, for a drafter with ``drafts_in_step_output``, ``depth_drafts``.
  Without async scheduling, vLLM's engine core asks the worker for the drafts in a second RPC after
  every step (``EngineCore.post_step`` -> ``take_draft_token_ids``): one more round trip through the
  shared-memory queues per step, about 1.5% of a batch-1 step of SmolLM2 on a 2-core CPU (py-spy).
  ``take_draft_token_ids`` only reads what ``sample_tokens`` just stored, so taking it here gives
  the same value; the engine core's half is ``patches.engine_core``.
- ``initialize_kv_cache``: once the KV cache and the attention metadata builders exist, a drafter
  with ``bind_runner`` is given the runner (vLLM hands ``custom_class`` proposers only the target
  model).
- ``_prepare_inputs``: with a speculative config, every step builds ``SpecDecodeMetadata`` and
  samples through the rejection sampler, also a step that verifies no draft.  For a drafter with
  ``plain_step`` (one that backs off, drafting in few steps), a step whose scheduler output carries
  no draft tokens is prepared as a plain decode step (no metadata, the plain sampler: about 0.35 ms
  a step on a 2-core CPU).
- ``propose_draft_token_ids``: vLLM hands ``custom_class`` proposers the sampled tokens only; a
  drafter with ``take_verifier_states`` is also given the step's ``sample_hidden_states`` (the
  model's final, normed states at the sampled rows) and ``spec_decode_metadata`` (None: one row per
  request), as vLLM's Medusa proposer reads them, and the final states of all the step's rows
  (``hidden_states``) with the step's ``common_attn_metadata`` (their requests and positions), as
  vLLM's EAGLE proposer reads them.
"""

from __future__ import annotations

import inspect

from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, DraftTokenIds
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_depth.compat.attention import (
    attention_groups_by_layer,
    current_query_start_loc,
)
from vllm_depth.compat.runner import step_rows
from vllm_depth.early_exit.step import DepthStep, StepRequest
from vllm_depth.patches.base import patch
from vllm_depth.request_args import parse_request_args


def depth_step(runner) -> DepthStep:
    """The step the runner is about to run, as the depth model reads it."""
    groups = attention_groups_by_layer(runner.attn_groups)
    qsl = current_query_start_loc(groups)
    requests = [StepRequest(req_id, parse_request_args(extra), decode) for req_id, extra, decode in step_rows(runner, qsl)]
    return DepthStep(requests, groups, qsl)


def _forward(original):
    def method(self, *args, **kwargs):
        exits = getattr(self.get_model(), "exits", None)
        if exits is not None:
            exits.begin(depth_step(self))
        return original(self, *args, **kwargs)

    return method


def _sample_tokens(original):
    def method(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        exits = getattr(self.get_model(), "exits", None)
        step_exits = exits.finish() if exits is not None else None
        if out is None or out is EMPTY_MODEL_RUNNER_OUTPUT or not hasattr(out, "req_id_to_index"):
            return out
        if step_exits:
            out.depth_exits = step_exits
        if getattr(getattr(self, "drafter", None), "drafts_in_step_output", False) and not self.use_async_scheduling:
            drafts = self.take_draft_token_ids()
            out.depth_drafts = None if drafts is None else DraftTokenIds(list(drafts.req_ids), drafts.draft_token_ids)
        return out

    return method


def _initialize_kv_cache(original):
    def method(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        bind = getattr(getattr(self, "drafter", None), "bind_runner", None)
        if bind is not None:
            bind(self)
        return out

    return method


def _prepare_inputs(original):
    def method(self, scheduler_output, *args, **kwargs):
        plain_step = getattr(getattr(self, "drafter", None), "plain_step", None)
        if scheduler_output.scheduled_spec_decode_tokens or plain_step is None:
            return original(self, scheduler_output, *args, **kwargs)
        plain_step()
        spec, self.speculative_config = self.speculative_config, None
        try:
            return original(self, scheduler_output, *args, **kwargs)
        finally:
            self.speculative_config = spec

    return method


def _propose_draft_token_ids(original):
    signature = inspect.signature(original)

    def method(self, *args, **kwargs):
        take = getattr(getattr(self, "drafter", None), "take_verifier_states", None)
        if take is not None:
            bound = signature.bind(self, *args, **kwargs).arguments
            take(bound["sample_hidden_states"], bound["spec_decode_metadata"], bound["hidden_states"],
                 bound["common_attn_metadata"])
        return original(self, *args, **kwargs)

    return method


def install() -> None:
    patch(GPUModelRunner, "_model_forward", _forward)
    patch(GPUModelRunner, "sample_tokens", _sample_tokens)
    patch(GPUModelRunner, "initialize_kv_cache", _initialize_kv_cache)
    patch(GPUModelRunner, "_prepare_inputs", _prepare_inputs)
    patch(GPUModelRunner, "propose_draft_token_ids", _propose_draft_token_ids)
