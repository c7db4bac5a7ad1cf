"""Layer analysis on a plain Hugging Face model: what each layer does, how alike layers are.

- Block Influence (ShortGPT): ``BI_l = 1 - mean_t cos(x_l, y_l)`` between a
  layer's input and output hidden states.
- Angular distance (Gromov et al., "The Unreasonable Ineffectiveness of the
  Deeper Layers"): ``d(l, n) = arccos(cos(x_l, y_{l+n-1})) / pi``, the distance
  between the input of layer l and the output of layer l+n-1, mean over tokens.
- Weight similarity: mean over the seven projection matrices of the cosine
  between the flattened weights of two layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PROJECTIONS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)


@dataclass
class LayerAnalysis:
    block_influence: list[float]  # [N]
    angular: list[list[float]]  # angular[l][n-1] for n = 1 .. N - l
    weight_similarity: list[list[float]]  # [N][N]
    n_tokens: int

    @property
    def num_layers(self) -> int:
        return len(self.block_influence)

    def least_important(self, k: int) -> list[int]:
        order = sorted(range(self.num_layers), key=lambda i: self.block_influence[i])
        return sorted(order[:k])

    def table(self) -> str:
        n = self.num_layers
        lines = [f"{'layer':>5}  {'BI':>7}  {'d(l,1)':>7}  {'d(l,4)':>7}  {'most similar weights':>22}"]
        for i in range(n):
            sims = [(self.weight_similarity[i][j], j) for j in range(n) if j != i]
            s, j = max(sims) if sims else (float("nan"), -1)
            d4 = self.angular[i][3] if len(self.angular[i]) > 3 else float("nan")
            lines.append(
                f"{i:>5}  {self.block_influence[i]:7.4f}  {self.angular[i][0]:7.4f}  {d4:7.4f}  "
                f"{'layer ' + str(j) + f' ({s:.3f})':>22}"
            )
        lines.append(f"({self.n_tokens} tokens)")
        return "\n".join(lines)


def teacher_dtype(name: str) -> str:
    """The dtype a trainer's teacher runs in: ``name``, or for "auto" bfloat16 where bfloat16 matmuls are
    native (a GPU, or a CPU whose oneDNN multiplies bfloat16: AVX-512, AMX) and float32 elsewhere (on an
    AVX2-only CPU torch's bfloat16 matmul measured 0.3 GFLOP/s against float32's 160)."""
    if name != "auto":
        return name
    native = torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bfloat16" if native else "float32"


def load_hf(path: str, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def load_teacher(path: str, model, dtype: str):
    """(teacher, its dtype's name): ``model`` (float32, from ``load_hf``) itself where the teacher runs in
    float32, else a second copy of the checkpoint in ``teacher_dtype(dtype)``."""
    name = teacher_dtype(dtype)
    return (model if name == "float32" else load_hf(path, getattr(torch, name))[0]), name


@torch.no_grad()
def weight_similarity(model) -> list[list[float]]:
    layers = model.model.layers
    n = len(layers)
    flat = []
    for layer in layers:
        mods = dict(layer.named_modules())
        flat.append([mods[p].weight.detach().flatten().float() for p in PROJECTIONS])
    sim = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            s = sum(torch.nn.functional.cosine_similarity(a, b, dim=0).item()
                    for a, b in zip(flat[i], flat[j])) / len(PROJECTIONS)
            sim[i][j] = sim[j][i] = s
    return sim


@torch.no_grad()
def analyze(model, chunks: list[list[int]], progress: bool = True) -> LayerAnalysis:
    from tqdm import tqdm

    layers = model.model.layers
    n = len(layers)
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}

    def hook(i):
        def fn(module, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            inputs[i] = x[0].float()
            outputs[i] = (out[0] if isinstance(out, tuple) else out)[0].float()

        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    bi = torch.zeros(n, dtype=torch.float64)
    ang = [torch.zeros(n - i, dtype=torch.float64) for i in range(n)]
    tokens = 0
    try:
        for ids in tqdm(chunks, desc="analyze", unit="chunk", disable=not progress):
            model(torch.tensor([ids]), use_cache=False)
            t = len(ids)
            tokens += t
            for i in range(n):
                x = inputs[i]
                bi[i] += (1 - torch.nn.functional.cosine_similarity(x, outputs[i], dim=-1)).sum().item()
                for m in range(n - i):
                    c = torch.nn.functional.cosine_similarity(x, outputs[i + m], dim=-1).clamp(-1, 1)
                    ang[i][m] += (torch.arccos(c) / math.pi).sum().item()
    finally:
        for h in handles:
            h.remove()
    return LayerAnalysis(
        block_influence=(bi / tokens).tolist(),
        angular=[(a / tokens).tolist() for a in ang],
        weight_similarity=weight_similarity(model),
        n_tokens=tokens,
    )


def plot(analysis: LayerAnalysis, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = analysis.num_layers
    ang = np.full((n, n), np.nan)
    for i in range(n):
        for m, v in enumerate(analysis.angular[i]):
            ang[i, m] = v
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(range(n), analysis.block_influence, marker="o")
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("block influence (1 - cos)")
    axes[0].set_title("what each layer changes")
    im = axes[1].imshow(ang, aspect="auto", cmap="viridis_r", origin="lower")
    axes[1].set_xlabel("block size n")
    axes[1].set_ylabel("first layer l")
    axes[1].set_title("angular distance d(l, n)")
    fig.colorbar(im, ax=axes[1])
    sim = np.array(analysis.weight_similarity, dtype=float)
    np.fill_diagonal(sim, np.nan)  # 1.0 on the diagonal would flatten the scale
    im = axes[2].imshow(sim, cmap="magma", origin="lower")
    axes[2].set_title("weight similarity (cosine, off-diagonal)")
    axes[2].set_xlabel("layer")
    axes[2].set_ylabel("layer")
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
