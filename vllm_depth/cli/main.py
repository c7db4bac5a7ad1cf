"""``vllm-depth``: the project's commands.

    vllm-depth model NAME            build (once) and print the checkpoint of an alias
    vllm-depth bench --model M ...   stock vLLM and a depth configuration side by side
    vllm-depth analyze MODEL ...     what each layer does, how alike layers are (--eval: quality)
    vllm-depth compress MODEL ...    prune / share layers into a smaller checkpoint
    vllm-depth train-exits MODEL ... train exit heads by self-distillation
    vllm-depth calibrate MODEL ...   pick exit thresholds with a distribution-free guarantee
    vllm-depth tune-draft MODEL ...  find the self-draft (layers, speculation length) that is fastest

A command checks its arguments (against the checkpoint's config.json where they concern it)
before it imports torch, transformers or vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vllm_depth.config import parse_depth_config
from vllm_depth.spec_decode.engine_args import self_spec_engine_args
from vllm_depth.tools import bench, bench_arms, calibrate, tune_draft
from vllm_depth.tools.arguments import (
    DRAFT_ATTENTION_FORMATS,
    TEACHER_DTYPES,
    check_calibrate,
    check_compress,
    check_train_draft_attention,
    check_train_exits,
)
from vllm_depth.tools.checkpoints import checkpoint_config, has_chat_template, resolve_model
from vllm_depth.tools.data import read_files, stdlib_texts, token_chunks
from vllm_depth.tools.evaluate import evaluate

# train-exits defaults: SmolLM2 on a 2-core CPU within 15 minutes
TRAIN_CHUNKS = 1000  # chunks of 256 tokens the base model reads (once)
TRAIN_STEPS = 3000  # head training steps on what it computed
TRAIN_MLP_WIDTH = 0
# train-exits --draft-attention: SmolLM2 on a 2-core CPU within 15 minutes
DRAFT_CHUNKS = 400  # and the model's own continuations of --self-text prompts
DRAFT_STEPS = 1500  # each trains the first and the second draft token


# ---- argument types and output helpers ----


def _json_arg(name: str):
    """An argparse type: a JSON object (``name`` prefixes the error message)."""

    def parse(text: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"{name}: not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{name}: expected a JSON object, got {text!r}")
        return value

    return parse


def _list_of(kind: type, what: str):
    """An argparse type: comma-separated values of ``kind``."""

    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None

    return parse


_int_list = _list_of(int, "ints")
_float_list = _list_of(float, "numbers")


def _write_json(path: str | None, obj) -> None:
    """``--json PATH``: the command's result as JSON (nothing when no path was given)."""
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
        print(f"wrote {path}")


def _write_plot(path: str | None, draw, result) -> None:
    """``--plot PATH``: ``draw(result, path)`` (nothing when no path was given)."""
    if path:
        draw(result, path)
        print(f"wrote {path}")


# ---- model ----


def cmd_model(args) -> int:
    print(resolve_model(args.name))
    return 0


def add_model_parser(sub) -> None:
    m = sub.add_parser("model", help="build (once) and print the checkpoint of a model alias")
    m.add_argument("name", help="an alias (smollm2-135m, tiny) or a checkpoint directory")
    m.set_defaults(func=cmd_model)


# ---- bench ----


def _check_depth_early(model_dir: str, depth: dict | None):
    """Validate --depth (or the checkpoint's own) against the checkpoint before any engine starts:
    as the engine will, with the layers and hidden size of its config.json."""
    cfg = checkpoint_config(model_dir)
    raw = depth if depth is not None else cfg.get("depth")
    return parse_depth_config(raw, cfg["num_hidden_layers"], cfg.get("hidden_size"))


def _checkpoint_depth(model_dir: str) -> dict | None:
    """The raw ``depth`` object of a checkpoint's config.json (None: it has none)."""
    return checkpoint_config(model_dir).get("depth")


