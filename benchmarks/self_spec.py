"""Self-speculative decoding side by side with what a user would pick instead (one run, same prompts).

    python benchmarks/self_spec.py [--prompts benchmarks/prompts/code.jsonl] [--max-tokens 128]
        [--draft-layers 24] [--k 3] [--heads out/smollm2-exits] [--json benchmarks/results/self_spec.json]

Methods, each timed against stock vLLM in alternating rounds (stock, method, stock, method) at batch 1:
- vllm-depth self-draft (the first E layers of the same model, no heads);
- vllm-depth self-draft with the exit heads of ``--heads`` (a checkpoint written by ``train-exits``);
- vLLM ``draft_model`` with a separate truncated copy of the first E layers (the naive way);
- vLLM ``ngram`` (prompt lookup);
- Hugging Face transformers ``generate(assistant_early_exit=E)`` and plain ``generate`` (fewer
  tokens: they are slow; tokens/s is what is compared).
Reported per method: tokens/s, the ratio to stock measured in the same rounds, outputs identical to stock,
acceptance (vLLM's spec-decode counters), weight bytes and KV bytes per token slot.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

from vllm_depth.compat.kernels import model_weight_bytes  # noqa: E402
from vllm_depth.config import PROPOSER  # noqa: E402
from vllm_depth.tools.bench import (  # noqa: E402
    DEFAULT_ENGINE_ARGS,
    kv_cache,
    load_prompts,
    param_bytes,
    run_round,
    start_engine,
    stop_engine,
)
from vllm_depth.tools.checkpoints import resolve_model  # noqa: E402


def truncated_copy(model_dir: str, layers: int, out: str) -> str:
    """A separate checkpoint of the first ``layers`` layers (embeddings and LM head included)."""
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def _drafter_bytes(worker) -> int:
    """Weight bytes of a separate draft model (0 when the drafter is the target model itself)."""
    model = getattr(getattr(worker.model_runner, "drafter", None), "model", None)
    if model is None or model is worker.model_runner.model or not hasattr(model, "modules"):
        return 0
    return model_weight_bytes(model)


def spec_counts(llm) -> dict:
    """vLLM's own speculative-decoding counters (drafts and accepted tokens)."""
    out = {"drafted": 0, "accepted": 0}
    for m in llm.get_metrics():
        if m.name == "vllm:spec_decode_num_draft_tokens":
            out["drafted"] = int(m.value)
        elif m.name == "vllm:spec_decode_num_accepted_tokens":
            out["accepted"] = int(m.value)
    return out


def vllm_method(name, stock, prompts, max_tokens, rounds, **kwargs) -> dict:
    engine = start_engine(name, **{**DEFAULT_ENGINE_ARGS, "disable_log_stats": False, **kwargs})
    try:
        run_round(engine, prompts[:1], 4, 1, per_request=False, record=False)
        before = spec_counts(engine.llm)
        s0 = (stock.seconds, stock.tokens)
        stock.seconds = stock.tokens = 0
        for _ in range(rounds):
            run_round(stock, prompts, max_tokens, 1, per_request=False)
            run_round(engine, prompts, max_tokens, 1, per_request=False)
        after = spec_counts(engine.llm)
        drafted, accepted = after["drafted"] - before["drafted"], after["accepted"] - before["accepted"]
        stock_tps = stock.tokens_per_s
        stock.seconds, stock.tokens = s0[0] + stock.seconds, s0[1] + stock.tokens
        weights = param_bytes(engine.llm) or 0
        extra = engine.llm.collective_rpc(_drafter_bytes)[0]
        return {
            "method": name, "tokens_per_s": round(engine.tokens_per_s, 3), "stock_tokens_per_s": round(stock_tps, 3),
            "speedup": round(engine.tokens_per_s / stock_tps, 4),
            "identical": sum(a == b for a, b in zip(engine.token_ids, stock.token_ids)), "n": len(prompts),
            "acceptance_rate": round(accepted / drafted, 4) if drafted else None, "drafted": drafted,
            "weight_bytes": weights + extra, "kv": kv_cache(engine.llm),
        }
    finally:
        stop_engine(engine)


