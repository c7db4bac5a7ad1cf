"""Request ids and scheduler-side request state (vLLM 0.32)."""

from __future__ import annotations


def user_request_id(engine_request_id: str) -> str:
    """The id a user gave (``RequestOutput.request_id``) of an engine-side request id: vLLM 0.32
    ``InputProcessor.assign_request_id`` appends ``-<8 hex>``."""
    return engine_request_id.rsplit("-", 1)[0]


def recompute_last_token(request) -> bool:
    """Mark a running request's last computed token as not computed, so that the next step schedules
    it again, before its new token (vLLM 0.32 ``Scheduler.update_from_output`` rolls back rejected
    draft tokens the same way: ``request.num_computed_tokens -= num_rejected``; the runner re-reads
    the token from its cached ids).  Only when all but the token just sampled are computed."""
    if request.num_computed_tokens != request.num_tokens - 1:
        return False
    request.num_computed_tokens -= 1
    return True
