"""``vllm serve``'s argument parsing, wherever the vLLM release keeps it: ``make_arg_parser`` and
``validate_parsed_serve_args`` for ``entrypoints.openai.openai_app``."""

from __future__ import annotations

try:  # vLLM 0.33 and 0.34
    from vllm.entrypoints.common.cli_args import (
        make_arg_parser,
        validate_parsed_serve_args,
    )
except ImportError:  # vLLM 0.32
    from vllm.entrypoints.launchers.cli_args import (
        make_arg_parser,
        validate_parsed_serve_args,
    )

__all__ = ["make_arg_parser", "validate_parsed_serve_args"]
