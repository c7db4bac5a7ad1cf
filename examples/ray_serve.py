"""Serve the depth engine as several Ray Serve replicas behind one OpenAI-compatible endpoint.

    python examples/ray_serve.py MODEL [--replicas 2] [--host 127.0.0.1] [--port 8000]
                                 [--cpus-per-replica 0.5] [--gpus-per-replica 0] [-- VLLM SERVE ARGS]

Each replica is a Ray actor that holds one vLLM engine with ``--model-impl depth``
and vLLM's own OpenAI app, in process (``vllm_depth.entrypoints.openai.openai_app``):
what a request gets is what ``vllm serve`` gives it, per-request depth settings
in ``vllm_xargs`` and HTTP 400 for bad ones included.  Ray Serve's proxy spreads
the requests over the replicas; each response names the replica that served it
in the ``x-vllm-depth-replica`` header.  Streaming requests (``"stream": true``)
stream: the replica hands vLLM's event stream on chunk by chunk, and a client
that goes away aborts its request in the engine.

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
import asyncio
import os
import signal
import sys
import time

from ray import serve
from starlette.requests import Request
from starlette.responses import StreamingResponse

REPLICA_HEADER = "x-vllm-depth-replica"


async def asgi_stream(app, scope: dict, body: bytes):
    """One HTTP request through an ASGI app, in this process, without buffering its answer.

    Returns ``(status, headers, chunks)`` once the app has started its response;
    ``chunks`` yields the body as the app sends it.  When the consumer stops early
    (the client went away) the app sees ``http.disconnect`` and its task is
    cancelled, so vLLM aborts the request.
    """
    messages: asyncio.Queue = asyncio.Queue()
    done = asyncio.Event()  # the consumer is finished: the app's next receive() is a disconnect
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def run():
        try:
            await app(scope, receive, messages.put)
        finally:
            await messages.put(None)

    task = asyncio.create_task(run())
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # an error is the app's 500, not a log line
    start = await messages.get()
    if start is None:
        await task  # re-raises the app's error
        raise RuntimeError("the app returned without a response")
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}

    async def chunks():
        complete = False
        try:
            while (m := await messages.get()) is not None:
                if m["type"] == "http.response.body":
                    if m.get("body"):
                        yield m["body"]
                    if not m.get("more_body", False):
                        complete = True
                        break
        finally:
            done.set()
            if not complete:  # the client went away: stop the app (vLLM aborts the request)
                task.cancel()

    return start["status"], headers, chunks()


@serve.deployment(max_ongoing_requests=64, health_check_period_s=10, health_check_timeout_s=60)
class DepthReplica:
    async def __init__(self, vllm_args: list[str]):
        from vllm_depth.entrypoints.openai import openai_app

        self.app, self.engine = await openai_app(vllm_args)
        self.name = serve.get_replica_context().replica_id.unique_id

    async def __call__(self, request: Request) -> StreamingResponse:
        body = await request.body()
        scope = {k: request.scope[k] for k in ("type", "http_version", "method", "scheme", "path", "raw_path",
                                               "query_string", "headers", "client", "server")
                 if k in request.scope}
        scope.update(asgi={"version": "3.0"}, root_path="")
        status, headers, chunks = await asgi_stream(self.app, scope, body)
        headers = {k: v for k, v in headers.items() if k in ("content-type", "cache-control")}
        headers[REPLICA_HEADER] = self.name
        return StreamingResponse(chunks, status_code=status, headers=headers)

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

    from vllm_depth.tools.checkpoints import ALIASES, resolve_model

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
