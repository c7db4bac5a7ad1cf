"""Exit heads (``vllm-depth train-exits``) and calibrated thresholds (``vllm-depth calibrate``).

Heads are trained on the tiny model (fixed seeds) into a copy of the checkpoint;
the engine's exits through them are checked against the independent PyTorch
reference (tests/reference_exit.py, which reads the heads from safetensors by
the documented formula); the checkpoint serves through ``vllm serve``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import reference_exit as rx
import requests
import torch
from conftest import (
    EAGER,
    PROMPTS,
    prompt_logprobs,
    run_cli,
    vllm_server,
)


def _config(path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--exit-layers", "2,6"], "--exit-layers: [6] out of range; the model has 6 layers, so layer counts 1..5"),
        (["--exit-layers", "4,2"], "--exit-layers: [4, 2] is not strictly increasing"),
        (["--exit-layers", "2", "--steps", "0"], "--steps: 0; allowed: an int >= 1"),
        (["--exit-layers", "2", "--chunks", "0"], "--chunks: 0; allowed: an int >= 1"),
        (["--exit-layers", "2", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
        (["--exit-layers", "2", "--data", "EMPTY"], "--data: the files hold no text"),
        (["--exit-layers", "2", "--out", "NONEMPTY"], "exists and is not an empty directory"),
    ],
)
def test_train_exits_refuses_bad_arguments_before_any_work(tmp_path, tiny_dir, args, message):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    args = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "full") if a == "NONEMPTY" else a
            for a in args]
    before = _config(tiny_dir)
    r = run_cli("train-exits", "tiny", *args, timeout=120)
    assert r.returncode != 0 and message in r.stderr, r.stderr[-1500:]
    assert _config(tiny_dir) == before and not (Path(tiny_dir) / "depth").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target-agreement", "0"], "--target-agreement: 0.0; allowed: a number in (0, 1]"),
        (["--target-agreement", "1.5"], "--target-agreement: 1.5; allowed: a number in (0, 1]"),
        (["--delta", "1"], "--delta: 1.0; allowed: a number in (0, 1)"),
        (["--exit-layers", "7"], "--exit-layers: [7]; allowed: increasing layer counts in 1..5"),
        (["--prompts", "/nonexistent.jsonl"], "--prompts: no such file"),
    ],
)
def test_calibrate_refuses_bad_arguments_before_any_work(tiny_dir, args, message):
    if "--prompts" not in args:
        args = ["--prompts", "benchmarks/prompts/code.jsonl", "--exit-layers", "2", *args]
    before = _config(tiny_dir)
    r = run_cli("calibrate", "tiny", *args, timeout=120)
    assert r.returncode != 0 and message in r.stderr, r.stderr[-1500:]
    assert _config(tiny_dir) == before


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """Heads at 2 and 4 trained on the tiny model into a copy of it."""
    from vllm_depth.tools.train_exit_heads import train_exits

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("heads") / "ckpt"
    path, report = train_exits(tiny_dir, [2, 4], out=str(out), steps=60, chunks=60, seq_len=64, mlp_width=32,
                               eval_chunks=8, progress=False)
    return path, report


@pytest.mark.slow
def test_trained_heads_beat_the_plain_lm_head_on_held_out_text(smollm2_dir, tmp_path):
    """A few steps on SmolLM2 (the tiny model's random weights predict nothing to learn from)."""
    from vllm_depth.tools.train_exit_heads import train_exits

    torch.manual_seed(0)
    _, report = train_exits(smollm2_dir, [8, 16], out=str(tmp_path / "ckpt"), steps=150, chunks=150, seq_len=64,
                            eval_chunks=8, progress=False)
    for layer in (8, 16):
        assert report.agreement_after[layer] > report.agreement_before[layer] + 0.03, report
    assert report.head_params <= 0.05 * report.model_params


def test_heads_round_trip_through_the_checkpoint(trained, tiny_dir):
    from transformers import AutoModelForCausalLM

    from vllm_depth.tools.train_exit_heads import OutputSpace, load_heads

    path, _ = trained
    cfg = _config(path)
    assert cfg["depth"] == {"exit_heads": {"layers": [2, 4], "mlp_width": 32, "vocab": 8192}}
    assert _config(tiny_dir).get("depth") is None  # --out: the original is untouched
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    (loaded, ids), formula = load_heads(path), rx.load_exit_heads(path)
    assert ids.shape == (8192,) and bool((ids[1:] > ids[:-1]).all())
    vocab = OutputSpace(model, ids)
    x = torch.randn(5, cfg["hidden_size"])
    with torch.no_grad():
        for layer in (2, 4):
            mine = vocab.logits(loaded[layer], x)  # [5, 8192 + 1]: the reduced vocabulary, then "other"
            logits, rest = formula[layer](model, x)
            assert torch.allclose(mine[:, :-1], logits[:, ids], atol=1e-4)
            assert torch.allclose(mine[:, -1], rest, atol=1e-4)
            assert torch.isinf(logits).sum() == 5 * (cfg["vocab_size"] - 8192)


def test_a_legacy_top_level_heads_file_is_read_and_moved_on_the_next_save(trained, tmp_path):
    """Heads in the legacy layout (a top-level file beside the weights) still load, and saving again moves them."""
    import shutil

    from vllm_depth.compat.loader import HEADS_FILE, LEGACY_HEADS_FILE, heads_file
    from vllm_depth.tools.train_exit_heads import load_heads, save_heads

    path, _ = trained
    ckpt = tmp_path / "legacy"
    shutil.copytree(path, ckpt)
    shutil.move(ckpt / HEADS_FILE, ckpt / LEGACY_HEADS_FILE)
    assert heads_file(str(ckpt)) == ckpt / LEGACY_HEADS_FILE
    heads, ids = load_heads(str(ckpt))
    assert sorted(heads) == [2, 4] and ids.shape == (8192,)
    save_heads(str(ckpt), heads, 32, ids, torch.float32)
    assert heads_file(str(ckpt)) == ckpt / HEADS_FILE and not (ckpt / LEGACY_HEADS_FILE).exists()
    (ckpt / HEADS_FILE).unlink()
    with pytest.raises(ValueError, match="exit_heads.safetensors is missing"):
        load_heads(str(ckpt))


def test_a_checkpoint_with_heads_still_loads_in_stock_vllm(engines, trained, tiny_dir, stock_llm):
    """The heads live in ``depth/``, which stock vLLM's loader does not read: without --model-impl depth
    the checkpoint serves as the original does (a top-level heads file broke stock loading)."""
    from vllm_depth.compat.loader import HEADS_FILE, LEGACY_HEADS_FILE

    path, _ = trained
    assert (Path(path) / HEADS_FILE).is_file() and not (Path(path) / LEGACY_HEADS_FILE).exists()
    original = stock_llm(tiny_dir)  # the session's stock engine on the original checkpoint
    ids = [original.get_tokenizer().encode(p) for p in PROMPTS[:2] + PROMPTS[3:5]]
    with engines.lease(path, **EAGER) as llm:  # this test's alone: shut down after it, not kept in the pool
        got, want = prompt_logprobs(llm, ids), prompt_logprobs(original, ids)
    for g, w in zip(got, want):
        assert len(g) == len(w) > 0 and max(abs(a - b) for a, b in zip(g, w)) < 1e-4


@pytest.mark.slow
def test_engine_exits_through_the_heads_like_the_reference(engines, trained):
    """Forced exits (threshold 0.0) at the first head at or after min_layer: the engine's tokens
    are the heads' predictions with state propagation, as in the reference."""
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from vllm_depth.tools.bench import start_exit_trace, take_exit_trace

    path, _ = trained
    depth = {**_config(path)["depth"], "exit_layers": [2, 4], "exit_criterion": "head", "exit_threshold": 0.0}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    heads = rx.load_exit_heads(path)
    # this test's alone: leased (shut down after it), not kept in the pool
    with engines.lease(path, model_impl="depth", hf_overrides={"depth": depth}, **EAGER) as llm:
        for min_layer in (0, 4):
            params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                                    extra_args={"depth_min_layer": min_layer})
            start_exit_trace(llm)
            outs = llm.generate(PROMPTS[:4], params, use_tqdm=False)
            trace = take_exit_trace(llm)
            for o in outs:
                exits = [6] + trace[o.request_id]
                assert set(exits[1:]) == {max(2, min_layer)}
                want = rx.early_exit_greedy(model, o.prompt_token_ids, 12, exit_layers=[2, 4], threshold=0.0,
                                            min_layer=min_layer, criterion="head", heads=heads)
                ok, detail = rx.agrees(want, list(o.outputs[0].token_ids), exits)
                assert ok, detail


