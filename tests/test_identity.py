"""The identity schedule through --model-impl depth equals stock vLLM (greedy tokens, logprobs)."""

from __future__ import annotations

import math

import pytest
from conftest import EAGER, PROMPTS, greedy


@pytest.fixture(scope="module", params=["tiny", "smollm2", "gemma3"])
def pair(request, engines, stock_llm):
    path = request.getfixturevalue(f"{request.param}_dir")
    # tiny: the depth model compiled, as served by default, against the compiled stock engine;
    # SmolLM2 and Gemma 3 (real weights): both eager, as compiling them costs CI minutes
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


def test_stock_vllm_serves_the_built_gemma3_sensibly(gemma3_dir, stock_llm):
    """``vllm-depth model gemma3-270m``: a plain checkpoint stock vLLM loads; its tokenizer puts
    ``<bos>`` first (without it the model degenerates), and greedy continuations make sense.  (After
    the pairs above, so the pool's stock Gemma 3 engine is still alive.)"""
    llm = stock_llm(gemma3_dir)
    france, fib = greedy(llm, ["The capital of France is", "def fibonacci(n):"], max_tokens=24)
    bos = llm.get_tokenizer().bos_token_id
    assert france.prompt_token_ids[0] == bos and fib.prompt_token_ids[0] == bos
    assert "Paris" in france.outputs[0].text or "France" in france.outputs[0].text, france.outputs[0].text
    assert "return" in fib.outputs[0].text, fib.outputs[0].text
