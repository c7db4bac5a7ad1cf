"""Serving as vLLM serves: real ``vllm serve`` processes on 127.0.0.1 with vLLM's defaults (prefix
caching and chunked prefill on), driven by the ``openai`` client.

Three servers, shared by the module:

- ``exits``: SmolLM2 with an exit point at layer 15 that requests opt into (kv_fill ``propagate``),
  chunked prefill at 64 tokens a step;
- ``recompute``: tiny with an exit point at layer 3 (kv_fill ``recompute``), chunked prefill at 64
  tokens a step and a KV cache of 12 blocks, small enough that 16 long requests preempt each other;
- ``draft``: SmolLM2 with the attention draft head (the self-draft), chunked prefill at 64 tokens a
  step and a KV cache of 12 blocks.

Checked: a request's output never depends on what ran before or beside it.  A full-depth request
(``depth_exit: false``) and every self-draft request give stock vLLM's tokens, also when their prompt
extends an earlier exiting request's prompt and output (the multi-turn case, where the prefix cache
really hits: ``vllm:prefix_cache_hits`` grows); an exiting request gives the tokens it gives on an
empty prefix cache.  Chunked prefill beside decoding requests, preemption, sampling (temperature,
top_p, top_k, seeds, greedy and sampled requests in one batch), streams dropped mid-draft and bad
requests (HTTP 400 naming the field; the server keeps serving) on the same servers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest
import requests
from conftest import greedy, vllm_server
from test_self_spec import chi_square_pvalue

from vllm_depth.config import PROPOSER

pytestmark = pytest.mark.slow

# a prompt of 300 tokens: its first two blocks (128 tokens each here) are full at the prompt
LONG = '''import heapq
from dataclasses import dataclass, field


@dataclass(order=True)
class Job:
    """A unit of work with a priority; lower numbers run first."""

    priority: int
    name: str = field(compare=False)
    retries: int = field(default=0, compare=False)


class JobQueue:
    """A priority queue of jobs that remembers what it has run."""

    def __init__(self):
        self._heap = []
        self.done = []

    def push(self, job):
        """Add a job to the queue."""
        heapq.heappush(self._heap, job)

    def pop(self):
        """Remove and return the most urgent job, or None when the queue is empty."""
        if not self._heap:
            return None
        job = heapq.heappop(self._heap)
        self.done.append(job.name)
        return job

    def __len__(self):
        return len(self._heap)

    def peek(self):
        """The most urgent job, left in the queue, or None when the queue is empty."""
        return self._heap[0] if self._heap else None

    def retry(self, job):
        """Put a job back with one more retry and a lower priority."""
        job.retries += 1
        job.priority += 10
        self.push(job)

    def drain(self):
        """Run every job in order of priority and return their names."""
'''
SHORT = ["def fibonacci(n):", "The capital of France is", "class Stack:\n    def __init__(self):",
         "# Read a CSV file and print the sum of its second column\n", "def is_prime(n):", "import os\n\n"]
EXIT = {"depth_exit_threshold": 0.0}  # every decode token leaves at the exit point
FULL = {"depth_exit": False}
DEV = {"VLLM_SERVER_DEV_MODE": "1"}  # /reset_prefix_cache


def _serve(model, tmp_path_factory, name, depth, *extra):
    """``depth``: the ``--hf-overrides`` depth object (None: the checkpoint's own)."""
    env = {**DEV, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp(f"{name}-prometheus"))}
    overrides = [] if depth is None else ["--hf-overrides", json.dumps({"depth": depth})]
    args = [*overrides, "--max-num-batched-tokens", "64", "--enforce-eager", *extra]
    return vllm_server(model, tmp_path_factory.mktemp(name) / "serve.log", args, env)


@pytest.fixture(scope="module", autouse=True)
def _servers_beside_the_pool(engines):
    """The servers start outside the test engine pool: it keeps only its stock engines meanwhile."""
    engines.trim()


