"""Pruned, reordered and repeated schedules against a rearranged Hugging Face model.

Teacher-forced log-probabilities agree within 1e-3; greedy generations are
identical or first differ where the reference is at a near-tie (1e-3).
"""

from __future__ import annotations

import pytest
import reference as ref
from conftest import EAGER, PROMPTS, greedy, prompt_logprobs

SCHEDULES = {
    # tiny has 6 layers
    "tiny-pruned": ("tiny", [0, 1, 3, 5]),
    "tiny-reordered": ("tiny", [0, 2, 1, 3, 5, 4]),
    "tiny-repeated": ("tiny", [0, 1, 1, 2, 3, 3, 3, 4, 5]),
    # SmolLM2 has 30 layers; drop 6 middle ones
    "smollm2-pruned": ("smollm2", [i for i in range(30) if not 12 <= i < 18]),
    "smollm2-shared": ("smollm2", [i if i % 2 == 0 or i < 10 else i - 1 for i in range(30)]),
}

TOL = 1e-3


@pytest.fixture(scope="module", params=list(SCHEDULES))
def case(request, engines, tiny_dir, smollm2_dir):
    which, schedule = SCHEDULES[request.param]
    path = tiny_dir if which == "tiny" else smollm2_dir
    compiled = request.param == "tiny-repeated"  # one schedule through torch.compile too
    llm = engines.llm(path, model_impl="depth", hf_overrides={"depth": {"layer_schedule": schedule}},
                      **({} if compiled else EAGER))
    model = ref.hf_model(path, schedule)
    return llm, model, schedule


def test_teacher_forced_logprobs_match_reference(case):
    llm, model, _ = case
    tok = llm.get_tokenizer()
    seqs = [tok.encode(p + " return the answer quickly, then stop.") for p in PROMPTS[:4]]
    got = prompt_logprobs(llm, seqs)
    for ids, lp in zip(seqs, got):
        want = ref.teacher_forced(model, ids)
        worst = max(abs(a - b) for a, b in zip(lp, want))
        assert worst < TOL, f"max |dlogp| {worst:.2e}"


def test_greedy_matches_reference_up_to_near_ties(case):
    llm, model, _ = case
    outs = greedy(llm, PROMPTS, max_tokens=24, ignore_eos=True)  # the reference ignores EOS too
    for p, out in zip(PROMPTS, outs):
        ids = out.prompt_token_ids
        expected = ref.greedy(model, ids, 24)
        ok, detail = ref.first_divergence_is_near_tie(model, ids, list(out.outputs[0].token_ids), expected)
        assert ok, f"{p[:30]!r}: {detail}"


def test_one_weight_set_per_physical_layer_one_kv_cache_per_position(case):
    llm, model, schedule = case
    facts = llm.collective_rpc(_model_facts)[0]
    # every logical position has its own attention module and KV cache
    assert facts["attention_modules"] == len(schedule)
    assert facts["kv_caches"] == len(schedule)
    # weights: each used physical layer once, pruned layers not at all.  The
    # rearranged HF model holds exactly those (repeats are one module object,
    # the tied LM head is the embedding), so its unique parameters are the expected bytes.
    expected = sum(p.numel() * p.element_size() for p in model.parameters())
    assert facts["weight_bytes"] == expected


def _model_facts(worker) -> dict:
    from vllm.model_executor.layers.attention import Attention

    from vllm_depth.compat.kernels import model_weight_bytes

    runner = worker.model_runner
    model = runner.model
    return {
        "attention_modules": sum(isinstance(m, Attention) for m in model.modules()),
        "kv_caches": len(runner.kv_caches),
        "weight_bytes": model_weight_bytes(model),
    }
