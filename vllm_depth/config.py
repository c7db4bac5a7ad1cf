"""The model-level ``depth`` config: parsing and validation.

The ``depth`` object lives in the HF config of the checkpoint (``config.json``)
or arrives through ``--hf-overrides '{"depth": {...}}'`` /
``LLM(hf_overrides={"depth": {...}})``.  It is validated when vLLM resolves the
model class (before any weight is loaded); every error names the field and
what is allowed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from vllm_depth.early_exit.criteria import CRITERIA

# the self-draft proposer, as ``speculative_config={"model": PROPOSER, ...}`` names it (or by its module path)
PROPOSER = "vllm_depth.SelfDraft"
PROPOSER_PATHS = (PROPOSER, "vllm_depth.spec_decode.self_draft.SelfDraft")


def is_self_draft(speculative_config) -> bool:
    """Whether a vLLM ``SpeculativeConfig`` (or None) asks for the self-draft."""
    return (speculative_config is not None and speculative_config.method == "custom_class"
            and speculative_config.model in PROPOSER_PATHS)


class DepthConfigError(ValueError):
    """A ``depth`` config that cannot run; the message names the field."""


@dataclass(frozen=True)
class ExitHeads:
    layers: tuple[int, ...]  # layer counts that have a head
    mlp_width: int = 0  # 0: the residual linear map only
    vocab: int = 0  # 0: the full vocabulary; else the size of the heads' reduced vocabulary
    # draft heads: each also reads the previous token's final (normed) hidden state, which the
    # verifier has just computed (EAGLE's features); they draft only, and may sit at layer 0
    prev_state: bool = False
    # the attention draft head (EAGLE-style, ``models.draft_head``): one decoder layer with its own
    # paged KV over [token embedding; previous final state]; layers [0] and prev_state only
    attention: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {"layers": list(self.layers), "mlp_width": self.mlp_width, "vocab": self.vocab}
        d = {**d, "prev_state": True} if self.prev_state else d
        return {**d, "attention": True} if self.attention else d


@dataclass(frozen=True)
class DepthConfig:
    # Physical layer index for every logical position, in order.  ``None`` is
    # the identity schedule.  Repeats share one weight set (layer fusion); each
    # position has its own KV cache.
    layer_schedule: tuple[int, ...] | None = None
    # Relaxed sharing (Relaxed Recursive Transformers): these positions add a
    # rank-``relax_rank`` delta ``A @ B`` to each of their layer's projections.
    relax_rank: int | None = None
    relax_positions: tuple[int, ...] | None = None
    # Early exit: after ``L`` positions have run, for each ``L`` in
    # ``exit_layers``, a decode token whose confidence (``exit_criterion``) is
    # strictly above ``exit_threshold`` leaves the stack; ``kv_fill`` fills the
    # KV of the positions it skipped.
    exit_layers: tuple[int, ...] | None = None
    exit_criterion: str = "softmax"
    # one threshold for every exit layer, or one per exit layer (``vllm-depth calibrate``)
    exit_threshold: float | tuple[float, ...] = 0.9
    min_layer: int = 0
    kv_fill: str = "propagate"
    # How the softmax / margin check is computed: "logits" (the LM head's logits, reused as the
    # step's for exited tokens), "fused" (the fused kernel: no logits), "auto" (fused on GPUs and
    # under tensor parallelism, logits otherwise)
    exit_check: str = "auto"
    # Trained exit heads (``vllm-depth train-exits``): the exit distribution at
    # these layer counts is the head's (its own norm, a residual linear map and
    # MLP of width ``mlp_width``) through the shared LM head.
    exit_heads: ExitHeads | None = None
    # Self-speculative decoding (``speculative_config={"model": "vllm_depth.SelfDraft", ...}``):
    # drafts come from the first ``draft_layers`` positions (LayerSkip) or the
    # positions in ``draft_schedule`` (Draft & Verify / SWIFT), with the final
    # norm and LM head (or the exit head at ``draft_layers``).  A request's draft
    # stops at the first token whose draft confidence is not above
    # ``draft_threshold``; each request drafts the length that pays by measured
    # acceptance and cost, and when none does, probes ``draft_backoff`` steps later, then after
    # ever longer waits (doubling, up to 16x) while drafting still does not pay.
    draft_layers: int | None = None
    draft_schedule: tuple[int, ...] | None = None
    draft_threshold: float = 0.0
    draft_backoff: int = 16
    # the speculation length ``vllm-depth tune-draft`` chose; ``vllm-depth bench
    # --self-spec`` passes it as ``num_speculative_tokens`` (the engine's own
    # setting is ``speculative_config.num_speculative_tokens``)
    draft_tokens: int = 3

    def draft_positions(self) -> tuple[int, ...] | None:
        """The schedule positions a draft runs, in order (None: no draft configured)."""
        if self.draft_schedule is not None:
            return self.draft_schedule
        if self.draft_layers is not None:
            return tuple(range(self.draft_layers))
        return None

    def recomputes(self) -> bool:
        """Whether exited tokens run again at full depth in the next step (``kv_fill: "recompute"``)."""
        return self.exit_layers is not None and self.kv_fill == "recompute"

    def thresholds(self) -> tuple[float, ...]:
        """The threshold of every exit layer."""
        t = self.exit_threshold
        return tuple(t) if isinstance(t, tuple) else (t,) * len(self.exit_layers or ())

    def schedule(self, num_layers: int) -> tuple[int, ...]:
        if self.layer_schedule is None:
            return tuple(range(num_layers))
        return self.layer_schedule

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("layer_schedule", "relax_positions", "exit_layers", "exit_threshold", "draft_schedule"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        if self.exit_heads is not None:
            d["exit_heads"] = self.exit_heads.to_dict()
        if self.exit_layers is None:  # the exit fields mean nothing without exit points
            for k in EXIT_DEFAULTS:
                d.pop(k)
        if self.draft_positions() is None:  # nor the draft fields without a draft
            for k in DRAFT_DEFAULTS:
                d.pop(k)
        return {k: v for k, v in d.items() if v is not None}



FIELDS = {
    "layer_schedule": "a non-empty list of physical layer indices (int), in order",
    "relax_rank": "an int from 1 to the hidden size (with relax_positions)",
    "relax_positions": "a list of distinct schedule positions (int) that carry a low-rank delta (with relax_rank)",
    "exit_layers": "a non-empty list of increasing layer counts L (int), 1 <= L < the number of positions",
    "exit_criterion": f"one of {', '.join(map(repr, CRITERIA))} ('head': softmax of trained exit heads)",
    "exit_threshold": "a number from 0.0 (always exit) to 1.0 (never exit), or a list of them, one per exit layer",
    "min_layer": "an int >= 0: no exit before this many layers",
    "kv_fill": "'propagate' (state propagation) or 'recompute' (the skipped layers run for real in the next step)",
    "exit_check": "'auto' (fused on GPUs and under tensor parallelism, else logits), 'fused' (the fused "
                  "kernel: no logits) or 'logits' (the LM head's logits, reused for exited tokens)",
    "exit_heads": "an object {\"layers\": [layer counts with a head], \"mlp_width\": int >= 0, "
                  "\"vocab\": int >= 0 (0: the full vocabulary), \"prev_state\": bool (draft heads that read "
                  "the previous token's final state; layer 0 allowed), \"attention\": bool (the attention draft "
                  "head: layers [0], prev_state true)}, written by vllm-depth train-exits",
    "draft_layers": "an int E, 1 <= E < the number of positions: drafts run the first E positions",
    "draft_schedule": "a non-empty list of increasing schedule positions (int) that drafts run, "
                      "fewer than all of them (instead of draft_layers)",
    "draft_threshold": "a number from 0.0 to 1.0: a draft stops at a token whose confidence is not above it",
    "draft_tokens": "an int >= 1: the speculation length (num_speculative_tokens) of vllm-depth bench --self-spec",
    "draft_backoff": "an int >= 0: when no draft length pays (measured acceptance against the measured "
                     "draft cost), a request probes this many steps later, then after doubling waits "
                     "(0: always the full length)",
}

EXIT_CRITERIA = tuple(CRITERIA)
KV_FILLS = ("propagate", "recompute")
EXIT_CHECKS = ("auto", "fused", "logits")
# the dataclass's defaults of the fields that mean something only with exit layers, or with a draft
_DEFAULTS = {f.name: f.default for f in fields(DepthConfig)}
EXIT_DEFAULTS = {k: _DEFAULTS[k] for k in ("exit_criterion", "exit_threshold", "min_layer", "kv_fill", "exit_check")}
DRAFT_DEFAULTS = {k: _DEFAULTS[k] for k in ("draft_threshold", "draft_backoff", "draft_tokens")}


def _fail(field: str, problem: str) -> DepthConfigError:
    allowed = FIELDS.get(field)
    suffix = f"; allowed: {allowed}" if allowed else ""
    return DepthConfigError(f"depth.{field}: {problem}{suffix}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_depth_config(raw: Any, num_layers: int, hidden_size: int | None = None) -> DepthConfig:
    """Validate a raw ``depth`` object against a model with ``num_layers`` layers."""
    if raw is None:
        return DepthConfig()
    if isinstance(raw, DepthConfig):
        raw = raw.to_dict()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DepthConfigError(f"depth: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise DepthConfigError(
            f"depth: expected an object with the fields {sorted(FIELDS)}, "
            f"got {type(raw).__name__}"
        )
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise DepthConfigError(
            f"depth: unknown field(s) {unknown}; allowed fields: {sorted(FIELDS)}"
        )

    schedule = raw.get("layer_schedule")
    if schedule is not None:
        if not isinstance(schedule, (list, tuple)):
            raise _fail("layer_schedule", f"expected a list, got {type(schedule).__name__}")
        if len(schedule) == 0:
            raise _fail("layer_schedule", "the schedule is empty")
        for i, p in enumerate(schedule):
            if not _is_int(p):
                raise _fail("layer_schedule", f"entry {i} is {p!r}, not an int")
            if not 0 <= p < num_layers:
                raise _fail(
                    "layer_schedule",
                    f"entry {i} is {p}, out of range: this checkpoint has "
                    f"{num_layers} layers, so indices 0..{num_layers - 1}",
                )
        schedule = tuple(schedule)
    n_positions = len(schedule) if schedule is not None else num_layers

    rank, positions = raw.get("relax_rank"), raw.get("relax_positions")
    if (rank is None) != (positions is None):
        missing = "relax_positions" if positions is None else "relax_rank"
        raise _fail(missing, "relax_rank and relax_positions go together; one is missing")
    if rank is not None:
        top = hidden_size if hidden_size is not None else "the hidden size"
        if not _is_int(rank) or rank < 1 or (hidden_size is not None and rank > hidden_size):
            raise _fail("relax_rank", f"{rank!r} is not an int in 1..{top}")
        if not isinstance(positions, (list, tuple)) or not positions:
            raise _fail("relax_positions", "expected a non-empty list")
        for i, p in enumerate(positions):
            if not _is_int(p) or not 0 <= p < n_positions:
                raise _fail(
                    "relax_positions",
                    f"entry {i} is {p!r}; the schedule has {n_positions} positions, so 0..{n_positions - 1}",
                )
        if len(set(positions)) != len(positions):
            raise _fail("relax_positions", "positions repeat")
        positions = tuple(positions)
    heads = _parse_heads(raw.get("exit_heads"), n_positions)
    return DepthConfig(
        layer_schedule=schedule, relax_rank=rank, relax_positions=positions,
        **_parse_exits(raw, n_positions, heads), **_parse_draft(raw, n_positions, heads),
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _parse_exits(raw: dict, n_positions: int, heads: ExitHeads | None) -> dict[str, Any]:
    layers = raw.get("exit_layers")
    out: dict[str, Any] = {} if heads is None else {"exit_heads": heads}
    if layers is None:
        extra = sorted(set(raw) & set(EXIT_DEFAULTS))
        if extra:
            raise _fail("exit_layers", f"{extra} given without exit_layers")
        return out
    if not isinstance(layers, (list, tuple)) or not layers:
        raise _fail("exit_layers", f"expected a non-empty list, got {layers!r}")
    for i, n in enumerate(layers):
        if not _is_int(n) or not 1 <= n < n_positions:
            raise _fail(
                "exit_layers",
                f"entry {i} is {n!r}; the schedule has {n_positions} positions, so 1..{n_positions - 1}",
            )
    if list(layers) != sorted(set(layers)):
        raise _fail("exit_layers", f"{list(layers)} is not strictly increasing")
    if heads is not None and heads.prev_state:
        raise _fail("exit_heads", "heads with prev_state read the previous token's final state, which an "
                                  "early-exit step does not have: they draft only; allowed with exit_layers: "
                                  "heads trained without vllm-depth train-exits --prev-state")
    out["exit_layers"] = tuple(layers)
    criterion = raw.get("exit_criterion", EXIT_DEFAULTS["exit_criterion"])
    if criterion not in EXIT_CRITERIA:
        raise _fail("exit_criterion", f"{criterion!r} is not a known criterion")
    out["exit_criterion"] = criterion
    out["exit_threshold"] = _parse_threshold(raw.get("exit_threshold", EXIT_DEFAULTS["exit_threshold"]), len(layers))
    min_layer = raw.get("min_layer", EXIT_DEFAULTS["min_layer"])
    if not _is_int(min_layer) or min_layer < 0:
        raise _fail("min_layer", f"{min_layer!r} is not an int >= 0")
    out["min_layer"] = min_layer
    kv_fill = raw.get("kv_fill", EXIT_DEFAULTS["kv_fill"])
    if kv_fill not in KV_FILLS:
        raise _fail("kv_fill", f"{kv_fill!r} is not supported")
    out["kv_fill"] = kv_fill
    exit_check = raw.get("exit_check", EXIT_DEFAULTS["exit_check"])
    if exit_check not in EXIT_CHECKS:
        raise _fail("exit_check", f"{exit_check!r} is not supported")
    out["exit_check"] = exit_check
    if criterion == "head":
        missing = [n for n in layers if heads is None or n not in heads.layers]
        if missing:
            raise _fail("exit_criterion", f"'head' needs a trained head at every exit layer; none at {missing} "
                                          "(train them with vllm-depth train-exits)")
    return out


def _parse_draft(raw: dict, n_positions: int, heads: ExitHeads | None = None) -> dict[str, Any]:
    layers, schedule = raw.get("draft_layers"), raw.get("draft_schedule")
    if layers is not None and schedule is not None:
        raise _fail("draft_schedule", "give draft_layers or draft_schedule, not both")
    if layers is None and schedule is None:
        extra = sorted(set(raw) & set(DRAFT_DEFAULTS))
        if extra:
            raise _fail("draft_layers", f"{extra} given without draft_layers or draft_schedule")
        return {}
    out: dict[str, Any] = {}
    if heads is not None and heads.attention and layers != 0:  # the head drafts; no layer of the model runs
        raise _fail("draft_layers", f"{layers if schedule is None else schedule!r} with the attention draft head, "
                    "which runs none of the model's layers; allowed: draft_layers 0")
    if layers is not None:
        zero = heads is not None and heads.prev_state and 0 in heads.layers  # a head that reads the embedding
        if not _is_int(layers) or not (0 if zero else 1) <= layers < n_positions:
            raise _fail("draft_layers", f"{layers!r}; the schedule has {n_positions} positions, so 1..{n_positions - 1}"
                                        " (0 with a prev_state exit head at layer 0)")
        out["draft_layers"] = layers
    else:
        if (not isinstance(schedule, (list, tuple)) or not schedule
                or not all(_is_int(p) and 0 <= p < n_positions for p in schedule)):
            raise _fail("draft_schedule", f"{schedule!r}: expected ints in 0..{n_positions - 1}")
        if list(schedule) != sorted(set(schedule)) or len(schedule) >= n_positions:
            raise _fail("draft_schedule", f"{list(schedule)} is not strictly increasing or runs every position")
        out["draft_schedule"] = tuple(schedule)
    threshold = raw.get("draft_threshold", DRAFT_DEFAULTS["draft_threshold"])
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise _fail("draft_threshold", f"{threshold!r} is out of range")
    out["draft_threshold"] = float(threshold)
    backoff = raw.get("draft_backoff", DRAFT_DEFAULTS["draft_backoff"])
    if not _is_int(backoff) or backoff < 0:
        raise _fail("draft_backoff", f"{backoff!r} is not an int >= 0")
    out["draft_backoff"] = backoff
    tokens = raw.get("draft_tokens", DRAFT_DEFAULTS["draft_tokens"])
    if not _is_int(tokens) or tokens < 1:
        raise _fail("draft_tokens", f"{tokens!r} is not an int >= 1")
    out["draft_tokens"] = tokens
    return out


def _parse_threshold(threshold: Any, n_layers: int) -> float | tuple[float, ...]:
    if isinstance(threshold, (list, tuple)):
        if len(threshold) != n_layers:
            raise _fail("exit_threshold", f"{len(threshold)} thresholds for {n_layers} exit layers")
        return tuple(_one_threshold(t) for t in threshold)
    return _one_threshold(threshold)


def _one_threshold(threshold: Any) -> float:
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise _fail("exit_threshold", f"{threshold!r} is out of range")
    return float(threshold)


def _parse_heads(raw: Any, n_positions: int) -> ExitHeads | None:
    if raw is None:
        return None
    if (not isinstance(raw, dict) or set(raw) - {"layers", "mlp_width", "vocab", "prev_state", "attention"}
            or "layers" not in raw):
        raise _fail("exit_heads", f"{raw!r} is not such an object")
    prev = raw.get("prev_state", False)
    if not isinstance(prev, bool):
        raise _fail("exit_heads", f"prev_state {prev!r} is not true or false")
    layers, low = raw["layers"], 0 if prev else 1  # a draft head may read the embedding alone
    if (not isinstance(layers, (list, tuple)) or not layers or list(layers) != sorted(set(layers))
            or not all(_is_int(n) and low <= n < n_positions for n in layers)):
        raise _fail("exit_heads", f"layers {layers!r}: expected increasing ints in {low}..{n_positions - 1}")
    width = raw.get("mlp_width", 0)
    if not _is_int(width) or width < 0:
        raise _fail("exit_heads", f"mlp_width {width!r} is not an int >= 0")
    vocab = raw.get("vocab", 0)
    if not _is_int(vocab) or vocab < 0:
        raise _fail("exit_heads", f"vocab {vocab!r} is not an int >= 0")
    attention = raw.get("attention", False)
    if not isinstance(attention, bool):
        raise _fail("exit_heads", f"attention {attention!r} is not true or false")
    if attention and (list(layers) != [0] or not prev or width):
        raise _fail("exit_heads", "the attention draft head sits at layer 0 and reads the previous final state; "
                    "allowed with attention: layers [0], prev_state true, mlp_width 0")
    return ExitHeads(tuple(layers), width, vocab, prev, attention)


def depth_config_of(hf_config: Any) -> DepthConfig:
    """Read and validate ``hf_config.depth`` (absent means the identity schedule)."""
    raw = getattr(hf_config, "depth", None)
    return parse_depth_config(raw, hf_config.num_hidden_layers, getattr(hf_config, "hidden_size", None))


def require_draft(depth: DepthConfig) -> tuple[int, ...]:
    """The draft's schedule positions; refuses a depth config that names none."""
    draft = depth.draft_positions()
    if draft is None:
        raise ValueError(f"speculative_config.model={PROPOSER!r}: the depth config names no draft; allowed: "
                         "depth.draft_layers (int) or depth.draft_schedule (list), in the checkpoint's "
                         "config.json or hf_overrides={'depth': {...}}")
    return draft