@pytest.fixture(scope="module")
def exits(smollm2_dir, tmp_path_factory):
    # an exit point that no request uses unless it asks (threshold 1.0 never fires); the explicit
    # identity schedule exercises --hf-overrides' parsing of lists
    depth = {"layer_schedule": list(range(30)), "exit_layers": [15], "exit_threshold": 1.0}
    with _serve(smollm2_dir, tmp_path_factory, "exits", depth) as base:
        yield base, smollm2_dir


@pytest.fixture(scope="module")
def recompute(tiny_dir, tmp_path_factory):
    depth = {"exit_layers": [3], "exit_threshold": 1.0, "kv_fill": "recompute"}
    with _serve(tiny_dir, tmp_path_factory, "recompute", depth, "--num-gpu-blocks-override", "12") as base:
        yield base, tiny_dir


@pytest.fixture(scope="module")
def draft(attended_head, tmp_path_factory):
    spec = json.dumps({"model": PROPOSER, "num_speculative_tokens": 2})
    with _serve(attended_head, tmp_path_factory, "draft", None, "--speculative-config", spec,
                "--num-gpu-blocks-override", "12") as base:
        yield base, attended_head


# -- the client side ------------------------------------------------------------------------


def _body(model, prompt, n, xargs=None, **sampling):
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0.0, "ignore_eos": True,
            "return_token_ids": True, "logprobs": 0, **sampling}
    return {**body, "vllm_xargs": xargs} if xargs is not None else body


def complete(base, model, prompt, n, xargs=None, **sampling) -> tuple[list[int], list[int]]:
    """(prompt token ids, output token ids) of one completion."""
    prompt_ids, out, _ = complete_logprobs(base, model, prompt, n, xargs, **sampling)
    return prompt_ids, out


def complete_logprobs(base, model, prompt, n, xargs=None, **sampling):
    """(prompt token ids, output token ids, each output token's log-probability) of one completion."""
    r = requests.post(f"{base}/v1/completions", json=_body(model, prompt, n, xargs, **sampling), timeout=600)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return choice["prompt_token_ids"], choice["token_ids"], choice["logprobs"]["token_logprobs"]


