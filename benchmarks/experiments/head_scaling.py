"""Experiment: what a layer-16 exit head gains from more text and from more steps (see the README).

    python benchmarks/experiments/head_scaling.py [CHUNKS=2000] [RUNS=600x3000,1000x1000,1000x3000,2000x2000,2000x4000,2000x6000]

The bfloat16 base model reads CHUNKS chunks of 256 standard-library tokens once
(``teacher_features``: the residual stream after layer 16 and the teacher's top-32
in train-exits' reduced vocabulary); each run ``NxS`` then trains a fresh
train-exits head for S steps on the first N chunks (S / N passes) with train-exits'
own ``train_heads``, and reports the held-out agreement with the float32 model's
final top-1 on held-out standard-library code (32 x 256 tokens, at most two chunks
per module) and docstrings (16 x 256).  About 13 minutes of features for 2000 chunks,
then about 0.025 s per step.
"""
import sys
import time

import torch

from vllm_depth.tools.analysis import load_hf
from vllm_depth.tools.checkpoints import resolve_model
from vllm_depth.tools.data import stdlib_texts, token_chunks
from vllm_depth.tools.train_exit_heads import (
    OutputSpace,
    agreement,
    frequent_tokens,
    held_out_features,
    teacher_features,
    train_heads,
)

LAYER = 16
torch.manual_seed(0)
torch.set_num_threads(2)
n_max = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
runs = [tuple(map(int, r.split("x"))) for r in
        (sys.argv[2] if len(sys.argv) > 2 else "600x3000,1000x1000,1000x3000,2000x2000,2000x4000,2000x6000").split(",")]
path = resolve_model("smollm2-135m")
model, tok = load_hf(path)
teacher = load_hf(path, torch.bfloat16)[0]
texts = stdlib_texts("calib")
space = OutputSpace(model, frequent_tokens(tok, texts, 8192))
held = held_out_features(model, tok, [LAYER], space, 256, 32)
t0 = time.time()
train = teacher_features(teacher, token_chunks(tok, texts, 256, n_max), [LAYER], space, "teacher (bfloat16)")
print(f"features: {time.time() - t0:.0f} s for {len(train)} chunks", flush=True)
print("| chunks | steps | held-out code | held-out docstrings |\n| --- | --- | --- | --- |")
for n, steps in runs:
    heads, _ = train_heads(model, train[:n], [LAYER], steps, 0, space, dtype=torch.bfloat16, progress=False)
    a = {k: agreement(model, heads, v, [LAYER], space)[LAYER] for k, v in held.items()}
    print(f"| {n} | {steps} | {a['code']:.3f} | {a['docstrings']:.3f} |", flush=True)
