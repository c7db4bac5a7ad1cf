"""The depth engine against stock vLLM on this machine's accelerator: one table, non-zero on any mismatch.

    python benchmarks/gpu/check.py [--device cuda|cpu] [--models tiny,smollm2-135m] [--tokens 16]

For each model, fp32 and greedy, with vLLM's defaults otherwise (on a GPU: its attention backend,
torch.compile and CUDA graphs, under the plugin's CUDA-graph policy):

- identity: the exit engine with every request at full depth (``depth_exit`` false) equals stock;
- forced exit: every decode token exits at the exit layer (``exit_threshold`` 0.0) and agrees with
  the plain-PyTorch reference of the same algorithm (``tests/reference_exit.py``, run on the CPU);
  a first difference is allowed only where the reference is at a near-tie;
- mixed batch: half the requests forced to exit, half at full depth, in one batch: the full-depth
  rows equal stock and the exiting rows equal their run alone;
- self-draft: speculative decoding with the model's first layers as the draft equals stock, and
  accepts drafts.

``--device cpu`` is a dry run on vLLM's CPU backend (eager, to keep it short).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc with the bench's functions
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import reference_exit as rx  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402

from vllm_depth.config import PROPOSER  # noqa: E402
from vllm_depth.tools.bench import (  # noqa: E402
    draft_counters,
    shutdown,
    start_exit_trace,
    take_exit_trace,
)
from vllm_depth.tools.checkpoints import resolve_model  # noqa: E402

PROMPTS = [
    "def fibonacci(n):",
    "The capital of France is",
    "import os\nimport sys\n\n\ndef main(argv):\n    \"\"\"Parse the command line and run.\"\"\"\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):",
]
# model -> (exit layer, self-draft prefix, draft tokens)
MODELS = {"tiny": (3, 4, 2), "smollm2-135m": (15, 24, 3)}


class Checks:
    def __init__(self):
        self.rows: list[tuple[str, str, bool, str]] = []

    def add(self, model: str, check: str, ok: bool, detail: str) -> None:
        self.rows.append((model, check, ok, detail))
        print(f"{model:14} {check:12} {'ok' if ok else 'MISMATCH':8} {detail}", flush=True)

    def table(self) -> str:
        lines = ["| model | check | result | detail |", "| --- | --- | --- | --- |"]
        lines += [f"| {m} | {c} | {'ok' if ok else '**mismatch**'} | {d} |" for m, c, ok, d in self.rows]
        return "\n".join(lines)

    @property
    def passed(self) -> bool:
        return all(ok for *_, ok, _ in self.rows)


def params(n: int, extra=None) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, extra_args=extra)


def tokens(outs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outs]


def same(got: list[list[int]], want: list[list[int]]) -> tuple[bool, str]:
    equal = sum(g == w for g, w in zip(got, want))
    return equal == len(want), f"{equal}/{len(want)} identical"


def engine(path: str, engine_args: dict, **kwargs) -> LLM:
    return LLM(model=path, dtype="float32", seed=0, max_model_len=512, gpu_memory_utilization=0.3,
               enable_prefix_caching=False, **engine_args, **kwargs)


def check_model(name: str, n: int, engine_args: dict, checks: Checks) -> None:
    path = resolve_model(name)
    layer, draft, k = MODELS[name]
    llm = engine(path, engine_args)
    stock = tokens(llm.generate(PROMPTS, params(n), use_tqdm=False))
    shutdown(llm)

    llm = engine(path, engine_args, model_impl="depth",
                 hf_overrides={"depth": {"exit_layers": [layer], "exit_threshold": 0.0}})
    full = {"depth_exit": False}
    identity = tokens(llm.generate(PROMPTS, params(n, full), use_tqdm=False))
    checks.add(name, "identity", *same(identity, stock))
    start_exit_trace(llm)
    outs = llm.generate(PROMPTS, params(n), use_tqdm=False)
    trace = take_exit_trace(llm)
    forced = tokens(outs)
    checks.add(name, "forced exit", *forced_agrees(path, outs, trace, n, layer))
    mixed = tokens(llm.generate(PROMPTS, [params(n, full if i % 2 else None) for i in range(len(PROMPTS))],
                                use_tqdm=False))
    ok_full, d_full = same(mixed[1::2], stock[1::2])
    ok_exit, d_exit = same(mixed[0::2], forced[0::2])
    checks.add(name, "mixed batch", ok_full and ok_exit, f"full depth vs stock {d_full}; exits vs alone {d_exit}")
    shutdown(llm)

    llm = engine(path, engine_args, model_impl="depth",
                 hf_overrides={"depth": {"draft_layers": draft, "draft_backoff": 0}},
                 speculative_config={"model": PROPOSER, "num_speculative_tokens": k})
    drafted = tokens(llm.generate(PROMPTS, params(n), use_tqdm=False))
    counters = draft_counters(llm) or {}
    ok, detail = same(drafted, stock)
    accepted = counters.get("accepted", 0)
    checks.add(name, "self-draft", ok and accepted > 0,
               f"{detail}; {accepted} of {counters.get('drafted', 0)} draft tokens accepted")
    shutdown(llm)


def forced_agrees(path: str, outs, trace: dict, n: int, layer: int) -> tuple[bool, str]:
    """Every decode token at ``layer``, and the tokens of the plain-PyTorch reference (CPU, fp32)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    depth = len(model.model.layers)
    agree, where = 0, []
    for out in outs:
        got = list(out.outputs[0].token_ids)
        exits = [depth] + trace.get(out.request_id, [])  # the first token comes from the prompt: full depth
        if exits[1:] != [layer] * (n - 1):
            where.append(f"exit layers {sorted(set(exits[1:]))}")
            continue
        with torch.no_grad():
            want = rx.early_exit_greedy(model, list(out.prompt_token_ids), n, exit_layers=[layer], threshold=0.0)
        ok, detail = rx.agrees(want, got, exits)
        agree += ok
        if not ok:
            where.append(detail)
    return agree == len(outs), f"{agree}/{len(outs)} agree with the reference" + (f" ({where[0]})" if where else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--tokens", type=int, default=16)
    args = p.parse_args()
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; allowed: {', '.join(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; allowed on this machine: --device cpu")
    engine_args = {"enforce_eager": True} if args.device == "cpu" else {}
    t0, checks = time.perf_counter(), Checks()
    for name in models:
        check_model(name, args.tokens, engine_args, checks)
    print()
    print(checks.table())
    print(f"\n{sum(ok for *_, ok, _ in checks.rows)} passed, {sum(not ok for *_, ok, _ in checks.rows)} failed "
          f"in {time.perf_counter() - t0:.0f} s on {args.device}")
    return 0 if checks.passed else 1


if __name__ == "__main__":
    sys.exit(main())