async def _gather(base, bodies: list[dict]) -> list[list[int]]:
    """The output token ids of concurrent completions (all in flight at once)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=900)

    async def one(body):
        body = dict(body)
        args = {k: body.pop(k) for k in ("model", "prompt", "max_tokens", "temperature")}
        r = await client.completions.create(**args, extra_body=body)
        return r.choices[0].token_ids

    try:
        return await asyncio.gather(*(one(b) for b in bodies))
    finally:
        await client.close()


def concurrent(base, bodies):
    return asyncio.run(_gather(base, bodies))


def metric(base, name: str) -> float:
    """The sum of a Prometheus counter over its label sets."""
    total = 0.0
    for line in requests.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.split()[-1])
    return total


def reset_cache(base):
    assert requests.post(f"{base}/reset_prefix_cache", timeout=60).status_code == 200


def stock_ids(stock, prompt_ids: list[int], n: int) -> list[int]:
    return stock_logprobs(stock, prompt_ids, n)[0]


def stock_logprobs(stock, prompt_ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """Stock vLLM's greedy tokens after ``prompt_ids`` (computed whole: no prefix cache) and their
    log-probabilities."""
    from vllm import TokensPrompt

    out = greedy(stock, [TokensPrompt(prompt_token_ids=prompt_ids)], max_tokens=n, ignore_eos=True,
                 logprobs=0)[0].outputs[0]
    return list(out.token_ids), [lp[t].logprob for t, lp in zip(out.token_ids, out.logprobs)]


def same_logprobs(a: list[float], b: list[float], tol: float = 2e-3) -> bool:
    """Log-probabilities that agree as the same K/V computed in other batch shapes do (fp32); a K/V
    filled by propagation moves them by far more."""
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < tol


def follow_up(prompt_ids, output_ids, newline=198):
    """The next turn's prompt: the last turn's prompt and answer, then a newline."""
    return list(prompt_ids) + list(output_ids) + [newline]


# -- 1. the prefix cache serves no K/V a request would not have computed itself --------------


def _multi_turn(base, model, first_xargs, n_first):
    """An exiting first turn, then its follow-up's prompt (the first turn's prompt and answer)."""
    prompt, out = complete(base, model, LONG, n_first, first_xargs)
    return follow_up(prompt, out)


def test_a_full_depth_follow_up_of_an_exiting_turn_is_stock(exits, stock_llm):
    base, model = exits
    reset_cache(base)
    ids = _multi_turn(base, model, EXIT, 200)  # 300 + 200 tokens: the answer fills blocks
    hits = metric(base, "vllm:prefix_cache_hits_total")
    _, got, logprobs = complete_logprobs(base, model, ids, 32, FULL)
    assert metric(base, "vllm:prefix_cache_hits_total") - hits >= 256  # the prompt's two blocks were reused
    want, want_logprobs = stock_logprobs(stock_llm(model), ids, 32)
    assert got == want and same_logprobs(logprobs, want_logprobs)


def test_an_exiting_follow_up_gives_what_it_gives_on_an_empty_cache(exits):
    base, model = exits
    reset_cache(base)
    ids = _multi_turn(base, model, EXIT, 200)
    hits = metric(base, "vllm:prefix_cache_hits_total")
    _, after_first_turn, logprobs = complete_logprobs(base, model, ids, 32, EXIT)
    assert metric(base, "vllm:prefix_cache_hits_total") - hits >= 256
    reset_cache(base)
    _, alone, alone_logprobs = complete_logprobs(base, model, ids, 32, EXIT)
    assert after_first_turn == alone and same_logprobs(logprobs, alone_logprobs)


def test_a_full_depth_turn_is_cached_for_every_later_request(exits, stock_llm):
    """What full-depth requests generate stays shared: its blocks are hit by the next turn."""
    base, model = exits
    reset_cache(base)
    ids = _multi_turn(base, model, FULL, 200)
    hits = metric(base, "vllm:prefix_cache_hits_total")
    _, got, logprobs = complete_logprobs(base, model, ids, 16, FULL)
    assert metric(base, "vllm:prefix_cache_hits_total") - hits >= 384  # the answer's block too
    want, want_logprobs = stock_logprobs(stock_llm(model), ids, 16)
    assert got == want and same_logprobs(logprobs, want_logprobs)


def test_recompute_follow_ups_are_stock_and_as_alone(recompute, stock_llm):
    """``recompute`` runs every exited token again in the next step, but for the last one fed before the
    request finishes: with 333 + 180 tokens that one ends a full block (position 511)."""
    base, model = recompute
    reset_cache(base)
    ids = _multi_turn(base, model, EXIT, 180)
    hits = metric(base, "vllm:prefix_cache_hits_total")
    _, full, full_logprobs = complete_logprobs(base, model, ids, 24, FULL)
    _, exiting, logprobs = complete_logprobs(base, model, ids, 24, EXIT)
    assert metric(base, "vllm:prefix_cache_hits_total") - hits >= 2 * 256
    want, want_logprobs = stock_logprobs(stock_llm(model), ids, 24)
    assert full == want and same_logprobs(full_logprobs, want_logprobs)
    reset_cache(base)
    _, alone, alone_logprobs = complete_logprobs(base, model, ids, 24, EXIT)
    assert exiting == alone and same_logprobs(logprobs, alone_logprobs)


def test_a_self_draft_follow_up_is_stock(draft, stock_llm, smollm2_dir):
    base, model = draft
    reset_cache(base)
    prompt, out = complete(base, model, LONG, 160)
    assert out == stock_ids(stock_llm(smollm2_dir), prompt, 160)
    ids = follow_up(prompt, out)
    hits = metric(base, "vllm:prefix_cache_hits_total")
    _, got, logprobs = complete_logprobs(base, model, ids, 32)
    assert metric(base, "vllm:prefix_cache_hits_total") - hits >= 384
    want, want_logprobs = stock_logprobs(stock_llm(smollm2_dir), ids, 32)
    assert got == want and same_logprobs(logprobs, want_logprobs)


# -- 3. chunked prefill beside decoding requests -----------------------------------------------


def _long_prompt_among_short_ones(base, model, xargs):
    """Six short requests decoding while the long one's prefill runs in 64-token chunks beside them."""
    bodies = [_body(model, p, 48, xargs) for p in SHORT] + [_body(model, LONG * 2, 24, xargs)]
    return concurrent(base, bodies)


