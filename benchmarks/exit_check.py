"""Cost of the exit check, measured side by side in one run.

    python benchmarks/exit_check.py [--model smollm2-135m] [--tokens 1 16] [--dtype float32 bfloat16]
    python benchmarks/exit_check.py --shape benchmarks/shapes/llama3-8b.json [--sweep]   # on a GPU

``--shape CONFIG.json``: random weights with that config's shapes (one decoder
layer), for a machine without the checkpoint.  On a GPU every function is timed
as a CUDA graph (as vLLM replays decode steps), replays alternating, and the
table compares the Triton check with cuBLAS's LM-head product; ``--sweep`` also
times the kernel's tile configurations and reports the best.

For each token count, two exit-check paths against the LM-head product alone
(the unavoidable part), each with the GEMM it runs on:

- the engine's path in one process on the CPU: vLLM's own LM-head GEMM (oneDNN,
  prepacked weights, as ``ParallelLMHead`` runs it) makes the full logits, which
  the step reuses, after vLLM's RMSNorm kernel, then ``probs_of_logits`` (the softmax
  criterion, one native call on the CPU; the margin criterion beside it; and the same
  check as torch ops, which is what runs where the native call cannot be built);
- the fused check (final RMSNorm + LM head tile by tile + online softmax top-2,
  ``exit_stats``), which tensor-parallel ranks run on the CPU (torch path, plain
  torch matmul) and GPUs run as a Triton kernel;

and the saturation check as the engine calls it (``saturation_values``) against one decoder layer of the model (Hugging Face
layer, those tokens, no KV cache).  Calls alternate, medians of repeated runs.
"""

from __future__ import annotations

import argparse
import json
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


def graph_timed(fns: dict, repeat: int = 30, replays: int = 20) -> dict:
    """Median seconds of one call of each function on the GPU: ``replays`` calls captured in one CUDA
    graph, the graphs replayed in turn ``repeat`` times, timed with CUDA events."""
    graphs = {}
    for k, fn in fns.items():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # compile and warm up outside the capture
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graphs[k] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[k]):
            for _ in range(replays):
                fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, g in graphs.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            times[k].append(a.elapsed_time(b) / 1e3 / replays)
    return {k: statistics.median(v) for k, v in times.items()}


SWEEP = [dict(block_v=v, block_k=k, splits=n, num_warps=w)
         for v in (64, 128, 256) for k in (64, 128) for n in (132, 264, 528) for w in (4, 8)]


def tiles(values) -> str:
    """A tile configuration as block_v/block_k/splits/warps."""
    return "/".join(str(v) for v in values)


