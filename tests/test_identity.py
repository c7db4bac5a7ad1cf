"""The identity schedule through --model-impl depth equals stock vLLM (greedy tokens, logprobs)."""

from __future__ import annotations

import math

import pytest
from conftest import EAGER, PROMPTS, greedy


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def pair(request, engines, tiny_dir, smollm2_dir, stock_llm):
    path = tiny_dir if request.param == "tiny" else smollm2_dir
    # tiny: the depth model compiled, as served by default, against the compiled stock engine;
    # SmolLM2 (its real weights): both eager, as compiling its 30 layers costs CI minutes
    depth = engines.llm(path, model_impl="depth", **({} if request.param == "tiny" else EAGER))
    return stock_llm(path), depth


def test_depth_engine_runs_the_plugin_class(pair):
    stock, depth = pair
    assert depth.llm_engine.model_config.architecture.startswith("Depth")
    assert not stock.llm_engine.model_config.architecture.startswith("Depth")


@pytest.mark.parametrize("batch", [1, 8])
def test_greedy_identical_to_stock(pair, batch):
    stock, depth = pair
    prompts = PROMPTS[:batch]
    a = greedy(stock, prompts, max_tokens=48, logprobs=1)
    b = greedy(depth, prompts, max_tokens=48, logprobs=1)
    for p, x, y in zip(prompts, a, b):
        assert list(x.outputs[0].token_ids) == list(y.outputs[0].token_ids), p
        for lx, ly, t in zip(x.outputs[0].logprobs, y.outputs[0].logprobs, x.outputs[0].token_ids):
            assert math.isclose(lx[t].logprob, ly[t].logprob, abs_tol=1e-4)
