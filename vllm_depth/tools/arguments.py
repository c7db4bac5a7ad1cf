"""Argument checks of the commands that train, calibrate or compress, against a checkpoint's config.json.

Torch-free and transformers-free: the CLI runs them before importing anything
heavy, so a bad argument is refused in a fraction of a second and before any
work; the library functions (``train_exits``, ``calibrate``, ``compress``) run
them again for Python callers.  Each error names the argument and what is
allowed.
"""

from __future__ import annotations

from pathlib import Path

from vllm_depth.config import parse_depth_config
from vllm_depth.tools.checkpoints import checkpoint_config


class TrainExitsError(ValueError):
    pass


class CalibrateError(ValueError):
    pass


class CompressError(ValueError):
    pass


MERGES = ("auto", "copy", "average")


def _check_out(model_dir: str, out: str, error: type[ValueError], hint: str = "") -> None:
    o = Path(out)
    if o.exists() and (not o.is_dir() or any(o.iterdir())):
        raise error(f"--out: {out!r} exists and is not an empty directory")
    if o.resolve() == Path(model_dir).resolve():
        raise error(f"--out: must differ from the model directory{hint}")


TEACHER_DTYPES = ("auto", "bfloat16", "float32")


def check_train_exits(model_dir: str, exit_layers: list[int], steps: int, mlp_width: int, vocab: int,
                      texts: list[str] | None, out: str | None, chunks: int, dtype: str,
                      prev_state: bool = False) -> None:
    """``train-exits``: layer counts within the model (0, the embedding, only for ``--prev-state``
    draft heads), positive steps and chunks, a vocabulary size below the model's, a teacher dtype,
    some text, and an ``--out`` that is new or empty."""
    cfg = checkpoint_config(model_dir)
    num_layers, vocab_size = cfg["num_hidden_layers"], cfg["vocab_size"]
    if not exit_layers:
        raise TrainExitsError("--exit-layers: give at least one layer count, e.g. 8,12,16,20,24")
    low = 0 if prev_state else 1
    bad = [n for n in exit_layers if not low <= n < num_layers]
    if bad:
        raise TrainExitsError(f"--exit-layers: {bad} out of range; the model has {num_layers} layers, "
                              f"so layer counts 1..{num_layers - 1} (0 too with --prev-state)")
    if exit_layers != sorted(set(exit_layers)):
        raise TrainExitsError(f"--exit-layers: {exit_layers} is not strictly increasing")
    if steps < 1:
        raise TrainExitsError(f"--steps: {steps}; allowed: an int >= 1")
    if chunks < 1:
        raise TrainExitsError(f"--chunks: {chunks}; allowed: an int >= 1")
    if dtype not in TEACHER_DTYPES:
        raise TrainExitsError(f"--dtype: {dtype!r}; allowed: {', '.join(TEACHER_DTYPES)}")
    if mlp_width < 0:
        raise TrainExitsError(f"--mlp-width: {mlp_width}; allowed: an int >= 0 (0: linear heads)")
    if not 0 <= vocab < vocab_size:
        raise TrainExitsError(f"--vocab: {vocab}; allowed: 0 (the full vocabulary) or 1..{vocab_size - 1}")
    if texts is not None and not any(t.strip() for t in texts):
        raise TrainExitsError("--data: the files hold no text")
    if out is not None:
        _check_out(model_dir, out, TrainExitsError, " (leave it out to write into the model)")


DRAFT_ATTENTION_FORMATS = ("depth", "eagle")
DRAFT_ATTENTION_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")  # trained with HF's Llama layer


def check_train_draft_attention(model_dir: str, exit_layers: list[int] | None, mlp_width: int, fmt: str,
                                out: str | None, steps: int, chunks: int, vocab: int, texts: list[str] | None,
                                dtype: str, self_text: int) -> None:
    """``train-exits --draft-attention``: the head sits at layer 0 (no other ``--exit-layers``, no MLP),
    a known ``--format`` (``eagle``: a new ``--out``), a Llama-family checkpoint, then what
    ``check_train_exits`` checks of a draft head."""
    if exit_layers not in (None, [0]):
        raise TrainExitsError(f"--exit-layers: {exit_layers}; the attention draft head sits at layer 0 "
                              "(leave --exit-layers out, or give 0)")
    if mlp_width:
        raise TrainExitsError(f"--mlp-width: {mlp_width}; the attention draft head has its decoder layer's MLP "
                              "(leave --mlp-width out)")
    if fmt not in DRAFT_ATTENTION_FORMATS:
        raise TrainExitsError(f"--format: {fmt!r}; allowed: {', '.join(DRAFT_ATTENTION_FORMATS)}")
    if fmt == "eagle" and out is None:
        raise TrainExitsError("--out: --format eagle writes vLLM's EAGLE draft checkpoint; give its new directory")
    if self_text < 0:
        raise TrainExitsError(f"--self-text: {self_text}; allowed: an int >= 0 (0: standard-library text only)")
    arch = (checkpoint_config(model_dir).get("architectures") or ["?"])[0]
    if arch not in DRAFT_ATTENTION_ARCHITECTURES:
        raise TrainExitsError(f"--draft-attention: {model_dir} is {arch}; allowed: "
                              f"{', '.join(DRAFT_ATTENTION_ARCHITECTURES)}")
    check_train_exits(model_dir, [0], steps, 0, vocab, texts, out, chunks, dtype, prev_state=True)


