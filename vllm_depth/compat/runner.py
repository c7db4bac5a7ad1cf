"""What the model runner knows of a step's requests (vLLM 0.32 ``GPUModelRunner`` / ``InputBatch``)."""

from __future__ import annotations


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
