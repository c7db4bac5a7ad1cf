"""How long ``vllm serve`` takes to answer /health, with a cold and with a warm compile cache.

    python benchmarks/startup.py [--model smollm2-135m] [--out benchmarks/results/startup.md]

Each configuration starts twice on one fresh ``VLLM_CACHE_ROOT`` (cold: nothing compiled yet;
warm: what the first start compiled is there), one server at a time:

- ``stock, no plugin``: ``VLLM_PLUGINS=""``, vLLM loads no general plugin (the alias that lets the
  ``vllm`` script run on the CPU build is not a plugin and stays);
- ``depth, exit layers``: ``--model-impl depth`` with exits at 8, 16 and 24.

For each start: seconds from launch to the first 200 on /health, and the lines of the log that say
vLLM compiled the model again after failing to load its cached artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from vllm_depth.tools.checkpoints import resolve_model

RELOAD_FAILURE = "Compiling model again due to a load failure"
PER_TENSOR = "Attempted to load weight"
EXITS = {"exit_layers": [8, 16, 24], "exit_criterion": "softmax", "exit_threshold": 0.8}
CONFIGS = {
    "stock, no plugin": ([], {"VLLM_PLUGINS": ""}),
    "depth, exit layers 8/16/24": (["--model-impl", "depth", "--hf-overrides", json.dumps({"depth": EXITS})], {}),
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_once(model: str, args: list[str], env: dict, log: Path, timeout: float = 1200) -> float:
    """Seconds until /health answers 200; the server is stopped before returning."""
    port = _port()
    vllm = Path(sys.executable).parent / "vllm"
    cmd = [str(vllm), "serve", model, *args, "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
           "--gpu-memory-utilization", "0.3"]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited {proc.returncode}; see {log}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vllm serve did not come up in {timeout:.0f} s; see {log}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="benchmarks/results/startup.md")
    args = ap.parse_args()
    model = resolve_model(args.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        for name, (extra, env) in CONFIGS.items():
            cache = Path(tmp) / name.replace(" ", "_").replace(",", "").replace("/", "-")
            for kind in ("cold", "warm"):
                log = Path(tmp) / f"{cache.name}-{kind}.log"
                seconds = start_once(model, extra, {**env, "VLLM_CACHE_ROOT": str(cache)}, log)
                text = log.read_text()
                rows.append((name, kind, seconds, text.count(RELOAD_FAILURE), text.count(PER_TENSOR)))
                print(f"{name:28s} {kind}: {seconds:6.1f} s, reload failures {rows[-1][3]}", flush=True)
    lines = [
        f"`vllm serve` start-up, {Path(model).name}, vLLM's CPU default dtype, 2 cores; seconds from launch to the "
        "first 200 on /health. Each configuration on a fresh `VLLM_CACHE_ROOT`: cold, then warm (the same cache). "
        f"Command: `python benchmarks/startup.py --model {args.model}`",
        "",
        f"| server | compile cache | seconds | '{RELOAD_FAILURE}' | per-tensor dtype warnings |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {n} | {k} | {s:.1f} | {r} | {w} |" for n, k, s, r, w in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
