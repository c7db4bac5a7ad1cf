"""vLLM's platform kernels where the plugin runs ops eagerly (vLLM 0.32)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from vllm.model_executor.custom_op import CustomOp
from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
from vllm.platforms import current_platform


class NativeKernels:
    """Eager steps of a compiled model run vLLM's platform kernels, not the torch-native ops.

    vLLM 0.32 ``CustomOp.dispatch_forward``: with torch.compile on, custom ops
    (RMSNorm, rotary, SiLU-and-mul) are set to ``forward_native`` so inductor
    can fuse them; run eagerly, those are many small torch ops.  The
    early-exit step runs eagerly (which tokens go on is data-dependent), so for
    its duration each op's ``_forward_method`` is the platform's kernel, as
    vLLM picks it when the op is enabled.
    """

    def __init__(self, module):
        kind = "cpu" if current_platform.is_cpu() else "hip" if current_platform.is_rocm() else "cuda"
        self.ops = [
            (m, m._forward_method, getattr(m, f"forward_{kind}"))
            for m in module.modules()
            if isinstance(m, CustomOp) and hasattr(m, "_forward_method")
        ]

    # a plain attribute: ``object.__setattr__`` skips nn.Module's (about 4 us each, ~100 ops a step)
    def __enter__(self):
        for m, _, fast in self.ops:
            object.__setattr__(m, "_forward_method", fast)
        return self

    def __exit__(self, *exc):
        for m, default, _ in self.ops:
            object.__setattr__(m, "_forward_method", default)
        return False


def rows_product(weight: torch.Tensor):
    """``(rows, x -> x rows^T)`` for a copy of some of a layer's weight rows: on the CPU through vLLM's own
    GEMM (``dispatch_cpu_unquantized_gemm``: oneDNN with packed weights, as for every linear layer; at one
    token 0.12 ms for SmolLM2's 8192 LM-head rows, against 0.28 ms for torch's matmul), else ``F.linear``."""
    layer = nn.Module()  # not a submodule of anything: the rows are a copy, never in a state dict
    layer.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if layer.weight.device.type != "cpu":
        return layer.weight, F.linear
    dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
    return layer.weight, layer.cpu_linear


def packed_weight_bytes(module, param) -> int | None:
    """Bytes of a linear layer's weight that vLLM's CPU build repacked for its GEMM (vLLM 0.32
    ``dispatch_cpu_unquantized_gemm`` leaves ``weight`` empty), by its logical shape; None otherwise."""
    if param.numel() or not hasattr(module, "cpu_linear"):
        return None
    out_size = getattr(module, "output_size_per_partition", None) or sum(module.output_partition_sizes)
    in_size = getattr(module, "input_size_per_partition", None) or module.input_size
    return out_size * in_size * param.element_size()


def model_weight_bytes(model) -> int:
    """Bytes of a loaded vLLM model's unique weights, each shared or tied tensor once.

    vLLM's CPU build repacks a linear layer's weight for its GEMM (vLLM 0.32
    ``dispatch_cpu_unquantized_gemm``) and leaves ``weight`` empty; such a layer
    is counted by its logical shape, which the packed copy occupies.
    """
    seen: set[int] = set()
    total = 0
    for module in model.modules():  # unique modules: a shared layer is visited once
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            packed = packed_weight_bytes(module, p)
            total += p.numel() * p.element_size() if packed is None else packed
    return total


def expand_batch_to_tokens(x, cu_num_tokens, num_tokens: int, replace_from=0, replace_to=0):
    """[a, b, c] with cu_num_tokens [2, 5, 6] -> [a, a, b, b, b, c]; ``replace_from`` values become ``replace_to``."""
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1, dtype=torch.long))
    out = x.new_zeros(num_tokens)
    expanded = torch.repeat_interleave(x, counts)
    out[: expanded.numel()] = expanded
    if replace_from != replace_to:
        out = torch.where(out == replace_from, torch.tensor(replace_to, dtype=out.dtype), out)
    return out
