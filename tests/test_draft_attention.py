"""The attention draft head (``train-exits --draft-attention``): one decoder layer with its own paged KV.

Checked: the config and argument errors; the trained head's weights in the checkpoint; the head's own
attention layer in vLLM's KV cache; every draft the engine proposes against the same head in plain
PyTorch over the HF model's final states (which checks the head's K/V the engine wrote, after the
prefill and after each verified step); greedy fp32 output against stock vLLM at batch 1 and 8; the
distribution of sampled tokens at temperature > 0 (two-sample chi-square); the backoff when the
drafts do not pay; and vLLM's own EAGLE proposer with a head trained and written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EAGER, PROMPTS, greedy, run_cli
from test_self_spec import chi_square_pvalue, counters

from vllm_depth.config import PROPOSER, DepthConfigError, parse_depth_config

HEAD = {"layers": [0], "mlp_width": 0, "vocab": 8192, "prev_state": True, "attention": True}


# -- pure logic ---------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [
    {**HEAD, "layers": [0, 2]},
    {**HEAD, "prev_state": False},
    {**HEAD, "mlp_width": 64},
    {**HEAD, "attention": "yes"},
])
def test_bad_attention_head_configs_name_the_field(heads):
    with pytest.raises(DepthConfigError, match="depth.exit_heads"):
        parse_depth_config({"exit_heads": heads, "draft_layers": 0}, 6, 64)


@pytest.mark.parametrize("draft", [{"draft_layers": 2}, {"draft_schedule": [0, 1]}])
def test_the_attention_head_drafts_with_no_layer_of_the_model(draft):
    with pytest.raises(DepthConfigError, match="depth.draft_layers: .* allowed: draft_layers 0"):
        parse_depth_config({"exit_heads": HEAD, **draft}, 6, 64)


def test_the_attention_head_config_round_trips():
    depth = parse_depth_config({"exit_heads": HEAD, "draft_layers": 0}, 6, 64)
    assert depth.exit_heads.attention and depth.draft_positions() == ()
    assert depth.to_dict()["exit_heads"] == HEAD


@pytest.mark.parametrize("eagle", [False, True])
def test_the_second_draft_tokens_training_pass_is_the_head_drafting_a_second_token(tiny_dir, eagle):
    """Row i - 1 of ``two_steps``' second pass is the head over positions 0..i whose last row reads its
    own first state at i - 1 in place of the final state at i (the engine's second draft token)."""
    from vllm_depth.tools.analysis import load_hf
    from vllm_depth.tools.train_draft_attention import TorchAttentionDraftHead

    model, _ = load_hf(tiny_dir)
    torch.manual_seed(0)
    head = TorchAttentionDraftHead(model, reduced=False, eagle=eagle)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn_like(p))
        t, hidden = 9, model.config.hidden_size
        embeds, prev = torch.randn(t, hidden), torch.randn(t, hidden)
        first, second = head.two_steps(embeds, prev)
        ref = head(embeds, prev)
        assert first.shape == (t, hidden) and second.shape == (t - 1, hidden)
        torch.testing.assert_close(first, ref, rtol=1e-4, atol=1e-5)
        for i in (1, 4, t - 1):
            alone = head(embeds[: i + 1], torch.cat([prev[:i], ref[i - 1 : i]]))[-1]
            torch.testing.assert_close(second[i - 1], alone, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(second[3], ref[4], atol=1e-3)  # it reads its own state, not the final one


@pytest.mark.parametrize("args, message", [
    (["--exit-layers", "2"], "--exit-layers: [2]"),
    (["--mlp-width", "64"], "--mlp-width: 64"),
    (["--format", "eagle"], "--out: --format eagle"),
    (["--self-text", "-1"], "--self-text: -1"),
])
def test_train_exits_refuses_bad_draft_attention_arguments_before_any_work(tiny_dir, args, message):
    r = run_cli("train-exits", tiny_dir, "--draft-attention", *args)
    assert r.returncode != 0 and message in r.stderr, r.stderr


# -- SmolLM2 with a briefly trained head: the engine against the PyTorch head --------------


def test_the_trained_head_is_in_the_checkpoint(attended_head):
    from safetensors import safe_open

    cfg = json.loads((Path(attended_head) / "config.json").read_text())
    assert cfg["depth"] == {"exit_heads": HEAD, "draft_layers": 0, "draft_tokens": 2}
    with safe_open(str(Path(attended_head) / "depth" / "exit_heads.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.draft_head.fc.weight", "model.draft_head.norm.weight", "model.draft_head.other",
            "model.draft_head.layer.self_attn.q_proj.weight", "model.exit_vocab.ids"} <= names
    assert not any(n.startswith("model.draft_head.rotary") for n in names)


@pytest.fixture(scope="module")
def engine(engines, attended_head):
    # shared: what a test changes in it (``_record``, ``_wrong_drafts``) it sets back
    return engines.llm(attended_head, model_impl="depth",
                       hf_overrides={"depth": {"exit_heads": HEAD, "draft_layers": 0, "draft_backoff": 0}},
                       speculative_config={"model": PROPOSER, "num_speculative_tokens": 2}, **EAGER)


def _record(worker, start: bool):
    """From now (``start``) keep every ``propose``'s drafts and known token counts; else stop (the
    drafter's own ``propose`` again) and return them."""
    drafter = worker.model_runner.drafter
    if start:
        drafter._recorded, propose = [], type(drafter).propose

        def recording(sampled, num_tokens_no_spec, *args, **kwargs):
            out = propose(drafter, sampled, num_tokens_no_spec, *args, **kwargs)
            drafter._recorded.append([(int(n), list(d)) for n, d in zip(num_tokens_no_spec, out)])
            return out

        drafter.propose = recording
        return None
    recorded = drafter._recorded
    del drafter.propose, drafter._recorded
    return recorded


def _kv_layers(worker) -> int:
    from vllm_depth.compat.runner import kv_cache_layout

    return kv_cache_layout(worker)["layers"]


def test_the_head_has_its_own_layer_in_vllms_kv_cache(engine, smollm2_dir):
    layers = json.loads((Path(smollm2_dir) / "config.json").read_text())["num_hidden_layers"]
    assert engine.collective_rpc(_kv_layers) == [layers + 1]


def _reference(head, model, known: list[int], k: int, rows: torch.Tensor, ids: torch.Tensor | None = None) -> list[int]:
    """The head's ``k`` greedy drafts after the tokens ``known``, in PyTorch over the HF model's final
    states: row ``i`` reads token ``i + 1`` and the final state at ``i``; a later draft reads the
    head's own state before it.  ``rows``: the LM head's rows it predicts over (``ids``: their token
    ids; None: the whole vocabulary)."""
    with torch.no_grad():
        final = model(torch.tensor([known]), output_hidden_states=True).hidden_states[-1][0]
        tokens, prev, out = list(known[1:]), final[:-1], []
        for _ in range(k):
            g = head(model.model.embed_tokens(torch.tensor(tokens)), prev)[-1:]
            column = int((g @ rows.t()).argmax(-1))
            out.append(column if ids is None else int(ids[column]))
            tokens.append(out[-1])
            prev = torch.cat([prev, g])
    return out


def test_every_engine_draft_is_the_pytorch_heads_and_greedy_equals_stock(attended_head, engine, smollm2_dir, stock_llm):
    from vllm_depth.tools.train_draft_attention import load_draft_head
    from vllm_depth.tools.train_exit_heads import OutputSpace

    head, ids, model = load_draft_head(attended_head)
    space = OutputSpace(model, ids)
    stock = stock_llm(smollm2_dir)
    counters(engine, reset=True)
    checked = 0
    for prompt in PROMPTS[:3]:  # one request at a time: each step's row 0 is the prompt's
        engine.collective_rpc(_record, args=(True,))
        try:
            out = greedy(engine, [prompt], max_tokens=16)[0]
        finally:
            recorded = engine.collective_rpc(_record, args=(False,))[0]
        assert list(out.outputs[0].token_ids) == list(greedy(stock, [prompt], max_tokens=16)[0].outputs[0].token_ids)
        seq = list(out.prompt_token_ids) + list(out.outputs[0].token_ids)
        for (n, drafts), in (step for step in recorded if step):
            if drafts:
                assert drafts == _reference(head, model, seq[:n], len(drafts), space.weight, ids), (prompt, n, drafts)
                checked += 1
    c = counters(engine)
    assert 0 < c["accepted"] < c["drafted"]  # steps that verified several tokens, and rejections
    assert checked > 10


def test_greedy_mixed_batch_of_eight_equals_stock(engine, smollm2_dir, stock_llm):
    counters(engine, reset=True)
    ids = [list(o.outputs[0].token_ids) for o in greedy(engine, PROMPTS, max_tokens=24)]
    assert ids == [list(o.outputs[0].token_ids) for o in greedy(stock_llm(smollm2_dir), PROMPTS, max_tokens=24)]
    assert counters(engine)["accepted"] > 0


def test_sampling_keeps_the_target_distribution(engine, smollm2_dir, stock_llm):
    """Temperature 0.8: the tokens after the first (drawn through the head's drafts, verification and
    vLLM's rejection sampling) follow the same distribution as stock vLLM's (two-sample chi-square)."""
    from collections import Counter

    from vllm import SamplingParams

    n, prompt = 400, "def fibonacci(n):\n"

    def sample(llm, seed0):
        params = [SamplingParams(temperature=0.8, max_tokens=3, seed=seed0 + i) for i in range(n)]
        return [tuple(o.outputs[0].token_ids[1:3]) for o in llm.generate([prompt] * n, params, use_tqdm=False)]

    counters(engine, reset=True)
    a, b = Counter(sample(stock_llm(smollm2_dir), 0)), Counter(sample(engine, 100_000))
    c = counters(engine)
    assert 0 < c["accepted"] < c["drafted"]  # both branches of rejection sampling ran
    common = [k for k in set(a) | set(b) if a[k] + b[k] >= 10]
    table = [[a[k] for k in common] + [n - sum(a[k] for k in common)],
             [b[k] for k in common] + [n - sum(b[k] for k in common)]]
    assert len(common) >= 3
    assert chi_square_pvalue(table) > 0.001, table


def _wrong_drafts(worker, on: bool):
    """``on``: every draft names another token than the head predicts (the reduced vocabulary's column ->
    token map shifted by one) and a 4-step backoff; else the head's own drafts at full length again."""
    drafter = worker.model_runner.drafter
    drafts = drafter.drafts
    if on:
        def shifted(normed, logits_of=type(drafts).head_logits):
            out = logits_of(drafts, normed)
            return out._replace(columns=out.columns.roll(1))

        drafts.head_logits = shifted
    else:
        del drafts.head_logits
    drafter.configure(None, None, 4 if on else 0)


def test_drafts_that_do_not_pay_back_off_to_plain_steps(engine, smollm2_dir, stock_llm):
    engine.collective_rpc(_wrong_drafts, args=(True,))
    try:
        counters(engine, reset=True)
        ids = [list(o.outputs[0].token_ids) for o in greedy(engine, PROMPTS[:1], max_tokens=64)]
        c = counters(engine)
    finally:
        engine.collective_rpc(_wrong_drafts, args=(False,))
    assert ids == [list(o.outputs[0].token_ids) for o in greedy(stock_llm(smollm2_dir), PROMPTS[:1], max_tokens=64)]
    # the plan drafts while one draft token's expected yield (the request's decaying acceptance) beats
    # its measured cost, then probes at doubling waits: most of the 64 steps are plain
    assert c["plain_steps"] > 40 and c["proposals"] < 64 // 3, c


# -- vLLM's own EAGLE proposer with a head trained here --------------------------------------


@pytest.fixture(scope="module")
def eagle_dir(tiny_dir, tmp_path_factory) -> str:
    from vllm_depth.tools.train_draft_attention import train_draft_attention

    out = str(tmp_path_factory.mktemp("eagle") / "head")
    train_draft_attention(tiny_dir, out=out, steps=60, chunks=8, self_text=32, self_tokens=48, fmt="eagle",
                          progress=False)
    return out


def _record_eagle(worker, start: bool):
    """From now (``start``) keep the drafts of vLLM's EAGLE proposer; else return them."""
    drafter = worker.model_runner.drafter
    if start:
        drafter._recorded, propose = [], drafter.propose

        def recording(*args, **kwargs):
            out = propose(*args, **kwargs)
            drafter._recorded.append(out.tolist())
            return out

        drafter.propose = recording
        return None
    return drafter._recorded


def test_vllms_eagle_loads_the_exported_head_and_drafts_as_the_pytorch_head(engines, eagle_dir, tiny_dir, stock_llm):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from vllm_depth.tools.train_draft_attention import TorchAttentionDraftHead

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    head = TorchAttentionDraftHead(model, reduced=False, eagle=True)
    state = {("fc.weight" if k == "fc.weight" else "layer." + k[len("layers.0."):]): v.float()
             for k, v in load_file(f"{eagle_dir}/model.safetensors").items()}
    assert not head.load_state_dict(state, strict=False).unexpected_keys
    # leased: _record_eagle leaves its recorder in the proposer
    with engines.lease(tiny_dir, speculative_config={"method": "eagle", "model": eagle_dir, "num_speculative_tokens": 2},
                       **EAGER) as llm:
        llm.collective_rpc(_record_eagle, args=(True,))
        out = greedy(llm, PROMPTS[:1], max_tokens=8)[0]
        first = llm.collective_rpc(_record_eagle, args=(False,))[0][0][0]  # after the prefill
        same = [list(o.outputs[0].token_ids) for o in greedy(llm, PROMPTS[:3], max_tokens=16)]
    known = list(out.prompt_token_ids) + [out.outputs[0].token_ids[0]]
    assert first == _reference(head.eval(), model, known, 2, model.lm_head.weight.detach().float())
    assert same == [list(o.outputs[0].token_ids) for o in greedy(stock_llm(tiny_dir), PROMPTS[:3], max_tokens=16)]
