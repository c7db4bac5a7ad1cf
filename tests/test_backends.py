"""Early exit and the self-draft on a second attention backend: vLLM's FlexAttention, on this CPU.

The plugin names no backend: a compacted stretch's attention metadata comes from each layer's
attention group's own builder, given the step's ``CommonAttentionMetadata`` for the kept rows.  Here
the same depth engines run on CPU_ATTN (what the CPU platform picks) and on FLEX_ATTENTION (picked
through a replaced platform choice, ``tests/backend_engine.py``), and must generate the same tokens
(fp32, greedy) with the same exit layers and the same accepted drafts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("backend_engine.py")
BACKENDS = ("CPU_ATTN", "FLEX_ATTENTION")
# (exit layer forced with threshold 0, its full depth, the self-draft's prefix and length)
# (tiny only: the plugin's code names no backend, whatever the weights; SmolLM2's 30 layers would
# add four engines and two minutes of CI for the same code path)
CASES = {"tiny": (3, 6, {"draft_layers": 4}, 2)}


def run_engine(model: str, mode: str, backend: str, depth: dict, k: int = 2) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the engine as users run it
    r = subprocess.run([sys.executable, str(SCRIPT), model, mode, backend, json.dumps(depth), str(k)],
                       capture_output=True, text=True, timeout=600, env=env)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"{backend} {mode} engine failed:\n{(r.stdout + r.stderr)[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module", autouse=True)
def _own_engines(engines):
    """The engines here start in subprocesses: the pool's unpinned ones are shut down first (and the
    module's tests are slow)."""
    engines.trim()


@pytest.fixture(scope="module", params=list(CASES))
def runs(request):
    path = request.getfixturevalue(f"{request.param}_dir")
    layer, full, draft, k = CASES[request.param]
    out = {}
    for backend in BACKENDS:
        out[backend] = {
            "exit": run_engine(path, "exit", backend, {"exit_layers": [layer], "exit_threshold": 0.0}),
            "draft": run_engine(path, "draft", backend, {**draft, "draft_backoff": 0}, k),
        }
    return layer, full, out


def test_each_engine_ran_on_its_backend(runs):
    _, _, out = runs
    for backend in BACKENDS:
        assert out[backend]["exit"]["backend"] == backend
        assert out[backend]["draft"]["backend"] == backend


@pytest.mark.parametrize("case", ["identity", "forced", "mixed"])
def test_flex_generates_what_cpu_attention_generates(runs, case):
    _, _, out = runs
    cpu, flex = out["CPU_ATTN"]["exit"][case], out["FLEX_ATTENTION"]["exit"][case]
    assert flex["tokens"] == cpu["tokens"]
    assert flex["layers"] == cpu["layers"]


def test_tokens_exit_where_asked_on_flex(runs):
    layer, full, out = runs
    flex = out["FLEX_ATTENTION"]["exit"]
    for case, want in (("identity", [full] * 4), ("forced", [layer] * 4), ("mixed", [layer, full] * 2)):
        got = [sorted(set(layers)) for layers in flex[case]["layers"]]
        assert got == [[w] for w in want], (case, got)
    # in the mixed batch each request generates what it generates alone, at its depth
    mixed = flex["mixed"]["tokens"]
    assert mixed[0::2] == flex["forced"]["tokens"][0::2]
    assert mixed[1::2] == flex["identity"]["tokens"][1::2]
    assert flex["forced"]["tokens"] != flex["identity"]["tokens"]  # the exits changed what was generated


def test_self_draft_on_flex_is_lossless_and_drafts_alike(runs):
    _, _, out = runs
    cpu, flex = out["CPU_ATTN"]["draft"], out["FLEX_ATTENTION"]["draft"]
    assert flex["tokens"] == cpu["tokens"] == out["FLEX_ATTENTION"]["exit"]["identity"]["tokens"]
    assert flex["counters"]["accepted"] > 0
    for key in ("proposals", "drafted", "accepted", "accepted_of_full"):
        assert flex["counters"][key] == cpu["counters"][key], key