def cmd_bench(args) -> int:
    if args.max_tokens < 1:
        raise SystemExit("--max-tokens: must be >= 1")
    if args.batch_size < 1:
        raise SystemExit("--batch-size: must be >= 1")
    if args.rounds < 1:
        raise SystemExit("--rounds: must be >= 1")
    if not os.path.isfile(args.prompts):
        raise SystemExit(f"--prompts: no such file {args.prompts!r}")
    if args.arm:
        return _bench_arms(args)
    engine_args = args.engine_args
    try:
        _check_chat(bench.load_prompts(args.prompts), args.prompts, resolve_model(args.model))
        if args.self_spec is not None:
            base = args.depth if args.depth is not None else _checkpoint_depth(resolve_model(args.model))
            args.depth, spec = self_spec_engine_args(base, args.self_spec)
            engine_args = {**(engine_args or {}), "speculative_config": spec}
        depth = _check_depth_early(resolve_model(args.model), args.depth)
        sweep = bench.parse_sweep(args.sweep) if args.sweep else None
        if sweep is not None and depth.exit_layers is None:
            raise ValueError("--sweep: the depth config has no exit_layers, so there is nothing to sweep")
    except ValueError as e:
        raise SystemExit(f"vllm-depth bench: {e}") from None

    result = bench.run_bench(
        args.model,
        args.prompts,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        depth=args.depth,
        engine_args=engine_args,
        baseline_model=args.baseline_model,
        rounds=args.rounds,
        sweep=sweep,
    )
    print(bench.format_table(result))
    _write_json(args.json, result)
    _write_plot(args.plot, bench.plot, result)
    return 0


def _check_chat(prompts, path: str, model_dir: str) -> None:
    """Chat prompts need the model's chat template: refused before any engine starts where it has none."""
    if any(p.messages is not None for p in prompts) and not has_chat_template(model_dir):
        raise ValueError(f"--prompts: {path} has chat messages and the tokenizer of {model_dir} has no chat "
                         'template; allowed for this model: raw prompts ({"prompt": ...})')


def _bench_arms(args) -> int:
    """``bench --arm ...``: every arm against stock in one run."""
    single = [f for f, v in (("--depth", args.depth), ("--self-spec", args.self_spec), ("--sweep", args.sweep),
                             ("--baseline-model", args.baseline_model)) if v is not None]
    if single:
        raise SystemExit(f"vllm-depth bench: {', '.join(single)} cannot be combined with --arm; "
                         "put the setting into an arm's JSON")
    shared = sorted(set(args.engine_args or {}) & set(bench.DEPTH_ONLY_ARGS))
    if shared:
        raise SystemExit(f"vllm-depth bench: --engine-args {shared} would reach stock too; "
                         "put them into an arm's engine_args")
    try:
        model_dir = resolve_model(args.model)
        _check_chat(bench.load_prompts(args.prompts), args.prompts, model_dir)
        arms = [bench_arms.parse_arm(text, model_dir) for text in args.arm]
        names = [name for name, _ in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"--arm: names must differ, got {names}")
        common = {**bench.DEFAULT_ENGINE_ARGS, **(args.engine_args or {})}
        for name, spec in arms:  # every depth config checked before any engine starts
            bench_arms.arm_kwargs(name, spec, model_dir, common)
    except ValueError as e:
        raise SystemExit(f"vllm-depth bench: {e}") from None
    result = bench_arms.run_arms(args.model, args.prompts, arms, max_tokens=args.max_tokens,
                                 batch_size=args.batch_size, rounds=args.rounds, engine_args=args.engine_args)
    print(bench_arms.format_table(result))
    _write_json(args.json, result)
    _write_plot(args.plot, bench_arms.plot, result)
    return 0


def add_bench_parser(sub) -> None:
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
    b.add_argument("--sweep", help="exit_threshold=V1,V2,... or min_layer=V1,V2,...: one depth engine, "
                                   "each value as every request's setting (needs exit_layers)")
    b.add_argument("--self-spec", nargs="?", const={}, type=_json_arg("--self-spec"), default=None,
                   help="self-speculative decoding in the depth run: the draft the checkpoint's depth config "
                        "names, or '{\"draft_layers\": E, \"num_speculative_tokens\": K}' (or draft_schedule, "
                        "draft_threshold, draft_backoff)")
    b.add_argument("--arm", action="append", metavar="NAME[=JSON]",
                   help="repeatable: one more arm against stock in the same run, a preset (ngram, suffix, "
                        "self-draft, hf-early-exit) or NAME='{\"depth\": {...}, \"engine_args\": {...}, "
                        "\"self_spec\": {...}}' or NAME='{\"hf_early_exit\": E}'")
    b.add_argument("--json", help="write the result as JSON here")
    b.add_argument("--plot", help="draw the result (PNG)")
    b.set_defaults(func=cmd_bench)


# ---- tune-draft ----


