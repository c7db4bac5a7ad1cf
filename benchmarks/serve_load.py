"""Served speed at every load: stock ``vllm serve`` against depth servers, measured with vLLM's own
client, ``vllm bench serve``.

    python benchmarks/serve_load.py --prompts benchmarks/prompts/code.jsonl --out OUT.json \\
        --server self-draft=MODEL_WITH_ATTENTION_HEAD [--server early-exit] [--concurrency 1,2,4,8,16,32]

All servers run at once (vLLM's defaults: prefix caching, chunked prefill, async scheduling where
vLLM keeps it on), fp32.  At each concurrency every server is benchmarked twice, in mirrored order
(stock, A, B, B, A, stock): drift falls on all alike.  Each run is ``vllm bench serve --dataset-name
custom`` over the prompts (repeated to fill the run), a fixed output length with ``--ignore-eos``,
raw prompts (no chat template), greedy unless ``--temperature`` says otherwise (``vllm bench serve``
itself sends no temperature, so the server samples at 1.0).  A server's ratio at a concurrency is its output tokens per second,
pooled over its runs, over stock's.  Writes ``OUT.json`` (``rows``: one per server and concurrency)
and ``OUT.png`` (output tokens/s and mean TPOT against concurrency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from vllm_depth.config import PROPOSER
from vllm_depth.tools.checkpoints import resolve_model

EARLY_EXIT = {"exit_layers": [15], "exit_threshold": 0.0}  # every decode token leaves at layer 15 of 30


def server_args(name: str, spec: str | None, base: str) -> tuple[str, list[str]]:
    """(model path, ``vllm serve`` arguments) of a server: ``stock``, ``self-draft=MODEL`` (a checkpoint
    whose depth config names its draft), ``early-exit`` (every decode token at layer 15),
    ``stock-sync`` (stock without async scheduling, which vLLM turns off for a custom proposer: what
    async scheduling is worth here)."""
    if name == "stock":
        return base, []
    if name == "stock-sync":
        return base, ["--no-async-scheduling"]
    if name == "self-draft":
        model = resolve_model(spec) if spec else base
        return model, ["--model-impl", "depth", "--speculative-config",
                       json.dumps({"model": PROPOSER, "num_speculative_tokens": 2})]
    if name == "early-exit":
        return base, ["--model-impl", "depth", "--hf-overrides", json.dumps({"depth": EARLY_EXIT})]
    raise SystemExit(f"--server: {name!r} is not allowed; allowed: self-draft[=MODEL], early-exit, stock-sync")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model: str, args: list[str], log: Path, timeout: float = 1200, env: dict | None = None,
          max_model_len: int = 2048):
    """``vllm serve MODEL ARGS`` (fp32) on 127.0.0.1 until the block ends; yields its URL."""
    port = _port()
    vllm = str(Path(sys.executable).parent / "vllm")
    cmd = [vllm, "serve", model, *args, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--gpu-memory-utilization", "0.3", "--max-model-len", str(max_model_len), "--seed", "0"]
    # KV cache in host memory: 2 GiB per server (the default share of memory is 30% each, too much for three)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"), **(env or {})}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise SystemExit(f"{' '.join(cmd)} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_serve(url: str, model: str, prompts: str, concurrency: int, num_prompts: int, output_len: int,
                out_dir: Path, name: str, temperature: float = 0.0) -> dict:
    """One ``vllm bench serve`` run; its result JSON."""
    vllm = str(Path(sys.executable).parent / "vllm")
    cmd = [vllm, "bench", "serve", "--backend", "vllm", "--base-url", url, "--model", model,
           "--dataset-name", "custom", "--dataset-path", prompts, "--custom-output-len", str(output_len),
           "--skip-chat-template", "--ignore-eos", "--num-prompts", str(num_prompts),
           "--max-concurrency", str(concurrency), "--temperature", str(temperature), "--disable-tqdm", "--save-result",
           "--result-dir", str(out_dir), "--result-filename", f"{name}.json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"vllm bench serve failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads((out_dir / f"{name}.json").read_text())


def spec_counts(url: str) -> tuple[float, float]:
    """(draft tokens, accepted tokens) so far, from the server's /metrics."""
    counts = {"vllm:spec_decode_num_draft_tokens_total": 0.0, "vllm:spec_decode_num_accepted_tokens_total": 0.0}
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in counts:
            counts[name] += float(line.split()[-1])
    return tuple(counts.values())


def mirrored(names: list[str]) -> list[str]:
    """stock, A, B, ..., B, A, stock: every server's two runs are as far from the middle as stock's."""
    return names + names[::-1]


