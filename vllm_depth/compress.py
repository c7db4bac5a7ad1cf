"""Static depth compression: write a smaller checkpoint that ``--model-impl depth`` serves.

- ``prune K``: drop the K layers of least Block Influence; only kept weights are stored.
- ``share K``: K positions reuse the weights of a neighbouring layer (layer fusion).
  Which positions: the K (position, donor) pairs whose substitution moves the
  model's output distribution least (mean KL to the original, measured on the
  calibration text).  How: ``copy`` (the position runs its donor's weights) or
  ``average`` (both run the mean of the two); ``auto`` measures both on the
  chosen pairs and keeps the better.
- ``relax_rank R``: every position whose weights changed keeps a rank-R delta
  per projection (truncated SVD of original minus shared), Relaxed Recursive
  Transformers style.

The output stores each unique weight set once, renumbered ``model.layers.0..U-1``;
``depth.layer_schedule`` maps positions to them; deltas are ``model.relax.<pos>.*``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

DELTA_NAMES = {  # delta parameter prefix -> HF projection
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
    "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}
MERGES = ("auto", "copy", "average")


class CompressError(ValueError):
    pass


@dataclass
class Plan:
    method: str  # prune | share
    num_layers: int
    schedule: list[int] = field(default_factory=list)  # position -> stored layer
    stored: list[list[int]] = field(default_factory=list)  # stored layer -> original layers merged in it
    removed: list[int] = field(default_factory=list)
    shared: dict[int, int] = field(default_factory=dict)  # position -> donor layer
    merge: str | None = None
    relax_rank: int | None = None
    notes: list[str] = field(default_factory=list)

    def changed_positions(self) -> list[int]:
        """Positions whose weights differ from their original layer's."""
        return [p for p, s in enumerate(self.schedule) if self.stored[s] != [p]]