def test_exits_beside_a_chunked_prefill_are_as_alone(exits, stock_llm):
    base, model = exits
    for xargs in (EXIT, FULL):
        reset_cache(base)
        together = _long_prompt_among_short_ones(base, model, xargs)
        alone = []
        for prompt, n in [(p, 48) for p in SHORT] + [(LONG * 2, 24)]:
            reset_cache(base)
            alone.append(complete(base, model, prompt, n, xargs)[1])
        assert together == alone, xargs
    stock = stock_llm(model)
    assert together == [list(o.outputs[0].token_ids)
                        for o in greedy(stock, SHORT, max_tokens=48, ignore_eos=True)
                        + greedy(stock, [LONG * 2], max_tokens=24, ignore_eos=True)]


def test_self_draft_beside_a_chunked_prefill_is_stock(draft, stock_llm, smollm2_dir):
    base, model = draft
    got = _long_prompt_among_short_ones(base, model, None)
    stock = stock_llm(smollm2_dir)
    want = [list(o.outputs[0].token_ids) for o in greedy(stock, SHORT, max_tokens=48, ignore_eos=True)
            + greedy(stock, [LONG * 2], max_tokens=24, ignore_eos=True)]
    assert got == want


# -- 2. preemption -------------------------------------------------------------------------------


def _preempting_load(model, n, xargs_of, count=16):
    return [_body(model, f"{i} " + LONG, n, xargs_of(i)) for i in range(count)]


def test_preempted_requests_all_finish_and_full_depth_ones_are_stock(recompute, stock_llm):
    """vLLM admits a request when its prompt fits (3 of the 12 blocks of 128 tokens here); its 64 new
    tokens take it into a fourth block, which only preempting another request frees."""
    base, model = recompute
    preempted = metric(base, "vllm:num_preemptions_total")
    bodies = _preempting_load(model, 64, lambda i: FULL if i % 2 else EXIT)
    got = concurrent(base, bodies)
    assert metric(base, "vllm:num_preemptions_total") > preempted
    assert [len(g) for g in got] == [64] * 16
    stock = stock_llm(model)
    for i in range(1, 16, 2):
        assert got[i] == list(greedy(stock, [bodies[i]["prompt"]], max_tokens=64, ignore_eos=True)[0]
                              .outputs[0].token_ids), i


def test_preempted_self_draft_requests_are_stock(draft, stock_llm, smollm2_dir):
    """Three prompts of three blocks fill the 11 usable blocks; each request's 140 new tokens need a
    fourth block, which the third to reach it gets by preempting another."""
    base, model = draft
    preempted = metric(base, "vllm:num_preemptions_total")
    bodies = _preempting_load(model, 140, lambda i: None, count=8)
    got = concurrent(base, bodies)
    assert metric(base, "vllm:num_preemptions_total") > preempted
    want = greedy(stock_llm(smollm2_dir), [b["prompt"] for b in bodies], max_tokens=140, ignore_eos=True)
    assert got == [list(o.outputs[0].token_ids) for o in want]


# -- 4. sampling through the self-draft ----------------------------------------------------------


SAMPLED = [dict(temperature=0.8), dict(temperature=0.9, top_p=0.9), dict(temperature=1.0, top_k=20)]


