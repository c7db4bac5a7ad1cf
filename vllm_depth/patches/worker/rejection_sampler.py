"""vLLM 0.32 ``vllm.v1.sample.rejection_sampler.expand_batch_to_tokens`` on the CPU.

It expands per-request sampling settings (temperature, top-k, top-p) to one value per draft token
through ``expand_kernel``, whose CPU version (``cpu_triton_utils._expand_kernel_impl``) converts the
input and the output buffer to int64 and writes into that copy: every setting that is not already
int64 (float temperatures and top-p, int32 top-k) stays uninitialised memory.  Verified tokens of
random requests then come from garbage-scaled logits (measured on SmolLM2 at temperature 0.8: stock
vLLM's own ``ngram`` method drew its second and third tokens from a visibly different distribution
than plain decoding).  Such settings are expanded with ``repeat_interleave``
(``compat.kernels.expand_batch_to_tokens``), in every engine of the CPU build (whatever its
proposer: the function has no engine to ask); int64 ones, which vLLM's function expands correctly,
keep it.
"""

from __future__ import annotations

import torch
import vllm.v1.sample.rejection_sampler as rs
from vllm.platforms import current_platform

from vllm_depth.compat.kernels import expand_batch_to_tokens
from vllm_depth.patches.base import patch


def install() -> None:
    if not current_platform.is_cpu():
        return

    def wrap(original):
        def method(x, cu_num_tokens, num_tokens, replace_from=0, replace_to=0):
            if x.dtype == torch.int64:
                return original(x, cu_num_tokens, num_tokens, replace_from, replace_to)
            return expand_batch_to_tokens(x, cu_num_tokens, num_tokens, replace_from, replace_to)

        return method

    patch(rs, "expand_batch_to_tokens", wrap)
