"""Request ids and scheduler-side request state (vLLM 0.32)."""

from __future__ import annotations

import hashlib
import os


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


def keep_generated_blocks_private(request) -> bool:
    """Hash every block of ``request`` that ends past its prompt under a key of its own, so that only
    this request can hit it in vLLM's prefix cache (its own recomputation after a preemption
    included), and return whether prefix caching hashes its blocks at all.

    vLLM 0.32 ``Request`` hashes each block as it fills (``_block_hasher``, appended to
    ``block_hashes``); every full block of the prompt is hashed when the request is built, so a block
    hashed after the scheduler has received the request ends past the prompt.  Its hash is vLLM's,
    hashed again with a random salt: chained as vLLM chains it (the next block's parent), and
    unknown to any other request.  vLLM's own per-request key, ``cache_salt``, covers the whole
    prompt; this leaves the prompt's blocks shared.
    """
    hasher = request._block_hasher
    if hasher is None:  # prefix caching off
        return False
    salt = os.urandom(16)

    def private(req):  # vLLM's BlockHash is a NewType of bytes
        return [hashlib.sha256(bytes(h) + salt).digest() for h in hasher(req)]

    request._block_hasher = private
    return True