def check_parallel(depth: DepthConfig, tensor_parallel_size: int, pipeline_parallel_size: int,
                   num_positions: int) -> None:
    """Refuse depth features that cannot run split this way (at engine start, before any process)."""
    if tensor_parallel_size > 1:
        if depth.relax_rank is not None:
            raise DepthConfigError("depth.relax_rank: low-rank deltas run with tensor_parallel_size 1 only; "
                                   "allowed: tensor_parallel_size=1, or a checkpoint without relax_rank")
        if depth.exit_layers is not None and depth.exit_check == "logits":
            raise DepthConfigError("depth.exit_check 'logits' needs the full logits on every rank, which tensor "
                                   "parallelism does not gather; allowed with tensor_parallel_size > 1: 'auto', "
                                   "'fused'")
        if depth.exit_heads is not None and depth.exit_heads.vocab:
            raise DepthConfigError(
                f"depth.exit_heads: reduced-vocabulary heads (vocab {depth.exit_heads.vocab}) run with "
                "tensor_parallel_size 1 only; allowed: tensor_parallel_size=1, or heads trained with "
                "train-exits --vocab 0 (the full, vocabulary-parallel LM head)")
    if pipeline_parallel_size > 1:
        if num_positions < pipeline_parallel_size:
            raise DepthConfigError(f"depth.layer_schedule: {num_positions} position(s) cannot fill "
                                   f"{pipeline_parallel_size} pipeline stages; allowed: pipeline_parallel_size "
                                   f"<= {num_positions}")
        if depth.exit_layers is not None and depth.exit_criterion == "saturation":
            raise DepthConfigError("depth.exit_criterion 'saturation' compares with the embedding, which lives on "
                                   "the first pipeline stage; allowed with pipeline_parallel_size > 1: softmax, "
                                   "margin, head")
        if depth.recomputes():
            raise DepthConfigError("depth.kv_fill 'recompute' re-runs an exited token in the next step, which "
                                   "vLLM 0.32's non-last pipeline ranks cannot follow (they rebuild token ids from "
                                   "the scheduler's count of computed tokens); allowed with "
                                   "pipeline_parallel_size > 1: 'propagate'")
        if depth.draft_positions() is not None:
            # vLLM 0.32 builds a drafter on the last pipeline rank only, and the other ranks then fail
            # (initialize_kv_cache_tensors, take_draft_token_ids read it): stock speculative decoding too
            raise DepthConfigError("depth.draft_layers / draft_schedule: self-drafting under pipeline "
                                   "parallelism is not supported (vLLM 0.32's speculative decoding fails on "
                                   "ranks other than the last); allowed: pipeline_parallel_size=1")
