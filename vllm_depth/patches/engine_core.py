"""vLLM 0.32 ``EngineCore.post_step``: when the step's output brought the self-draft's drafts
(``patches.worker.model_runner``'s ``sample_tokens``), a scheduler with ``take_depth_drafts`` hands
them over, and they go to the scheduler as vLLM would send them, without the
``take_draft_token_ids`` RPC to the worker.  Any other step (another scheduler, an output that was
rebuilt on the way, async scheduling) takes vLLM's own path.
"""

from __future__ import annotations

from vllm.v1.engine.core import EngineCore

from vllm_depth.patches.base import patch


def install() -> None:
    def wrap(original):
        def method(self, model_executed: bool) -> None:
            take = getattr(self.scheduler, "take_depth_drafts", None)
            if take is None or self.async_scheduling or not self.check_for_draft_tokens:
                return original(self, model_executed)
            handed, drafts = take()
            if not handed:
                return original(self, model_executed)
            if model_executed and drafts is not None:
                self.scheduler.update_draft_token_ids(drafts)

        return method

    patch(EngineCore, "post_step", wrap)
