"""Token-level early exit in vLLM against the independent reference (tests/reference_exit.py).

The same exit layer for every token and the same tokens, except where the
reference itself is at a near-tie (confidence or top-2 log-probabilities
within 1e-3); at batch 1 and in a mixed batch of 8.  Per-request controls:
a threshold that cannot fire gives stock vLLM's output and runs no check; a
request's output in a mixed batch equals its output alone.
"""

from __future__ import annotations

import pytest
import reference_exit as rx
import torch
from conftest import EAGER, PROMPTS
from transformers import AutoModelForCausalLM

from vllm_depth.tools.bench import exit_counters, start_exit_trace, take_exit_trace

N = 16  # new tokens
CASES = {
    # tiny (6 layers, random weights): saturation gives a mix of exits at 4 and full depth.
    # Compiled: the segments between exit points are torch.compile graphs.
    "tiny": ("tiny", {"exit_layers": [2, 4], "exit_criterion": "saturation", "exit_threshold": 0.7}),
    # SmolLM2 (30 layers): softmax 0.8 exits at 8, 16, 24 and full depth (eager: compile cost)
    "smollm2": ("smollm2", {"exit_layers": [8, 16, 24], "exit_criterion": "softmax", "exit_threshold": 0.8}),
    # Gemma 3 270M (18 layers: sliding-window and global, 262k vocabulary; eager)
    "gemma3": ("gemma3", {"exit_layers": [6, 12], "exit_criterion": "softmax", "exit_threshold": 0.8}),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference's small matmuls; the engines run in their own processes
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, engines):
    which, depth = CASES[request.param]
    path = request.getfixturevalue(f"{which}_dir")
    llm = engines.llm(path, model_impl="depth", hf_overrides={"depth": depth}, **({} if which == "tiny" else EAGER))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    model.path = path
    return llm, model, depth


def _params(extra=None):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True, extra_args=extra)


def generate_traced(llm, prompts, params):
    """(tokens, exit layers incl. the prefill token's full depth) per prompt, in one batch."""
    start_exit_trace(llm)
    outs = llm.generate(prompts, params, use_tqdm=False)
    trace = take_exit_trace(llm)
    full = llm.llm_engine.model_config.hf_config.num_hidden_layers
    return [(list(o.outputs[0].token_ids), [full] + trace.get(o.request_id, []), o.prompt_token_ids) for o in outs]


_REFERENCE: dict = {}  # (checkpoint, prompt ids, settings) -> trace: the tests of a case check the same runs


def reference(model, ids, **exit_kwargs) -> rx.ExitTrace:
    key = (model.path, tuple(ids), tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                               for k, v in exit_kwargs.items())))
    if key not in _REFERENCE:
        _REFERENCE[key] = rx.early_exit_greedy(model, ids, N, **exit_kwargs)
    return _REFERENCE[key]


def _check(model, results, **exit_kwargs):
    exited = 0
    for prompt, (tokens, exits, ids) in zip(PROMPTS, results):
        want = reference(model, ids, **exit_kwargs)
        ok, detail = rx.agrees(want, tokens, exits)
        assert ok, f"{prompt[:30]!r}: {detail}"
        exited += sum(e < len(model.model.layers) for e in exits)
    return exited


def _kwargs(depth, **override):
    kw = dict(exit_layers=depth["exit_layers"], threshold=depth["exit_threshold"],
              criterion=depth["exit_criterion"], min_layer=depth.get("min_layer", 0))
    kw.update(override)
    return kw


def test_batch_of_one_matches_reference(case):
    llm, model, depth = case
    results = [generate_traced(llm, [p], _params())[0] for p in PROMPTS]
    exited = _check(model, results, **_kwargs(depth))
    assert exited > 0, "the config was chosen so that some tokens exit"


def test_mixed_batch_of_eight_matches_reference(case):
    llm, model, depth = case
    results = generate_traced(llm, PROMPTS, _params())
    assert _check(model, results, **_kwargs(depth)) > 0


def test_always_fires_at_first_exit_point_at_or_after_min_layer(case):
    llm, model, depth = case
    layers = depth["exit_layers"]
    results = generate_traced(llm, PROMPTS, _params({"depth_exit_threshold": 0.0, "depth_min_layer": layers[0] + 1}))
    for _, exits, _ in results:
        if depth["exit_criterion"] == "softmax":  # a probability is always > 0
            assert exits[1:] == [layers[1]] * (N - 1)
    _check(model, results, **_kwargs(depth, threshold=0.0, min_layer=layers[0] + 1))


@pytest.fixture(scope="module")
def stock(case, stock_llm):
    """Stock vLLM's tokens, run as the depth engine runs (the session's engine: compiled for tiny,
    eager for the real models)."""
    _, model, _ = case
    return [list(o.outputs[0].token_ids) for o in stock_llm(model.path).generate(PROMPTS, _params(), use_tqdm=False)]


def test_threshold_that_cannot_fire_is_stock_vllm_and_runs_no_check(case, stock):
    llm, model, _ = case
    full = len(model.model.layers)
    before = exit_counters(llm)["checked"]
    for extra in ({"depth_exit_threshold": 1.0}, {"depth_exit": False}):
        results = generate_traced(llm, PROMPTS, _params(extra))
        assert [t for t, _, _ in results] == stock
        assert all(e == [full] * N for _, e, _ in results)
    assert exit_counters(llm)["checked"] == before