def test_sampled_and_greedy_requests_in_one_batch_keep_their_distributions(draft, stock_llm, smollm2_dir):
    """Per sampling setting, 300 seeded requests at once with greedy ones among them: the greedy ones
    are stock's, and tokens 2-4 of the sampled ones follow stock vLLM's distribution (chi-square)."""
    from vllm import SamplingParams

    base, model = draft
    stock = stock_llm(smollm2_dir)
    prompt, n = "def fibonacci(n):\n", 300
    want_greedy = list(greedy(stock, [prompt], max_tokens=4, ignore_eos=True)[0].outputs[0].token_ids)
    drafted = metric(base, "vllm:spec_decode_num_draft_tokens_total")
    for setting in SAMPLED:
        bodies = [_body(model, prompt, 4, seed=1000 + i, **setting) if i % 10 else _body(model, prompt, 4)
                  for i in range(n)]
        got = concurrent(base, bodies)
        assert all(g == want_greedy for g in got[::10])
        sampled = [tuple(g[1:4]) for i, g in enumerate(got) if i % 10]
        params = [SamplingParams(max_tokens=4, ignore_eos=True, seed=i, **setting) for i in range(len(sampled))]
        ref = [tuple(o.outputs[0].token_ids[1:4]) for o in stock.generate([prompt] * len(sampled), params,
                                                                          use_tqdm=False)]
        a, b = Counter(ref), Counter(sampled)
        common = [k for k in set(a) | set(b) if a[k] + b[k] >= 10]
        table = [[a[k] for k in common] + [len(ref) - sum(a[k] for k in common)],
                 [b[k] for k in common] + [len(sampled) - sum(b[k] for k in common)]]
        assert len(common) >= 3, (setting, table)
        assert chi_square_pvalue(table) > 0.001, (setting, table)
    assert metric(base, "vllm:spec_decode_num_draft_tokens_total") > drafted


def test_a_seeded_request_repeats_itself_alone_and_in_a_batch(draft):
    base, model = draft
    body = _body(model, "def merge_sorted(a, b):\n", 24, temperature=0.9, top_p=0.95, seed=7)
    alone = complete(base, model, body["prompt"], 24, temperature=0.9, top_p=0.95, seed=7)[1]
    others = [_body(model, p, 24, temperature=1.0, seed=i) for i, p in enumerate(SHORT)]
    assert concurrent(base, others + [body])[-1] == alone
    assert complete(base, model, body["prompt"], 24, temperature=0.9, top_p=0.95, seed=7)[1] == alone


# -- streams dropped mid-draft, and bad requests --------------------------------------------------


async def _drop_streams(base, model, n):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600)

    async def one(i):
        stream = await client.completions.create(model=model, prompt=SHORT[i % len(SHORT)], max_tokens=200,
                                                 temperature=0.0, stream=True, extra_body={"ignore_eos": True})
        seen = 0
        async for _ in stream:
            seen += 1
            if seen >= 3 + i % 5:
                break
        await stream.close()
        return seen

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def test_fifty_streams_dropped_mid_draft_leave_the_server_serving_stock(draft, stock_llm, smollm2_dir):
    base, model = draft
    seen = asyncio.run(_drop_streams(base, model, 50))
    assert len(seen) == 50 and min(seen) >= 3
    prompt, got = complete(base, model, SHORT[0], 32)
    assert got == stock_ids(stock_llm(smollm2_dir), prompt, 32)
    for _ in range(30):  # every dropped stream is aborted
        if metric(base, "vllm:num_requests_running") == 0:
            break
        time.sleep(1)
    assert metric(base, "vllm:num_requests_running") == 0


@pytest.mark.parametrize("key, value", [
    ("depth_exit_threshold", float("nan")),
    ("depth_exit_threshold", [0.5]),
    ("depth_exit_threshold", "0.5"),
    ("depth_min_layer", "3"),
    ("depth_min_layer", [3]),
    ("depth_exit", "maybe"),
    ("depth_exit", [True]),
])
@pytest.mark.parametrize("endpoint", ["completions", "chat/completions"])
def test_bad_depth_args_get_400_naming_the_field_and_the_server_serves_on(exits, endpoint, key, value):
    base, model = exits
    body = {"model": model, "max_tokens": 4, "vllm_xargs": {key: value}}
    body.update({"prompt": "Hi"} if endpoint == "completions" else {"messages": [{"role": "user", "content": "Hi"}]})
    r = requests.post(f"{base}/v1/{endpoint}", data=json.dumps(body), timeout=60,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and key in r.text, r.text
    assert complete(base, model, "Hi", 4, FULL)[1]


# -- the OpenAI API, /metrics and per-request controls on the exits server ----------------------


def _client(base):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key="none")


def test_served_through_the_depth_model(exits):
    base, model = exits
    models = requests.get(f"{base}/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == model


def test_chat_completion_answers(exits):
    base, model = exits
    r = _client(base).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0.0,
    )
    assert "Paris" in r.choices[0].message.content


