"""vLLM 0.32 ``VllmConfig.num_lookahead_tokens`` (a property): KV slots for the self-draft.

vLLM reserves no slots past the scheduled tokens for ``custom_class`` proposers (they only return
token ids).  The self-draft writes K/V at the draft tokens' positions, up to
``num_speculative_tokens`` past the last accepted token, as EAGLE and draft models do: reserve
that many, as vLLM does for them.
"""

from __future__ import annotations

import functools

from vllm.config import VllmConfig

from vllm_depth.config import is_self_draft
from vllm_depth.patches.base import PATCHED


def install() -> None:
    prop = VllmConfig.__dict__["num_lookahead_tokens"]
    if getattr(prop.fget, PATCHED, False):
        return

    @functools.wraps(prop.fget)
    def fget(self):
        if is_self_draft(self.speculative_config):
            return self.speculative_config.num_speculative_tokens
        return prop.fget(self)

    setattr(fget, PATCHED, True)
    VllmConfig.num_lookahead_tokens = property(fget)
