"""Experiment: is the layer-16 exit head short of capacity? (Measured; see the README.)

    python benchmarks/experiments/head_capacity.py [EXIT_LAYER=16] [TRAIN_CHUNKS=400] [STEPS=1000]

Caches SmolLM2's residual stream after EXIT_LAYER layers and the teacher's
reduced-vocabulary distribution (train-exits' 8192 tokens + "other") for
TRAIN_CHUNKS chunks of 256 standard-library tokens, then trains, with train-exits'
loss (KL from the teacher + cross-entropy of its top-1), on the same data:
- ``linear``: the train-exits head (``TorchExitHead``: own norm gain, residual linear map);
- ``mlp1536`` / ``mlp4608``: the same plus a residual SiLU MLP of that width (``--mlp-width``);
- ``layer``: a Kangaroo-style adapter, a copy of the model's next decoder layer
  (attention over the chunk, so an adapter with its own KV cache) trained, then the
  linear head.
Held-out agreement with the final top-1 on 16 x 256 tokens of held-out docstrings.
"""
import copy
import sys
import time

import torch
from torch import nn

from vllm_depth.tools.analysis import load_hf
from vllm_depth.tools.checkpoints import resolve_model
from vllm_depth.tools.data import stdlib_texts, token_chunks
from vllm_depth.tools.train_exit_heads import (
    OutputSpace,
    TorchExitHead,
    distill_loss,
    frequent_tokens,
)

torch.manual_seed(0)
torch.set_num_threads(2)
L = int(sys.argv[1]) if len(sys.argv) > 1 else 16
NTRAIN = int(sys.argv[2]) if len(sys.argv) > 2 else 400
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
model, tok = load_hf(resolve_model("smollm2-135m"))
cfg = model.config
texts = stdlib_texts("calib")
train = token_chunks(tok, texts, 256, NTRAIN)
held = token_chunks(tok, stdlib_texts("eval"), 256, 16)
space = OutputSpace(model, frequent_tokens(tok, texts, 8192))
pos = torch.arange(256)[None]
rope = model.model.rotary_emb(torch.zeros(1, 256, cfg.hidden_size), pos)


def feats(chunks):
    out = []
    for c in chunks:
        with torch.no_grad():
            o = model(torch.tensor([list(c)]), output_hidden_states=True)
        teacher, top = space.target(o.logits[0])
        out.append((o.hidden_states[L][0].clone(), teacher.to(torch.bfloat16), top, o.logits[0].argmax(-1)))
    return out


t0 = time.time()
H, T = feats(held), feats(train)
print(f"features {time.time() - t0:.0f} s, {len(T)} x 256 train tokens", flush=True)


class Adapted(nn.Module):
    """A Kangaroo-style adapter: a trained copy of the model's next decoder layer, then the head."""

    def __init__(self, head: TorchExitHead):
        super().__init__()
        self.layer = copy.deepcopy(model.model.layers[L]).float().requires_grad_(True)
        self.head = head
        self.other = head.other

    def forward(self, x):
        y = self.layer(x.float()[None], position_embeddings=rope, attention_mask=None)
        return self.head((y[0] if isinstance(y, tuple) else y)[0])


def head(mlp_width=0):
    """train-exits' head (``TorchExitHead``: own norm gain, residual linear map, residual MLP)."""
    return TorchExitHead(model.model.norm.weight, cfg.rms_norm_eps, mlp_width, torch.Generator().manual_seed(0),
                         reduced=True)


def agree(h):
    hit = n = 0
    with torch.no_grad():
        for f in H:
            hit += int((space.predict(space.logits(h, f[0])) == f[3]).sum())
            n += f[3].numel()
    return hit / n


variants = [("linear", head()), ("mlp1536", head(1536)), ("mlp4608", head(4608)), ("layer", Adapted(head()))]
only = set(sys.argv[4].split(",")) if len(sys.argv) > 4 else None
for name, h in variants:
    if only and name not in only:
        continue
    lr = 1e-3 if name == "layer" else 3e-3
    opt = torch.optim.Adam(h.parameters(), lr=lr)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=STEPS, pct_start=0.05)
    t0 = time.time()
    for i in range(STEPS):
        f = T[i % len(T)]
        loss = distill_loss(space.logits(h, f[0]), f[1].float(), f[2])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sch.step()
        if i % 250 == 249:
            print(name, i + 1, round(loss.item(), 3), round(agree(h), 4), f"{time.time() - t0:.0f} s", flush=True)
    params = sum(p.numel() for p in h.parameters())
    print("RESULT", name, L, round(agree(h), 4), "params", params, f"{time.time() - t0:.0f} s", flush=True)
