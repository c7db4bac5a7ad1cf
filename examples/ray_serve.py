"""Serve the depth engine as several Ray Serve replicas behind one OpenAI-compatible endpoint.

    python examples/ray_serve.py MODEL [--replicas 2] [--host 127.0.0.1] [--port 8000]
                                 [--cpus-per-replica 0.5] [--gpus-per-replica 0] [-- VLLM SERVE ARGS]

Each replica is a Ray actor that holds one vLLM engine with ``--model-impl depth``
and vLLM's own OpenAI app, in process (``vllm_depth.vllm_compat.openai_app``):
what a request gets is what ``vllm serve`` gives it, per-request depth settings
in ``vllm_xargs`` and HTTP 400 for bad ones included.  Ray Serve's proxy spreads
the requests over the replicas; each response names the replica that served it
in the ``x-vllm-depth-replica`` header.  Streaming requests are answered whole
(the replica buffers the event stream).

On the CPU (vLLM's CPU platform refuses the Ray executor) every replica runs its
engine with vLLM's multiprocessing executor.  On GPU machines give each replica
its GPUs with ``--gpus-per-replica N`` (and ``-- --tensor-parallel-size N``).

Example:

    python examples/ray_serve.py tiny --replicas 2 -- --dtype float32 --max-model-len 1024
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "tiny", "prompt": "def f(x):", "max_tokens": 16,
             "vllm_xargs": {"depth_exit_threshold": 0.0}}'
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

REPLICA_HEADER = "x-vllm-depth-replica"


@serve.deployment(max_ongoing_requests=64, health_check_period_s=10, health_check_timeout_s=60)
class DepthReplica:
    async def __init__(self, vllm_args: list[str]):
        import httpx

        from vllm_depth.vllm_compat import openai_app

        self.app, self.engine = await openai_app(vllm_args)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://replica",
                                        timeout=None)
        self.name = serve.get_replica_context().replica_id.unique_id

    async def __call__(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k in ("content-type", "authorization", "accept")}
        r = await self.client.request(request.method, request.url.path, params=request.query_params,
                                      content=await request.body(), headers=headers)
        out = {k: v for k, v in r.headers.items() if k in ("content-type",)}
        out[REPLICA_HEADER] = self.name
        return Response(r.content, status_code=r.status_code, headers=out)

    async def check_health(self) -> None:
        await self.engine.check_health()

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a checkpoint directory, a hub id or a vllm-depth alias (tiny, smollm2-135m)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--cpus-per-replica", type=float, default=0.5)
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    args = p.parse_args(argv)
    if args.replicas < 1:
        p.error(f"--replicas {args.replicas}: allowed: an int >= 1")
    return args, extra


def main(argv: list[str] | None = None) -> None:
    import ray

    from vllm_depth.checkpoints import ALIASES, resolve_model

    args, extra = parse(sys.argv[1:] if argv is None else argv)
    model = resolve_model(args.model) if args.model in ALIASES else args.model
    vllm_args = [model, "--model-impl", "depth", "--served-model-name", args.model, *extra]
    ray.init(include_dashboard=False, object_store_memory=256 << 20, log_to_driver=True)
    serve.start(http_options={"host": args.host, "port": args.port})
    replica = DepthReplica.options(
        num_replicas=args.replicas,
        ray_actor_options={"num_cpus": args.cpus_per_replica, "num_gpus": args.gpus_per_replica},
    )
    serve.run(replica.bind(vllm_args), name="vllm-depth", route_prefix="/")
    print(f"serving {args.model} with {args.replicas} replicas on http://{args.host}:{args.port}", flush=True)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.5)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per replica on the CPU
    main()