def test_each_request_in_a_mixed_batch_behaves_as_if_alone(case, stock):
    llm, _, depth = case
    settings = [None, {"depth_exit": False}, {"depth_exit_threshold": 0.0},
                {"depth_exit_threshold": 0.5, "depth_min_layer": depth["exit_layers"][-1]}]
    params = [_params(settings[i % 4]) for i in range(len(PROMPTS))]
    together = generate_traced(llm, PROMPTS, params)
    alone = [generate_traced(llm, [p], sp)[0] for p, sp in zip(PROMPTS, params)]
    for i, (a, b) in enumerate(zip(together, alone)):
        assert a[:2] == b[:2], f"request {i} ({settings[i % 4]}): batch {a[:2]} vs alone {b[:2]}"
        if settings[i % 4] == {"depth_exit": False}:
            assert a[0] == stock[i]


def test_bad_depth_args_are_refused_before_the_engine_and_it_still_serves(case):
    llm, _, _ = case
    with pytest.raises(ValueError, match=r"extra_args.depth_min_layer: -3 is not allowed; allowed: an int >= 0"):
        llm.generate(PROMPTS[:1], _params({"depth_min_layer": -3}), use_tqdm=False)
    with pytest.raises(ValueError, match=r"depth_exti"):
        llm.generate(PROMPTS[:1], _params({"depth_exti": 1}), use_tqdm=False)
    assert len(llm.generate(PROMPTS[:1], _params(), use_tqdm=False)[0].outputs[0].token_ids) == N


def test_a_stock_engine_ignores_depth_args_as_any_unknown_extra_arg(tiny_dir, stock_llm):
    """With the plugin installed, an engine without ``--model-impl depth`` stays stock: ``depth_*``
    keys, even ones a depth engine refuses, change nothing."""
    llm = stock_llm(tiny_dir)
    plain = llm.generate(PROMPTS, _params(), use_tqdm=False)
    with_args = llm.generate(PROMPTS, _params({"depth_min_layer": -3, "depth_foo": 1}), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in with_args] == [o.outputs[0].token_ids for o in plain]


def test_per_request_depth_statistics_reach_the_request_output(case):
    """The depth scheduler returns each request's mean exit layer with its output."""
    llm, _, _ = case
    start_exit_trace(llm)
    outs = llm.generate(PROMPTS, _params(), use_tqdm=False)
    trace = take_exit_trace(llm)
    for o in outs:
        layers = trace[o.request_id]
        stats = o.kv_transfer_params["depth"]
        assert stats["decode_tokens"] == len(layers) == N - 1
        assert stats["mean_exit_layer"] == pytest.approx(sum(layers) / len(layers), abs=1e-3)


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_recompute_runs_the_skipped_layers_in_the_next_step(which, engines, tiny_dir, smollm2_dir):
    """``kv_fill: "recompute"``: a token that exits is scheduled again with the next token and runs at
    full depth, so every cached K/V is exact.  Against the reference's recompute mode (the skipped
    layers run for their K/V), in a mixed batch of 8 and at batch 1, with prefix caching on (the
    second batch reuses the prompts' blocks); the propagate reference differs on some prompt, so
    the check tells the two fills apart.  Each request reports how many tokens were re-run."""
    name, depth = CASES[which]
    path = tiny_dir if name == "tiny" else smollm2_dir
    depth = {**depth, "kv_fill": "recompute"}
    # this test's alone: leased (shut down after it), not kept in the pool
    with engines.lease(path, model_impl="depth", hf_overrides={"depth": depth}, enable_prefix_caching=True,
                       **EAGER) as llm:
        start_exit_trace(llm)
        outs = llm.generate(PROMPTS, _params(), use_tqdm=False)
        trace = take_exit_trace(llm)
        alone = [generate_traced(llm, [p], _params())[0] for p in PROMPTS[:2]]
        again = generate_traced(llm, PROMPTS, _params())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    full = len(model.model.layers)
    kw = _kwargs(depth)
    differs = 0
    for i, o in enumerate(outs):
        tokens, exits = list(o.outputs[0].token_ids), [full] + trace[o.request_id]
        want = rx.early_exit_greedy(model, o.prompt_token_ids, N, kv_fill="recompute", **kw)
        ok, detail = rx.agrees(want, tokens, exits)
        assert ok, f"{PROMPTS[i][:30]!r}: {detail}"
        # every exit but a last token's is re-run in the next step
        assert o.kv_transfer_params["depth"]["recomputed_tokens"] == sum(e < full for e in exits[1:-1])
        assert (tokens, exits) == again[i][:2]
        if i < len(alone):
            assert (tokens, exits) == alone[i][:2]
        propagated = rx.early_exit_greedy(model, o.prompt_token_ids, N, **kw)
        differs += (propagated.tokens, propagated.exit_layers) != (tokens, exits)
    assert sum(e < full for _, exits, _ in again for e in exits) > 0
    assert differs > 0