def run(prompts: str, servers: list[tuple[str, str | None]], levels: list[int], output_len: int,
        min_prompts: int, work: Path, temperature: float = 0.0) -> dict:
    base = resolve_model("smollm2-135m")
    specs = [("stock", None), *servers]
    runs = []
    with contextlib.ExitStack() as stack:
        urls, models = {}, {}
        for name, spec in specs:
            model, args = server_args(name, spec, base)
            urls[name] = stack.enter_context(serve(model, args, work / f"{name}.log"))
            models[name] = model
        for name in urls:  # warm-up: one short run each (first-request compiles, caches)
            bench_serve(urls[name], models[name], prompts, 2, 4, 16, work, f"warmup-{name}")
        for c in levels:
            n = max(min_prompts, 2 * c)
            for i, name in enumerate(mirrored(list(urls))):
                drafts = spec_counts(urls[name])
                result = bench_serve(urls[name], models[name], prompts, c, n, output_len, work, f"{name}-c{c}-{i}",
                                     temperature)
                after = spec_counts(urls[name])
                runs.append({"server": name, "concurrency": c, "order": i,
                             "output_tokens": result["total_output_tokens"], "duration": result["duration"],
                             "output_tok_s": result["output_throughput"], "tpot_ms": result["mean_tpot_ms"],
                             "ttft_ms": result["mean_ttft_ms"],
                             "draft_tokens": after[0] - drafts[0], "accepted_tokens": after[1] - drafts[1]})
                print(f"c={c:<3} {name:<12} {result['output_throughput']:8.1f} tok/s  "
                      f"tpot {result['mean_tpot_ms']:7.1f} ms", flush=True)
    return {"rows": rows_of(runs, levels, [n for n, _ in specs]), "runs": runs}


def rows_of(runs: list[dict], levels: list[int], names: list[str]) -> list[dict]:
    rows = []
    for c in levels:
        pooled = {}
        for name in names:
            mine = [r for r in runs if r["server"] == name and r["concurrency"] == c]
            tokens, seconds = sum(r["output_tokens"] for r in mine), sum(r["duration"] for r in mine)
            pooled[name] = tokens / seconds
            drafted = sum(r["draft_tokens"] for r in mine)
            rows.append({"server": name, "concurrency": c, "output_tok_s": round(pooled[name], 2),
                         "tpot_ms": round(sum(r["tpot_ms"] for r in mine) / len(mine), 2),
                         "ratio": round(pooled[name] / pooled["stock"], 3),
                         "round_ratios": [round(r["output_tok_s"] / s["output_tok_s"], 3) for r, s in
                                          zip(sorted(mine, key=lambda r: r["order"]),
                                              sorted((r for r in runs if r["server"] == "stock"
                                                      and r["concurrency"] == c), key=lambda r: r["order"]))],
                         "draft_tokens": drafted,
                         "acceptance": round(sum(r["accepted_tokens"] for r in mine) / drafted, 3) if drafted else None})
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(r["server"] for r in result["rows"]))
    for name in names:
        mine = [r for r in result["rows"] if r["server"] == name]
        xs = [r["concurrency"] for r in mine]
        left.plot(xs, [r["output_tok_s"] for r in mine], marker="o", label=name)
        right.plot(xs, [r["tpot_ms"] for r in mine], marker="o", label=name)
    for ax, label in ((left, "output tokens/s"), (right, "mean TPOT (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (vllm bench serve --max-concurrency)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    left.legend()
    fig.suptitle(result.get("title", "served speed against concurrency"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default="benchmarks/prompts/code.jsonl")
    p.add_argument("--out", default="benchmarks/results/serve_load.json")
    p.add_argument("--server", action="append", default=[],
                   help="self-draft[=MODEL] or early-exit (repeatable); stock always runs")
    p.add_argument("--concurrency", default="1,2,4,8,16,32")
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--min-prompts", type=int, default=8, help="prompts per run: at least this, and 2x the concurrency")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="every request's temperature (vllm bench serve sends none unless asked: the server's 1.0)")
    args = p.parse_args(argv)
    servers = [(s.split("=", 1)[0], s.split("=", 1)[1] if "=" in s else None) for s in args.server]
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    result = run(os.path.abspath(args.prompts), servers, levels, args.output_len, args.min_prompts, work,
                 args.temperature)
    result["command"] = " ".join(["python", "benchmarks/serve_load.py", *(argv or sys.argv[1:])])
    result["temperature"] = args.temperature
    result["title"] = (f"SmolLM2-135M fp32, {Path(args.prompts).name}, {args.output_len} output tokens, "
                       f"temperature {args.temperature:g}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    plot(result, str(Path(args.out).with_suffix(".png")))
    print(f"{'server':<12} " + " ".join(f"c={c:<6}" for c in levels))
    for name in dict.fromkeys(r["server"] for r in result["rows"]):
        print(f"{name:<12} " + " ".join(f"{r['ratio']:<8.3f}" for r in result["rows"] if r["server"] == name))


if __name__ == "__main__":
    main()
