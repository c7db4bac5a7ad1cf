"""Static compression of SmolLM2-135M, side by side with the original.

    python benchmarks/compress.py [--model smollm2-135m] [--out out/compress] [--engine-args JSON]

For --prune 8, --share 8 and --share 8 --relax-rank 32: compress (cached under
--out), then `vllm-depth bench --baseline-model ORIGINAL` (tokens/s of the
compressed checkpoint through --model-impl depth against stock vLLM on the
original, in one run) and `vllm-depth analyze --eval` (perplexity and top-1
agreement on held-out standard-library docstrings, through vLLM).  Prints a
markdown table and writes out/compress/summary.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "prune 8": ["--prune", "8"],
    "share 8": ["--share", "8"],
    "share 8 + relax 32": ["--share", "8", "--relax-rank", "32"],
}
CLI = [sys.executable, "-m", "vllm_depth.cli.main"]


def run(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="out/compress")
    ap.add_argument("--prompts", default="benchmarks/prompts/code.jsonl")
    ap.add_argument("--max-tokens", default="64")
    ap.add_argument("--engine-args", default=None)
    args = ap.parse_args()

    original = subprocess.run([*CLI, "model", args.model], capture_output=True, text=True, check=True).stdout.strip()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, flags in VARIANTS.items():
        tag = name.replace(" + ", "-").replace(" ", "")
        ckpt = root / tag
        if not (ckpt / "config.json").exists():
            run([*CLI, "compress", original, *flags, "--out", str(ckpt)])
        bench_json, eval_json = root / f"{tag}.bench.json", root / f"{tag}.eval.json"
        extra = ["--engine-args", args.engine_args] if args.engine_args else []
        run([*CLI, "bench", "--model", str(ckpt), "--baseline-model", original, "--prompts", args.prompts,
             "--max-tokens", args.max_tokens, "--json", str(bench_json), *extra])
        run([*CLI, "analyze", str(ckpt), "--eval", "--baseline-model", original, "--json", str(eval_json)])
        b, e = json.loads(bench_json.read_text()), json.loads(eval_json.read_text())["eval"]
        disk = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        disk0 = sum(p.stat().st_size for p in Path(original).glob("*.safetensors"))
        pb = b["param_bytes"]
        rows[name] = {
            "disk_ratio": disk / disk0,
            "resident_ratio": pb["depth"] / pb["baseline"] if pb["depth"] and pb["baseline"] else None,
            "rss_mb": b["peak_rss_mb"],
            "speedup": b["speedup"],
            "bench_token_agreement": b["token_agreement"],
            "perplexity": e["model"]["perplexity"],
            "perplexity_original": e["baseline"]["perplexity"],
            "top1_agreement": e["model"]["top1_agreement"],
        }
    (root / "summary.json").write_text(json.dumps(rows, indent=2))
    print("\n| variant | weights on disk | resident weights | tokens/s vs stock | perplexity (original) | top-1 agreement | greedy token agreement |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        res = f"{r['resident_ratio']:.3f}x" if r["resident_ratio"] else "?"
        print(f"| {name} | {r['disk_ratio']:.3f}x | {res} | {r['speedup']:.3f}x | "
              f"{r['perplexity']:.2f} ({r['perplexity_original']:.2f}) | {r['top1_agreement']:.3f} | "
              f"{r['bench_token_agreement']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
