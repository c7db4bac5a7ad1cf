"""The `vllm-depth` command: model aliases, the side-by-side bench, and its argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli


def test_model_alias_prints_a_cached_checkpoint_and_is_idempotent(tiny_dir):
    a = run_cli("model", "tiny")
    b = run_cli("model", "tiny")
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    assert a.stdout.strip() == b.stdout.strip() == tiny_dir
    assert (Path(tiny_dir) / "config.json").exists() and (Path(tiny_dir) / "model.safetensors").exists()


def test_unknown_model_names_the_aliases():
    r = run_cli("model", "no-such-model")
    assert r.returncode != 0
    assert "smollm2-135m, gemma3-270m, tiny" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depth", '{"layer_schedule": [0, 6]}'], "depth.layer_schedule: entry 1 is 6, out of range"),
        (["--depth", "[1]"], "--depth: expected a JSON object"),
        (["--max-tokens", "0"], "--max-tokens: must be >= 1"),
        (["--prompts", "/nonexistent.jsonl"], "--prompts: no such file"),
        (["--arm", "ngram", "--depth", "{}"], "--depth cannot be combined with --arm"),
        (["--arm", "ngram", "--engine-args", '{"model_impl": "depth"}'], "--engine-args ['model_impl'] would reach stock"),
        (["--arm", "a=ngram", "--arm", "a=suffix"], "--arm: names must differ"),
        (["--arm", 'e={"depth": {"exit_layers": [7]}}'], "--arm e: depth.exit_layers: entry 0 is 7"),
    ],
)
def test_bench_refuses_bad_arguments_before_starting_engines(tmp_path, tiny_dir, args, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    base = ["bench", "--model", "tiny", "--prompts", str(prompts)]
    r = run_cli(*base, *args, timeout=120)
    assert r.returncode != 0
    assert message in r.stderr


@pytest.mark.parametrize("arm", [[], ["--arm", "ngram"]])
def test_bench_refuses_chat_prompts_for_a_model_without_a_chat_template(tmp_path, gemma3_dir, arm):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    r = run_cli("bench", "--model", gemma3_dir, "--prompts", str(prompts), *arm, timeout=120)
    assert r.returncode != 0
    assert "has chat messages and the tokenizer of" in r.stderr and 'raw prompts ({"prompt": ...})' in r.stderr


@pytest.mark.slow
def test_bench_runs_side_by_side_and_writes_json(own_engines, tmp_path, tiny_dir):
    prompts = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "def fibonacci(n):"},
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {"prompt": "The quick brown fox", "extra_args": {"note": "passed to the depth run"}},
    ]
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "r.json"
    plot = tmp_path / "r.png"
    r = run_cli("bench", "--model", "tiny", "--prompts", str(prompts), "--max-tokens", "16",
            "--depth", "{}", "--rounds", "2", "--json", str(out), "--plot", str(plot),
            # eager: what is checked is the command (compiled engines are the identity tests')
            "--engine-args", '{"enforce_eager": true}')
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n"] == 3
    for side in ("baseline", "depth"):
        assert res[side]["tokens_per_s"] > 0 and len(res[side]["outputs"]) == 3
    assert set(res["depth"]) >= {"mean_exit_layer", "acceptance_rate"}
    # the identity depth config does nothing: same outputs as stock
    assert res["identical"] == 3 and res["token_agreement"] == 1.0
    assert res["speedup"] > 0 and res["peak_rss_mb"]["baseline"] > 0
    # each round's own ratio (rounds run in ABBA order)
    assert len(res["round_speedups"]) == 2 and min(res["round_speedups"]) > 0
    assert "per round" in r.stdout
    assert res["param_bytes"]["baseline"] == res["param_bytes"]["depth"] > 0
    assert "speedup" in r.stdout and plot.stat().st_size > 0


@pytest.mark.slow
def test_bench_times_every_arm_against_stock_in_one_run(own_engines, tmp_path, tiny_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def fibonacci(n):"}\n{"prompt": "a b c a b c a b"}\n')
    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    r = run_cli("bench", "--model", "tiny", "--prompts", str(prompts), "--max-tokens", "12", "--rounds", "2",
                "--engine-args", '{"enforce_eager": true, "dtype": "float32"}',
                "--arm", "ngram",
                "--arm", 'exit2={"depth": {"exit_layers": [2], "exit_threshold": 0.0}}',
                "--json", str(out), "--plot", str(plot))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n"] == 2 and list(res["arms"]) == ["ngram", "exit2"]
    # per group of engines alive together: stock opens and follows each of its arms' 2 rounds
    assert len(res["stock"]["round_tokens_per_s"]) == sum(1 + 2 * len(g) for g in res["groups"])
    for name, arm in res["arms"].items():
        assert set(arm) >= {"speedup", "round_speedups", "identical", "n", "token_agreement", "acceptance_rate"}
        assert len(arm["round_speedups"]) == 2 and arm["speedup"] > 0 and arm["n"] == 2, name
    # a lossless arm at fp32: identical to stock
    assert res["arms"]["ngram"]["identical"] == 2 and res["arms"]["ngram"]["token_agreement"] == 1.0
    assert res["arms"]["exit2"]["acceptance_rate"] is None  # no speculation in that arm
    # every decode token of exit2 leaves at layer 2 of 6
    assert res["arms"]["exit2"]["mean_exit_layer"] < 3
    assert "ngram" in r.stdout and "exit2" in r.stdout and plot.stat().st_size > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--model", "tiny", "--prompts", "benchmarks/prompts/code.jsonl", "--depth",
          '{"exit_layers": [9]}'], "depth.exit_layers"),
        (["train-exits", "tiny", "--exit-layers", "2,6"], "--exit-layers: [6] out of range"),
        (["calibrate", "tiny", "--prompts", "benchmarks/prompts/code.jsonl", "--delta", "1"], "--delta: 1.0"),
        (["compress", "tiny", "--prune", "9", "--out", "/nonexistent/out"], "--prune: 9 is out of range"),
    ],
)
def test_bad_arguments_are_refused_before_torch_is_imported(tiny_dir, argv, message):
    """The commands check their arguments against config.json first: a bad one costs no torch,
    transformers or vLLM import (and no work)."""
    import subprocess
    import sys

    code = ("import sys\nfrom vllm_depth.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    print('REFUSED', e)\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "REFUSED" in r.stdout, r.stdout + r.stderr[-1500:]
    assert message in r.stdout, r.stdout
    assert "HEAVY []" in r.stdout, r.stdout
