"""Token-level early exit with CALM-style state propagation: an independent reference.

Plain PyTorch on a Hugging Face ``LlamaForCausalLM`` or ``Gemma3ForCausalLM`` (no vLLM, no
vllm_depth).
Greedy, batch of one, never stops at EOS.  The loop keeps its own per-layer KV
cache and computes attention itself; the HF modules supply only the weights,
norms, projections, MLP and rotary embedding.  Gemma 3's layers differ where the HF modules say so:
q/k norms (``q_norm``, ``k_norm``), norms after attention and after the MLP
(``pre_feedforward_layernorm``), a rotary base per layer type and a sliding window per layer
(``sliding_window``: a query sees the keys less than that many positions back).

Exit layer L is a layer count: "after the first L layers".  The prompt runs all
N layers.  A decode token runs layers one at a time; after the first L layers,
L in ``exit_layers`` and L >= ``min_layer``, its confidence is checked and, when
it is above ``threshold``, the token is taken from the residual stream h there.
The skipped layers j = L..N-1 get K/V at this position by state propagation:
``k_proj``/``v_proj`` of ``layers[j].input_layernorm(h)``, rotary on k
(``kv_fill="propagate"``), or the exact K/V of the token run through them
(``kv_fill="recompute"``: the engine runs them in the next step, batched with
the next token; the K/V depend only on the cache before the token and the
token itself, so computing them right away gives the same values).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

NEAR = 1e-3  # a confidence this close to the threshold, or top-2 log-probs this close: a near-tie


@dataclass
class ExitTrace:
    tokens: list[int] = field(default_factory=list)
    exit_layers: list[int] = field(default_factory=list)  # one per token; N = full depth
    near_tie: list[bool] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list, repr=False)  # h each token was taken from
    kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)  # per layer


def _heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[1, T, H * d] -> [1, H, T, d]."""
    return t.view(1, t.shape[1], -1, head_dim).transpose(1, 2)


def _kv(layer, h, cos, sin):
    """The K (normed where the layer norms k, rotated) and V that ``layer`` caches for residual stream ``h``."""
    attn, x = layer.self_attn, layer.input_layernorm(h)
    k, v = _heads(attn.k_proj(x), attn.head_dim), _heads(attn.v_proj(x), attn.head_dim)
    if hasattr(attn, "k_norm"):
        k = attn.k_norm(k)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    return k, v


def _append(kv: list, j: int, k: torch.Tensor, v: torch.Tensor) -> None:
    kv[j] = (k, v) if kv[j] is None else (torch.cat([kv[j][0], k], 2), torch.cat([kv[j][1], v], 2))


def _rope(model, h, pos) -> list:
    """(cos, sin) of every layer at positions ``pos`` (Gemma 3: one rotary base per layer type)."""
    rotary, n = model.model.rotary_emb, len(model.model.layers)
    types = getattr(model.config, "layer_types", None)
    if types is None or not hasattr(rotary, "layer_types"):
        return [rotary(h, pos[None])] * n
    per_type = {t: rotary(h, pos[None], t) for t in set(types)}
    return [per_type[t] for t in types]


def _layer(layer, h, kv, j, cos, sin, pos):
    """One decoder layer on h [1, T, hidden] at positions ``pos``, appending its K/V to ``kv[j]``."""
    attn = layer.self_attn
    q = _heads(attn.q_proj(layer.input_layernorm(h)), attn.head_dim)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    q, _ = apply_rotary_pos_emb(q, q, cos, sin)
    _append(kv, j, *_kv(layer, h, cos, sin))
    groups = q.shape[1] // kv[j][0].shape[1]
    k, v = (t.repeat_interleave(groups, 1) for t in kv[j])  # GQA: query head i reads kv head i // groups
    scores = q @ k.transpose(2, 3) * attn.scaling
    keys = torch.arange(k.shape[2])[None, :]
    hidden_from = keys > pos[:, None]  # causal: keys after the query
    window = getattr(attn, "sliding_window", None)
    if window is not None:  # and keys a window or more behind it
        hidden_from = hidden_from | (pos[:, None] - keys >= window)
    o = torch.softmax(scores.masked_fill(hidden_from, float("-inf")).float(), -1) @ v
    out = attn.o_proj(o.transpose(1, 2).reshape(1, h.shape[1], -1))
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma: norms after attention and after the MLP too
        h = h + layer.post_attention_layernorm(out)
        return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    h = h + out
    return h + layer.mlp(layer.post_attention_layernorm(h))


def _logits(model, h: torch.Tensor, head=None) -> torch.Tensor:
    return _logits_rest(model, h, head)[0]


def _logits_rest(model, h: torch.Tensor, head=None):
    """(logits over the full vocabulary, the "other" logit of a reduced-vocabulary head or None)."""
    if head is None:
        return model.lm_head(model.model.norm(h)).float(), None
    return head(model, h)


