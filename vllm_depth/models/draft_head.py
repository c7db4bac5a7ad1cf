"""The attention draft head (EAGLE-style) inside the vLLM model (``vllm-depth train-exits --draft-attention``).

At schedule position ``i`` of a request the head reads the token that follows it, ``t[i+1]``, and the
verifier's final (normed) state there, ``f[i]`` (the state that sampled ``t[i+1]``):

    x = fc([embed(t[i+1]); f[i]]);  h, r = layer(i, x);  g = norm(h + r)


``layer`` is one of vLLM's own decoder layers of the model's family, with its own ``Attention`` module,
so its K/V at position ``i`` lives in vLLM's paged cache beside the verifier's: vLLM allocates it with
the request and frees it with it, and the draft writes it at the same slots as the verifier's layers.
``g`` goes through the model's (shared) LM head, or the reduced vocabulary's rows of it, and predicts
``t[i+2]``; it also stands in for ``f[i+1]`` in the next draft step, as EAGLE's drafts do.

Weights (``depth/exit_heads.safetensors``): ``model.draft_head.fc.weight`` [H, 2H],
``model.draft_head.layer.*`` (the family's HF names, mapped as the model's own layers are),
``model.draft_head.norm.weight`` and, with a reduced vocabulary, ``model.draft_head.other`` [1, H].

vLLM's own EAGLE draft (``llama_eagle``) is this head without the two norms, which on SmolLM2-135M
costs a quarter of the first draft token's agreement with the model at equal training; ``train-exits
--draft-attention --format eagle`` trains that one for vLLM's ``eagle`` proposer.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ReplicatedLinear

from vllm_depth.config import DepthConfigError


class AttentionDraftHead(nn.Module):
    """``fc`` -> one decoder layer (own paged KV) -> ``norm``; see the module docstring."""

    def __init__(self, vllm_config: VllmConfig, make_layer, layer_index: int, reduced: bool, prefix: str):
        super().__init__()
        config = vllm_config.model_config.hf_config
        hidden = config.hidden_size
        types = getattr(config, "layer_types", None)
        if types is not None and layer_index >= len(types):
            raise DepthConfigError(f"depth.exit_heads: the attention draft head cannot be built for "
                                   f"{config.architectures[0]}, whose layers are typed per index (layer_types); "
                                   "allowed: Llama-family checkpoints, or a head without attention")
        self.fc = ReplicatedLinear(2 * hidden, hidden, bias=False, prefix=f"{prefix}.fc")
        # the layer's attention needs a layer name with one index, unique among the model's attention
        # layers (vLLM binds each KV cache by that index): ``layer_index``, past every schedule position's
        self.layer = make_layer(vllm_config, f"{prefix}.layers.{layer_index}")
        self.norm = RMSNorm(hidden, eps=config.rms_norm_eps)
        if reduced:  # the logit of the mass outside the reduced vocabulary (ExitVocab)
            self.other = nn.Parameter(torch.zeros(1, hidden), requires_grad=False)

    def forward(self, positions: torch.Tensor, embeds: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """The normed state ``g`` of each row, the LM head's input (in the forward context of the
        head's attention metadata)."""
        x = self.fc(torch.cat([embeds, prev.to(embeds.dtype)], dim=-1))[0]
        hidden, residual = self.layer(positions, x, None)
        return self.norm(hidden, residual)[0]
