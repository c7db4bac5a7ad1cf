"""Sanity checks of the early-exit reference (tests/reference_exit.py) against plain Hugging Face.

Nothing here starts vLLM.  HF runs with eager attention: its cached decode is
then the same arithmetic as the reference's loop (bitwise equal logits with one
thread here; the tests allow 1e-5).
"""

from __future__ import annotations

import pytest
import reference as ref
import reference_exit as rx
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

PROMPT = [1604, 3987, 46477, 24, 94, 727]  # "def fibonacci(n):"
N_TOKENS = 16
TOL = 1e-5  # |logits| reach ~40 on SmolLM2: a few float32 ulps


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one thread is faster, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(path: str):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return _load(tiny_dir)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return _load(smollm2_dir)


@pytest.fixture(params=["tiny", "smollm2"])
def model(request):
    return request.getfixturevalue(request.param)


class _Grab:
    """A stand-in KV cache: keeps what an HF attention module would store."""

    def update(self, k, v, layer_idx, *args, **kwargs):
        self.k, self.v = k, v
        return k, v


def _hf_kv(layer, h, position: int, model):
    """K/V that HF's own attention module caches for residual stream h [hidden] at ``position``."""
    x = layer.input_layernorm(h.view(1, 1, -1))
    cos, sin = model.model.rotary_emb(x, torch.tensor([[position]]))
    grab = _Grab()
    layer.self_attn(x, position_embeddings=(cos, sin), attention_mask=None, past_key_values=grab)
    return grab.k, grab.v


@torch.no_grad()
def _logits(model, trace) -> torch.Tensor:
    """The reference's logits at each step, one row at a time as its loop computes them."""
    return torch.stack([model.lm_head(model.model.norm(h)) for h in trace.hidden])


@torch.no_grad()
def _hf_hidden(model, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """HF's residual stream after 0..N-1 layers at the last position (full forward, no cache)."""
    out = model(torch.tensor([ids]), output_hidden_states=True)
    return tuple(h[0, -1] for h in out.hidden_states)


@torch.no_grad()
def _hf_replay(model, prompt: list[int], tokens: list[int], exits: list[int]) -> torch.Tensor:
    """Logits of each step, with HF decoder layers and HF's cache, exiting where ``exits`` says."""
    m, N = model.model, len(model.model.layers)
    out = m(torch.tensor([prompt]), use_cache=True)  # final-normed states: lm_head on one row below
    cache, logits = out.past_key_values, [model.lm_head(out.last_hidden_state[0, -1])]
    for i, (tok, exit_at) in enumerate(zip(tokens[:-1], exits[1:])):
        pos = torch.tensor([[len(prompt) + i]])
        h = m.embed_tokens(torch.tensor([[tok]]))
        emb = m.rotary_emb(h, pos)
        for layer in m.layers[:exit_at]:
            h = layer(h, attention_mask=None, position_ids=pos, past_key_values=cache, position_embeddings=emb)
        for j in range(exit_at, N):
            cache.update(*_hf_kv(m.layers[j], h[0, -1], pos.item(), model), j)
        logits.append(model.lm_head(m.norm(h))[0, -1])
    return torch.stack(logits)


def test_full_depth_matches_hf_greedy(model):
    N = len(model.model.layers)
    trace = rx.early_exit_greedy(model, PROMPT, N_TOKENS, exit_layers=[1, N // 2, N - 1], threshold=1.0)
    assert trace.exit_layers == [N] * N_TOKENS
    assert trace.tokens == ref.greedy(model, PROMPT, N_TOKENS)
    gen = model.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS)
    assert trace.tokens == gen[0, len(PROMPT):].tolist()
    hf = _hf_replay(model, PROMPT, trace.tokens, trace.exit_layers)
    err = (_logits(model, trace) - hf).abs().max().item()
    assert err < TOL, f"max |dlogit| {err:.2e}"


def test_gemma3_full_depth_matches_hf_greedy(gemma3_dir):
    """Gemma 3's anatomy in the reference (sandwich norms, q/k norms, a rotary base per layer type),
    with its sliding window narrowed to 8 so that the window cuts into this prompt and output."""
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gemma3_dir, dtype=torch.float32, attn_implementation="eager",
                                                 sliding_window=8).eval()
    prompt = AutoTokenizer.from_pretrained(gemma3_dir)("def fibonacci(n):\n    ").input_ids
    N = len(model.model.layers)
    trace = rx.early_exit_greedy(model, prompt, N_TOKENS, exit_layers=[6, 12], threshold=1.0)
    assert trace.exit_layers == [N] * N_TOKENS
    gen = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS)
    assert trace.tokens == gen[0, len(prompt):].tolist()
    wide = rx.early_exit_greedy(AutoModelForCausalLM.from_pretrained(gemma3_dir, dtype=torch.float32).eval(),
                                prompt, N_TOKENS, exit_layers=[6], threshold=1.0)
    assert wide.tokens != trace.tokens or not torch.allclose(wide.hidden[-1], trace.hidden[-1])  # the window acts


def test_threshold_zero_exits_at_first_check_from_min_layer(tiny, tiny_dir):
    N = len(tiny.model.layers)
    trace = rx.early_exit_greedy(tiny, PROMPT, N_TOKENS, exit_layers=[4, 1, 3], threshold=0.0, min_layer=2)
    assert trace.exit_layers == [N] + [3] * (N_TOKENS - 1)
    # layers 0..2 always run in full, so after the first token this is the 3-layer model's greedy
    ids = PROMPT + trace.tokens[:1]
    assert torch.allclose(trace.hidden[1], _hf_hidden(tiny, ids)[3], atol=1e-5)
    truncated = ref.hf_model(tiny_dir, [0, 1, 2])
    ok, detail = ref.first_divergence_is_near_tie(truncated, ids, trace.tokens[1:],
                                                 ref.greedy(truncated, ids, N_TOKENS - 1))
    assert ok, detail