@pytest.fixture(scope="module")
def gemma3_heads(gemma3_dir, tmp_path_factory):
    """Heads at 6 and 12 trained briefly on Gemma 3 270M (a 262,144-token vocabulary; the heads predict its
    8192 most frequent tokens of the training text and "other") into a copy of it."""
    from vllm_depth.tools.train_exit_heads import train_exits

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("gemma3_heads") / "ckpt"
    return train_exits(gemma3_dir, [6, 12], out=str(out), steps=100, chunks=80, seq_len=64, eval_chunks=8,
                       progress=False)


@pytest.mark.slow
def test_gemma3_heads_learn_and_the_engine_exits_through_them_like_the_reference(own_engines, gemma3_heads):
    """Gemma's norm gain is ``1 + w``: the heads start from the final norm's effective gain, learn, and the
    engine's forced exits through them (over the reduced vocabulary, K/V of the skipped sliding-window and
    global layers propagated) give the plain-PyTorch reference's tokens."""
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from vllm_depth.tools.bench import start_exit_trace, take_exit_trace

    path, report = gemma3_heads
    for layer in (6, 12):
        assert report.agreement_after[layer] > report.agreement_before[layer] + 0.03, report
    depth = {**_config(path)["depth"], "exit_layers": [6, 12], "exit_criterion": "head", "exit_threshold": 0.0}
    assert depth["exit_heads"]["vocab"] == 8192
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    heads = rx.load_exit_heads(path)
    with own_engines.lease(path, model_impl="depth", hf_overrides={"depth": depth}, **EAGER) as llm:
        params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
        start_exit_trace(llm)
        outs = llm.generate(PROMPTS[:4], params, use_tqdm=False)
        trace = take_exit_trace(llm)
    for o in outs:
        exits = [18] + trace[o.request_id]
        assert set(exits[1:]) == {6}
        want = rx.early_exit_greedy(model, o.prompt_token_ids, 12, exit_layers=[6, 12], threshold=0.0,
                                    criterion="head", heads=heads)
        ok, detail = rx.agrees(want, list(o.outputs[0].token_ids), exits)
        assert ok, detail