def test_completion_returns_the_tokens_asked_for(exits):
    base, model = exits
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


def test_64_concurrent_mixed_requests_all_complete_text(exits):
    base, model = exits
    results = asyncio.run(_load(base, model, 64))
    assert len(results) == 64
    assert all(kind == "ok" and want == got for kind, want, got in results), results


def test_bad_request_gets_400_and_the_others_are_served(exits):
    base, model = exits
    results = asyncio.run(_load(base, model, 24, bad_at=5))
    bad = [r for r in results if r[0] == "bad"]
    assert bad and bad[0][1] == 400 and "temperature" in bad[0][2]
    ok = [r for r in results if r[0] == "ok"]
    assert len(ok) == 23 and all(want == got for _, want, got in ok)
    assert requests.get(f"{base}/health", timeout=5).status_code == 200


def test_metrics_endpoint(exits):
    base, _ = exits
    text = requests.get(f"{base}/metrics", timeout=10).text
    assert "vllm:generation_tokens_total" in text


def _exited(base, layer=15) -> float:
    for line in requests.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm_depth:exited_tokens_total") and f'exit_layer="{layer}"' in line:
            return float(line.split()[-1])
    return 0.0


def _complete_text(base, model, xargs=None, n=12):
    body = {"ignore_eos": True, **({"vllm_xargs": xargs} if xargs is not None else {})}
    r = _client(base).completions.create(model=model, prompt="def fibonacci(n):", max_tokens=n,
                                         temperature=0.0, extra_body=body)
    return r.choices[0].text


def test_per_request_early_exit_over_http_and_its_metrics(exits):
    base, model = exits
    before = _exited(base)
    default = _complete_text(base, model)
    assert _exited(base) == before  # the model's threshold (1.0) never fires
    assert _complete_text(base, model, {"depth_exit": False}) == default
    _complete_text(base, model, {"depth_exit_threshold": 0.0})  # every decode token leaves at 15
    assert _exited(base) == before + 11  # 12 tokens: the first comes from the prefill, at full depth
    text = requests.get(f"{base}/metrics", timeout=10).text
    assert "vllm_depth:exit_layer_bucket" in text and "vllm_depth:kv_fill_seconds_total" in text


@pytest.mark.parametrize("xargs, field", [
    ({"depth_exit_threshold": 2}, "depth_exit_threshold"),
    ({"depth_min_layer": -1}, "depth_min_layer"),
    ({"depth_exit": "maybe"}, "depth_exit"),
    ({"depth_exti": 1}, "depth_exti"),
])
def test_bad_depth_xargs_get_400_naming_the_field(exits, xargs, field):
    from openai import BadRequestError

    base, model = exits
    with pytest.raises(BadRequestError) as e:
        _complete_text(base, model, xargs)
    assert e.value.status_code == 400 and field in str(e.value)
    assert _complete_text(base, model, {"depth_exit": False})  # the engine still serves


def test_concurrent_requests_mixing_exits_and_full_depth_all_complete_text(exits):
    """Prefills, exiting decodes and full-depth decodes share steps (continuous batching)."""
    base, model = exits
    before = _exited(base)
    modes = [{"depth_exit_threshold": 0.0}, {"depth_exit": False}, {"depth_exit_threshold": 0.5}, {}]
    results = asyncio.run(_load(base, model, 32, xargs=lambda i: modes[i % 4]))
    assert all(kind == "ok" and want == got for kind, want, got in results), results
    assert _exited(base) > before


def test_per_request_depth_statistics_come_back_with_the_response(exits):
    base, model = exits
    body = {"model": model, "prompt": "def fibonacci(n):", "max_tokens": 9, "temperature": 0.0,
            "ignore_eos": True, "vllm_xargs": {"depth_exit_threshold": 0.0}}
    r = requests.post(f"{base}/v1/completions", json=body, timeout=60).json()
    # 9 tokens: 8 decode tokens, each leaving after 15 of 30 layers
    assert r["kv_transfer_params"]["depth"] == {"mean_exit_layer": 15.0, "decode_tokens": 8}
