"""Experiment: where does the self-draft's loss at batch 1 come from? Several engines, each started
twice, timed in alternating rounds in one run (the answer is in the README, "Self-speculative decoding").

    python benchmarks/experiments/engine_instances.py [VARIANTS_JSON] [--rounds 2] [--max-tokens 128]

VARIANTS_JSON maps a name to extra ``LLM()`` arguments over the bench's defaults (SmolLM2-135M, bf16);
the default compares stock vLLM with and without async scheduling, the identity depth engine and the
adaptive self-draft (first 24 layers, k=3), each as two separately started engines, so that the spread
between two instances of one configuration is seen next to the differences between configurations.
Prints tokens/s, the ratio to the first engine and the prompts identical to it.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from vllm_depth.spec_decode.engine_args import self_spec_engine_args  # noqa: E402

# what vllm-depth bench --self-spec '{"draft_layers": 24, "num_speculative_tokens": 3}' runs
_DEPTH, _SPEC = self_spec_engine_args(None, {"draft_layers": 24, "num_speculative_tokens": 3})
SPEC = {"model_impl": "depth", "hf_overrides": {"depth": _DEPTH}, "speculative_config": _SPEC}
DEFAULT = {f"{name}{i}": kw for i in (1, 2) for name, kw in
           (("stock_async", {}), ("stock_sync", {"async_scheduling": False}),
            ("depth_identity", {"model_impl": "depth"}), ("self_draft", SPEC))}


def main() -> None:
    from vllm_depth.tools.bench import (
        DEFAULT_ENGINE_ARGS,
        load_prompts,
        run_round,
        start_engine,
        stop_engine,
    )
    from vllm_depth.tools.checkpoints import resolve_model

    p = argparse.ArgumentParser()
    p.add_argument("variants", nargs="?", type=json.loads, default=DEFAULT)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompts", default="benchmarks/prompts/code.jsonl")
    args = p.parse_args()
    model, prompts = resolve_model("smollm2-135m"), load_prompts(args.prompts)
    engines = [start_engine(n, model=model, **{**DEFAULT_ENGINE_ARGS, **kw}) for n, kw in args.variants.items()]
    try:
        for e in engines:
            run_round(e, prompts[:1], 8, 1, per_request=False, record=False)
        for _ in range(args.rounds):
            for e in engines:
                run_round(e, prompts, args.max_tokens, 1, per_request=False)
        base = engines[0]
        for e in engines:
            same = sum(a == b for a, b in zip(e.token_ids, base.token_ids))
            print(f"{e.name:18s} {e.tokens_per_s:7.2f} tokens/s  {e.tokens_per_s / base.tokens_per_s:.3f}x  "
                  f"identical {same}/{len(prompts)}")
    finally:
        for e in engines:
            stop_engine(e)


if __name__ == "__main__":
    main()
