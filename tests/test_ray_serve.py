"""The Ray Serve example: two replicas of the depth engine behind one OpenAI-compatible endpoint.

``examples/ray_serve.py`` is started as a user starts it (a real Ray cluster on
this machine, real vLLM engines, HTTP on 127.0.0.1); concurrent requests with
per-request depth settings must all complete, on more than one replica, and a
bad setting gets HTTP 400 without losing any other request; a streamed request
streams (its events arrive as the tokens are made, not all at the end).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import PROMPTS, _free_port, served

ROOT = Path(__file__).resolve().parents[1]
HEADER = "x-vllm-depth-replica"
DEPTH = {"exit_layers": [2, 4], "exit_criterion": "softmax", "exit_threshold": 0.002}
SETTINGS = {  # vllm_xargs -> the mean exit layer every response must report (None: between 2 and 6)
    "full": ({"depth_exit": False}, 6.0),
    "forced": ({"depth_exit_threshold": 0.0, "depth_min_layer": 2}, 2.0),
    "checked": ({}, None),
}


@pytest.fixture(scope="module")
def ray_app(engines, tmp_path_factory):
    engines.trim()  # the replicas' engines start beside the pool's: its unpinned ones are shut down first
    log = tmp_path_factory.mktemp("ray") / "ray_serve.log"
    port = _free_port()
    cmd = [sys.executable, str(ROOT / "examples" / "ray_serve.py"), "tiny", "--replicas", "2",
           "--port", str(port), "--",
           "--dtype", "float32", "--max-model-len", "512", "--gpu-memory-utilization", "0.3", "--seed", "0",
           "--enforce-eager",
           "--hf-overrides", json.dumps({"depth": DEPTH})]
    base = f"http://127.0.0.1:{port}"
    try:
        # ready: serve.run returned (every replica is up) and the endpoint answers
        with served(cmd, log, f"{base}/v1/models", marker="serving tiny with 2 replicas",
                    cwd=tmp_path_factory.getbasetemp(), stop_timeout=120):
            yield base
    finally:
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)


def _complete(base, prompt, xargs):
    return _complete_n(base, prompt, xargs, 12)


def _complete_n(base, prompt, xargs, max_tokens):
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "vllm_xargs": xargs}
    r = requests.post(f"{base}/v1/completions", json=body, timeout=600)
    return r.status_code, r.headers.get(HEADER), r.json()


@pytest.mark.slow
def test_concurrent_requests_spread_over_two_replicas_none_lost(ray_app):
    jobs = [(name, p) for _ in range(2) for name in SETTINGS for p in PROMPTS[:4]]  # 24 requests
    bad = [("bad", PROMPTS[0])] * 2
    with ThreadPoolExecutor(len(jobs) + len(bad)) as pool:
        futures = [pool.submit(_complete, ray_app, p, SETTINGS[name][0] if name != "bad" else
                               {"depth_exit_threshold": "high"}) for name, p in jobs + bad]
        results = [f.result() for f in futures]

    good, rejected = results[: len(jobs)], results[len(jobs):]
    for status, _, body in rejected:  # refused with the key named, before reaching an engine
        assert status == 400 and "depth_exit_threshold" in json.dumps(body), body
    texts: dict = {}
    for (name, prompt), (status, replica, body) in zip(jobs, good):
        assert status == 200, body
        assert body["usage"]["completion_tokens"] == 12
        want = SETTINGS[name][1]
        got = body["kv_transfer_params"]["depth"]["mean_exit_layer"]
        assert got == want if want is not None else 2.0 <= got <= 6.0, (name, got)
        texts.setdefault((name, prompt), set()).add(body["choices"][0]["text"])
    replicas = Counter(replica for _, replica, _ in good)
    assert len(replicas) >= 2 and None not in replicas, replicas  # both replicas served
    # the same greedy request gives the same text whichever replica served it
    assert all(len(t) == 1 for t in texts.values()), texts
    # the per-request settings reach the engines: a forced exit changes the text of some prompt
    assert any(texts[("forced", p)] != texts[("full", p)] for p in PROMPTS[:4])


@pytest.mark.slow
def test_streamed_request_streams_through_the_replica(ray_app):
    xargs = SETTINGS["forced"][0]
    body = {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 48, "temperature": 0.0, "ignore_eos": True,
            "vllm_xargs": xargs}
    t0 = time.perf_counter()
    events, times = [], []
    with requests.post(f"{ray_app}/v1/completions", json={**body, "stream": True}, stream=True, timeout=600) as r:
        assert r.status_code == 200 and r.headers.get(HEADER), r.headers
        assert r.headers["content-type"].startswith("text/event-stream")
        buf = b""
        for chunk in r.iter_content(chunk_size=None):
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                events.append(event.decode().removeprefix("data: "))
                times.append(time.perf_counter())
    total = times[-1] - t0
    assert events[-1] == "[DONE]", events[-3:]
    pieces = [json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"]]
    assert len(pieces) >= 24, len(pieces)  # many events, not one answer
    # the same text as the whole answer, with the request's depth settings applied
    status, _, whole = _complete_n(ray_app, PROMPTS[1], xargs, 48)
    assert status == 200 and "".join(pieces) == whole["choices"][0]["text"]
    # streamed, not buffered: the events are spread over the generation (a buffered answer
    # delivers them all at once at the end, a spread near 0)
    assert times[-1] - times[0] > 0.2 * total, (times[0] - t0, times[-1] - t0)
