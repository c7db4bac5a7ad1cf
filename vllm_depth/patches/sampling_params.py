"""vLLM 0.32 ``InputProcessor._validate_params``: refuse bad ``depth_*`` extra_args up front.

Runs where the engine front end checks a request's parameters (``LLM.generate``, the OpenAI
server, which answers HTTP 400), so a bad value never reaches the engine.  Only an engine that
serves the depth model (``--model-impl depth``) checks them: a stock engine with the plugin
installed ignores ``depth_*`` keys as it ignores every unknown extra arg.
"""

from __future__ import annotations

from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.input_processor import InputProcessor

from vllm_depth.patches.base import is_depth, patch
from vllm_depth.request_args import parse_request_args


class DepthArgsError(VLLMValidationError, ValueError):
    """A bad ``depth_*`` extra arg: vLLM's validation error (HTTP 400 from every OpenAI app,
    ``vllm serve``'s and one built in process), and a ``ValueError`` for ``LLM.generate`` callers."""


def install() -> None:
    def wrap(original):
        def method(self, params, *args, **kwargs):
            result = original(self, params, *args, **kwargs)
            if isinstance(params, SamplingParams) and is_depth(self.model_config):
                try:
                    parse_request_args(params.extra_args)
                except ValueError as e:
                    raise DepthArgsError(str(e), parameter=str(e).split(":")[0]) from None
            return result

        return method

    patch(InputProcessor, "_validate_params", wrap)
