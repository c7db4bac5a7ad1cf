"""A second start of a depth engine loads its compiled graphs from the compile cache.

Two engines, one after the other, in fresh processes on one fresh ``VLLM_CACHE_ROOT``: the first
compiles and stores every graph (the full-depth graph and the segments between exit points), the
second loads them all (vLLM logs "Directly load AOT compilation") and compiles nothing again, and
both give the same tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys

LOADED = "Directly load AOT compilation"
FAILED = "Compiling model again due to a load failure"
SCRIPT = """
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model={model!r}, model_impl="depth", dtype="float32", gpu_memory_utilization=0.2, max_model_len=256,
              hf_overrides={{"depth": {{"exit_layers": [2, 4], "exit_criterion": "saturation", "exit_threshold": 0.7}}}})
    outs = llm.generate(["def fibonacci(n):", "The quick brown fox"],
                        SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True), use_tqdm=False)
    print("TOKENS", [list(o.outputs[0].token_ids) for o in outs])
"""


def _start(script, cache) -> tuple[str, str]:
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "VLLM_CACHE_ROOT": str(cache)})
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    return next(line for line in out.stdout.splitlines() if line.startswith("TOKENS")), log


def test_a_second_start_loads_every_depth_graph_from_the_cache(own_engines, tiny_dir, tmp_path):
    script = tmp_path / "engine.py"
    script.write_text(SCRIPT.format(model=tiny_dir))
    cold_tokens, cold = _start(script, tmp_path / "cache")
    warm_tokens, warm = _start(script, tmp_path / "cache")
    assert cold.count(LOADED) == 0
    # the full-depth graph and the three segments around exit points 2 and 4
    assert warm.count(LOADED) == 4 and warm.count(FAILED) == 0, warm[-3000:]
    assert warm_tokens == cold_tokens
