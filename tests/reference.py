"""Independent references: plain Hugging Face / PyTorch, no vLLM, no vllm_depth.

A layer schedule is reproduced by rearranging the ``nn.ModuleList`` of a
``LlamaForCausalLM``.  Each position is a shallow copy of its physical layer
(the same projection, MLP and norm modules, so repeated weights are shared)
with its own ``layer_idx``, so that HF's KV cache keeps one entry per position.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def hf_model(path: str, schedule: list[int] | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    if schedule is not None:
        layers = model.model.layers
        model.model.layers = nn.ModuleList([_at_position(layers[p], i) for i, p in enumerate(schedule)])
        model.config.num_hidden_layers = len(schedule)
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = [model.config.layer_types[p] for p in schedule]
    return model


def _at_position(layer: nn.Module, index: int) -> nn.Module:
    """``layer`` at schedule position ``index``: shared weights, its own cache slot."""
    at = copy.copy(layer)
    at._modules = dict(layer._modules)
    attn = copy.copy(layer.self_attn)
    attn._modules = dict(layer.self_attn._modules)
    attn.layer_idx = index
    at._modules["self_attn"] = attn
    return at


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
    """Greedy decoding with HF's KV cache, ignoring EOS."""
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    tokens = [int(out.logits[0, -1].argmax())]
    for _ in range(n - 1):
        out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


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


def hf_from_depth_checkpoint(path: str):
    """Rebuild a checkpoint written by ``vllm-depth compress`` as a plain HF model.

    Stored layers are loaded as an ordinary Llama, arranged by
    ``depth.layer_schedule``; a relaxed position gets its own copy of its layer
    with ``A @ B`` added to every projection weight (materialized, not low-rank).
    """
    import copy
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    cfg = json.loads((Path(path) / "config.json").read_text())
    depth = cfg.get("depth", {})
    model = hf_model(path, depth.get("layer_schedule"))
    if depth.get("relax_rank"):
        state = load_file(str(Path(path) / "model.safetensors"))
        projs = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                 "down": "mlp.down_proj"}
        layers = list(model.model.layers)
        for pos in depth["relax_positions"]:
            layer = copy.deepcopy(layers[pos])
            mods = dict(layer.named_modules())
            for short, name in projs.items():
                a = state[f"model.relax.{pos}.{short}_a"].float()
                b = state[f"model.relax.{pos}.{short}_b"].float()
                mods[name].weight.data += a @ b
            layers[pos] = layer
        model.model.layers = nn.ModuleList(layers)
    return model
