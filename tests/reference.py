"""Independent references: plain Hugging Face / PyTorch, no vLLM, no vllm_depth.

A layer schedule is reproduced by rearranging the ``nn.ModuleList`` of a
``LlamaForCausalLM`` (a repeated index is the same module object, so its weights
are shared).  Decoding runs without a KV cache (the full sequence every step),
which is exact and sidesteps HF caches keyed by layer index.
"""

from __future__ import annotations

import torch
from torch import nn


def hf_model(path: str, schedule: list[int] | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    if schedule is not None:
        layers = model.model.layers
        model.model.layers = nn.ModuleList([layers[p] for p in schedule])
        model.config.num_hidden_layers = len(schedule)
    return model


@torch.no_grad()
def logprobs(model, ids: list[int]) -> torch.Tensor:
    """Log-softmax of the next-token distribution at every position: [len(ids), vocab]."""
    out = model(torch.tensor([ids]), use_cache=False)
    return torch.log_softmax(out.logits[0].float(), dim=-1)


def teacher_forced(model, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1."""
    lp = logprobs(model, ids)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


@torch.no_grad()
def greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    ids = list(prompt_ids)
    for _ in range(n):
        ids.append(int(logprobs(model, ids)[-1].argmax()))
    return ids[len(prompt_ids):]


def first_divergence_is_near_tie(model, prompt_ids, got: list[int], ref: list[int], tol: float = 1e-3):
    """True when ``got`` equals ``ref`` or first leaves it where the reference is at a near-tie.

    A near-tie: the reference's log-probability of ``got``'s token is within
    ``tol`` of its best.  Returns (ok, detail).
    """
    for i, (a, b) in enumerate(zip(got, ref)):
        if a != b:
            lp = logprobs(model, list(prompt_ids) + ref[:i])[-1]
            gap = (lp.max() - lp[a]).item()
            return gap <= tol, f"first difference at token {i}: gap {gap:.2e}"
    if len(got) != len(ref):
        return False, f"lengths differ: {len(got)} vs {len(ref)}"
    return True, "identical"
