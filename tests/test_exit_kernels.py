"""The exit-check kernels: Triton and torch, against full logits.

On the CPU the Triton kernels run under TRITON_INTERPRET=1; on a machine with a
GPU, ``TRITON_INTERPRET=0 pytest --noconftest tests/test_exit_kernels.py`` runs
the same tests compiled, on the GPU (the conftest needs vLLM, which such a
machine may not have).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are first built (lazily)

from vllm_depth.early_exit.kernels import cpu_reduce  # noqa: E402
from vllm_depth.early_exit.kernels import exit_check as K  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() and os.environ["TRITON_INTERPRET"] != "1" else "cpu")


def full_reference(hidden, norm_w, eps, head):
    """The plain computation the kernels avoid: materialise all logits (fp32, on the CPU)."""
    hidden, norm_w, head = hidden.cpu(), norm_w.cpu(), head.cpu()
    logits = K.fused_rms_norm(hidden, norm_w, eps).to(head.dtype).float() @ head.float().t()
    p = torch.softmax(logits, -1)
    top = p.topk(2, dim=-1).values
    return logits.argmax(-1), top[:, 0], top[:, 0] - top[:, 1]


def check(stats, ref, atol=1e-5):
    idx, p1, margin = ref
    assert stats.argmax.device.type == DEVICE.type
    assert torch.equal(stats.argmax.cpu(), idx)
    torch.testing.assert_close(stats.max_prob.cpu(), p1, atol=atol, rtol=1e-4)
    torch.testing.assert_close(stats.margin.cpu(), margin, atol=atol, rtol=1e-4)


def random_case(t, h, v, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    case = (torch.randn(t, h, generator=g) * scale, 1 + 0.1 * torch.randn(h, generator=g),
            torch.randn(v, h, generator=g) / h**0.5 * 4)
    return tuple(x.to(DEVICE) for x in case)


# hidden sizes that are not a multiple of the kernel's K chunk (96, 100), token counts over one
# token block (33, 70: 16-row blocks up to 64), SmolLM2's shape (576 x 49152)
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("t, h, v", [(1, 64, 1000), (5, 96, 333), (3, 64, 128), (2, 128, 4097), (33, 100, 515),
                                     (70, 64, 300), (16, 576, 49152)])
def test_random_shapes_vocab_not_a_multiple_of_the_tile(impl, t, h, v):
    hidden, w, head = random_case(t, h, v)
    fn = K.exit_stats_triton if impl == "triton" else (lambda *a: K.exit_stats_torch(*a, tile=100))
    check(fn(hidden, w, 1e-5, head), full_reference(hidden, w, 1e-5, head))


@pytest.mark.parametrize("block_v, block_k", [(64, 32), (128, 64), (256, 64), (128, 128)])
def test_triton_tile_configs_with_several_splits(block_v, block_k):
    hidden, w, head = random_case(4, 200, 1500, seed=3)
    config = K.TritonConfig(block_v=block_v, block_k=block_k)
    check(K.exit_stats_triton(hidden, w, 1e-5, head, config, n_splits=24), full_reference(hidden, w, 1e-5, head))


def test_triton_in_bfloat16_matches_the_fp32_product_of_the_rounded_inputs():
    """bf16 weights: the kernel multiplies the normed states rounded to bf16 and sums in fp32."""
    hidden, w, head = random_case(16, 576, 4099, seed=5)
    head = head.bfloat16()
    stats = K.exit_stats_triton(hidden.bfloat16(), w.bfloat16(), 1e-5, head)
    idx, p1, margin = full_reference(hidden.bfloat16().float(), w.bfloat16().float(), 1e-5, head)
    # Triton's interpreter truncates fp32 to bf16 (a GPU rounds to nearest): the states' rounding
    # differs from the reference's by up to one bf16 ulp there
    atol = 2e-2 if DEVICE.type == "cpu" else 2e-3
    torch.testing.assert_close(stats.max_prob.cpu(), p1, atol=atol, rtol=1e-2)
    torch.testing.assert_close(stats.margin.cpu(), margin, atol=atol, rtol=1e-2)
    clear = margin > 1e-2  # where the top two are not within rounding of each other
    assert clear.sum() >= 8
    assert torch.equal(stats.argmax.cpu()[clear], idx[clear])


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_ties_go_to_the_lower_id_with_zero_margin(impl):
    hidden, w, head = random_case(3, 64, 700, seed=1)
    ref_idx = full_reference(hidden, w, 1e-5, head)[0]
    # copy each token's best row to a higher id in another tile: an exact tie
    for i, j in enumerate(ref_idx.tolist()):
        head[650 + i] = head[j]
    fn = K.exit_stats_triton if impl == "triton" else (lambda *a: K.exit_stats_torch(*a, tile=128))
    stats = fn(hidden, w, 1e-5, head)
    assert torch.equal(stats.argmax.cpu(), ref_idx)
    assert torch.all(stats.margin.abs() < 1e-6)


def test_real_smollm2_shapes_and_weights(smollm2_dir):
    from safetensors import safe_open

    with safe_open(os.path.join(smollm2_dir, "model.safetensors"), "pt") as f:
        # tied LM head: 49152 x 576 (stored in bf16; the kernels are checked in fp32 here)
        head = f.get_tensor("model.embed_tokens.weight").float()
        norm_w = f.get_tensor("model.norm.weight").float()
        emb = head[torch.tensor([504, 2021, 9])]  # a few real token embeddings as states
    hidden = torch.cat([emb * 20, torch.randn(1, 576)]).to(DEVICE)
    norm_w, head = norm_w.to(DEVICE), head.to(DEVICE)
    ref = full_reference(hidden, norm_w, 1e-5, head)
    check(K.exit_stats_triton(hidden, norm_w, 1e-5, head), ref)
    check(K.exit_stats_torch(hidden, norm_w, 1e-5, head), ref)


def test_real_gemma3_shapes_and_weights(gemma3_dir):
    """Gemma 3 270M's 262,144-row LM head (5.3 times SmolLM2's); its final norm's gain is ``1 + w``.
    Under the interpreter with wide tiles (the default tiles take minutes there)."""
    from safetensors import safe_open

    with safe_open(os.path.join(gemma3_dir, "model.safetensors"), "pt") as f:
        head = f.get_tensor("model.embed_tokens.weight").float()  # tied: 262144 x 640
        norm_w = 1 + f.get_tensor("model.norm.weight").float()
        emb = head[torch.tensor([818, 5279, 563])] * 640**0.5  # real token embeddings, scaled as the model does
    assert head.shape == (262144, 640)
    noise = torch.randn(1, 640, generator=torch.Generator().manual_seed(0)) * 8
    hidden = torch.cat([emb * 4, noise]).to(DEVICE)
    norm_w, head = norm_w.to(DEVICE), head.to(DEVICE)
    ref = full_reference(hidden, norm_w, 1e-6, head)
    config = K.TritonConfig(block_v=4096, block_k=128) if DEVICE.type == "cpu" else None
    check(K.exit_stats_triton(hidden, norm_w, 1e-6, head, config), ref)
    check(K.exit_stats_torch(hidden, norm_w, 1e-6, head), ref)


@pytest.mark.parametrize("t, h", [(1, 576), (7, 100)])
def test_saturation_matches_cosine(t, h):
    a, b = torch.randn(t, h, device=DEVICE), torch.randn(t, h, device=DEVICE)
    b[0] = a[0] * 3  # parallel: cosine 1
    want = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    torch.testing.assert_close(K.saturation_triton(a, b), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(K.saturation_torch(a, b), want)
    assert abs(K.saturation_triton(a, b)[0].item() - 1.0) < 1e-5
    if DEVICE.type == "cpu":  # the engine's CPU path: one native call, here on rows of wider matrices, bf16 too
        wa, wb = torch.randn(t, h + 3), torch.randn(t, h + 5)
        wa[:, :h], wb[:, :h] = a, b
        torch.testing.assert_close(cpu_reduce.saturation(wa[:, :h], wb[:, :h]), want, atol=1e-6, rtol=1e-5)
        a16, b16 = a.bfloat16(), b.bfloat16()
        torch.testing.assert_close(cpu_reduce.saturation(a16, b16), K.saturation_torch(a16, b16), atol=1e-6,
                                   rtol=1e-5)
        torch.testing.assert_close(cpu_reduce.saturation(a16, b), K.saturation_torch(a16, b), atol=1e-6, rtol=1e-5)
        # the engine's call: the same values as a list, from one reused buffer per row count
        for x, y in ((wa[:, :h], wb[:, :h]), (a16, b)):
            got = K.saturation_values(x, y)
            assert isinstance(got, list) and len(got) == t
            torch.testing.assert_close(torch.tensor(got), K.saturation_torch(x, y), atol=1e-6, rtol=1e-5)
        assert cpu_reduce.saturation_values(a.t(), b.t()) is None  # not unit stride along the hidden size


def test_dispatch_uses_triton_under_the_interpreter_or_on_a_gpu():
    assert K.use_triton(DEVICE)
    hidden, w, head = random_case(3, 64, 500, seed=2)
    check(K.exit_stats(hidden, w, 1e-5, head), full_reference(hidden, w, 1e-5, head))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_rest", [False, True])
def test_probs_of_full_logits_equal_the_softmax_and_leave_the_logits_alone(dtype, with_rest):
    """The engine's check on logits the LM head already made (one process on the CPU): max
    probability and margin equal the plain softmax's; a reduced head's "other" logit counts in
    the mass but is never a top token; the logits (reused as the step's) are not modified."""
    g = torch.Generator().manual_seed(1)
    for t in (1, 7, 16, 3):
        logits = (torch.randn(t, 4097, generator=g) * 4).to(dtype)
        logits[0, 5] = logits[0, 9] = logits[0].max() + 1  # a tie: margin 0
        logits[-1, 100:] = float("-inf")  # a reduced vocabulary (-inf outside it)
        rest = (torch.randn(t, generator=g) * 4 + 6).to(dtype) if with_rest else None
        before = logits.clone()
        full = logits.float() if rest is None else torch.cat([logits.float(), rest.float()[:, None]], -1)
        p = torch.softmax(full, -1)
        top = (p if rest is None else p[:, :-1]).topk(2, -1).values
        torch.testing.assert_close(K.probs_of_logits(logits, rest), top[:, 0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(K.probs_of_logits(logits, rest, margin=True), top[:, 0] - top[:, 1],
                                   atol=1e-6, rtol=1e-5)
        assert float(K.probs_of_logits(logits, rest, margin=True)[0]) == 0.0
        assert torch.equal(logits, before)
    assert cpu_reduce.load() is not None  # the CPU ran the native reduction, not the torch-ops fallback


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_cpu_confidence_equals_the_torch_ops(dtype):
    """kernels.cpu_reduce against the same check as torch ops: vocabularies shorter than one vector,
    off the vector width and over several chunks, rows of a wider matrix (row stride !=
    vocabulary), logits far below the max (exp underflows), -inf entries, ties for the top and
    below it, a reduced head's "other" logit above and below the best."""
    g = torch.Generator().manual_seed(3)
    for t, v in ((1, 5), (3, 16), (2, 33), (16, 49152), (5, 20000)):
        wide = (torch.randn(t, v + 7, generator=g) * 30).to(dtype)
        logits = wide[:, :v]
        if v > 3:
            logits[-1, 1] = -1e4  # exp underflows
            logits[-1, 2] = float("-inf")
            top = logits[-1].max()
            logits[-1, 0] = top + 1
            logits[-1, 3] = top  # the second place, tied with another entry
        logits[0, -1] = logits[0].max()  # a tie for the top
        rest = logits.float().amax(-1) + torch.randn(t, generator=g) * 3
        for r in (None, rest.to(dtype)):
            for margin in (False, True):
                got = cpu_reduce.confidence(logits, r, margin)
                assert got is not None
                torch.testing.assert_close(got, K.probs_torch(logits, r, margin), rtol=2e-6, atol=1e-7)
        assert float(cpu_reduce.confidence(logits, None, True)[0]) == 0.0


def test_without_a_compiler_the_cpu_check_runs_as_torch_ops(monkeypatch, tmp_path, caplog):
    """Where the native functions cannot be built (here: a compiler that fails), the check says so once
    and gives the torch ops' values."""
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("VDEPTH_CACHE", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the CPU dispatch of saturation, not the interpreted kernel
    cpu_reduce.load.cache_clear()
    try:
        logits = torch.randn(3, 1000)
        with caplog.at_level("WARNING"):
            assert cpu_reduce.load() is None
            torch.testing.assert_close(K.probs_of_logits(logits), K.probs_torch(logits))
            torch.testing.assert_close(K.saturation(logits, logits.flip(0)), K.saturation_torch(logits, logits.flip(0)))
            torch.testing.assert_close(torch.tensor(K.saturation_values(logits, logits.flip(0))),
                                       K.saturation_torch(logits, logits.flip(0)))
        assert sum("building the CPU reduction failed" in r.message for r in caplog.records) == 1
    finally:
        monkeypatch.undo()
        cpu_reduce.load.cache_clear()
    assert cpu_reduce.load() is not None
