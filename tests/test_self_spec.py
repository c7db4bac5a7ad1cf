"""Self-speculative decoding: drafts from the model's own layers, verified by the full model.

Lossless paths are checked against stock vLLM: greedy output token for token
(fp32: in bf16 vLLM's own multi-token verification rounds differently from
one-token decode, for its ngram method too), and at temperature > 0 the
distribution of sampled tokens (a two-sample chi-square test).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EAGER, PROMPTS, engine_config, greedy, make_llm, run_cli, vllm_server

from vllm_depth.config import PROPOSER
from vllm_depth.spec_decode.engine_args import self_spec_engine_args
from vllm_depth.spec_decode.policy import (
    DraftPolicy,
    StepTimes,
    _RequestState,
    expected_tokens,
    monotone,
)


def self_spec(k: int, **draft) -> dict:
    return dict(model_impl="depth", hf_overrides={"depth": draft},
                speculative_config={"model": PROPOSER, "num_speculative_tokens": k})


def counters(llm, reset=False):
    from vllm_depth.tools.bench import draft_counters

    return draft_counters(llm, reset=reset)


# -- pure logic ---------------------------------------------------------------------------


def _timed(policy: DraftPolicy, fixed: float, per_row: float, flat_rows: int = 4) -> DraftPolicy:
    """Step times measured at 1 to 64 rows: flat up to ``flat_rows`` (memory-bound), then
    ``per_row`` seconds a row more."""
    for rows in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
        for _ in range(30):
            policy.timed_step(rows, fixed + per_row * max(0, rows - flat_rows))
    return policy


def test_step_times_interpolate_between_measured_row_counts():
    times = StepTimes()
    assert times.predict(3) is None
    times.add(1, 0.030)
    assert times.predict(5) == pytest.approx(0.030)  # one point: flat
    times.add(16, 0.060)
    assert times.predict(8) == pytest.approx(0.030 + 7 * 0.002)
    assert times.predict(32) == pytest.approx(0.060 + 16 * 0.002)  # past the range: the nearest slope
    times.add(4, 0.080)  # noise: 4 rows measured slower than 16
    assert times.predict(4) == times.predict(16) == pytest.approx(0.070)  # made non-decreasing
    assert monotone([(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)]) == [(1, 2.0), (2, 2.0), (3, 2.0), (4, 5.0)]


def test_plan_drafts_at_batch_one_and_less_then_nothing_as_the_batch_grows():
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    policy = _timed(DraftPolicy(k_max=2, probe=16), fixed=0.030, per_row=0.002)
    policy.draft_cost = 0.001
    for r in range(32):
        policy.states[str(r)] = _RequestState(hits=5.0, trials=10.0)  # acceptance 0.5
    lengths, idle = {}, {}
    for b in (1, 2, 8, 32):
        lengths[b] = sum(policy.plan([str(r) for r in range(b)]))
        idle[b] = policy.nothing_pays
    assert lengths[1] == 2 and lengths[2] >= 2  # a verified row is almost free
    assert lengths[8] < 16  # each row costs: fewer draft tokens than 2 per request
    assert lengths[32] == 0  # and under load none, not even a probe (no draft could pay)
    assert idle == {1: False, 2: False, 8: False, 32: True}


def test_plan_gives_the_draft_tokens_to_the_requests_whose_drafts_are_accepted():
    policy = _timed(DraftPolicy(k_max=2, probe=16), fixed=0.030, per_row=0.002, flat_rows=2)
    policy.draft_cost = 0.0005
    policy.states["good"] = _RequestState(hits=9.0, trials=10.0)
    policy.states["poor"] = _RequestState(hits=1.0, trials=10.0)
    good, poor = policy.plan(["good", "poor"] + [f"x{i}" for i in range(6)])[:2]
    assert good == 2 and poor <= 1


def test_policy_probes_ever_more_rarely_while_drafting_does_not_pay():
    policy = _timed(DraftPolicy(k_max=3, probe=4, max_backoff=4), fixed=0.030, per_row=0.0)
    policy.draft_cost = 0.025  # measured: a draft token costs most of a step
    policy.states["r"] = _RequestState(hits=0.0, trials=20.0)  # measured: nothing accepted
    lengths = [policy.plan(["r"])[0] for _ in range(60)]
    probes = [i for i, k in enumerate(lengths) if k]
    assert set(lengths) == {0, 1}
    assert probes == [0, 4, 12, 28, 44]  # waits of 4, 8, 16, then at most 4 x 4
    # drafting pays again (acceptance measured high, drafts cheap): full drafts, and the backoff starts over
    policy.states["r"].hits, policy.states["r"].trials = 40.0, 40.0
    policy.draft_cost = 0.001
    assert policy.plan(["r"]) == [3]
    policy.states["r"].hits, policy.states["r"].trials = 0.0, 40.0
    policy.draft_cost = 0.025
    assert [policy.plan(["r"])[0] for _ in range(6)] == [1, 0, 0, 0, 1, 0]


def test_a_new_request_starts_from_the_prior_whatever_finished_before():
    policy = _timed(DraftPolicy(k_max=3, probe=4, max_backoff=4), fixed=0.030, per_row=0.0)
    policy.draft_cost = 0.001
    assert policy.plan(["fresh"]) == [3]  # the prior (acceptance 0.5) says a cheap draft pays
    policy.states["a"] = _RequestState(hits=0.0, trials=20.0)  # measured: nothing accepted
    for _ in range(30):
        assert policy.plan(["a"])[0] <= 1
    policy.forget_except(set())
    assert policy.states == {}
    assert policy.plan(["b"]) == [3]  # what "a" measured does not reach "b"


def test_policy_learns_acceptance_from_accepted_counts():
    policy = _timed(DraftPolicy(k_max=3, probe=4), fixed=0.030, per_row=0.0)
    policy.draft_cost = 0.001
    for _ in range(10):
        assert policy.plan(["r"]) == [3]
        policy.proposed("r", 3)
        assert policy.observe("r", 4) == (3, 3)  # all three accepted, plus the bonus token
    assert policy.states["r"].alpha() > 0.9
    policy.proposed("r", 3)
    assert policy.observe("r", 1) == (0, 3)  # all rejected


def test_first_token_acceptance_is_the_share_of_drafts_whose_first_token_was_accepted():
    from vllm_depth.tools.bench import _draft_report

    r = _draft_report({"proposals": 10, "drafted": 20, "accepted": 9, "judged": 10, "first_accepted": 6})
    assert r["first_token_acceptance"] == 0.6 and r["acceptance_rate"] == 0.45
    assert _draft_report({"proposals": 0, "drafted": 0, "accepted": 0})["first_token_acceptance"] is None


def test_a_draft_never_accepted_stops_even_when_it_is_cheap():
    # the prior's pseudo-trial fades with the evidence: the estimate falls towards 0, not to a floor
    policy = _timed(DraftPolicy(k_max=2, probe=4), fixed=0.030, per_row=0.0)
    policy.draft_cost = 0.0015
    lengths = []
    for _ in range(40):
        lengths.append(policy.plan(["r"])[0])
        if lengths[-1]:
            policy.proposed("r", lengths[-1])
        policy.observe("r", 1)  # nothing accepted
    assert lengths[0] == 2 and policy.states["r"].alpha() < 0.02
    assert sum(1 for k in lengths[-30:] if k) <= 3  # probes only


def test_until_a_step_is_timed_every_request_drafts_the_full_length():
    assert DraftPolicy(k_max=3, probe=16).plan(["a", "b"]) == [3, 3]
    assert _timed(DraftPolicy(k_max=3, probe=0), 0.03, 0.01).plan(["a"] * 40) == [3] * 40  # probe 0: always


def test_self_spec_arguments_merge_into_the_depth_config():
    depth, spec = self_spec_engine_args({"exit_heads": {"layers": [8], "vocab": 16}, "draft_schedule": [0, 2]},
                                        {"draft_layers": 8, "num_speculative_tokens": 2})
    assert depth == {"exit_heads": {"layers": [8], "vocab": 16}, "draft_layers": 8, "draft_tokens": 2}
    assert spec == {"model": PROPOSER, "num_speculative_tokens": 2}
    with pytest.raises(ValueError, match="unknown key.*'draft_depth'.*allowed"):
        self_spec_engine_args({}, {"draft_depth": 3})
    with pytest.raises(ValueError, match="names no draft"):
        self_spec_engine_args({}, {"num_speculative_tokens": 3})
    with pytest.raises(ValueError, match="num_speculative_tokens 0 is not an int >= 1"):
        self_spec_engine_args({}, {"draft_layers": 3, "num_speculative_tokens": 0})


# -- errors before any work ---------------------------------------------------------------


def test_self_draft_without_the_depth_model_is_refused_at_start(tiny_dir):
    # through LLM() itself: the refusals below (and test_parallel's) are checked on the engine config
    # it builds first, where the plugin makes them (patches.engine_args, patches.registry)
    with pytest.raises(ValueError, match="model_impl='depth'"):
        make_llm(tiny_dir, speculative_config={"model": PROPOSER, "num_speculative_tokens": 2})


def test_self_draft_without_a_draft_is_refused_at_start(tiny_dir):
    with pytest.raises(ValueError, match="depth.draft_layers .* or depth.draft_schedule"):
        engine_config(tiny_dir, model_impl="depth", speculative_config={"model": PROPOSER, "num_speculative_tokens": 2})


def test_bad_draft_layers_name_the_field(tiny_dir):
    with pytest.raises(ValueError, match=r"depth.draft_layers: 6; the schedule has 6 positions, so 1..5"):
        engine_config(tiny_dir, **self_spec(2, draft_layers=6))


def test_bench_refuses_a_bad_self_spec_before_starting_an_engine():
    r = run_cli("bench", "--model", "tiny", "--prompts", "benchmarks/prompts/code.jsonl",
                "--self-spec", '{"draft_layer": 3}', timeout=120)
    assert r.returncode != 0
    assert "--self-spec: unknown key(s) ['draft_layer']" in r.stderr


# -- SmolLM2 (real acceptance): lossless, zero extra memory -------------------------------


@pytest.fixture(scope="module")
def stock(smollm2_dir, stock_llm):
    return stock_llm(smollm2_dir)


@pytest.fixture(scope="module")
def spec(engines, smollm2_dir):
    # draft_backoff 0: always draft the full length, so every step speculates; eager (the
    # compiled self-draft engine is the tiny skip-set test's, the compiled draft graph
    # test_compiled_draft_equals_the_eager_layers_for_every_row's)
    return engines.llm(smollm2_dir, **self_spec(3, draft_layers=24, draft_backoff=0), **EAGER)


def _ids(outs):
    return [list(o.outputs[0].token_ids) for o in outs]


def test_greedy_batch_of_one_equals_stock_vllm(stock, spec):
    counters(spec, reset=True)
    for prompt in PROMPTS[:4]:
        assert _ids(greedy(spec, [prompt], max_tokens=48)) == _ids(greedy(stock, [prompt], max_tokens=48))
    c = counters(spec)
    assert c["drafted"] > 0 and 0 < c["accepted"] < c["drafted"]  # accepted and rejected drafts both seen


def _count_draft_rpcs(worker, start: bool) -> int:
    """Count the engine core's ``take_draft_token_ids`` RPCs from now (``start``), or stop counting and
    return the count (the worker's own method again: the engine is shared)."""
    if start:
        take = worker.take_draft_token_ids  # bound (the worker wrapper forwards to the worker)

        def counted(*args, **kwargs):
            worker._depth_draft_rpcs += 1
            return take(*args, **kwargs)

        worker._depth_draft_rpcs = 0
        worker.take_draft_token_ids = counted
        return 0
    del worker.take_draft_token_ids
    return worker._depth_draft_rpcs


def test_drafts_come_back_with_the_step_output_without_a_second_rpc(stock, spec):
    # patches.worker.model_runner (sample_tokens) and patches.engine_core: the engine core never asks the
    # worker for the drafts, and they still reach the scheduler (verified and accepted) losslessly
    spec.collective_rpc(_count_draft_rpcs, args=(True,))
    try:
        counters(spec, reset=True)
        assert _ids(greedy(spec, PROMPTS[:2], max_tokens=32)) == _ids(greedy(stock, PROMPTS[:2], max_tokens=32))
        assert counters(spec)["accepted"] > 0
    finally:
        rpcs = spec.collective_rpc(_count_draft_rpcs, args=(False,))
    assert rpcs == [0]


def _compiled_against_eager(worker):
    import torch
    from vllm.forward_context import set_forward_context

    from vllm_depth.compat.attention import draft_attention

    drafter = worker.model_runner.drafter
    rows, pos = torch.arange(3), torch.tensor([5, 9, 2])
    ids = torch.tensor([42, 1337, 7], dtype=torch.int32)
    metadata, slots = draft_attention(drafter.runner, rows, pos)
    out = []
    for run in (lambda: drafter.drafts.forward(ids, pos), lambda: drafter.drafts.forward(ids, pos, drafter.draft)):
        with set_forward_context(metadata, drafter.vllm_config, num_tokens=3, slot_mapping=slots):
            out.append(run().clone())
    return ((out[0] - out[1]).abs().amax(dim=-1) / out[1].abs().amax(dim=-1)).tolist()  # relative, per row


def test_compiled_draft_equals_the_eager_layers_for_every_row(spec):
    # the compiled graph is traced once, unguarded: inputs of another dtype were read wrongly past row 0
    assert max(spec.collective_rpc(_compiled_against_eager)[0]) < 1e-4


def test_greedy_mixed_batch_of_eight_equals_stock_vllm(stock, spec):
    counters(spec, reset=True)
    assert _ids(greedy(spec, PROMPTS, max_tokens=48)) == _ids(greedy(stock, PROMPTS, max_tokens=48))
    assert counters(spec)["accepted"] > 0
    # eight copies of one prompt: every request's drafts fare as the prompt's alone
    counters(spec, reset=True)
    greedy(spec, PROMPTS[:1], max_tokens=32)
    alone = counters(spec, reset=True)["accepted_of_full"]
    greedy(spec, PROMPTS[:1] * 8, max_tokens=32)
    together = counters(spec)["accepted_of_full"]
    assert {a: 8 * n for a, n in alone.items()} == together


def test_sampling_keeps_the_target_distribution(stock, spec):
    """Temperature 0.8: the tokens after the first (drawn through draft, verification and vLLM's
    rejection sampling) follow the same distribution as stock vLLM's (two-sample chi-square)."""
    from collections import Counter

    from vllm import SamplingParams

    n, prompt = 400, "def fibonacci(n):\n"

    def sample(llm, seed0):
        params = [SamplingParams(temperature=0.8, max_tokens=3, seed=seed0 + i) for i in range(n)]
        outs = llm.generate([prompt] * n, params, use_tqdm=False)
        return [tuple(o.outputs[0].token_ids[1:3]) for o in outs]

    counters(spec, reset=True)
    a, b = Counter(sample(stock, 0)), Counter(sample(spec, 100_000))
    c = counters(spec)
    assert c["accepted"] > 0 and c["accepted"] < c["drafted"]  # both branches of rejection sampling ran
    common = [k for k in set(a) | set(b) if a[k] + b[k] >= 10]
    table = [[a[k] for k in common] + [n - sum(a[k] for k in common)],
             [b[k] for k in common] + [n - sum(b[k] for k in common)]]
    assert len(common) >= 3  # the test has categories to compare
    assert chi_square_pvalue(table) > 0.001, table


def chi_square_pvalue(table: list[list[int]]) -> float:
    """p-value of Pearson's chi-square test of homogeneity of a 2 x C contingency table."""
    import torch

    rows, cols = [sum(r) for r in table], [sum(c) for c in zip(*table)]
    total = sum(rows)
    stat = sum((table[i][j] - rows[i] * cols[j] / total) ** 2 / (rows[i] * cols[j] / total)
               for i in range(2) for j in range(len(cols)) if cols[j])
    df = sum(1 for c in cols if c) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_chi_square_pvalue_tells_alike_from_unlike():
    assert chi_square_pvalue([[50, 50, 100], [52, 48, 100]]) > 0.5
    assert chi_square_pvalue([[90, 10, 100], [10, 90, 100]]) < 1e-6


def test_no_extra_weights_and_no_extra_kv_per_token(stock, spec):
    from vllm_depth.tools.bench import kv_cache, param_bytes

    assert param_bytes(spec) == param_bytes(stock)
    s, d = kv_cache(stock), kv_cache(spec)
    assert d["bytes_per_token"] == s["bytes_per_token"] and d["layers"] == s["layers"] == 30


# -- tiny: skip-set drafts, and serving -----------------------------------------------------


@pytest.fixture(scope="module")
def skip_set(engines, tiny_dir):
    """The compiled skip-set self-draft on tiny, drafting the full length every step (a test that
    wants another ``draft_backoff`` sets it through ``_draft_backoff`` and back)."""
    return engines.llm(tiny_dir, **self_spec(2, draft_schedule=[0, 1, 4], draft_backoff=0))


def _draft_backoff(worker, backoff: int) -> None:
    worker.model_runner.drafter.configure(None, None, backoff)


CODE_PROMPTS = Path(__file__).parents[1] / "benchmarks" / "prompts" / "code.jsonl"


def test_gemma3_skip_set_draft_in_a_fresh_engines_first_batch_equals_stock(engines, gemma3_dir, stock_llm):
    """Gemma 3 (sliding-window and global layers in KV-cache groups of their own), a skip-set draft
    (layers 8-11 skipped), eager: the engine's first step is a batch of 8 prompts.  Eager on the CPU,
    vLLM runs no warm-up pass, and the draft stack must not be warmed up in that first step, where it
    would write a skip set's K/V over the prompts' (these 8 requests all differed from stock then)."""
    from vllm_depth.tools.bench import load_prompts

    code = [p.text for p in load_prompts(str(CODE_PROMPTS))[:8]]
    want = _ids(greedy(stock_llm(gemma3_dir), code, max_tokens=24, ignore_eos=True))
    draft = dict(draft_schedule=[0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17], draft_backoff=0)
    with engines.lease(gemma3_dir, **self_spec(2, **draft), **EAGER) as llm:  # fresh: its first step is this batch
        assert _ids(greedy(llm, code, max_tokens=24, ignore_eos=True)) == want
        c = counters(llm)
    assert c["drafted"] > 0 and c["accepted"] > 0, c


def test_skip_set_draft_greedy_equals_stock_vllm(skip_set, tiny_dir, stock_llm):
    want = _ids(greedy(stock_llm(tiny_dir), PROMPTS, max_tokens=24))
    counters(skip_set, reset=True)
    assert _ids(greedy(skip_set, PROMPTS, max_tokens=24)) == want
    assert counters(skip_set)["drafted"] > 0


def test_adaptive_draft_runs_undrafted_steps_as_plain_steps_and_equals_stock(skip_set, tiny_dir, stock_llm):
    """A step that verifies no draft is prepared and sampled as a plain decode step
    (``patches.worker.model_runner``); steps with drafts go through the rejection sampler."""
    want = _ids(greedy(stock_llm(tiny_dir), PROMPTS[:4], max_tokens=24))
    skip_set.collective_rpc(_draft_backoff, args=(3,))  # as draft_backoff 3 in the depth config
    try:
        counters(skip_set, reset=True)
        for prompt, ids in zip(PROMPTS[:4], want):
            assert _ids(greedy(skip_set, [prompt], max_tokens=24)) == [ids]
        c = counters(skip_set)
        assert c["drafted"] > 0 and c["plain_steps"] > 4 * 2, c  # more than the prefill steps
    finally:
        skip_set.collective_rpc(_draft_backoff, args=(0,))


def test_served_with_vllm_speculative_config_and_spec_metrics(own_engines, tiny_dir, tmp_path, stock_llm):
    import requests

    # eager: the compiled self-draft is the skip-set engine's
    args = ["--enforce-eager", "--hf-overrides", json.dumps({"depth": {"draft_layers": 3, "draft_backoff": 0}}),
            "--speculative-config", json.dumps({"model": PROPOSER, "num_speculative_tokens": 2})]
    stock = stock_llm(tiny_dir)
    want = [list(o.outputs[0].text for o in greedy(stock, [p], max_tokens=16))[0] for p in PROMPTS[:3]]
    with vllm_server(tiny_dir, tmp_path / "server.log", args) as base:
        for prompt, text in zip(PROMPTS[:3], want):
            r = requests.post(f"{base}/v1/completions", json={"model": tiny_dir, "prompt": prompt,
                                                              "max_tokens": 16, "temperature": 0}, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == text
        metrics = requests.get(f"{base}/metrics", timeout=30).text
        drafts = [line for line in metrics.splitlines() if line.startswith("vllm:spec_decode_num_draft_tokens_total")]
        assert drafts and float(drafts[0].split()[-1]) > 0
