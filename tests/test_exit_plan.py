"""The per-step exit plan (pure logic): who is a candidate, with which threshold per exit layer."""

from __future__ import annotations

import torch

from vllm_depth.exits import StepRequest, plan_step
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
    assert step.rows.tolist() == [0, 1]
    assert torch.allclose(step.threshold, torch.tensor([[0.9, 1.0], [0.3, 0.3]]))
    # every exit layer at 1.0: nothing can exit, so no check runs at all
    assert plan_step(reqs[:1], qsl[:2], thresholds=(1.0, 1.0), min_layer=0, exit_layers=(8, 16)) is None
