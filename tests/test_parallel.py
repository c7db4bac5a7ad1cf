"""Tensor and pipeline parallelism: depth features give the same greedy output with two processes as with one.

The engines are real vLLM engines with ``tensor_parallel_size=2`` or
``pipeline_parallel_size=2`` on vLLM's multiprocessing executor (on the CPU
here: one core per rank), against the same configuration in one process.  The cross-rank exit check (a vocabulary-
parallel LM head reduced to argmax, max probability and top-2 margin without
gathering the logits) is checked on its own with two real gloo processes, for
the torch and the Triton path.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

os.environ["TRITON_INTERPRET"] = "1"  # the Triton path runs under the interpreter on the CPU

from conftest import PROMPTS, engine_config  # noqa: E402

from vllm_depth.early_exit.kernels import exit_check as K  # noqa: E402

# -- the cross-rank reduction ------------------------------------------------------------------


def _full(x, head):
    p = torch.softmax(x @ head.t(), -1)
    top = p.topk(2, -1).values
    return p.argmax(-1), top[:, 0], top[:, 0] - top[:, 1]


def _shards(v: int, world: int, pad_to: int = 64):
    """vLLM's layout: the vocabulary padded to a multiple of ``pad_to``, cut in equal shards."""
    padded = -(-v // pad_to) * pad_to
    per = padded // world
    return [(r * per, min(v, (r + 1) * per), per) for r in range(world)]


def _rank(rank, world, port, impl, x, head, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    start, end, per = _shards(head.shape[0], world)[rank]
    shard = torch.full((per, head.shape[1]), 50.0)  # padding rows: large garbage that must be ignored
    shard[: end - start] = head[start:end]

    def gather(t):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        return torch.cat(parts, dim=-1)

    partials = K.exit_partials_triton if impl == "triton" else K.exit_partials_torch
    stats = K.finish(K.gather_merge(partials(x, shard, valid=end - start, offset=start), gather))
    out[rank] = [t.clone() for t in stats]
    dist.destroy_process_group()


def _parallel_stats(impl, x, head, world=2):
    from conftest import _free_port

    out = mp.Manager().dict()
    mp.spawn(_rank, args=(world, _free_port(), impl, x, head, out), nprocs=world)
    return [out[r] for r in range(world)]


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_vocab_parallel_exit_stats_equal_the_full_softmax(impl):
    g = torch.Generator().manual_seed(0)
    t, h, v = 5, 64, 1000  # two shards of 512 rows: the second has 24 padding rows
    x, head = torch.randn(t, h, generator=g), torch.randn(v, h, generator=g) / 2
    # row 0: a tie across the shard boundary, id 100 (rank 0) and id 900 (rank 1)
    head[900] = head[100] = x[0] * 3
    idx, p1, margin = _full(x, head)
    assert idx[0] == 100
    for argmax, max_prob, top2 in _parallel_stats(impl, x, head):  # every rank: the same statistics
        assert torch.equal(argmax, idx)
        torch.testing.assert_close(max_prob, p1, atol=1e-5, rtol=1e-4)
        # the tie's two logits come from different shards' tiles, whose float32 dot products round
        # apart by about 1e-5 under the Triton interpreter on this CPU (its margin, 1.5e-5, is no tie-break)
        torch.testing.assert_close(top2, margin, atol=5e-5, rtol=1e-4)
        assert top2[0].abs() < 5e-5  # the tie: zero margin up to that rounding, the lower id


# -- engines: two processes against one ------------------------------------------------------------
# Every engine here is leased (its own, shut down after its test): they start under this module's
# thread binding, the multi-process ones hold two ranks, and torch_path_llm's depend on
# TRITON_INTERPRET, which the pool's key does not name.

TP2 = dict(tensor_parallel_size=2, enforce_eager=True)
# the tiny model's exit distributions at layers 2 and 4 have max probabilities around 0.002:
# this threshold lets about half of the tokens exit (through the checked, cross-rank path)
EXITS = {"exit_layers": [2, 4], "exit_criterion": "softmax", "exit_threshold": 0.002}
CASES = {  # per-request settings: one engine serves all three in one mixed batch
    "full depth": {"depth_exit": False},
    "forced exit": {"depth_exit_threshold": 0.0, "depth_min_layer": 2},
    "checked exits": {},
}


@pytest.fixture(scope="module", autouse=True)
def _bind_one_core_per_rank():
    """vLLM's CPU executor binds each rank to a NUMA node by default; this machine has one."""
    cores = sorted(os.sched_getaffinity(0))
    old = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"{cores[0]}|{cores[-1]}"
    yield
    if old is None:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND")
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = old


def _mixed_run(llm, cases=CASES):
    from vllm import SamplingParams

    prompts, params = [], []
    for extra in cases.values():
        for p in PROMPTS[:4]:
            prompts.append(p)
            params.append(SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, extra_args=extra))
    outs = llm.generate(prompts, params, use_tqdm=False)
    return ([list(o.outputs[0].token_ids) for o in outs],
            [o.kv_transfer_params["depth"]["mean_exit_layer"] for o in outs])


@contextlib.contextmanager
def torch_path_llm(engines, path, depth, **kwargs):
    """A depth engine (leased) whose fused exit check takes the CPU's torch path, as it does for users
    (the Triton path under the interpreter is checked above, and costs minutes per engine): its
    processes start without TRITON_INTERPRET."""
    with contextlib.ExitStack() as stack:
        os.environ["TRITON_INTERPRET"] = "0"
        try:
            llm = stack.enter_context(engines.lease(path, model_impl="depth", hf_overrides={"depth": depth}, **kwargs))
        finally:
            os.environ["TRITON_INTERPRET"] = "1"
        yield llm


SCHEDULE = [0, 1, 2, 2, 3, 4, 5]  # layer 2 repeated: one weight set, its own KV cache per position


@pytest.fixture(scope="module")
def one_process(engines, tiny_dir):
    """The reference: the schedule with exit points, in one process (tokens and exit layers per case)."""
    with engines.lease(tiny_dir, model_impl="depth", hf_overrides={"depth": {**EXITS, "layer_schedule": SCHEDULE}},
                       enforce_eager=True) as llm:
        return _mixed_run(llm)


@pytest.fixture(scope="module")
def stock_tiny(tiny_dir, stock_llm):
    """Stock vLLM's greedy tokens on PROMPTS (one process, the session's engine): what a lossless
    self-draft must give."""
    from vllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in stock_llm(tiny_dir).generate(PROMPTS, sp, use_tqdm=False)]