def load_model(args, dtype: torch.dtype, dev: torch.device):
    """The checkpoint, or random weights with ``--shape``'s config (one decoder layer)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if args.shape is None:
        from vllm_depth.tools.checkpoints import resolve_model

        return AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=dtype).to(dev).eval()
    with open(args.shape) as f:
        fields = json.load(f)
    config = AutoConfig.for_model(fields.pop("model_type"), **{**fields, "num_hidden_layers": 1})
    torch.manual_seed(0)
    with dev:
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def main_gpu(args) -> int:
    from vllm_depth.early_exit.kernels import exit_check as K

    dev = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()}, exit-check path: Triton, shapes: {args.shape or args.model}")
    print("| dtype | tokens | LM head (cuBLAS) | fused check | ratio | best tiles | ratio | head + probs_of_logits "
          "| ratio | decoder layer | saturation | of a layer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        m = load_model(args, dtype, dev)
        head, norm_w = m.lm_head.weight.detach(), m.model.norm.weight.detach()
        eps, layer = m.config.rms_norm_eps, m.model.layers[0]
        for t in args.tokens:
            x = torch.randn(t, m.config.hidden_size, dtype=dtype, device=dev)
            rope = m.model.rotary_emb(x[None], torch.arange(t, device=dev)[None])
            fns = {"head": lambda: x @ head.t(), "fused": lambda: K.exit_stats(x, norm_w, eps, head),
                   "logits": lambda: K.probs_of_logits(K.fused_rms_norm(x, norm_w, eps).to(dtype) @ head.t()),
                   "layer": lambda: layer(x[None], position_embeddings=rope, attention_mask=None),
                   "sat": lambda: K.saturation(x, x)}
            print(f"  default tiles (block_v/block_k/splits/warps): "
                  f"{tiles(K.default_config(t, x.shape[1], dev))}", flush=True)
            with torch.no_grad():
                r = graph_timed(fns)
                best, best_s = "-", None
                if args.sweep:
                    configs = {}
                    for i, c in enumerate(SWEEP):
                        fn = lambda c=K.TritonConfig(**c): K.exit_stats_triton(x, norm_w, eps, head, c)  # noqa: E731
                        try:
                            fn()  # compiles; a tile too large for the chip's shared memory fails here
                        except Exception as e:  # noqa: BLE001
                            print(f"  sweep {dtype_name} T={t}: {c} failed: {type(e).__name__}", flush=True)
                            continue
                        configs[i] = fn
                    swept = graph_timed(configs, repeat=10)
                    i = min(swept, key=swept.get)
                    best, best_s = tiles(SWEEP[i].values()), swept[i]
                    print(f"  sweep {dtype_name} T={t}: " + ", ".join(
                        f"{tiles(SWEEP[j].values())} {swept[j] / r['head']:.2f}x"
                        for j in sorted(swept, key=swept.get)[:6]), flush=True)
            us = lambda v: f"{v * 1e6:.1f} us"  # noqa: E731
            best_ratio = f"{best_s / r['head']:.2f}x" if best_s else "-"
            print(f"| {dtype_name} | {t} | {us(r['head'])} | {us(r['fused'])} | {r['fused'] / r['head']:.2f}x "
                  f"| {best} | {best_ratio} | {us(r['logits'])} "
                  f"| {r['logits'] / r['head']:.2f}x | {us(r['layer'])} | {us(r['sat'])} "
                  f"| {100 * r['sat'] / r['layer']:.2f}% |", flush=True)
        del m
    return 0


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


def vllm_rms_norm(weight: torch.Tensor, eps: float):
    """The final RMSNorm as the engine's eager exit step runs it on the CPU (vLLM's own kernel)."""
    from vllm import _custom_ops as ops

    def norm(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        ops.rms_norm(out, x, weight, eps)
        return out

    return norm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--shape", help="a config.json: random weights of its shapes instead of the checkpoint")
    ap.add_argument("--sweep", action="store_true", help="on a GPU: also time the Triton kernel's tile sizes")
    args = ap.parse_args()
    if torch.cuda.is_available():
        return main_gpu(args)

    from vllm_depth.early_exit.kernels import exit_check as K

    dev = torch.device("cpu")
    path = "triton" if K.use_triton(dev) else "torch"
    print(f"device {dev}, exit-check path: {path}, threads {torch.get_num_threads()}")
    print("| dtype | tokens | LM head (vLLM GEMM) | engine check (softmax) | ratio | margin: ratio "
          "| as torch ops: ratio | LM head (torch matmul) | fused check "
          "| ratio | decoder layer | saturation after a layer | of a layer | saturation back to back | of a layer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        m = load_model(args, dtype, dev)
        head = m.lm_head.weight.detach()
        norm_w = m.model.norm.weight.detach()
        eps = m.config.rms_norm_eps
        layer = m.model.layers[len(m.model.layers) // 2]
        gemm = vllm_gemm(head)
        for t in args.tokens:
            x = torch.randn(t, m.config.hidden_size, dtype=dtype, device=dev)
            pos = torch.arange(t, device=dev)[None]
            rope = m.model.rotary_emb(x[None], pos)
            # each pair alternates (a check with the product it adds to; saturation with a layer)
            pairs = [{"head": lambda: x @ head.t(), "fused": lambda: K.exit_stats(x, norm_w, eps, head)},
                     {"layer": lambda: layer(x[None], position_embeddings=rope, attention_mask=None),
                      "sat": lambda: K.saturation_values(x, x)}]
            if gemm is not None:
                norm = vllm_rms_norm(norm_w, eps)
                pairs.append({"gemm": lambda: gemm(x), "engine": lambda: K.probs_of_logits(gemm(norm(x))),
                              "margin": lambda: K.probs_of_logits(gemm(norm(x)), margin=True),
                              "eager": lambda: K.probs_torch(gemm(norm(x)))})
            r = {}
            with torch.no_grad():
                for fns in pairs:
                    r.update(timed(fns))
                r["sat_warm"] = timed({"s": pairs[1]["sat"]}, repeat=300)["s"]  # back to back, caches warm
            ms = lambda k: f"{r[k] * 1e3:.3f} ms" if k in r else "-"  # noqa: E731
            ratio = lambda k: f"{r[k] / r['gemm']:.2f}x" if "gemm" in r else "-"  # noqa: E731
            print(f"| {dtype_name} | {t} | {ms('gemm')} | {ms('engine')} | {ratio('engine')} | {ratio('margin')} "
                  f"| {ratio('eager')} | {ms('head')} | {ms('fused')} "
                  f"| {r['fused'] / r['head']:.2f}x | {ms('layer')} | {r['sat'] * 1e6:.1f} us "
                  f"| {100 * r['sat'] / r['layer']:.2f}% | {r['sat_warm'] * 1e6:.1f} us "
                  f"| {100 * r['sat_warm'] / r['layer']:.2f}% |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