def hf_method(model_dir: str, prompts, max_tokens: int, early_exit: int | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    tokens, seconds = 0, 0.0
    extra = {"assistant_early_exit": early_exit} if early_exit else {}
    for p in prompts:
        ids = tok(p.text, return_tensors="pt").input_ids
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, **extra)
        seconds += time.perf_counter() - t0
        tokens += out.shape[1] - ids.shape[1]
    return {"method": f"HF generate(assistant_early_exit={early_exit})" if early_exit else "HF generate",
            "tokens_per_s": round(tokens / seconds, 3), "n": len(prompts), "max_tokens": max_tokens}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", default="benchmarks/prompts/code.jsonl")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--draft-layers", type=int, default=24)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--heads", default="out/smollm2-exits", help="checkpoint with exit heads ('' to skip)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--hf-prompts", type=int, default=4, help="prompts for the (slow) HF runs")
    p.add_argument("--hf-tokens", type=int, default=64)
    p.add_argument("--json", default="benchmarks/results/self_spec.json")
    args = p.parse_args(argv)

    model = resolve_model(args.model)
    prompts = load_prompts(args.prompts)
    E, K = args.draft_layers, args.k
    spec = {"model": PROPOSER, "num_speculative_tokens": K}
    stock = start_engine("stock", model=model, **DEFAULT_ENGINE_ARGS)
    run_round(stock, prompts[:1], 4, 1, per_request=False, record=False)
    rows = [{"method": "stock vLLM", "weight_bytes": param_bytes(stock.llm), "kv": kv_cache(stock.llm)}]
    try:
        runs = [
            (f"vllm-depth self-draft (first {E}, k={K})",
             dict(model=model, model_impl="depth", hf_overrides={"depth": {"draft_layers": E}}, speculative_config=spec)),
        ]
        if args.heads and os.path.isdir(args.heads):
            with open(os.path.join(args.heads, "config.json")) as f:
                depth = json.load(f)["depth"]
            depth = {k: v for k, v in depth.items() if not k.startswith("draft_")}
            runs.append((f"vllm-depth self-draft + exit heads (first {E}, k={K})",
                         dict(model=args.heads, model_impl="depth",
                              hf_overrides={"depth": {**depth, "draft_layers": E}}, speculative_config=spec)))
        draft_dir = truncated_copy(model, E, os.path.join("out", f"draft-first{E}"))
        runs += [
            (f"vLLM draft_model (separate first-{E} copy, k={K})",
             dict(model=model, speculative_config={"method": "draft_model", "model": draft_dir,
                                                   "num_speculative_tokens": K})),
            (f"vLLM ngram (k={K})",
             dict(model=model, speculative_config={"method": "ngram", "num_speculative_tokens": K,
                                                   "prompt_lookup_max": 4, "prompt_lookup_min": 2})),
        ]
        for name, kwargs in runs:
            print(f"== {name}", file=sys.stderr)
            rows.append(vllm_method(name, stock, prompts, args.max_tokens, args.rounds, **kwargs))
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        stop_engine(stock)
    gc.collect()
    hf_prompts = prompts[: args.hf_prompts]
    rows.append(hf_method(model, hf_prompts, args.hf_tokens, None))
    rows.append(hf_method(model, hf_prompts, args.hf_tokens, E))
    result = {"model": model, "prompts": args.prompts, "max_tokens": args.max_tokens, "draft_layers": E, "k": K,
              "rounds": args.rounds, "batch_size": 1, "rows": rows}
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(format_table(result))
    return 0


def format_table(result: dict) -> str:
    lines = ["| method | tokens/s | vs stock (same rounds) | identical to stock | acceptance | weights MB | KV bytes/token |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        kv = (r.get("kv") or {}).get("bytes_per_token", "")
        w = f'{r["weight_bytes"] / 1e6:.1f}' if r.get("weight_bytes") else ""
        same = f'{r["identical"]}/{r["n"]}' if "identical" in r else ""
        ratio = f'{r["speedup"]:.3f}x' if "speedup" in r else ""
        acc = f'{r["acceptance_rate"]:.3f}' if r.get("acceptance_rate") is not None else ""
        tps = f'{r["tokens_per_s"]:.2f}' if "tokens_per_s" in r else ""
        lines.append(f'| {r["method"]} | {tps} | {ratio} | {same} | {acc} | {w} | {kv} |')
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