@pytest.mark.slow
def test_tp2_schedule_exits_and_kv_fill_equal_one_process(engines, tiny_dir, one_process):
    ref_tokens, ref_layers = one_process
    depth = {**EXITS, "layer_schedule": SCHEDULE}
    with torch_path_llm(engines, tiny_dir, depth, **TP2) as two:
        tokens, layers = _mixed_run(two)
    n = len(PROMPTS[:4])
    full, forced, checked = (slice(i * n, (i + 1) * n) for i in range(3))
    assert layers[full] == [7.0] * n and layers[forced] == [2.0] * n
    assert 2.0 < sum(layers[checked]) / n < 7.0, layers[checked]  # some tokens exit, some do not
    assert layers == ref_layers  # every token exits where it did with one process ...
    assert tokens == ref_tokens  # ... and the text is the same


@pytest.mark.slow
def test_fused_exit_check_in_one_process_equals_the_logits_check(engines, tiny_dir, one_process):
    """``exit_check: "fused"`` (the default on GPUs) in one process: the check's statistics come from
    the fused kernel and exited tokens' logits from the step's LM head; the same exits and tokens as
    the check over the LM head's logits (the CPU's default, the ``one_process`` reference)."""
    ref_tokens, ref_layers = one_process
    depth = {**EXITS, "layer_schedule": SCHEDULE, "exit_check": "fused"}
    with torch_path_llm(engines, tiny_dir, depth, enforce_eager=True) as llm:
        tokens, layers = _mixed_run(llm)
        fused, checks = llm.collective_rpc(_exit_checks)[0]
    n = len(PROMPTS[:4])
    assert 2.0 < sum(layers[2 * n:]) / n < 7.0, layers  # some checked tokens exit, some do not
    assert fused and checks > 0  # the fused check ran
    assert layers == ref_layers
    assert tokens == ref_tokens


def _exit_checks(worker) -> tuple[bool, int]:
    model = worker.model_runner.model
    return model.exit_outputs.fused(), model.exits.counters.checked


@pytest.mark.slow
def test_tp2_identity_with_self_drafting_equals_stock_one_process(engines, tiny_dir, stock_tiny):
    """The identity schedule at TP=2 verifying drafts from its first 3 layers: stock vLLM's output."""
    from vllm import SamplingParams

    from vllm_depth.config import PROPOSER

    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    want = stock_tiny
    with engines.lease(tiny_dir, model_impl="depth", hf_overrides={"depth": {"draft_layers": 3, "draft_backoff": 0}},
                       speculative_config={"model": PROPOSER, "num_speculative_tokens": 2}, **TP2) as llm:
        got = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        counters = llm.llm_engine.collective_rpc(_draft_counters)
    assert got == want
    assert all(c["drafted"] > 0 for c in counters), counters  # both ranks drafted


