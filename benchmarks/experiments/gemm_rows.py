"""What a linear layer costs at 1..4 query rows on this CPU: vLLM's own GEMM against torch's.

A verifier step of a request with k draft tokens multiplies every weight by k + 1 rows; a plain
decode step by one.  At batch 1 the step is bound by reading the weights, so each of these should
cost about the same.  This times SmolLM2-135M's shapes (30 of each decoder linear, the LM head
once) through vLLM's CPU GEMM (``dispatch_cpu_unquantized_gemm``: oneDNN with packed weights, what
every linear layer of a CPU engine runs) and through ``torch.nn.functional.linear``, bf16, one
thread as vLLM's CPU worker runs, best of 5 x 5 passes.

    python benchmarks/experiments/gemm_rows.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

# SmolLM2-135M: hidden 576, 9 query heads and 3 KV heads of 64, MLP 1536, vocabulary 49152
SHAPES = {"qkv_proj": (576, 960), "o_proj": (576, 576), "gate_up_proj": (576, 3072), "down_proj": (1536, 576),
          "lm_head": (576, 49152)}
ROWS = (1, 2, 3, 4)


def _layers(k: int, n: int, count: int) -> list[nn.Module]:
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    out = []
    for _ in range(count):
        layer = nn.Module()
        layer.weight = nn.Parameter(torch.randn(n, k, dtype=torch.bfloat16) * 0.02, requires_grad=False)
        dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
        out.append(layer)
    return out


def _best_ms(fn, layers: list[nn.Module]) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(5):
            for layer in layers:
                fn(layer)
        best = min(best, (time.perf_counter() - t) / 5 * 1e3)
    return best


def main() -> None:
    torch.set_num_threads(1)
    totals = {(m, kind): 0.0 for m in ROWS for kind in ("vllm", "torch")}
    print(f"{'shape':<14}" + "".join(f"{f'M={m} vllm':>12}{f'M={m} torch':>12}" for m in ROWS) + "   (ms, all copies)")
    for name, (k, n) in SHAPES.items():
        layers = _layers(k, n, 1 if name == "lm_head" else 30)
        cells = []
        for m in ROWS:
            x = torch.randn(m, k, dtype=torch.bfloat16)
            for kind, fn in (("vllm", lambda layer: layer.cpu_linear(x, layer.weight, None)),
                             ("torch", lambda layer: F.linear(x, layer.weight))):
                ms = _best_ms(fn, layers)
                totals[m, kind] += ms
                cells.append(f"{ms:12.3f}")
        print(f"{name:<14}" + "".join(cells), flush=True)
    print(f"{'all':<14}" + "".join(f"{totals[m, kind]:12.3f}" for m in ROWS for kind in ("vllm", "torch")))
    one = totals[1, "vllm"]
    print("vLLM's GEMM, whole model, against one row: "
          + "  ".join(f"M={m} {totals[m, 'vllm'] / one:.3f}x" for m in ROWS))


if __name__ == "__main__":
    main()