def load_exit_heads(path: str) -> dict:
    """{exit layer: head} from a checkpoint's ``depth/exit_heads.safetensors``, written out here from the
    documented formula: h = rmsnorm(x) * g; h += h W^T; h += down(silu(up(h))) when there is an MLP;
    h += prev P^T for a draft head (``prev_state``: prev is the previous token's final normed state);
    logits h E^T over the full vocabulary, or, with a reduced vocabulary (ids), h E[ids]^T at
    those ids (-inf elsewhere) and "other" = h o^T.  ``head.hidden(x, prev)`` is h."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    cfg = json.loads((Path(path) / "config.json").read_text())
    state = {k: v if k.endswith(".ids") else v.float()
             for k, v in load_file(str(Path(path) / "depth" / "exit_heads.safetensors")).items()}
    eps = cfg["rms_norm_eps"]

    def make(layer: int):
        w = {k.rsplit(".", 2)[-2]: v for k, v in state.items()
             if k.startswith(f"model.exit_heads.{layer}.") and k.endswith(".weight")}

        other = state.get(f"model.exit_heads.{layer}.other")
        ids = state.get("model.exit_vocab.ids")

        def hidden(x, prev=None):
            x = x.float()
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w["norm"]
            h = h + h @ w["proj"].t()
            if "up" in w:
                h = h + F.silu(h @ w["up"].t()) @ w["down"].t()
            if "prev" in w:
                h = h + prev.float() @ w["prev"].t()
            return h

        def head(model, x, prev=None):
            h = hidden(x, prev)
            if ids is None:
                return model.lm_head(h).float(), None
            ids_ = ids.long()
            logits = torch.full((*h.shape[:-1], model.config.vocab_size), float("-inf"))
            logits[..., ids_] = h @ model.lm_head.weight[ids_].t()
            return logits, (h @ other.t())[..., 0]

        head.hidden = hidden
        return head

    return {n: make(n) for n in cfg["depth"]["exit_heads"]["layers"]}


def _confidence(model, h, prev, criterion: str, head=None) -> float:
    if criterion == "saturation":
        return F.cosine_similarity(h.flatten().float(), prev.flatten().float(), dim=0).item()
    logits, rest = _logits_rest(model, h, head)
    p = torch.softmax(torch.cat([logits.flatten(), rest.flatten()]) if rest is not None else logits.flatten(), -1)
    top = (p[:-1] if rest is not None else p).topk(2).values
    if criterion in ("softmax", "head"):
        return top[0].item()
    if criterion == "margin":
        return (top[0] - top[1]).item()
    raise ValueError(f"unknown criterion {criterion!r}")


@torch.no_grad()
def early_exit_greedy(model, prompt_ids: list[int], n: int, *, exit_layers: list[int], threshold: float,
                      min_layer: int = 0, criterion: str = "softmax", heads: dict | None = None,
                      kv_fill: str = "propagate") -> ExitTrace:
    """Greedy decoding of ``n`` tokens with early exit and state propagation (see the module docstring).

    ``heads``: {exit layer: head} (``load_exit_heads``); at those layers the exit
    distribution is the head's output through the LM head, not the final norm's.
    """
    heads = heads or {}
    layers = model.model.layers
    N = len(layers)
    assert all(1 <= L <= N - 1 for L in exit_layers), f"exit layers must be in [1, {N - 1}]"
    checks = {L for L in exit_layers if L >= min_layer}
    trace, kv = ExitTrace(), [None] * N
    for step in range(n):
        ids = list(prompt_ids) if step == 0 else [trace.tokens[-1]]
        start = 0 if step == 0 else len(prompt_ids) + step - 1
        pos = torch.arange(start, start + len(ids))
        h = model.model.embed_tokens(torch.tensor([ids]))  # (Gemma's embedding module scales by sqrt(hidden))
        rope = _rope(model, h, pos)
        prev, near, exit_at, out = h, False, N, None
        for j, layer in enumerate(layers):
            h = _layer(layer, h, kv, j, *rope[j], pos)
            if step == 0 or j + 1 not in checks or out is not None:
                continue
            conf = _confidence(model, h, prev, criterion, heads.get(j + 1))
            prev, near = h, near or abs(conf - threshold) <= NEAR
            if conf > threshold:
                exit_at, out = j + 1, h
                if kv_fill == "recompute":  # the skipped layers still run, for their K/V only
                    continue
                for s in range(exit_at, N):  # state propagation into the skipped layers
                    _append(kv, s, *_kv(layers[s], h, *rope[s]))
                break
        h = h if out is None else out
        logits = _logits(model, h[0, -1], heads.get(exit_at))
        top = torch.log_softmax(logits, -1).topk(2).values
        trace.tokens.append(int(logits.argmax()))  # ties: the lowest id
        trace.exit_layers.append(exit_at)
        trace.near_tie.append(near or (top[0] - top[1]).item() <= NEAR)
        trace.hidden.append(h[0, -1])
    trace.kv = kv
    return trace


def agrees(trace: ExitTrace, tokens: list[int], exit_layers: list[int]) -> tuple[bool, str]:
    """True when (tokens, exit_layers) equal the trace's, or first differ where the trace is at a near-tie."""
    for i, (got, want) in enumerate(zip(zip(tokens, exit_layers), zip(trace.tokens, trace.exit_layers))):
        if got != want:
            tie = trace.near_tie[i]
            return tie, (f"step {i}: got token {got[0]} exit {got[1]}, reference token {want[0]} exit {want[1]}"
                         + (" (reference near-tie)" if tie else ""))
    if not len(tokens) == len(exit_layers) == len(trace.tokens):
        return False, f"lengths differ: {len(tokens)} tokens, {len(exit_layers)} exits, reference {len(trace.tokens)}"
    return True, "identical"