def check_calibrate(model_dir: str, exit_layers: list[int] | None, target: float, delta: float,
                    prompts_path: str, min_layers: list[int] | None, thresholds: list[float]):
    """``calibrate``: the guarantee's target and delta, the prompts file, exit layers within the
    checkpoint's schedule; returns the checkpoint's depth config and its number of positions."""

    cfg = checkpoint_config(model_dir)
    depth = parse_depth_config(cfg.get("depth"), cfg["num_hidden_layers"], cfg.get("hidden_size"))
    num_positions = len(depth.schedule(cfg["num_hidden_layers"]))
    if depth.exit_heads is not None and depth.exit_heads.prev_state:
        raise CalibrateError(f"{model_dir}: its exit heads are draft heads (depth.exit_heads.prev_state: they "
                             "read the previous token's final state, which an early exit does not have); "
                             "allowed: a checkpoint with heads from vllm-depth train-exits without --prev-state, "
                             "or none")
    if not 0.0 < target <= 1.0:
        raise CalibrateError(f"--target-agreement: {target}; allowed: a number in (0, 1]")
    if not 0.0 < delta < 1.0:
        raise CalibrateError(f"--delta: {delta}; allowed: a number in (0, 1)")
    if not Path(prompts_path).is_file():
        raise CalibrateError(f"--prompts: no such file {prompts_path!r}")
    if exit_layers is not None:
        bad = [n for n in exit_layers if not 1 <= n < num_positions]
        if bad or not exit_layers or exit_layers != sorted(set(exit_layers)):
            raise CalibrateError(f"--exit-layers: {exit_layers}; allowed: increasing layer counts in "
                                 f"1..{num_positions - 1}")
    if min_layers is not None and not all(isinstance(m, int) and m >= 0 for m in min_layers):
        raise CalibrateError(f"--min-layers: {min_layers}; allowed: ints >= 0")
    if not thresholds or not all(0.0 <= t < 1.0 for t in thresholds):
        raise CalibrateError(f"--thresholds: {thresholds}; allowed: numbers in [0, 1)")
    return depth, num_positions


def check_compress(model_dir: str, out: str, prune: int | None, share: int | None, relax_rank: int | None,
                   merge: str, relax_steps: int = 1) -> None:
    """``compress``: exactly one of prune / share within the model, a rank within the hidden size,
    a known merge, and an ``--out`` that is new or empty."""
    cfg = checkpoint_config(model_dir)
    num_layers, hidden = cfg["num_hidden_layers"], cfg["hidden_size"]
    if cfg.get("depth"):
        raise CompressError(f"{model_dir}: already has a depth config; compress the original checkpoint")
    if (prune is None) == (share is None):
        raise CompressError("give exactly one of --prune K or --share K")
    k = prune if prune is not None else share
    flag = "--prune" if prune is not None else "--share"
    if k < 1 or k >= num_layers:
        raise CompressError(f"{flag}: {k} is out of range; the model has {num_layers} layers, so 1..{num_layers - 1}")
    if share is not None and 2 * share > num_layers:
        raise CompressError(f"--share: {share} is too large; each shared position needs its own donor, "
                            f"so at most {num_layers // 2}")
    if relax_rank is not None:
        if share is None:
            raise CompressError("--relax-rank: only with --share")
        if relax_rank < 1 or relax_rank > hidden:
            raise CompressError(f"--relax-rank: {relax_rank} is out of range; allowed 1..{hidden} (the hidden size)")
        if relax_steps < 1:
            raise CompressError(f"--relax-steps: {relax_steps}; allowed: an int >= 1")
    if merge not in MERGES:
        raise CompressError(f"--merge: {merge!r}; allowed: {', '.join(MERGES)}")
    _check_out(model_dir, out, CompressError)
