"""Cost of the exit check, measured side by side in one run.

    python benchmarks/exit_check.py [--model smollm2-135m] [--tokens 1 16] [--dtype float32 bfloat16]

For each token count: the fused exit check (final RMSNorm + LM head + online
softmax top-2, ``vllm_depth.kernels.exit_check``) against the LM-head matmul
alone (the unavoidable product), and the saturation check against one decoder
layer of the model (Hugging Face layer, those tokens, no KV cache).  On the CPU
the torch path runs; on a GPU the Triton kernels.  Medians of repeated runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timeit(fn, repeat: int = 30, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    print("| dtype | tokens | LM head matmul | exit check | ratio | decoder layer | saturation | of a layer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        m = model.to(dtype=dtype, device=dev)
        head = m.lm_head.weight.detach()
        norm_w = m.model.norm.weight.detach()
        eps = m.config.rms_norm_eps
        layer = m.model.layers[m.config.num_hidden_layers // 2]
        for t in args.tokens:
            x = torch.randn(t, m.config.hidden_size, dtype=dtype, device=dev)
            pos = torch.arange(t, device=dev)[None]
            rope = m.model.rotary_emb(x[None], pos)
            with torch.no_grad():
                t_head = timeit(lambda: x @ head.t())
                t_exit = timeit(lambda: K.exit_stats(x, norm_w, eps, head))
                t_layer = timeit(lambda: layer(x[None], position_embeddings=rope, attention_mask=None))
                t_sat = timeit(lambda: K.saturation(x, x))
            print(f"| {dtype_name} | {t} | {t_head * 1e3:.3f} ms | {t_exit * 1e3:.3f} ms | {t_exit / t_head:.2f}x "
                  f"| {t_layer * 1e3:.3f} ms | {t_sat * 1e6:.1f} us | {100 * t_sat / t_layer:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
