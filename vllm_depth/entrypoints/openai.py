"""vLLM's OpenAI-compatible app, built in this process for a front end of one's own (the Ray Serve example)."""

from __future__ import annotations

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.api_server.app_state import init_app_state
from vllm.entrypoints.launchers.app import build_app
from vllm.usage.usage_lib import UsageContext
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.v1.engine.async_llm import AsyncLLM

from vllm_depth.compat.entrypoints import make_arg_parser, validate_parsed_serve_args


async def openai_app(cli_args: list[str]):
    """An engine and vLLM's own OpenAI FastAPI app in this process, for a front end of one's own
    (the Ray Serve example): ``(app, engine)`` from ``vllm serve`` arguments.

    vLLM 0.32 ``entrypoints.launchers.api_server.entry.build_and_serve`` without
    the socket: the same parser (``compat.entrypoints``), engine
    (``build_async_engine_client_from_engine_args``'s ``AsyncLLM.from_vllm_config``),
    app (``launchers.app.build_app``) and state (``init_app_state``), so requests
    get what ``vllm serve`` gives them (``vllm_xargs``, 400 on bad values, /metrics).
    """
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(cli_args)
    if args.model_tag is not None:
        args.model = args.model_tag
    validate_parsed_serve_args(args)
    engine_args = AsyncEngineArgs.from_cli_args(args)
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    engine = AsyncLLM.from_vllm_config(vllm_config=vllm_config, usage_context=UsageContext.OPENAI_API_SERVER,
                                       enable_log_requests=engine_args.enable_log_requests,
                                       disable_log_stats=engine_args.disable_log_stats)
    tasks = await engine.get_supported_tasks()
    app = build_app(args, tasks, engine.model_config)
    await init_app_state(engine, app.state, args, tasks)
    return app, engine
