"""`vllm serve <SmolLM2> --model-impl depth` on 127.0.0.1, driven with the openai client."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests
from conftest import vllm_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    schedule = list(range(30))  # explicit identity: exercises --hf-overrides parsing
    # an exit point that no request uses unless it asks (threshold 1.0 never fires)
    depth = {"layer_schedule": schedule, "exit_layers": [15], "exit_threshold": 1.0}
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("prometheus"))}
    # eager: serving is what is checked here (compiled depth engines are the identity and bench tests')
    with vllm_server(smollm2_dir, tmp_path_factory.mktemp("server") / "serve.log",
                     ["--hf-overrides", json.dumps({"depth": depth}), "--enforce-eager"], env) as base:
        yield base, smollm2_dir


def _client(base):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key="none")


def test_served_through_the_depth_model(server):
    base, model = server
    models = requests.get(f"{base}/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == model


def test_chat_completion_answers(server):
    base, model = server
    r = _client(base).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0.0,
    )
    assert "Paris" in r.choices[0].message.content


def test_completion_returns_the_tokens_asked_for(server):
    base, model = server
    r = _client(base).completions.create(
        model=model, prompt="def fibonacci(n):", max_tokens=12, temperature=0.0,
        extra_body={"ignore_eos": True},
    )
    assert r.usage.completion_tokens == 12 and r.choices[0].text


async def _load(base, model, n, bad_at=None, xargs=None):
    from openai import AsyncOpenAI, BadRequestError

    client = AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()

    async def one(i):
        if i == bad_at:
            try:
                await client.completions.create(model=model, prompt="x", max_tokens=4, temperature=-1.0)
            except BadRequestError as e:
                return ("bad", e.status_code, str(e))
            return ("bad", 200, "accepted")
        n_tokens = 1 + (i * 7) % 32
        prompt = " ".join(words[j % 10] for j in range(1 + (i * 13) % 120))
        extra = {"ignore_eos": True}
        if xargs is not None:
            extra["vllm_xargs"] = xargs(i)
        r = await client.completions.create(
            model=model, prompt=prompt, max_tokens=n_tokens, temperature=0.0, extra_body=extra,
        )
        return ("ok", n_tokens, r.usage.completion_tokens)

    return await asyncio.gather(*(one(i) for i in range(n)))


def test_64_concurrent_mixed_requests_all_complete(server):
    base, model = server
    results = asyncio.run(_load(base, model, 64))
    assert len(results) == 64
    assert all(kind == "ok" and want == got for kind, want, got in results), results


def test_bad_request_gets_400_and_the_others_are_served(server):
    base, model = server
    results = asyncio.run(_load(base, model, 24, bad_at=5))
    bad = [r for r in results if r[0] == "bad"]
    assert bad and bad[0][1] == 400 and "temperature" in bad[0][2]
    ok = [r for r in results if r[0] == "ok"]
    assert len(ok) == 23 and all(want == got for _, want, got in ok)
    assert requests.get(f"{base}/health", timeout=5).status_code == 200


def test_metrics_endpoint(server):
    base, _ = server
    text = requests.get(f"{base}/metrics", timeout=10).text
    assert "vllm:generation_tokens_total" in text


def _exited(base, layer=15) -> float:
    for line in requests.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm_depth:exited_tokens_total") and f'exit_layer="{layer}"' in line:
            return float(line.split()[-1])
    return 0.0


def _complete(base, model, xargs=None, n=12):
    body = {"ignore_eos": True, **({"vllm_xargs": xargs} if xargs is not None else {})}
    r = _client(base).completions.create(model=model, prompt="def fibonacci(n):", max_tokens=n,
                                         temperature=0.0, extra_body=body)
    return r.choices[0].text


def test_per_request_early_exit_over_http_and_its_metrics(server):
    base, model = server
    before = _exited(base)
    default = _complete(base, model)
    assert _exited(base) == before  # the model's threshold (1.0) never fires
    assert _complete(base, model, {"depth_exit": False}) == default
    _complete(base, model, {"depth_exit_threshold": 0.0})  # every decode token leaves at 15
    assert _exited(base) == before + 11  # 12 tokens: the first comes from the prefill, at full depth
    text = requests.get(f"{base}/metrics", timeout=10).text
    assert "vllm_depth:exit_layer_bucket" in text and "vllm_depth:kv_fill_seconds_total" in text


@pytest.mark.parametrize("xargs, field", [
    ({"depth_exit_threshold": 2}, "depth_exit_threshold"),
    ({"depth_min_layer": -1}, "depth_min_layer"),
    ({"depth_exit": "maybe"}, "depth_exit"),
    ({"depth_exti": 1}, "depth_exti"),
])
def test_bad_depth_xargs_get_400_naming_the_field(server, xargs, field):
    from openai import BadRequestError

    base, model = server
    with pytest.raises(BadRequestError) as e:
        _complete(base, model, xargs)
    assert e.value.status_code == 400 and field in str(e.value)
    assert _complete(base, model, {"depth_exit": False})  # the engine still serves


def test_concurrent_requests_mixing_exits_and_full_depth_all_complete(server):
    """Prefills, exiting decodes and full-depth decodes share steps (continuous batching)."""
    base, model = server
    before = _exited(base)
    modes = [{"depth_exit_threshold": 0.0}, {"depth_exit": False}, {"depth_exit_threshold": 0.5}, {}]
    results = asyncio.run(_load(base, model, 32, xargs=lambda i: modes[i % 4]))
    assert all(kind == "ok" and want == got for kind, want, got in results), results
    assert _exited(base) > before


def test_per_request_depth_statistics_come_back_with_the_response(server):
    base, model = server
    body = {"model": model, "prompt": "def fibonacci(n):", "max_tokens": 9, "temperature": 0.0,
            "ignore_eos": True, "vllm_xargs": {"depth_exit_threshold": 0.0}}
    r = requests.post(f"{base}/v1/completions", json=body, timeout=60).json()
    # 9 tokens: 8 decode tokens, each leaving after 15 of 30 layers
    assert r["kv_transfer_params"]["depth"] == {"mean_exit_layer": 15.0, "decode_tokens": 8}
