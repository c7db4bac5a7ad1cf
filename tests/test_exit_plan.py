"""The per-step exit plan (pure logic): who is a candidate, with which threshold per exit layer."""

from __future__ import annotations

import torch

from vllm_depth.early_exit.step import StepRequest, plan_step
from vllm_depth.request_args import RequestDepth


def test_per_layer_thresholds_and_request_overrides():
    reqs = [
        StepRequest("a", RequestDepth(), decode=True),  # the model's thresholds
        StepRequest("b", RequestDepth(exit_threshold=0.3), decode=True),  # one threshold for every layer
        StepRequest("c", RequestDepth(min_layer=20), decode=True),  # only the layer where the model says 1.0
        StepRequest("d", RequestDepth(), decode=False),  # a prefill: full depth
        StepRequest("e", RequestDepth(exit=False), decode=True),
    ]
    qsl = torch.tensor([0, 1, 2, 3, 7, 8])
    step = plan_step(reqs, qsl, thresholds=(0.9, 1.0), min_layer=0, exit_layers=(8, 16))
    assert step.candidates == [(0, (0.9, 1.0), 0), (1, (0.3, 0.3), 0)]
    assert step.qsl == [0, 1, 2, 3, 7, 8] and step.num_reqs == 5
    # every exit layer at 1.0: nothing can exit, so no check runs at all
    assert plan_step(reqs[:1], qsl[:2], thresholds=(1.0, 1.0), min_layer=0, exit_layers=(8, 16)) is None


def test_run_compacts_exited_and_padding_rows_and_keeps_the_rest_in_order():
    from vllm_depth.early_exit.step import ExitCounters, ExitRun

    reqs = [
        StepRequest("a", RequestDepth(exit_threshold=0.0), decode=True),  # row 0: certain exit, no check
        StepRequest("p", RequestDepth(), decode=False),  # rows 1-3: a prefill chunk
        StepRequest("b", RequestDepth(exit_threshold=0.5), decode=True),  # row 4: checked, confident
        StepRequest("c", RequestDepth(exit_threshold=0.95), decode=True),  # row 5: checked, not confident
    ]
    qsl = torch.tensor([0, 1, 4, 5, 6])
    step = plan_step(reqs, qsl, thresholds=(0.9,), min_layer=0, exit_layers=(4,))
    ids = torch.arange(7)  # row 6: padding
    positions = torch.arange(7) + 100
    run = ExitRun(step, ids, positions, "softmax", None, (4,))
    states = torch.arange(7, dtype=torch.float32)[:, None].repeat(1, 3)
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.5, 0.4, 0.3]])  # softmax max 0.96 (row 4) and 0.37 (row 5)
    seen = []

    def logits_of(x):
        seen.append(x[:, 0].tolist())
        return logits[: x.shape[0]], None

    counters = ExitCounters()
    keep = run.check(4, states, lambda x: x * 2, logits_of, counters)
    assert seen == [[8.0, 10.0]]  # only the uncertain candidates reached the LM head, normed
    assert counters.checked == 2 and counters.exits == {4: 2}
    assert keep.tolist() == [1, 2, 3, 5]  # the prefill rows and the unconfident decode row; no padding
    assert run.rows.tolist() == [1, 2, 3, 5] and run.req_of_row.tolist() == [1, 1, 1, 3]
    assert run.positions.tolist() == [101, 102, 103, 105]
    assert run.exit_rows[0].tolist() == [0, 4] and run.exit_reqs[0].tolist() == [0, 2]
    assert run.exit_positions[0].tolist() == [100, 104]
    assert run.take_exited(states)[:, 0].tolist() == [0.0, 4.0]
    assert run.exit_logits[0] is None  # one exit was certain: its logits come with the step's
    out = run.output(torch.full((4, 3), -1.0), 7, 3, torch.zeros(1))
    assert out[:, 0].tolist() == [0.0, -1.0, -1.0, -1.0, 8.0, -1.0, 0.0]
    # checked again with the same unconfident logits: the one candidate left (row 5) stays
    assert run.check(4, states[keep], lambda x: x, lambda x: (logits[1:], None), counters) is None
    assert counters.checked == 3 and run.rows.tolist() == [1, 2, 3, 5]


def test_run_where_every_row_exits_hands_back_the_exit_states_as_they_are():
    from vllm_depth.early_exit.step import ExitCounters, ExitRun

    reqs = [StepRequest("a", RequestDepth(exit_threshold=0.0), decode=True)]
    step = plan_step(reqs, torch.tensor([0, 1]), thresholds=(0.9,), min_layer=0, exit_layers=(15,))
    run = ExitRun(step, torch.tensor([7]), torch.tensor([3]), "softmax", None, (15,))
    states = torch.ones(1, 4)
    keep = run.check(15, states, lambda x: x + 1, None, ExitCounters())
    assert keep.numel() == 0 and run.num_active == 0
    assert run.take_exited(states) is states
    assert torch.equal(run.output(None, 1, 4, torch.zeros(1)), torch.full((1, 4), 2.0))