def check_args(model_dir: str, out: str, num_layers: int, hidden: int,
               prune: int | None, share: int | None, relax_rank: int | None, merge: str) -> None:
    """Every argument error, before any work."""
    if (prune is None) == (share is None):
        raise CompressError("give exactly one of --prune K or --share K")
    k = prune if prune is not None else share
    flag = "--prune" if prune is not None else "--share"
    if k < 1 or k >= num_layers:
        raise CompressError(f"{flag}: {k} is out of range; the model has {num_layers} layers, so 1..{num_layers - 1}")
    if share is not None and 2 * share > num_layers:
        raise CompressError(f"--share: {share} is too large; each shared position needs its own donor, so at most {num_layers // 2}")
    if relax_rank is not None:
        if share is None:
            raise CompressError("--relax-rank: only with --share")
        if relax_rank < 1 or relax_rank > hidden:
            raise CompressError(f"--relax-rank: {relax_rank} is out of range; allowed 1..{hidden} (the hidden size)")
    if merge not in MERGES:
        raise CompressError(f"--merge: {merge!r}; allowed: {', '.join(MERGES)}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise CompressError(f"--out: {out!r} exists and is not an empty directory")
    if os.path.abspath(out) == os.path.abspath(model_dir):
        raise CompressError("--out: must differ from the model directory")


# -- choosing -------------------------------------------------------------------------------


@torch.no_grad()
def _logprobs(model, ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(model(torch.tensor([ids]), use_cache=False).logits[0].float(), -1)


def _kl(model, chunks, ref) -> float:
    """Mean KL(original || model) per token; ``ref`` holds the original's log-probabilities."""
    total, n = 0.0, 0
    for c, lp_ref in zip(chunks, ref):
        lp = _logprobs(model, c)
        total += (lp_ref.exp() * (lp_ref - lp)).sum().item()
        n += len(c)
    return total / n


def _averaged(a, b):
    m = copy.deepcopy(a)
    for p, q in zip(m.parameters(), b.parameters()):
        p.data = (p.data + q.data) / 2
    return m


@contextmanager
def _with_layers(model, layers):
    """Run ``model`` with another layer list inside the block; restore it after."""
    original = model.model.layers
    model.model.layers = torch.nn.ModuleList(layers)
    try:
        yield model
    finally:
        model.model.layers = original


def plan_prune(analysis, k: int) -> Plan:
    n = analysis.num_layers
    removed = analysis.least_important(k)
    kept = [l for l in range(n) if l not in removed]
    return Plan("prune", n, schedule=list(range(len(kept))), stored=[[l] for l in kept], removed=removed)


def plan_share(model, chunks, k: int, merge: str, progress: bool = True) -> Plan:
    """Pick K (position, donor) pairs of neighbours by measured KL, then the merge."""
    from tqdm import tqdm

    layers = list(model.model.layers)
    n = len(layers)
    ref = [_logprobs(model, c) for c in chunks]
    candidates = [(p, d) for p in range(n) for d in (p - 1, p + 1) if 0 <= d < n]
    scored = []
    for p, d in tqdm(candidates, desc="share candidates", unit="pair", disable=not progress):
        trial = list(layers)
        trial[p] = layers[d]
        with _with_layers(model, trial):
            scored.append((_kl(model, chunks, ref), p, d))
    receivers, donors, pairs = set(), set(), []
    for kl, p, d in sorted(scored):
        if p in receivers or p in donors or d in receivers or d in donors:
            continue  # one donor per receiver; a layer is in at most one pair
        receivers.add(p)
        donors.add(d)
        pairs.append((p, d, kl))
        if len(pairs) == k:
            break
    if len(pairs) < k:
        raise CompressError(f"--share: found only {len(pairs)} disjoint neighbour pairs for K={k}")

    def build(how: str):
        trial = list(layers)
        for p, d, _ in pairs:
            if how == "copy":
                trial[p] = layers[d]
            else:
                trial[p] = trial[d] = _averaged(layers[p], layers[d])
        return trial

    measured = {}
    for how in (("copy", "average") if merge == "auto" else (merge,)):
        with _with_layers(model, build(how)):
            measured[how] = _kl(model, chunks, ref)
    chosen = min(measured, key=measured.get)

    # One stored weight set per group, in order of first position.  copy: a
    # receiver's group is its donor's; average: the two of a pair form one group.
    pair_of = {p: d for p, d, _ in pairs}
    partner = {**pair_of, **{d: p for p, d in pair_of.items()}}

    def group(layer: int) -> tuple[int, ...]:
        if chosen == "copy":
            return (pair_of.get(layer, layer),)
        return tuple(sorted({layer, partner.get(layer, layer)}))

    stored: list[list[int]] = []
    slot: dict[tuple[int, ...], int] = {}
    schedule = []
    for pos in range(n):
        g = group(pos)
        if g not in slot:
            slot[g] = len(stored)
            stored.append(list(g))
        schedule.append(slot[g])
    plan = Plan("share", n, schedule=schedule, stored=stored, shared=dict(pair_of), merge=chosen)
    plan.notes.append(
        "merge by measured KL to the original: " + ", ".join(f"{h} {v:.4f}" for h, v in measured.items())
    )
    plan.notes.append("pairs (position <- donor, KL alone): " + ", ".join(f"{p}<-{d} ({kl:.4f})" for p, d, kl in pairs))
    return plan


# -- writing --------------------------------------------------------------------------------


def _load_state(model_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise CompressError(f"{model_dir}: no *.safetensors weights")
    return state


def _svd_delta(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(diff.double(), full_matrices=False)
    a = (u[:, :rank] * s[:rank]).to(diff.dtype)
    b = vh[:rank].to(diff.dtype)
    return a.contiguous(), b.contiguous()


def write_checkpoint(model_dir: str, out: str, plan: Plan) -> dict:
    from safetensors.torch import save_file

    state = _load_state(model_dir)
    prefix = "model.layers."
    new: dict[str, torch.Tensor] = {k: v for k, v in state.items() if not k.startswith(prefix)}
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if k.startswith(prefix):
            idx, rest = k[len(prefix):].split(".", 1)
            by_layer.setdefault(int(idx), {})[rest] = v
    for s, members in enumerate(plan.stored):
        for rest in by_layer[members[0]]:
            t = torch.stack([by_layer[m][rest].float() for m in members]).mean(0).to(by_layer[members[0]][rest].dtype)
            new[f"{prefix}{s}.{rest}"] = t.contiguous()
    relax_positions = []
    if plan.relax_rank is not None:
        for pos in plan.changed_positions():
            stored = plan.schedule[pos]
            for name, proj in DELTA_NAMES.items():
                w_orig = by_layer[pos][f"{proj}.weight"].float()
                w_now = new[f"{prefix}{stored}.{proj}.weight"].float()
                a, b = _svd_delta(w_orig - w_now, plan.relax_rank)
                dtype = by_layer[pos][f"{proj}.weight"].dtype
                new[f"model.relax.{pos}.{name}_a"] = a.to(dtype)
                new[f"model.relax.{pos}.{name}_b"] = b.to(dtype)
            relax_positions.append(pos)

    os.makedirs(out, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(f, Path(out) / f.name)
    save_file(new, str(Path(out) / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    depth = {"layer_schedule": plan.schedule}
    if relax_positions:
        depth.update(relax_rank=plan.relax_rank, relax_positions=relax_positions)
    cfg["num_hidden_layers"] = len(plan.stored)
    cfg["depth"] = depth
    cfg["vllm_depth_compress"] = {
        "from": os.path.abspath(model_dir),
        "method": plan.method,
        "original_layers": plan.num_layers,
        "removed": plan.removed,
        "shared": {str(p): d for p, d in plan.shared.items()},
        "merge": plan.merge,
        "stored_from": plan.stored,
        "relax_rank": plan.relax_rank,
    }
    (Path(out) / "config.json").write_text(json.dumps(cfg, indent=2))
    return {
        "bytes_on_disk": checkpoint_bytes(out),
        "original_bytes_on_disk": checkpoint_bytes(model_dir),
        "params": sum(t.numel() for t in new.values()),
        "original_params": sum(t.numel() for t in state.values()),
    }


def checkpoint_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def compress(model_dir: str, out: str, prune: int | None = None, share: int | None = None,
             relax_rank: int | None = None, merge: str = "auto", texts: list[str] | None = None,
             samples: int = 16, seq_len: int = 256, progress: bool = True) -> tuple[Plan, dict]:
    from transformers import AutoConfig

    from vllm_depth.analysis import analyze, load_hf
    from vllm_depth.data import stdlib_texts, token_chunks

    cfg = AutoConfig.from_pretrained(model_dir)
    if getattr(cfg, "depth", None):
        raise CompressError(f"{model_dir}: already has a depth config; compress the original checkpoint")
    check_args(model_dir, out, cfg.num_hidden_layers, cfg.hidden_size, prune, share, relax_rank, merge)
    model, tok = load_hf(model_dir)
    chunks = token_chunks(tok, texts if texts is not None else stdlib_texts("calib"), seq_len, samples)
    if prune is not None:
        plan = plan_prune(analyze(model, chunks, progress=progress), prune)
    else:
        # candidates are scored on a few chunks: 2 x n_layers forward passes each
        plan = plan_share(model, chunks[: max(1, samples // 8)], share, merge, progress=progress)
        plan.relax_rank = relax_rank
    report = write_checkpoint(model_dir, out, plan)
    return plan, report