def _draft_counters(worker):
    drafter = worker.model_runner.drafter
    return {"drafted": drafter.counters.drafted}


PP_CASES = {
    # tiny: 6 positions, stages 0..2 and 3..5; layers 1 and 2 also run on the second stage (shared
    # weights, built on both); an exit point on each stage
    "tiny": ({"layer_schedule": [0, 1, 2, 3, 1, 2], "exit_layers": [2, 4], "exit_criterion": "softmax",
              "exit_threshold": 0.002}, 2, 6),
    # (no SmolLM2 case: its real weights over 6 or 12 positions take CI 95-100 s more for the same
    # code path, and CI stays under 40 minutes without it)
}


@pytest.mark.slow
@pytest.mark.parametrize("which", list(PP_CASES))
def test_pp2_equals_one_process(request, engines, which):
    """Stages split the schedule's positions; an exit on the first stage travels to the last.

    A token that exits on the first stage is sent on with its exit state and layer; the second
    stage fills its K/V there from that state and leaves it out of its compute.  Full depth, a
    forced exit (on the first stage) and checked exits, in one mixed batch, against
    the same engine in one process (eager).  The PP engine is compiled: vLLM 0.32's CPU runner
    allocates the pipeline buffers in its compiled warm-up only (stock vLLM fails with
    enforce_eager there too)."""
    depth, first_exit, n = PP_CASES[which]
    path = request.getfixturevalue(f"{which}_dir")
    cases = {"full depth": {"depth_exit": False}, "forced exit": {"depth_exit_threshold": 0.0}, "checked exits": {}}
    with engines.lease(path, model_impl="depth", hf_overrides={"depth": depth}, enforce_eager=True) as one:
        ref_tokens, ref_layers = _mixed_run(one, cases)
    with engines.lease(path, model_impl="depth", hf_overrides={"depth": depth}, pipeline_parallel_size=2) as two:
        tokens, layers = _mixed_run(two, cases)
        stage_exits = two.llm_engine.collective_rpc(_stage_exit_counts)
    k = len(PROMPTS[:4])
    assert layers[:k] == [float(n)] * k and layers[k : 2 * k] == [float(first_exit)] * k
    assert layers == ref_layers
    assert tokens == ref_tokens
    # each stage decided exits at its own exit point: the first stage's reached the last one
    first, second = depth["exit_layers"]
    assert set(stage_exits[0]) == {first} and set(stage_exits[1]) <= {second}, stage_exits
    assert stage_exits[1].get(second, 0) > 0, stage_exits


def _stage_exit_counts(worker):
    return dict(worker.model_runner.get_model().exits.counters.exits)


@pytest.mark.parametrize("depth, parallel, match", [
    ({"exit_layers": [2], "exit_criterion": "head", "exit_heads": {"layers": [2], "vocab": 64}},
     dict(tensor_parallel_size=2), r"depth\.exit_heads: reduced-vocabulary .* tensor_parallel_size 1 only"),
    ({}, dict(tensor_parallel_size=3), r"attention heads \(4\) must be divisible by tensor parallel size \(3\)"),
    ({"exit_layers": [4], "exit_criterion": "saturation"}, dict(pipeline_parallel_size=2), r"'saturation' .* softmax"),
    ({"draft_layers": 2}, dict(pipeline_parallel_size=2), r"depth\.draft_layers .* allowed: pipeline_parallel_size=1"),
    ({"layer_schedule": [0]}, dict(pipeline_parallel_size=2), r"1 position\(s\) cannot fill 2 pipeline stages"),
    ({"exit_layers": [2], "exit_check": "logits"}, TP2, r"depth\.exit_check 'logits' .* allowed with "
                                                        r"tensor_parallel_size > 1: 'auto', 'fused'"),
    ({"exit_layers": [2], "kv_fill": "recompute"}, dict(pipeline_parallel_size=2),
     r"depth\.kv_fill 'recompute' .* allowed with pipeline_parallel_size > 1: 'propagate'"),
])
def test_settings_that_cannot_split_are_refused_before_any_process_starts(tiny_dir, depth, parallel, match):
    # refused while the engine config is built, which LLM() does before it starts any process
    # (test_self_spec's refusal goes through LLM() itself)
    with pytest.raises(ValueError, match=match):
        engine_config(tiny_dir, model_impl="depth", hf_overrides={"depth": depth}, **parallel)
