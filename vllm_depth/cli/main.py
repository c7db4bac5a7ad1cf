"""``vllm-depth``: the project's commands.

    vllm-depth model NAME            build (once) and print the checkpoint of an alias
    vllm-depth bench --model M ...   stock vLLM and a depth configuration side by side
"""

from __future__ import annotations

import argparse
import json
import sys


def _json_arg(name: str):
    def parse(text: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"{name}: not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{name}: expected a JSON object, got {text!r}")
        return value

    return parse


def cmd_model(args) -> int:
    from vllm_depth.checkpoints import resolve_model

    print(resolve_model(args.name))
    return 0


def _check_depth_early(model_dir: str, depth: dict | None) -> None:
    """Validate --depth against the checkpoint before any engine starts."""
    if depth is None:
        return
    from transformers import AutoConfig

    from vllm_depth.config import parse_depth_config

    cfg = AutoConfig.from_pretrained(model_dir)
    parse_depth_config(depth, cfg.num_hidden_layers)


def cmd_bench(args) -> int:
    import os

    from vllm_depth import bench
    from vllm_depth.checkpoints import resolve_model

    if args.max_tokens < 1:
        raise SystemExit("--max-tokens: must be >= 1")
    if args.batch_size < 1:
        raise SystemExit("--batch-size: must be >= 1")
    if args.rounds < 1:
        raise SystemExit("--rounds: must be >= 1")
    if not os.path.isfile(args.prompts):
        raise SystemExit(f"--prompts: no such file {args.prompts!r}")
    try:
        bench.load_prompts(args.prompts)
        _check_depth_early(resolve_model(args.model), args.depth)
    except ValueError as e:
        raise SystemExit(f"vllm-depth bench: {e}") from None

    result = bench.run_bench(
        args.model,
        args.prompts,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        depth=args.depth,
        engine_args=args.engine_args,
        baseline_model=args.baseline_model,
        rounds=args.rounds,
    )
    print(bench.format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-depth", description="depth-adaptive decoding for vLLM")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("model", help="build (once) and print the checkpoint of a model alias")
    m.add_argument("name", help="an alias (smollm2-135m, tiny) or a checkpoint directory")
    m.set_defaults(func=cmd_model)

    b = sub.add_parser("bench", help="stock vLLM and a depth configuration side by side")
    b.add_argument("--model", required=True, help="alias or checkpoint directory")
    b.add_argument("--baseline-model", help="checkpoint for the stock run (default: --model)")
    b.add_argument("--prompts", required=True, help='JSONL: {"prompt"|"messages", "extra_args"?}')
    b.add_argument("--max-tokens", type=int, default=64)
    b.add_argument("--batch-size", type=int, default=1)
    b.add_argument("--depth", type=_json_arg("--depth"), default=None,
                   help="the depth object (default: the checkpoint's own)")
    b.add_argument("--engine-args", type=_json_arg("--engine-args"), default=None,
                   help="extra LLM() keyword arguments (speculative_config and hf_overrides go "
                        "to the depth run only)")
    b.add_argument("--rounds", type=int, default=2, help="timed rounds per engine, alternated")
    b.add_argument("--json", help="write the result as JSON here")
    b.add_argument("--plot", help="draw the result (PNG)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
