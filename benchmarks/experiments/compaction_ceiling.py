"""Experiment: how much token-level compaction can buy at batch 16 on this machine (half the requests exit).

    python benchmarks/experiments/compaction_ceiling.py [--passes 3]

One depth engine (SmolLM2-135M, bf16, ``exit_layers: [15]``), in the caller's process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), the 16 prompts of ``batch16_half_exit.jsonl`` x 64 new tokens,
run two ways in alternating passes through per-request ``extra_args``:

- ``full``: every request ``depth_exit: false``: no token can exit, so each step runs the decoder's
  single full-depth graph, as stock vLLM does;
- ``half``: the prompts file's own settings: 8 requests exit at layer 15, 8 run the full depth.

For ``half`` it times the parts of the forward: the first segment (15 positions, all 16 rows), the
second (the last 15 positions, 8 rows), the exit check and the KV fill.  The ceiling is the ``full``
step with the later half's saving (first segment minus second: the same 15 layers on 16 rows against 8)
and nothing else changed: what compaction would give with a free check and a free fill.
"""

from __future__ import annotations

import argparse
import collections
import os
import time


def _timer(obj, name: str, totals: dict, key: str) -> None:
    """Wrap ``obj.name`` to sum its wall time: on a class, for every instance (a method); else on that
    instance alone (also a torch module, whose ``__setattr__`` would refuse a function)."""
    original = getattr(obj, name)

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - t

    if isinstance(obj, type):
        setattr(obj, name, timed)
    else:
        object.__setattr__(obj, name, timed)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--prompts", default="benchmarks/prompts/batch16_half_exit.jsonl")
    args = p.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from vllm import LLM, SamplingParams

    from vllm_depth.early_exit.step import ExitRun
    from vllm_depth.tools.bench import DEFAULT_ENGINE_ARGS, load_prompts
    from vllm_depth.tools.checkpoints import resolve_model

    prompts = load_prompts(args.prompts)
    texts = [q.text for q in prompts]
    llm = LLM(resolve_model("smollm2-135m"), model_impl="depth", hf_overrides={"depth": {"exit_layers": [15]}},
              **{**DEFAULT_ENGINE_ARGS, "async_scheduling": False})

    def params(extra):
        return [SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True, extra_args=e) for e in extra]

    ways = {"full": params([{"depth_exit": False}] * len(prompts)), "half": params([q.extra_args for q in prompts])}
    for sp in ways.values():
        llm.generate(texts, sp, use_tqdm=False)  # warm-up

    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    decoder = runner.model.model
    totals: dict[str, float] = collections.defaultdict(float)
    _timer(runner, "execute_model", totals, "step")
    _timer(runner.model, "forward", totals, "forward")
    _timer(decoder, "first_segment", totals, "first segment")
    _timer(decoder, "_fill", totals, "kv fill")
    _timer(ExitRun, "check", totals, "check")
    _timer(type(decoder.segments[1]), "__call__", totals, "second segment")  # its own compiled class

    per_way = {w: collections.defaultdict(float) for w in ways}
    steps = {w: 0 for w in ways}
    for _ in range(args.passes):
        for way, sp in ways.items():
            totals.clear()
            llm.generate(texts, sp, use_tqdm=False)
            for k, v in totals.items():
                per_way[way][k] += v
            steps[way] += 64
    ms = {w: {k: 1e3 * v / steps[w] for k, v in t.items()} for w, t in per_way.items()}
    for way in ways:
        print(f"{way}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(ms[way].items())) + " per step")
    full, half = ms["full"]["step"], ms["half"]["step"]
    saving = ms["half"]["first segment"] - ms["half"]["second segment"]
    print(f"measured: half {full / half:.3f}x full-depth steps")
    print(f"ceiling (free check and fill): {full / (full - saving):.3f}x "
          f"(the last 15 layers on 8 rows save {saving:.2f} ms of a {full:.2f} ms step)")


if __name__ == "__main__":
    main()
