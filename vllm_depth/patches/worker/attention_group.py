"""vLLM 0.32 ``AttentionGroup.build_metadata`` (``vllm.v1.worker.utils``): every step the runner
hands each attention group the step's ``CommonAttentionMetadata`` and stores what the group's
builder returns for its layers.  The group keeps both (``depth_common``, ``depth_metadata``), so the
depth model can rebuild its layers' metadata for a subset of the rows through the same builder
(``compat.attention.AttentionViews``); ``compat.attention.build_group_metadata`` builds without
keeping.  Only the first micro-batch's build is kept (early exit runs without micro-batching).
"""

from __future__ import annotations

from vllm.v1.worker.utils import AttentionGroup

from vllm_depth.patches.base import patch


def install() -> None:
    def wrap(original):
        def method(self, common_attn_metadata, ubatch_idx: int = 0, *args, **kwargs):
            out = original(self, common_attn_metadata, ubatch_idx, *args, **kwargs)
            if ubatch_idx == 0:
                self.depth_common, self.depth_metadata = common_attn_metadata, out
            return out

        return method

    patch(AttentionGroup, "build_metadata", wrap)