def test_skipped_layers_cache_the_propagated_state(tiny):
    N, L = len(tiny.model.layers), 2
    trace = rx.early_exit_greedy(tiny, PROMPT, 6, exit_layers=[L], threshold=0.0)
    assert trace.exit_layers[1:] == [L] * 5
    for i in range(1, 6):
        p = len(PROMPT) + i - 1  # the position token i - 1 was fed at
        for j in range(N):
            k, v = _hf_kv(tiny.model.layers[j], trace.hidden[i], p, tiny)
            same = torch.allclose(trace.kv[j][0][:, :, p], k[:, :, 0], atol=1e-6) and \
                torch.allclose(trace.kv[j][1][:, :, p], v[:, :, 0], atol=1e-6)
            assert same == (j >= L), f"token {i}, layer {j}"


def test_recompute_caches_what_full_depth_caches(tiny):
    """kv_fill="recompute": the exited tokens' K/V at every layer are HF's own full-depth cache
    (attention included, as HF computes it), while their tokens come from the exit layer."""
    N, L = len(tiny.model.layers), 2
    trace = rx.early_exit_greedy(tiny, PROMPT, 6, exit_layers=[L], threshold=0.0, kv_fill="recompute")
    assert trace.exit_layers[1:] == [L] * 5
    fed = PROMPT + trace.tokens[:-1]  # the tokens the loop ran (the last one sampled is never fed)
    with torch.no_grad():
        out = tiny(torch.tensor([fed]), use_cache=True, output_hidden_states=True)
    for j in range(N):
        assert torch.allclose(trace.kv[j][0], out.past_key_values.layers[j].keys, atol=1e-5), j
        assert torch.allclose(trace.kv[j][1], out.past_key_values.layers[j].values, atol=1e-5), j
    # each decode token's exit state is HF's residual stream after L layers at its position
    for i in range(1, 6):
        torch.testing.assert_close(trace.hidden[i], out.hidden_states[L][0, len(PROMPT) + i - 1], atol=1e-5,
                                   rtol=1e-5)
    propagated = rx.early_exit_greedy(tiny, PROMPT, 6, exit_layers=[L], threshold=0.0)
    assert not torch.allclose(propagated.kv[N - 1][0], trace.kv[N - 1][0], atol=1e-3)  # the fills differ


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_mixed_exits_match_hf_replay(smollm2, threshold):
    trace = rx.early_exit_greedy(smollm2, PROMPT, N_TOKENS, exit_layers=[8, 16, 24], threshold=threshold)
    exits = trace.exit_layers
    # a token runs deeper than its predecessor exited: it reads propagated K/V
    assert any(a < b for a, b in zip(exits[1:], exits[2:])), exits
    hf = _hf_replay(smollm2, PROMPT, trace.tokens, trace.exit_layers)
    err = (_logits(smollm2, trace) - hf).abs().max().item()
    assert err < TOL, f"max |dlogit| {err:.2e}"
    assert trace.tokens == hf.argmax(-1).tolist()


@pytest.mark.parametrize("criterion", ["margin", "saturation"])
def test_criteria_bounds(tiny, criterion):
    N = len(tiny.model.layers)
    always = rx.early_exit_greedy(tiny, PROMPT, 4, exit_layers=[2, 4], threshold=-1.0, criterion=criterion)
    never = rx.early_exit_greedy(tiny, PROMPT, 4, exit_layers=[2, 4], threshold=1.0, criterion=criterion)
    assert always.exit_layers == [N, 2, 2, 2] and never.exit_layers == [N] * 4


@pytest.mark.parametrize("min_layer, previous", [(2, 0), (0, 1)])
@pytest.mark.parametrize("above", [False, True])
def test_saturation_compares_with_the_previous_checked_exit(tiny, min_layer, previous, above):
    """First decode token, exits [1, 3]: layer 3's state against the embedding, or against layer 1's."""
    first = rx.early_exit_greedy(tiny, PROMPT, 1, exit_layers=[1, 3], threshold=1.0).tokens
    hs = _hf_hidden(tiny, PROMPT + first)
    cos = F.cosine_similarity(hs[3], hs[previous], dim=0).item()
    assert F.cosine_similarity(hs[1], hs[0], dim=0).item() < cos - 1e-3  # layer 1 alone never fires
    threshold = cos + (1e-4 if above else -1e-4)
    trace = rx.early_exit_greedy(tiny, PROMPT, 2, exit_layers=[1, 3], threshold=threshold,
                                 min_layer=min_layer, criterion="saturation")
    assert trace.exit_layers[1] == (len(tiny.model.layers) if above else 3)
    assert trace.near_tie[1]


def test_agrees():
    trace = rx.ExitTrace(tokens=[5, 6, 7, 8], exit_layers=[6, 3, 6, 2], near_tie=[False, False, True, False])
    assert rx.agrees(trace, [5, 6, 7, 8], [6, 3, 6, 2]) == (True, "identical")
    assert rx.agrees(trace, [5, 6, 9, 9], [6, 3, 6, 6])[0]  # first difference at a near-tie
    assert rx.agrees(trace, [5, 6, 7, 8], [6, 3, 4, 2])[0]
    assert not rx.agrees(trace, [5, 6, 7, 8], [6, 4, 6, 2])[0]  # exit layer differs, no near-tie
    assert not rx.agrees(trace, [5, 9, 7, 8], [6, 3, 6, 2])[0]
    assert not rx.agrees(trace, [5, 6, 7], [6, 3, 6])[0]
