"""Draft heads that read the previous token's final state (``train-exits --prev-state``).

A self-draft after E layers (E = 0: the token's embedding alone) whose exit head
also reads the verifier's final state of the token before, as EAGLE's draft
reads the target's features.  Checked: the config and argument errors, the
head against the documented formula, the engine's drafts against that formula
on the HF model's states, and greedy output against stock vLLM.
"""

from __future__ import annotations

import pytest
import reference_exit as rx
import torch
from conftest import EAGER, PROMPTS, greedy

from vllm_depth.config import PROPOSER, DepthConfigError, parse_depth_config

HEADS = {"layers": [0, 2], "mlp_width": 0, "vocab": 8192, "prev_state": True}


# -- pure logic ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth, field", [
    ({"draft_layers": 0}, "depth.draft_layers"),  # no head over the embedding
    ({"exit_heads": {**HEADS, "layers": [2]}, "draft_layers": 0}, "depth.draft_layers"),
    ({"exit_heads": HEADS, "exit_layers": [2]}, "depth.exit_heads"),  # they draft only
    ({"exit_heads": {**HEADS, "prev_state": 1}}, "depth.exit_heads"),
    ({"exit_heads": {**HEADS, "prev_state": False}}, "depth.exit_heads"),  # layer 0 needs prev_state
])
def test_bad_draft_head_configs_name_the_field(depth, field):
    with pytest.raises(DepthConfigError, match=field):
        parse_depth_config(depth, 6, 64)


def test_a_draft_head_over_the_embedding_parses_and_round_trips():
    depth = parse_depth_config({"exit_heads": HEADS, "draft_layers": 0}, 6, 64)
    assert depth.draft_positions() == () and depth.exit_heads.prev_state
    assert depth.to_dict()["exit_heads"] == HEADS


def test_train_exits_allows_layer_0_only_for_draft_heads(tiny_dir):
    from vllm_depth.tools.arguments import TrainExitsError, check_train_exits

    with pytest.raises(TrainExitsError, match="--exit-layers"):
        check_train_exits(tiny_dir, [0, 2], 10, 0, 8192, None, None, 10, "bfloat16")
    check_train_exits(tiny_dir, [0, 2], 10, 0, 8192, None, None, 10, "bfloat16", prev_state=True)


def test_prev_states_are_the_rows_that_sampled_each_requests_last_token():
    """The verifier's rows: 1 + draft tokens per request, in batch order (vLLM's Medusa layout)."""
    from types import SimpleNamespace

    from vllm_depth.spec_decode.self_draft import SelfDraft

    d = SelfDraft.__new__(SelfDraft)
    states = torch.arange(8.0)[:, None]
    # three requests that verified 2, 0 and 3 draft tokens; they kept 2, 1 and 4 tokens
    d.take_verifier_states(states, SimpleNamespace(num_draft_tokens=[2, 0, 3]))
    sampled = [[5, 6], [7], [8, 9, 10, 11]]
    assert d._prev_states(sampled, [0, 1, 2])[:, 0].tolist() == [1.0, 3.0, 7.0]
    assert d._prev_states(sampled, [2])[:, 0].tolist() == [7.0]
    d.take_verifier_states(states[:3], None)  # a plain step: one row per request
    assert d._prev_states([[1], [2], [3]], [0, 2])[:, 0].tolist() == [0.0, 2.0]


def test_draft_choice_over_a_reduced_vocabulary_equals_it_over_the_full_logits():
    """The draft reads a reduced head's logits as they are (no full-size scatter): the same tokens and
    confidences as over the full-size logits with -inf outside the reduced vocabulary."""
    from vllm_depth.spec_decode.self_draft import draft_choice

    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([3, 8, 20, 41, 77])
    sub, rest = torch.randn(4, 5, generator=g) * 3, torch.randn(4, generator=g)
    full = torch.full((4, 100), float("-inf"))
    full[:, ids] = sub
    for threshold in (0.0, 0.3, 0.6):
        token, confident = draft_choice(sub, rest, threshold, ids)
        want_token, want_confident = draft_choice(full, rest, threshold)
        assert token.tolist() == want_token.tolist() and confident.tolist() == want_confident.tolist()
    assert set(token.tolist()) <= set(ids.tolist())


# -- trained on the tiny model, served by a real engine ------------------------------------


@pytest.fixture(scope="module")
def drafted(tiny_dir, tmp_path_factory):
    """Draft heads at 0 and 2 trained on the tiny model into a copy of it."""
    from vllm_depth.tools.train_exit_heads import train_exits

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("draft_heads") / "ckpt"
    path, _ = train_exits(tiny_dir, [0, 2], out=str(out), steps=40, chunks=40, seq_len=64, eval_chunks=4,
                          progress=False, prev_state=True)
    return path


