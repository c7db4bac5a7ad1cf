"""Quality of a (compressed) checkpoint, measured through vLLM on held-out text.

Perplexity of each model, and teacher-forced top-1 agreement with the baseline
(the fraction of positions where both predict the same next token), from
vLLM's prompt logprobs: the serving path itself is what is measured.
"""

from __future__ import annotations

import math

from vllm_depth.tools.bench import shutdown

ENGINE_ARGS = {"dtype": "float32", "gpu_memory_utilization": 0.3, "max_model_len": 2048,
               "seed": 0, "enable_prefix_caching": False}


def _score(model_dir: str, chunks: list[list[int]], depth: bool, engine_args: dict | None):
    """Per chunk: (sum of log p(actual), list of top-1 ids), with one engine."""
    from vllm import LLM, SamplingParams, TokensPrompt

    kwargs = {**ENGINE_ARGS, **(engine_args or {})}
    if depth:
        kwargs["model_impl"] = "depth"
    llm = LLM(model=model_dir, **kwargs)
    try:
        sp = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
        outs = llm.generate([TokensPrompt(prompt_token_ids=c) for c in chunks], sp, use_tqdm=True)
        result = []
        for c, o in zip(chunks, outs):
            nll, top1 = 0.0, []
            for i in range(1, len(c)):
                entry = o.prompt_logprobs[i]
                nll -= entry[c[i]].logprob
                top1.append(next(t for t, lp in entry.items() if lp.rank == 1))
            result.append((nll, top1))
        return result
    finally:
        shutdown(llm)


def evaluate(model_dir: str, baseline_dir: str, chunks: list[list[int]], engine_args: dict | None = None) -> dict:
    base = _score(baseline_dir, chunks, depth=False, engine_args=engine_args)
    mine = _score(model_dir, chunks, depth=True, engine_args=engine_args)
    n = sum(len(c) - 1 for c in chunks)
    agree = sum(sum(a == b for a, b in zip(x[1], y[1])) for x, y in zip(base, mine))
    return {
        "tokens": n,
        "baseline": {"model": baseline_dir, "perplexity": math.exp(sum(x[0] for x in base) / n)},
        "model": {
            "model": model_dir,
            "perplexity": math.exp(sum(y[0] for y in mine) / n),
            "top1_agreement": agree / n,
        },
    }
