"""How far preemption moves early exit's output: exiting requests served together on a KV cache too
small to hold them (vLLM preempts and later recomputes some), against each request alone.

    python benchmarks/preemption_exits.py [--blocks 12] [--requests 16] [--out OUT.json]

One ``vllm serve`` of SmolLM2 (fp32, an exit point at layer 15, prefix caching and chunked prefill
on, ``--num-gpu-blocks-override`` blocks of 128 tokens).  Each request (a long code prompt, 200 new
tokens, greedy) runs first alone, with the prefix cache emptied before it, then all at once.  For
exiting requests (``depth_exit_threshold`` 0.0: every decode token leaves at 15) and for full-depth
ones (``depth_exit: false``), it reports the preemptions, how many outputs are identical to the
request's alone and their token agreement (the share of positions with the same token).  A
preempted request is recomputed at full depth, but for the blocks it generated that are still in the
prefix cache (only it can hit them), so its later exits may differ from its run alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import requests

from vllm_depth.tools.bench import token_agreement
from vllm_depth.tools.checkpoints import resolve_model

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import serve  # noqa: E402 (the benchmarks' own server helper, beside this script)

PROMPT = Path(__file__).with_name("prompts").joinpath("code.jsonl")
EXIT = {"depth_exit_threshold": 0.0}
FULL = {"depth_exit": False}


def _prompt(i: int) -> str:
    prompts = [json.loads(line)["prompt"] for line in PROMPT.read_text().splitlines() if line.strip()]
    # about 200 tokens: a comment line that makes each request's first block its own, then the prompts
    return f"# task {i}\n" + "\n\n".join(prompts[(i + j) % len(prompts)] + "\n    pass" for j in range(6))


def _body(model: str, i: int, n: int, xargs: dict) -> dict:
    return {"model": model, "prompt": _prompt(i), "max_tokens": n, "temperature": 0.0, "ignore_eos": True,
            "return_token_ids": True, "vllm_xargs": xargs}


def _metric(url: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


async def _together(url: str, bodies: list[dict]) -> list[list[int]]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=3600)

    async def one(body):
        body = dict(body)
        args = {k: body.pop(k) for k in ("model", "prompt", "max_tokens", "temperature")}
        return (await client.completions.create(**args, extra_body=body)).choices[0].token_ids

    try:
        return await asyncio.gather(*(one(b) for b in bodies))
    finally:
        await client.close()


def measure(url: str, model: str, requests_n: int, n: int, xargs: dict) -> dict:
    bodies = [_body(model, i, n, xargs) for i in range(requests_n)]
    alone = []
    for body in bodies:
        assert requests.post(f"{url}/reset_prefix_cache", timeout=60).status_code == 200
        r = requests.post(f"{url}/v1/completions", json=body, timeout=3600)
        alone.append(r.json()["choices"][0]["token_ids"])
    assert requests.post(f"{url}/reset_prefix_cache", timeout=60).status_code == 200
    before = _metric(url, "vllm:num_preemptions_total")
    together = asyncio.run(_together(url, bodies))
    agreement = [token_agreement(a, b) for a, b in zip(alone, together)]
    return {"preemptions": _metric(url, "vllm:num_preemptions_total") - before,
            "identical": sum(a == b for a, b in zip(alone, together)), "requests": requests_n,
            "token_agreement": round(sum(agreement) / len(agreement), 4),
            "min_token_agreement": round(min(agreement), 4)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--out", default="benchmarks/results/preemption_exits.json")
    args = p.parse_args(argv)
    model = resolve_model("smollm2-135m")
    depth = {"exit_layers": [15], "exit_threshold": 1.0}
    serve_args = ["--model-impl", "depth", "--hf-overrides", json.dumps({"depth": depth}),
                  "--num-gpu-blocks-override", str(args.blocks)]
    log = Path(tempfile.mkdtemp(prefix="preemption-")) / "serve.log"
    with serve(model, serve_args, log, env={"VLLM_SERVER_DEV_MODE": "1"}, max_model_len=1024) as url:
        result = {"blocks": args.blocks, "block_tokens": 128, "max_tokens": args.max_tokens,
                  "exiting": measure(url, model, args.requests, args.max_tokens, EXIT),
                  "full_depth": measure(url, model, args.requests, args.max_tokens, FULL)}
    result["command"] = " ".join(["python", "benchmarks/preemption_exits.py", *(argv or sys.argv[1:])])
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