@pytest.mark.slow
def test_calibrate_writes_thresholds_that_serve(own_engines, trained, tmp_path):
    """Calibrate on real generation, write the thresholds, then serve the checkpoint with them."""
    import shutil

    path, _ = trained
    ckpt = tmp_path / "ckpt"
    shutil.copytree(path, ckpt)
    prompts = tmp_path / "calib.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    args = ["calibrate", str(ckpt), "--prompts", str(prompts), "--max-tokens", "8", "--min-layers", "2",
            "--engine-args", json.dumps({"dtype": "float32", "enforce_eager": True})]

    # target 1.0 asks for zero disagreement surely: no setting can show it, nothing is written;
    # --full-curve measures past the first failure (for the plot)
    r = run_cli(*args, "--thresholds", "0.5,0.0", "--target-agreement", "1.0", "--full-curve",
            "--plot", str(tmp_path / "c.png"), "--json", str(tmp_path / "none.json"))
    assert r.returncode == 1 and "nothing written" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert "exit_layers" not in _config(ckpt)["depth"]
    none = json.loads((tmp_path / "none.json").read_text())
    assert [p["threshold"] for p in none["points"]] == [0.5, 0.0] and not any(p["valid"] for p in none["points"])
    assert (tmp_path / "c.png").stat().st_size > 0

    # 1.0 never exits (agreement 1 on all 8 prompts: p = 2^-8 < delta); 0.0 always exits at 2 and fails
    r = run_cli(*args, "--thresholds", "0.99999,0.0", "--target-agreement", "0.5", "--delta", "0.1",
            "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "c.json").read_text())
    first, second = result["points"]
    assert first["valid"] and first["agreement"] == 1.0 and not second["valid"]
    depth = _config(ckpt)["depth"]
    assert depth["exit_layers"] == [2, 4] and depth["exit_criterion"] == "head"
    assert depth["exit_threshold"] == [0.99999, 0.99999]

    with vllm_server(str(ckpt), tmp_path / "serve.log", ["--enforce-eager"]) as base:
        def complete(xargs):
            r = requests.post(f"{base}/v1/completions", timeout=120, json={
                "model": str(ckpt), "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0.0,
                "ignore_eos": True, "vllm_xargs": xargs})
            assert r.status_code == 200, r.text
            return r.json()

        forced = complete({"depth_exit_threshold": 0.0})  # every decode token exits at the head at 2
        full = complete({"depth_exit": False})
        assert forced["kv_transfer_params"]["depth"]["mean_exit_layer"] == 2.0
        assert full["kv_transfer_params"]["depth"]["mean_exit_layer"] == 6.0


@pytest.mark.parametrize("steps", [1, 19, 20, 21, 40])
def test_short_one_cycle_runs_train_and_lower_the_loss(steps):
    # OneCycleLR divides by zero at 20 steps (its warm-up ends at step 0): short runs keep a constant lr
    from vllm_depth.tools.distill import distill

    w = torch.nn.Parameter(torch.zeros(4))
    target = torch.tensor([1.0, -2.0, 3.0, 0.5])
    losses = distill(lambda _: ((w - target) ** 2).sum(), [w], [None], steps, 0.1, "test",
                     progress=False, one_cycle=True)
    assert len(losses) == steps
    assert ((w - target) ** 2).sum().item() < losses[0]
