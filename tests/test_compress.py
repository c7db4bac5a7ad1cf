"""`vllm-depth compress` / `analyze`: real checkpoints, served by vLLM, checked against HF rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import reference as ref
from conftest import (
    EAGER,
    PROMPTS,
    greedy,
    prompt_logprobs,
    run_cli,
)

TOL = 1e-3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune", "6"], "--prune: 6 is out of range; the model has 6 layers, so 1..5"),
        (["--share", "4"], "--share: 4 is too large"),
        (["--share", "2", "--relax-rank", "257"], "--relax-rank: 257 is out of range; allowed 1..256"),
        (["--prune", "2", "--relax-rank", "4"], "--relax-rank: only with --share"),
        (["--share", "2", "--relax-rank", "4", "--relax-steps", "0"], "--relax-steps: 0; allowed: an int >= 1"),
        (["--prune", "2", "--share", "2"], "give exactly one of --prune K or --share K"),
        (["--share", "2", "--merge", "blend"], "--merge: 'blend'; allowed: auto, copy, average"),
        (["--prune", "2", "--data", "/nonexistent.txt"], "--data: no such file"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, tiny_dir, args, message):
    r = run_cli("compress", "tiny", *args, "--out", str(tmp_path / "out"), timeout=120)
    assert r.returncode != 0 and message in r.stderr, r.stderr[-1500:]
    assert not (tmp_path / "out").exists()


def test_output_dir_must_be_empty(tmp_path, tiny_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    r = run_cli("compress", "tiny", "--prune", "1", "--out", str(tmp_path / "out"), timeout=120)
    assert r.returncode != 0 and "is not an empty directory" in r.stderr
    assert (tmp_path / "out" / "x").read_text() == "keep me"


def test_analyze_reports_every_layer_and_plots(tmp_path, tiny_dir):
    out = tmp_path / "a.json"
    png = tmp_path / "a.png"
    r = run_cli("analyze", "tiny", "--samples", "3", "--seq-len", "64", "--json", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr[-2000:]
    a = json.loads(out.read_text())["analysis"]
    assert len(a["block_influence"]) == 6 and all(0 <= b <= 2 for b in a["block_influence"])
    assert len(a["weight_similarity"]) == 6 and a["weight_similarity"][2][2] == 1.0
    assert a["n_tokens"] == 3 * 64 and png.stat().st_size > 0


CASES = {
    "tiny-prune": ("tiny", ["--prune", "2"]),
    "tiny-share-relax": ("tiny", ["--share", "2", "--relax-rank", "8", "--relax-steps", "20"]),
    # two chunks: each of the 58 candidate pairs is scored on every chunk
    "smollm2-share-relax": ("smollm2-135m", ["--share", "8", "--relax-rank", "32", "--relax-steps", "4",
                                             "--samples", "2"]),
}


@pytest.fixture(scope="module", params=list(CASES))
def compressed(request, engines, tmp_path_factory, tiny_dir, smollm2_dir):
    alias, args = CASES[request.param]
    out = tmp_path_factory.mktemp(request.param) / "ckpt"
    r = run_cli("compress", alias, "--samples", "4", *args, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    llm = engines.llm(str(out), model_impl="depth", **EAGER)
    return request.param, str(out), (tiny_dir if alias == "tiny" else smollm2_dir), llm


@pytest.mark.slow
def test_compressed_checkpoint_matches_its_hf_rebuild(compressed):
    _, path, _, llm = compressed
    model = ref.hf_from_depth_checkpoint(path)
    tok = llm.get_tokenizer()
    seqs = [tok.encode(p + " and then we return.") for p in PROMPTS[:3]]
    for ids, lp in zip(seqs, prompt_logprobs(llm, seqs)):
        worst = max(abs(a - b) for a, b in zip(lp, ref.teacher_forced(model, ids)))
        assert worst < TOL, f"max |dlogp| {worst:.2e}"
    for p, out in zip(PROMPTS[:4], greedy(llm, PROMPTS[:4], max_tokens=16, ignore_eos=True)):
        want = ref.greedy(model, out.prompt_token_ids, 16)
        ok, detail = ref.first_divergence_is_near_tie(model, out.prompt_token_ids, list(out.outputs[0].token_ids), want)
        assert ok, f"{p[:30]!r}: {detail}"


@pytest.mark.slow
def test_memory_shrinks_with_unique_weights(compressed):
    name, path, original, llm = compressed
    from safetensors import safe_open

    with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
        stored = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    resident = llm.collective_rpc(_weight_bytes)[0]
    assert resident == 4 * stored  # fp32; a shared layer is one tensor in the engine, not a copy
    disk = sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))
    disk0 = sum(p.stat().st_size for p in Path(original).glob("*.safetensors"))
    assert disk < disk0
    if name == "smollm2-share-relax":
        assert disk / disk0 <= 0.85


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _weight_bytes(worker) -> int:
    from vllm_depth.compat.kernels import model_weight_bytes

    return model_weight_bytes(worker.model_runner.model)


@pytest.mark.slow
def test_fitted_deltas_bring_a_shared_model_closer_on_held_out_text(tmp_path, smollm2_dir):
    """The distilled deltas (fit on calibration text) lower the KL to the original on
    held-out text; both checkpoints are rebuilt by the independent HF reference."""
    import torch

    from vllm_depth.tools import compress as C
    from vllm_depth.tools.analysis import load_hf
    from vllm_depth.tools.data import stdlib_texts, token_chunks

    model, tok = load_hf(smollm2_dir)
    calib = token_chunks(tok, stdlib_texts("calib"), 64, 40)
    held = token_chunks(tok, stdlib_texts("eval"), 64, 8)
    plan = C.plan_share(model, calib[:1], 2, "copy", progress=False)
    C.write_checkpoint(smollm2_dir, str(tmp_path / "shared"), plan)
    plan.relax_rank = 8
    losses = C.fit_deltas(model, plan, calib, steps=40, progress=False)
    C.write_checkpoint(smollm2_dir, str(tmp_path / "relaxed"), plan)
    assert sorted(plan.deltas) == plan.changed_positions()

    original = ref.hf_model(smollm2_dir)

    def held_out_kl(path):
        m = ref.hf_from_depth_checkpoint(path)
        total = 0.0
        with torch.no_grad():
            for c in held:
                p = torch.log_softmax(original(torch.tensor([c])).logits[0].float(), -1)
                q = torch.log_softmax(m(torch.tensor([c])).logits[0].float(), -1)
                total += (p.exp() * (p - q)).sum(-1).mean().item()
        return total / len(held)

    shared, relaxed = held_out_kl(str(tmp_path / "shared")), held_out_kl(str(tmp_path / "relaxed"))
    assert sum(losses[-10:]) < sum(losses[:10])
    assert relaxed < 0.8 * shared, (shared, relaxed)
