"""vLLM 0.32 ``SamplingParams._verify_args``: refuse bad ``depth_*`` extra_args up front.

Runs where the request is built (``LLM.generate``, the OpenAI server's request conversion, which
answers HTTP 400), so a bad value never reaches the engine.  Requests without ``depth_*`` keys are
untouched.
"""

from __future__ import annotations

from vllm.sampling_params import SamplingParams

from vllm_depth.patches.base import patch
from vllm_depth.request_args import parse_request_args


def install() -> None:
    def wrap(original):
        def method(self, *args, **kwargs):
            original(self, *args, **kwargs)
            parse_request_args(self.extra_args)

        return method

    patch(SamplingParams, "_verify_args", wrap)
