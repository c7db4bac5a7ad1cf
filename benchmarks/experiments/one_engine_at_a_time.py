"""Experiment: the self-draft against stock vLLM with one engine alive at a time, each in a fresh
process, in alternating runs (the bench keeps both engines alive and alternates rounds between them).

    python benchmarks/experiments/one_engine_at_a_time.py [--runs 2] [--reps 3] [--in-process]

Each run starts every variant in turn in its own process (``self_draft_heads`` needs the train-exits
checkpoint at ``out/smollm2-exits``, ``self_draft_prev`` the draft heads at ``out/smollm2-draft``): SmolLM2-135M, bf16, batch 1, 4 code prompts x
128 new tokens (``ignore_eos``), one warm-up pass, then ``--reps`` timed passes.  ``--in-process`` sets
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (the engine core and the model run in the caller's process, as a
profiler sees them).  Prints each variant's mean seconds per pass and its ratio of tokens/s to stock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HEADS_CHECKPOINT = "out/smollm2-exits"
DRAFT_CHECKPOINT = "out/smollm2-draft"  # benchmarks/draft_heads.sh: heads that read the previous final state


def variants() -> dict[str, dict]:
    """Each variant's ``LLM()`` arguments over the bench's defaults; the self-draft's are what
    ``vllm-depth bench --self-spec '{"draft_layers": 24, "num_speculative_tokens": 3}'`` runs."""
    from vllm_depth.spec_decode.engine_args import self_spec_engine_args

    depth, spec = self_spec_engine_args(None, {"draft_layers": 24, "num_speculative_tokens": 3})
    heads, heads_spec = self_spec_engine_args(None, {"draft_layers": 12, "num_speculative_tokens": 1})
    prev, prev_spec = self_spec_engine_args(None, {"draft_layers": 0, "num_speculative_tokens": 1})
    return {
        "stock": {"async_scheduling": False},
        "stock_async": {},
        "depth_identity": {"model_impl": "depth", "async_scheduling": False},
        "self_draft": {"model_impl": "depth", "hf_overrides": {"depth": depth}, "speculative_config": spec,
                       "async_scheduling": False},
        # tune-draft's pick on the train-exits checkpoint (benchmarks/exit_heads.sh): first 12 + exit head, k=1
        "self_draft_heads": {"model": HEADS_CHECKPOINT, "model_impl": "depth", "hf_overrides": {"depth": heads},
                             "speculative_config": heads_spec, "async_scheduling": False},
        # the draft head over the embedding that reads the previous token's final state, k=1
        "self_draft_prev": {"model": DRAFT_CHECKPOINT, "model_impl": "depth", "hf_overrides": {"depth": prev},
                            "speculative_config": prev_spec, "async_scheduling": False},
    }


def child(name: str, reps: int, prompts_file: str) -> None:
    from vllm import LLM, SamplingParams

    from vllm_depth.tools.bench import DEFAULT_ENGINE_ARGS, load_prompts
    from vllm_depth.tools.checkpoints import resolve_model

    prompts = [p.text for p in load_prompts(prompts_file)[:4]]
    args = dict(variants()[name])
    model = args.pop("model", None) or resolve_model("smollm2-135m")
    if model in (HEADS_CHECKPOINT, DRAFT_CHECKPOINT):  # its heads, not its calibrated early exit
        from vllm_depth.tools.checkpoints import checkpoint_config

        heads = checkpoint_config(model)["depth"]["exit_heads"]
        args["hf_overrides"] = {"depth": {"exit_heads": heads, **args["hf_overrides"]["depth"]}}
    llm = LLM(model, **{**DEFAULT_ENGINE_ARGS, **args})
    sp = SamplingParams(max_tokens=128, temperature=0.0, ignore_eos=True)
    for p in prompts[:2]:
        llm.generate([p], sp, use_tqdm=False)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for p in prompts:
            llm.generate([p], sp, use_tqdm=False)
        times.append(time.perf_counter() - t)
    print("RESULT " + json.dumps({"name": name, "seconds": times}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--in-process", action="store_true")
    p.add_argument("--variants", default="stock,self_draft")
    p.add_argument("--prompts", default="benchmarks/prompts/code.jsonl")
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        return child(args.child, args.reps, args.prompts)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    if args.in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(variants()))
    if unknown:
        p.error(f"--variants: unknown {unknown}; allowed: {sorted(variants())}")
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for run in range(args.runs):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--reps", str(args.reps),
                                  "--prompts", args.prompts], env=env, capture_output=True, text=True, check=True)
            line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
            seconds[name] += json.loads(line[len("RESULT "):])["seconds"]
            print(f"run {run + 1}: {name:15s} " + " ".join(f"{s:.2f}" for s in seconds[name][-args.reps:]), flush=True)
    base = sum(seconds[names[0]]) / len(seconds[names[0]])
    for name in names:
        mean = sum(seconds[name]) / len(seconds[name])
        print(f"{name:15s} {mean:7.3f} s per pass  {base / mean:.3f}x {names[0]}'s tokens/s")


if __name__ == "__main__":
    main()
