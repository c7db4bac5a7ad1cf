"""Experiment: does a layer-16 exit head gain from the previous token's final hidden state?

    python benchmarks/experiments/head_prev_state.py [CHUNKS=600] [STEPS=3000] [MODES=none,full,lr16,lr64,lr256,mlp512] [LAYERS=16]

EAGLE drafts from the target model's top-layer features of the tokens before;
at decode time the previous token's final state is known (it was just computed),
so a head at layer L could read it beside the residual stream after L.  Each
mode trains a fresh train-exits head (its norm and residual linear map, reduced
vocabulary 8192, train-exits' loss) on the first CHUNKS chunks of 256
standard-library tokens read once by the bfloat16 model, plus a map of the
previous position's final (normed) state added to the head's output:

    none     the train-exits head alone (the baseline)
    full     + W_p f[t-1]               (576 x 576, from zero)
    lrR      + B A f[t-1]               (rank R; A random, B from zero)
    mlpW     + down(silu(up([h, f[t-1]])))   (width W; down from zero)

LAYERS (comma-separated; 0 is the token embedding) runs every mode at each
layer: a draft head for self-speculation runs few layers, and there the
previous final state may be most of what it knows.

Reports held-out agreement with the float32 model's final top-1 on train-exits'
held-out code (32 x 256 tokens) and docstrings (16 x 256), and the mean loss of
the last 50 steps.  About 5 minutes of features for 600 chunks, then about
0.03 s per step per mode.
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn

from vllm_depth.tools.analysis import load_hf
from vllm_depth.tools.checkpoints import resolve_model
from vllm_depth.tools.data import stdlib_texts, token_chunks
from vllm_depth.tools.distill import distill
from vllm_depth.tools.train_exit_heads import (
    OutputSpace,
    TorchExitHead,
    distill_loss,
    frequent_tokens,
    held_out_features,
    teacher_features,
)

torch.manual_seed(0)
torch.set_num_threads(2)
chunks = int(sys.argv[1]) if len(sys.argv) > 1 else 600
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
modes = (sys.argv[3] if len(sys.argv) > 3 else "none,full,lr16,lr64,lr256,mlp512").split(",")
layers = [int(x) for x in (sys.argv[4] if len(sys.argv) > 4 else "16").split(",")]
path = resolve_model("smollm2-135m")
model, tok = load_hf(path)
teacher = load_hf(path, torch.bfloat16)[0]
texts = stdlib_texts("calib")
space = OutputSpace(model, frequent_tokens(tok, texts, 8192))
HIDDEN = model.config.hidden_size
FINAL = model.config.num_hidden_layers  # HF's last hidden state: after the final norm


class PrevStateHead(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.base = TorchExitHead(model.model.norm.weight, model.config.rms_norm_eps, 0, g, reduced=True)
        self.other = self.base.other
        self.mode = mode
        if mode == "full":
            self.p = nn.Linear(HIDDEN, HIDDEN, bias=False)
            nn.init.zeros_(self.p.weight)
        elif mode.startswith("lr"):
            self.a = nn.Linear(HIDDEN, int(mode[2:]), bias=False)
            self.b = nn.Linear(int(mode[2:]), HIDDEN, bias=False)
            nn.init.normal_(self.a.weight, std=HIDDEN**-0.5)
            nn.init.zeros_(self.b.weight)
        elif mode.startswith("mlp"):
            self.up = nn.Linear(2 * HIDDEN, int(mode[3:]), bias=False)
            self.down = nn.Linear(int(mode[3:]), HIDDEN, bias=False)
            nn.init.normal_(self.up.weight, std=(2 * HIDDEN) ** -0.5)
            nn.init.zeros_(self.down.weight)
        elif mode != "none":
            raise SystemExit(f"MODES: unknown {mode!r}; allowed: none, full, lrR, mlpW")

    def forward(self, states: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, prev = states
        h = self.base(x)
        if self.mode == "full":
            h = h + self.p(prev)
        elif self.mode.startswith("lr"):
            h = h + self.b(self.a(prev))
        elif self.mode.startswith("mlp"):
            h = h + self.down(F.silu(self.up(torch.cat([h, prev], -1))))
        return h


def inputs(f, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk's states after its ``i``-th layer of LAYERS and, per position, the previous position's
    final state."""
    state, final = f.states[i], f.states[-1].float()
    return state, torch.cat([torch.zeros_like(final[:1]), final[:-1]])


def logits(head: PrevStateHead, f, i: int) -> torch.Tensor:
    return space.logits(head, inputs(f, i), torch.bfloat16)


held = held_out_features(model, tok, [*layers, FINAL], space, 256, 32, progress=False)
train = teacher_features(teacher, token_chunks(tok, texts, 256, chunks), [*layers, FINAL], space, progress=False)
print(f"{chunks} chunks x {steps} steps")
print("| layer | head | parameters | held-out code | held-out docstrings | loss (last 50 steps) |\n"
      "| --- | --- | --- | --- | --- | --- |")
for i, layer in enumerate(layers):
    for mode in modes:
        head = PrevStateHead(mode)
        losses = distill(lambda f: distill_loss(logits(head, f, i), f.teacher_lp, f.top, f.teacher_ix),
                         list(head.parameters()), train, steps, 3e-3, desc=mode, progress=False, one_cycle=True)
        agree = {}
        with torch.no_grad():
            for name, items in held.items():
                hits = sum(int((space.predict(logits(head, f, i)) == f.tokens).sum()) for f in items)
                agree[name] = hits / sum(f.tokens.numel() for f in items)
        params = sum(p.numel() for p in head.parameters())
        print(f"| {layer} | {mode} | {params / 1e6:.2f} M | {agree['code']:.3f} | {agree['docstrings']:.3f} | "
              f"{sum(losses[-50:]) / 50:.3f} |", flush=True)
