"""What the model runner knows of a step's requests (vLLM 0.32 ``GPUModelRunner`` / ``InputBatch``)."""

from __future__ import annotations

import functools
import importlib.util

# vLLM 0.32 and 0.33 run the V1 model runner (the CPU runner is its subclass), whose methods
# patches.worker.model_runner wraps; vLLM 0.34 runs only the V2 runner (vllm.v1.worker.gpu.model_runner)
# and has no custom_class speculative proposers
V1_RUNNER = "vllm.v1.worker.gpu_model_runner"


@functools.cache
def has_v1_runner() -> bool:
    """Whether the installed vLLM has the V1 model runner, through which a depth model is handed its
    steps (token-level early exit) and the self-draft its hooks: vLLM 0.32 and 0.33, not 0.34."""
    return importlib.util.find_spec(V1_RUNNER) is not None


def step_rows(runner, qsl) -> list[tuple[str, dict | None, bool]]:
    """``(request id, its SamplingParams.extra_args, decode)`` for the step's requests in token-layout
    order; ``qsl``: the step's query start locations (None in profiling runs).

    decode: after the prompt, and the request's last known token is in the step (it samples the next
    one); with kv_fill 'recompute' it may follow the exited token it re-runs.
    """
    batch = runner.input_batch
    qlen = (qsl[1:] - qsl[:-1]).tolist() if qsl is not None else [0] * len(batch.req_ids)
    out = []
    for i, req_id in enumerate(batch.req_ids):
        params = runner.requests[req_id].sampling_params
        done = int(batch.num_computed_tokens_cpu[i])
        decode = done >= int(batch.num_prompt_tokens[i]) and done + qlen[i] >= int(batch.num_tokens_no_spec[i])
        out.append((req_id, params.extra_args if params is not None else None, decode))
    return out


def seeded_sampling(runner, req_id: str) -> bool:
    """Whether a request samples at temperature > 0 with a seed of its own (vLLM 0.32
    ``CachedRequestState.sampling_params``): its random draws in rejection sampling follow the draft
    tokens it is given."""
    params = runner.requests[req_id].sampling_params
    return params is not None and params.seed is not None and params.temperature > 0


def discarded_generators(runner) -> dict:
    """{batch index: its torch.Generator} of the step's seeded requests whose sampled token is
    discarded (their prompt is not complete after the step: vLLM 0.32 ``discard_request_mask``)."""
    batch = runner.input_batch
    mask = runner.discard_request_mask.np[: batch.num_reqs]
    return {int(i): batch.generators[int(i)] for i in mask.nonzero()[0] if int(i) in batch.generators}


def request_ids(runner) -> list[str]:
    """The step's request ids, in the runner's batch order (vLLM 0.32 ``InputBatch.req_ids``)."""
    return runner.input_batch.req_ids


def worker_model(worker):
    """The model a vLLM worker runs (for ``collective_rpc`` functions)."""
    return worker.model_runner.model


def worker_drafter(worker):
    """The worker's speculative proposer, or None."""
    return getattr(worker.model_runner, "drafter", None)


def forget_suffix_responses(worker) -> int:
    """Empties suffix decoding's cache of finished requests' responses (vLLM 0.32
    ``SuffixDecodingProposer.suffix_cache``, arctic-inference's ``SuffixDecodingCache``); the trees of
    running requests stay.  Returns how many responses it forgot (0 without a suffix drafter)."""
    cache = getattr(worker_drafter(worker), "suffix_cache", None)
    if cache is None:
        return 0
    done = list(cache.cached_requests)
    for req_id in done:
        cache.evict_cached_response(req_id)
    return len(done)


def kv_cache_layout(worker) -> dict:
    """The worker's paged KV cache: blocks, block size, bytes per token slot, attention layers
    (vLLM 0.32 ``KVCacheConfig``; each distinct cache tensor counted once)."""
    runner = worker.model_runner
    config = runner.kv_cache_config
    tensors = {t.data_ptr(): t for t in runner.kv_caches if hasattr(t, "data_ptr")}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    block_size = config.kv_cache_groups[0].kv_cache_spec.block_size
    return {"num_blocks": config.num_blocks, "block_size": block_size,
            "bytes_per_token": total // (config.num_blocks * block_size),
            "layers": sum(len(g.layer_names) for g in config.kv_cache_groups)}