def cmd_tune_draft(args) -> int:
    for name in ("k_max", "max_tokens", "top", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: must be >= 1")
    if not os.path.isfile(args.prompts):
        raise SystemExit(f"--prompts: no such file {args.prompts!r}")
    try:
        prompts = bench.load_prompts(args.prompts)
    except ValueError as e:
        raise SystemExit(f"vllm-depth tune-draft: {e}") from None
    model_dir = resolve_model(args.model)
    result = tune_draft.tune(model_dir, prompts, k_max=args.k_max, max_tokens=args.max_tokens, top=args.top,
                             rounds=args.rounds, engine_args=args.engine_args)
    print(tune_draft.format_table(result))
    if not args.dry_run:
        written = tune_draft.write_best(model_dir, result["best"])
        print(f"wrote depth {written} into {model_dir}/config.json")
    _write_json(args.json, result)
    _write_plot(args.plot, tune_draft.plot, result)
    return 0


def add_tune_draft_parser(sub) -> None:
    t = sub.add_parser("tune-draft", help="measure self-drafts (acceptance, then speed) and keep the fastest")
    t.add_argument("model", help="alias or checkpoint directory (the best draft is written into its config)")
    t.add_argument("--prompts", required=True, help='JSONL of sample prompts: {"prompt"|"messages"}')
    t.add_argument("--k-max", type=int, default=4, help="longest speculation length tried")
    t.add_argument("--max-tokens", type=int, default=64, help="new tokens per prompt")
    t.add_argument("--top", type=int, default=3, help="(draft, k) pairs timed in their own engine")
    t.add_argument("--rounds", type=int, default=1, help="timed rounds per pair, alternated with stock")
    t.add_argument("--engine-args", type=_json_arg("--engine-args"), default=None, help="extra LLM() arguments")
    t.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    t.add_argument("--json", help="write the result as JSON here")
    t.add_argument("--plot", help="plot acceptance against draft depth (PNG)")
    t.set_defaults(func=cmd_tune_draft)


# ---- analyze ----


def _analyze_eval(args, model_dir: str, texts: list[str]) -> dict:
    """``analyze --eval``: perplexity and top-1 agreement against the original, printed and returned."""
    cfg = checkpoint_config(model_dir)
    baseline = args.baseline_model or cfg.get("vllm_depth_compress", {}).get("from")
    if baseline is None:
        raise SystemExit("--baseline-model: needed (the checkpoint does not name its original)")
    baseline = resolve_model(baseline)
    # transformers: only once the arguments are good
    from transformers import AutoTokenizer

    chunks = token_chunks(AutoTokenizer.from_pretrained(model_dir), texts, args.seq_len, args.samples)
    ev = evaluate(model_dir, baseline, chunks)
    print(f"held-out tokens: {ev['tokens']}")
    print(f"{'':10}  {'perplexity':>10}  {'top-1 agreement':>15}")
    print(f"{'original':10}  {ev['baseline']['perplexity']:10.3f}  {'1.000':>15}")
    print(f"{'this':10}  {ev['model']['perplexity']:10.3f}  {ev['model']['top1_agreement']:15.3f}")
    return ev


def _analyze_layers(args, model_dir: str, texts: list[str]) -> dict:
    """``analyze``: the per-layer table printed (and plotted with --plot); the analysis returned."""
    # torch and transformers: only once the arguments are good
    from vllm_depth.tools.analysis import analyze, load_hf, plot

    model, tok = load_hf(model_dir)
    result = analyze(model, token_chunks(tok, texts, args.seq_len, args.samples))
    print(result.table())
    _write_plot(args.plot, plot, result)
    return result.__dict__


def cmd_analyze(args) -> int:
    if args.samples < 1 or args.seq_len < 2:
        raise SystemExit("--samples: must be >= 1; --seq-len: must be >= 2")
    try:
        model_dir = resolve_model(args.model)
        split = "eval" if args.eval else "calib"
        texts = read_files(args.data) if args.data else stdlib_texts(split)
    except ValueError as e:
        raise SystemExit(f"vllm-depth analyze: {e}") from None
    report: dict = {"model": model_dir}
    if args.eval:
        report["eval"] = _analyze_eval(args, model_dir, texts)
    else:
        report["analysis"] = _analyze_layers(args, model_dir, texts)
    _write_json(args.json, report)
    return 0


def add_analyze_parser(sub) -> None:
    a = sub.add_parser("analyze", help="per-layer Block Influence, angular distances, weight similarity")
    a.add_argument("model", help="alias or checkpoint directory")
    a.add_argument("--data", nargs="+", help="text files (default: Python standard-library text)")
    a.add_argument("--samples", type=int, default=16, help="chunks of text to use")
    a.add_argument("--seq-len", type=int, default=256, help="tokens per chunk")
    a.add_argument("--plot", help="heat maps and the Block Influence curve (PNG)")
    a.add_argument("--json", help="write the result as JSON here")
    a.add_argument("--eval", action="store_true",
                   help="instead: perplexity and top-1 agreement on held-out text, through vLLM")
    a.add_argument("--baseline-model", help="with --eval: the original (default: the one a compressed checkpoint names)")
    a.set_defaults(func=cmd_analyze)


# ---- compress ----


def cmd_compress(args) -> int:
    try:
        model_dir = resolve_model(args.model)
        texts = read_files(args.data) if args.data else None  # None: compress() reads the stdlib
        check_compress(model_dir, args.out, args.prune, args.share, args.relax_rank, args.merge, args.relax_steps)
        # torch: only once the arguments are good
        from vllm_depth.tools import compress

        plan, report = compress.compress(model_dir, args.out, prune=args.prune, share=args.share,
                                         relax_rank=args.relax_rank, merge=args.merge, texts=texts,
                                         samples=args.samples, seq_len=args.seq_len, relax_steps=args.relax_steps)
    except ValueError as e:
        raise SystemExit(f"vllm-depth compress: {e}") from None
    if plan.removed:
        print(f"removed layers (lowest Block Influence): {plan.removed}")
    for note in plan.notes:
        print(note)
    print(f"layer_schedule: {plan.schedule}")
    ratio = report["bytes_on_disk"] / report["original_bytes_on_disk"]
    print(f"weights on disk: {report['bytes_on_disk'] / 1e6:.1f} MB "
          f"({ratio:.3f}x of {report['original_bytes_on_disk'] / 1e6:.1f} MB); "
          f"parameters {report['params'] / 1e6:.2f} M of {report['original_params'] / 1e6:.2f} M")
    print(args.out)
    return 0


def add_compress_parser(sub) -> None:
    c = sub.add_parser("compress", help="prune or share layers into a smaller checkpoint")
    c.add_argument("model", help="alias or checkpoint directory")
    c.add_argument("--prune", type=int, help="remove the K least important layers")
    c.add_argument("--share", type=int, help="make K positions reuse a neighbour's weights")
    c.add_argument("--relax-rank", type=int, help="with --share: a rank-R delta per changed position")
    c.add_argument("--relax-steps", type=int, default=150,
                   help="with --relax-rank: distillation steps (one chunk of --seq-len tokens each) fitting the deltas")
    c.add_argument("--merge", default="auto", help="with --share: copy | average | auto (measure both)")
    c.add_argument("--data", nargs="+", help="calibration text files (default: standard-library sources)")
    c.add_argument("--samples", type=int, default=16, help="chunks of calibration text")
    c.add_argument("--seq-len", type=int, default=256, help="tokens per chunk")
    c.add_argument("--out", required=True, help="output directory (new or empty)")
    c.set_defaults(func=cmd_compress)


# ---- train-exits ----


def cmd_train_exits(args) -> int:
    if args.draft_attention:
        return _train_draft_attention(args)
    try:
        if args.exit_layers is None:
            raise ValueError("--exit-layers: give at least one layer count, e.g. 8,12,16,20,24 "
                             "(or --draft-attention)")
        args.chunks = TRAIN_CHUNKS if args.chunks is None else args.chunks
        args.steps = TRAIN_STEPS if args.steps is None else args.steps
        model_dir = resolve_model(args.model)
        texts = read_files(args.data) if args.data else None  # None: the standard library's sources
        check_train_exits(model_dir, args.exit_layers, args.steps, args.mlp_width, args.vocab, texts, args.out,
                          args.chunks, args.dtype, args.prev_state)
        # torch: only once the arguments are good
        from vllm_depth.tools import train_exit_heads

        target, r = train_exit_heads.train_exits(
            model_dir, args.exit_layers, texts=texts, out=args.out, steps=args.steps, chunks=args.chunks,
            seq_len=args.seq_len, mlp_width=args.mlp_width, vocab=args.vocab, dtype=args.dtype,
            prev_state=args.prev_state)
    except ValueError as e:
        raise SystemExit(f"vllm-depth train-exits: {e}") from None
    print("\nagreement with the model's final top-1 on held-out standard-library text (plain: final norm + LM head)")
    print("| exit layer | code, plain | code, trained head | docstrings, plain | docstrings, trained head |")
    print("| --- | --- | --- | --- | --- |")
    for n in r.exit_layers:
        print(f"| {n} | {r.agreement_before[n]:.3f} | {r.agreement_after[n]:.3f} "
              f"| {r.docstrings_before[n]:.3f} | {r.docstrings_after[n]:.3f} |")
    print(f"\ntrained {r.steps} steps on {r.tokens_trained} tokens (teacher in {r.teacher_dtype}) in "
          f"{r.seconds / 60:.1f} min; heads add {r.head_params / 1e6:.2f} M parameters "
          f"({100 * r.head_params / r.model_params:.2f}% of the model)")
    print(f"wrote {target}/{train_exit_heads.HEADS_FILE} and depth.exit_heads in {target}/config.json")
    _write_json(args.json, r.__dict__)
    return 0


def _train_draft_attention(args) -> int:
    try:
        model_dir = resolve_model(args.model)
        texts = read_files(args.data) if args.data else None
        chunks = DRAFT_CHUNKS if args.chunks is None else args.chunks
        steps = DRAFT_STEPS if args.steps is None else args.steps
        check_train_draft_attention(model_dir, args.exit_layers, args.mlp_width, args.format, args.out, steps, chunks,
                                    args.vocab, texts, args.dtype, args.self_text)
        # torch: only once the arguments are good
        from vllm_depth.tools import train_draft_attention

        target, r = train_draft_attention.train_draft_attention(
            model_dir, texts=texts, out=args.out, steps=steps, chunks=chunks, seq_len=args.seq_len, vocab=args.vocab,
            self_text=args.self_text, dtype=args.dtype, fmt=args.format)
    except ValueError as e:
        raise SystemExit(f"vllm-depth train-exits: {e}") from None
    print("\nthe attention draft head's first draft token against the model's own next token (held out)")
    print("| standard-library code | docstrings | the model's own continuations |")
    print("| --- | --- | --- |")
    print(f"| {r.agreement_after:.3f} | {r.docstrings_after:.3f} | {r.self_text_after:.3f} |")
    print(f"\ntrained {r.steps} steps on {r.tokens_trained} tokens ({r.self_sequences} continuations the model "
          f"wrote) in {r.seconds / 60:.1f} min; the head adds {r.head_params / 1e6:.2f} M parameters")
    where = "vLLM's EAGLE draft checkpoint" if args.format == "eagle" else "the head and depth.exit_heads"
    print(f"wrote {where} in {target}")
    _write_json(args.json, r.__dict__)
    return 0


def add_train_exits_parser(sub) -> None:
    t = sub.add_parser("train-exits", help="train an exit head per exit layer (base model frozen)")
    t.add_argument("model", help="alias or checkpoint directory (heads are written into it unless --out)")
    t.add_argument("--exit-layers", type=_int_list, help="layer counts, e.g. 8,12,16,20,24")
    t.add_argument("--data", nargs="+", help="training text files (default: standard-library sources)")
    t.add_argument("--out", help="write a copy of the checkpoint with the heads here (new or empty)")
    t.add_argument("--chunks", type=int, help="chunks of training text the base model reads once (its states are "
                   f"kept in memory; default {TRAIN_CHUNKS}, {DRAFT_CHUNKS} with --draft-attention)")
    t.add_argument("--steps", type=int, help=f"training steps, one chunk each (cycling; default {TRAIN_STEPS})")
    t.add_argument("--dtype", default="auto", choices=TEACHER_DTYPES,
                   help="the base model's dtype as teacher (auto: bfloat16 where this machine multiplies it "
                        "natively, a GPU or an AVX-512 CPU, as vLLM serves it; float32 on an AVX2-only CPU)")
    t.add_argument("--seq-len", type=int, default=256, help="tokens per chunk")
    t.add_argument("--mlp-width", type=int, default=TRAIN_MLP_WIDTH, help="width of each head's residual MLP (0: linear)")
    t.add_argument("--vocab", type=int, default=8192,
                   help="the heads predict over this many most frequent tokens plus 'other' (0: the full vocabulary)")
    t.add_argument("--prev-state", action="store_true",
                   help="draft heads for self-speculation: each also reads the previous token's final state "
                        "(the verifier's); they draft only (no early exit), and layer 0 (the embedding) is allowed")
    t.add_argument("--draft-attention", action="store_true",
                   help="the attention draft head for self-speculation (EAGLE-style: one decoder layer with its own "
                        "KV cache over the token's embedding and the previous final state)")
    t.add_argument("--format", default="depth", choices=DRAFT_ATTENTION_FORMATS,
                   help="with --draft-attention: 'depth' (the self-draft's head, into the checkpoint) or 'eagle' "
                        "(vLLM's EAGLE draft, a checkpoint of its own at --out for speculative_config method 'eagle')")
    t.add_argument("--self-text", type=int, default=128,
                   help="with --draft-attention: continuations the model writes itself (greedy) after standard-"
                        "library function signatures, added to the training text")
    t.add_argument("--json", help="write the report as JSON here")
    t.set_defaults(func=cmd_train_exits)


# ---- calibrate ----


def cmd_calibrate(args) -> int:
    if args.max_tokens < 1:
        raise SystemExit("vllm-depth calibrate: --max-tokens: must be >= 1")
    try:
        model_dir = resolve_model(args.model)
        check_calibrate(model_dir, args.exit_layers, args.target_agreement, args.delta, args.prompts,
                        args.min_layers, args.thresholds or calibrate.THRESHOLDS)
        result = calibrate.calibrate(
            model_dir, args.prompts, target=args.target_agreement, delta=args.delta, exit_layers=args.exit_layers,
            min_layers=args.min_layers, thresholds=args.thresholds, max_tokens=args.max_tokens,
            engine_args=args.engine_args, write=not args.dry_run, full_curve=args.full_curve)
    except ValueError as e:
        raise SystemExit(f"vllm-depth calibrate: {e}") from None
    print(calibrate.format_table(result))
    print(f"\n{result.criterion} exits at {result.exit_layers}; {result.prompts} prompts; full depth "
          f"{result.full_depth_tokens_per_s:.1f} tokens/s (batch {result.prompts}, the same engine)")
    _write_plot(args.plot, calibrate.plot, result)
    _write_json(args.json, {**result.__dict__, "points": [p.__dict__ for p in result.points],
                            "chosen": result.chosen.__dict__ if result.chosen else None})
    if result.chosen is None:
        print(f"no setting has agreement >= {args.target_agreement} with probability >= {1 - args.delta} "
              "on these prompts; nothing written (more prompts make the bound tighter)")
        return 1
    where = "not written (--dry-run)" if args.dry_run else f"written to {model_dir}/config.json"
    print(f"chosen: {json.dumps(result.written)}; {where}")
    return 0


def add_calibrate_parser(sub) -> None:
    k = sub.add_parser("calibrate", help="pick exit thresholds (Learn-then-Test) and write them into the checkpoint")
    k.add_argument("model", help="alias or checkpoint directory (its depth config gets the thresholds)")
    k.add_argument("--prompts", required=True, help='JSONL calibration prompts: {"prompt"|"messages"}')
    k.add_argument("--target-agreement", type=float, default=0.9, help="agreement with full depth to guarantee")
    k.add_argument("--delta", type=float, default=0.1, help="the guarantee holds with probability >= 1 - delta")
    k.add_argument("--exit-layers", type=_int_list, help="default: the layers with exit heads")
    k.add_argument("--min-layers", type=_int_list, help="min_layer values to test (default: each exit layer)")
    k.add_argument("--thresholds", type=_float_list, help="thresholds to test, most cautious first (default: 0.999 .. 0.5)")
    k.add_argument("--max-tokens", type=int, default=64)
    k.add_argument("--engine-args", type=_json_arg("--engine-args"), default=None, help="extra LLM() keyword arguments")
    k.add_argument("--dry-run", action="store_true", help="measure and print; write nothing")
    k.add_argument("--full-curve", action="store_true",
                   help="also measure thresholds past a sequence's first failure (for the plot; never chosen)")
    k.add_argument("--plot", help="agreement and speed against threshold (PNG)")
    k.add_argument("--json", help="write the result as JSON here")
    k.set_defaults(func=cmd_calibrate)


# ---- the command line ----

SUBCOMMANDS = (add_model_parser, add_bench_parser, add_tune_draft_parser, add_analyze_parser,
               add_compress_parser, add_train_exits_parser, add_calibrate_parser)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-depth", description="depth-adaptive decoding for vLLM")
    sub = p.add_subparsers(dest="command", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
