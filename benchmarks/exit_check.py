"""Cost of the exit check, measured side by side in one run.

    python benchmarks/exit_check.py [--model smollm2-135m] [--tokens 1 16] [--dtype float32 bfloat16]

For each token count, two exit-check paths against the LM-head product alone
(the unavoidable part), each with the GEMM it runs on:

- the engine's path in one process on the CPU: vLLM's own LM-head GEMM (oneDNN,
  prepacked weights, as ``ParallelLMHead`` runs it) makes the full logits, which
  the step reuses, then ``probs_of_logits`` (the softmax criterion);
- the fused check (final RMSNorm + LM head tile by tile + online softmax top-2,
  ``exit_stats``), which tensor-parallel ranks run on the CPU (torch path, plain
  torch matmul) and GPUs run as a Triton kernel;

and the saturation check against one decoder layer of the model (Hugging Face
layer, those tokens, no KV cache).  Calls alternate, medians of repeated runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fns: dict, repeat: int = 100, warmup: int = 3) -> dict:
    """Median seconds of each function, the calls alternating (a noisy machine slows them alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def vllm_gemm(weight: torch.Tensor):
    """The LM-head product as vLLM's CPU build runs it (None: no oneDNN here, e.g. on a GPU)."""
    try:
        from vllm import _custom_ops as ops
    except ImportError:
        return None
    if weight.device.type != "cpu" or not getattr(ops, "_supports_onednn", False):
        return None
    handler = ops.create_onednn_mm(weight.t(), 32)
    return lambda x: ops.onednn_mm(handler, x, None)


def logsumexp_check(logits: torch.Tensor) -> torch.Tensor:
    """The max probability as the engine computed it before ``probs_of_logits`` (for comparison):
    the logsumexp of a fresh fp32 copy."""
    x = logits.float()
    return torch.exp(x.max(dim=-1).values - torch.logsumexp(x, dim=-1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from vllm_depth.checkpoints import resolve_model
    from vllm_depth.kernels import exit_check as K

    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32).eval()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = "triton" if K.use_triton(dev) else "torch"
    print(f"device {dev}, exit-check path: {path}, threads {torch.get_num_threads()}")
    print("| dtype | tokens | LM head (vLLM GEMM) | engine check | ratio | before (logsumexp) | LM head (torch matmul) "
          "| fused check "
          "| ratio | decoder layer | saturation after a layer | of a layer | saturation back to back | of a layer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        m = model.to(dtype=dtype, device=dev)
        head = m.lm_head.weight.detach()
        norm_w = m.model.norm.weight.detach()
        eps = m.config.rms_norm_eps
        layer = m.model.layers[m.config.num_hidden_layers // 2]
        gemm = vllm_gemm(head)
        for t in args.tokens:
            x = torch.randn(t, m.config.hidden_size, dtype=dtype, device=dev)
            pos = torch.arange(t, device=dev)[None]
            rope = m.model.rotary_emb(x[None], pos)
            # each pair alternates (a check with the product it adds to; saturation with a layer)
            pairs = [{"head": lambda: x @ head.t(), "fused": lambda: K.exit_stats(x, norm_w, eps, head)},
                     {"layer": lambda: layer(x[None], position_embeddings=rope, attention_mask=None),
                      "sat": lambda: K.saturation(x, x)}]
            if gemm is not None:
                normed = lambda: K.rms_norm(x, norm_w, eps).to(dtype)  # noqa: E731
                pairs.append({"gemm": lambda: gemm(x), "engine": lambda: K.probs_of_logits(gemm(normed())),
                              "logsumexp": lambda: logsumexp_check(gemm(normed()))})
            r = {}
            with torch.no_grad():
                for fns in pairs:
                    r.update(timed(fns))
                r["sat_warm"] = timed({"s": pairs[1]["sat"]}, repeat=300)["s"]  # back to back, caches warm
            ms = lambda k: f"{r[k] * 1e3:.3f} ms" if k in r else "-"  # noqa: E731
            eng = f"{r['engine'] / r['gemm']:.2f}x" if "gemm" in r else "-"
            old = f"{r['logsumexp'] / r['gemm']:.2f}x" if "gemm" in r else "-"
            print(f"| {dtype_name} | {t} | {ms('gemm')} | {ms('engine')} | {eng} | {old} | {ms('head')} | {ms('fused')} "
                  f"| {r['fused'] / r['head']:.2f}x | {ms('layer')} | {r['sat'] * 1e6:.1f} us "
                  f"| {100 * r['sat'] / r['layer']:.2f}% | {r['sat_warm'] * 1e6:.1f} us "
                  f"| {100 * r['sat_warm'] / r['layer']:.2f}% |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