def test_calibrate_refuses_draft_heads_before_any_work(drafted):
    from vllm_depth.tools.arguments import CalibrateError, check_calibrate

    with pytest.raises(CalibrateError, match="depth.exit_heads.prev_state"):
        check_calibrate(drafted, [2], 0.9, 0.1, "benchmarks/prompts/code.jsonl", None, [0.9])


def test_draft_heads_round_trip_through_the_checkpoint(drafted):
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from vllm_depth.tools.train_exit_heads import OutputSpace, load_heads

    cfg = json.loads((Path(drafted) / "config.json").read_text())
    assert cfg["depth"] == {"exit_heads": HEADS}
    model = AutoModelForCausalLM.from_pretrained(drafted, dtype=torch.float32)
    (loaded, ids), formula = load_heads(drafted), rx.load_exit_heads(drafted)
    vocab = OutputSpace(model, ids)
    x, prev = torch.randn(5, cfg["hidden_size"]), torch.randn(5, cfg["hidden_size"])
    with torch.no_grad():
        for layer in (0, 2):
            assert loaded[layer].prev.weight.abs().sum() > 0  # trained away from its zero start
            mine = vocab.logits(loaded[layer], (x, prev))
            logits, rest = formula[layer](model, x, prev)
            assert torch.allclose(mine[:, :-1], logits[:, ids], atol=1e-4)
            assert torch.allclose(mine[:, -1], rest, atol=1e-4)


def _record(worker, start: bool):
    """From now (``start``) keep every ``propose`` result of the drafter; else return them."""
    drafter = worker.model_runner.drafter
    if start:
        drafter._recorded, propose = [], type(drafter).propose

        def recording(*args, **kwargs):
            out = propose(drafter, *args, **kwargs)
            drafter._recorded.append([list(x) for x in out])
            return out

        drafter.propose = recording
        return None
    return drafter._recorded


def _configure(worker, draft):
    worker.model_runner.drafter.configure(draft, 2, 0, 0.0)


def _reference_drafts(model, heads, prompt_ids: list[int], first: int, layer: int) -> list[int]:
    """Two greedy draft tokens after ``first`` (the engine's first sampled token), from the HF model's
    states: the head after ``layer`` layers over ``first``, reading the final state that sampled it;
    the second reads the first's head output in place of a final state."""
    out = []
    with torch.no_grad():
        hs = model(torch.tensor([prompt_ids + [first]]), output_hidden_states=True).hidden_states
        state, prev = hs[layer][0, -1:], hs[-1][0, -2:-1]
        for _ in range(2):
            logits, _ = heads[layer](model, state, prev)
            token = int(logits.argmax(-1))
            out.append(token)
            prev = heads[layer].hidden(state, prev)
            ids = torch.tensor([prompt_ids + [first] + out])
            state = model(ids, output_hidden_states=True).hidden_states[layer][0, -1:]
    return out


def test_engine_drafts_as_the_formula_and_greedy_equals_stock(engines, drafted, tiny_dir, stock_llm):
    from transformers import AutoModelForCausalLM

    stock = stock_llm(tiny_dir)
    # leased: the test reconfigures the drafter (_configure) and records its proposals (_record)
    with engines.lease(drafted, model_impl="depth",
                       hf_overrides={"depth": {"exit_heads": HEADS, "draft_layers": 0, "draft_backoff": 0}},
                       speculative_config={"model": PROPOSER, "num_speculative_tokens": 2}, **EAGER) as llm:
        model = AutoModelForCausalLM.from_pretrained(drafted, dtype=torch.float32)
        heads = rx.load_exit_heads(drafted)
        for draft, layer in (((), 0), ((0, 1), 2)):  # over the embedding; after two layers (eager)
            llm.collective_rpc(_configure, args=(draft,))
            llm.collective_rpc(_record, args=(True,))
            out = greedy(llm, PROMPTS[:1], max_tokens=2)[0]
            first = out.outputs[0].token_ids[0]
            engine = next(d[0] for d in llm.collective_rpc(_record, args=(False,))[0] if d and d[0])
            assert engine == _reference_drafts(model, heads, list(out.prompt_token_ids), first, layer), layer
            ids = [list(o.outputs[0].token_ids) for o in greedy(llm, PROMPTS, max_tokens=24)]
            assert ids == [list(o.outputs[0].token_ids) for o in greedy(stock, PROMPTS, max_tokens=24)], layer
