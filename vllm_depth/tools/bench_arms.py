"""Every decoding method against stock vLLM in one bench run: one arm per method.

An arm is a depth configuration, vLLM's own speculation, or Hugging Face's
``generate(assistant_early_exit=E)``.  Stock vLLM stays alive for the whole run
and is timed between every two arm rounds::

    stock, a, stock, b, stock, c, stock, c, stock, b, stock, a, stock, ...

Every other round runs the arms backwards (the order rotating between pairs of
rounds), so drift falls on all alike, and each arm round's ratio is taken
against the mean of the two stock rounds on either side of it.  Arm engines are started in as
few groups as the free memory allows next to stock; each group is timed, then
stopped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vllm_depth.config import parse_depth_config
from vllm_depth.spec_decode.engine_args import self_spec_engine_args
from vllm_depth.spec_decode.policy import ratio
from vllm_depth.tools import bench
from vllm_depth.tools.checkpoints import checkpoint_config, resolve_model

ARM_KEYS = ("depth", "engine_args", "self_spec", "hf_early_exit", "model")
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
SUFFIX = {"method": "suffix", "num_speculative_tokens": 3}
# trained heads beside the bench's checkpoint (``benchmarks/peers.sh`` writes them there): preset -> (folder
# suffix, the command that trains it)
TRAINED = {
    "eagle": ("-eagle", "train-exits MODEL --draft-attention --format eagle --out MODEL-eagle"),
    "self-draft-attention": ("-draft-attention", "train-exits MODEL --draft-attention --out MODEL-draft-attention"),
}
PRESETS = ("ngram", "suffix", "eagle", "self-draft", "self-draft-attention", "hf-early-exit")
HF_EARLY_EXIT_LAYER = 15
# Each arm engine's KV cache: a bench needs a few thousand slots, and several engines share the host memory.
ARM_KV_CACHE_BYTES = 512 * 2**20
MEMORY_RESERVE_MB = 3072  # left free for the bench process, the tokenizer and the page cache
# an arm's own checkpoint must agree with the bench's model on these
SAME_MODEL_KEYS = ("architectures", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")
SPEC_METRICS = ("vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens")


def middle_skip_schedule(num_layers: int) -> list[int]:
    """The layers a skip-set self-draft keeps: all but layers 13-19 of 30 (tune-draft's pick for
    SmolLM2-135M as downloaded), scaled to ``num_layers``."""
    lo, hi = round(num_layers * 13 / 30), round(num_layers * 20 / 30)
    return [i for i in range(num_layers) if not lo <= i < hi]


def preset(name: str, model_dir: str) -> dict:
    """The arm spec of a preset name; ValueError lists the presets."""
    cfg = checkpoint_config(model_dir)
    if name == "ngram":
        return {"engine_args": {"speculative_config": dict(NGRAM)}}
    if name == "suffix":
        return {"engine_args": {"speculative_config": dict(SUFFIX)}}
    if name == "self-draft":
        own = cfg.get("depth") or {}
        if "draft_layers" in own or "draft_schedule" in own:
            return {"self_spec": {}}
        return {"self_spec": {"draft_schedule": middle_skip_schedule(cfg["num_hidden_layers"]),
                              "num_speculative_tokens": 2}}
    if name == "hf-early-exit":
        return {"hf_early_exit": min(HF_EARLY_EXIT_LAYER, cfg["num_hidden_layers"] - 1)}
    if name in TRAINED:
        suffix, command = TRAINED[name]
        path = model_dir.rstrip("/") + suffix
        if not Path(path).is_dir():
            raise ValueError(f"--arm {name}: no trained head at {path}; train it with vllm-depth {command}")
        if name == "eagle":
            spec = {"method": "eagle", "model": path, "num_speculative_tokens": 2}
            return {"engine_args": {"speculative_config": spec}}
        return {"model": path, "self_spec": {"draft_layers": 0, "num_speculative_tokens": 2}}
    raise ValueError(f"--arm: unknown preset {name!r}; allowed: {', '.join(PRESETS)}, "
                     "or NAME=JSON with keys " + ", ".join(ARM_KEYS))


def parse_arm(text: str, model_dir: str) -> tuple[str, dict]:
    """``NAME`` (a preset) or ``NAME=JSON`` (an arm object) -> (name, arm spec)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not name or name == "stock":
        raise ValueError(f"--arm: {text!r} needs a name other than 'stock' (stock is always timed)")
    if not sep:
        return name, preset(name, model_dir)
    raw = raw.strip()
    if not raw.startswith("{"):
        return name, preset(raw, model_dir)
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"--arm {name}: not valid JSON ({e})") from None
    unknown = sorted(set(spec) - set(ARM_KEYS))
    if unknown or not spec:
        raise ValueError(f"--arm {name}: unknown key(s) {unknown}; allowed: {list(ARM_KEYS)}")
    for key in ("depth", "engine_args", "self_spec"):
        if key in spec and not isinstance(spec[key], dict):
            raise ValueError(f"--arm {name}: {key!r} must be an object")
    if "model" in spec:
        spec["model"] = _same_model(name, spec["model"], model_dir)
    if "hf_early_exit" in spec:
        e = spec["hf_early_exit"]
        layers = checkpoint_config(model_dir)["num_hidden_layers"]
        if set(spec) != {"hf_early_exit"} or not isinstance(e, int) or isinstance(e, bool) or not 1 <= e < layers:
            raise ValueError(f"--arm {name}: 'hf_early_exit' must be the only key, an int in [1, {layers - 1}]")
    return name, spec


def _same_model(name: str, model, model_dir: str) -> str:
    """An arm's own checkpoint (``"model"``): the bench's model with something added (trained heads,
    a depth config), so it must have the same architecture and shapes."""
    if not isinstance(model, str):
        raise ValueError(f"--arm {name}: 'model' must be an alias or a checkpoint directory")
    try:
        path = resolve_model(model)
    except ValueError as e:
        raise ValueError(f"--arm {name}: {e}") from None
    mine, base = checkpoint_config(path), checkpoint_config(model_dir)
    differ = [k for k in SAME_MODEL_KEYS if mine.get(k) != base.get(k)]
    if differ:
        raise ValueError(f"--arm {name}: model {model!r} is not the bench's model: {differ} differ")
    return path


@dataclass
class Arm:
    """One arm: how its engine starts (``kwargs`` for ``LLM``, or ``hf_early_exit``) and what it measured."""

    name: str
    spec: dict
    model_dir: str  # the checkpoint it serves
    kwargs: dict = field(default_factory=dict)
    hf_early_exit: int | None = None
    engine: bench.Engine | None = None
    round_speedups: list = field(default_factory=list)
    stock_neighbours: list = field(default_factory=list)
    spec_start: tuple[int, int] | None = None  # (drafted, accepted) of vLLM's own speculation, after warm-up
    spec_end: tuple[int, int] | None = None  # the same after the timed rounds
    peak_rss_mb: float | None = None
    report: dict | None = None

    @property
    def is_depth(self) -> bool:
        return self.kwargs.get("model_impl") == "depth"

    @property
    def counts_vllm_drafts(self) -> bool:
        return "disable_log_stats" in self.kwargs

    @property
    def forgets_responses(self) -> bool:
        """Suffix decoding drafts from the responses it has cached, and every round repeats the same
        prompts: its cache is emptied before each of its rounds, so that each round times prompts
        it has not answered before (within a round it learns from the round's earlier requests)."""
        return (self.kwargs.get("speculative_config") or {}).get("method") == "suffix"


def arm_kwargs(name: str, spec: dict, model_dir: str, common: dict) -> Arm:
    """The ``LLM`` keyword arguments of an arm, its depth config checked against the checkpoint."""
    if "hf_early_exit" in spec:
        return Arm(name, spec, model_dir, hf_early_exit=spec["hf_early_exit"])
    model_dir = spec.get("model", model_dir)
    cfg = checkpoint_config(model_dir)
    kwargs = {**common, "kv_cache_memory_bytes": ARM_KV_CACHE_BYTES, **spec.get("engine_args", {})}
    depth = spec.get("depth")
    if "self_spec" in spec:
        depth, spec_config = self_spec_engine_args(depth if depth is not None else cfg.get("depth"),
                                                   spec["self_spec"])
        kwargs["speculative_config"] = spec_config
    if depth is not None or "self_spec" in spec:
        try:
            parse_depth_config(depth, cfg["num_hidden_layers"], cfg.get("hidden_size"))
        except ValueError as e:
            raise ValueError(f"--arm {name}: {e}") from None
        kwargs["model_impl"] = "depth"
        kwargs["hf_overrides"] = {**kwargs.get("hf_overrides", {}), "depth": depth}
    if "speculative_config" in kwargs and kwargs.get("model_impl") != "depth":
        kwargs["disable_log_stats"] = False  # vLLM counts its own drafts only with stats on
    return Arm(name, spec, model_dir, kwargs=kwargs)


class HfGenerator:
    """Hugging Face ``generate`` behind ``LLM.generate``'s shape, so the bench times it like an engine."""

    def __init__(self, model_dir: str, early_exit: int, dtype: str):
        import torch  # the bench process runs no torch unless an HF arm asks for it
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": torch.bfloat16}[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval()
        self.early_exit = early_exit

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, texts, params, use_tqdm=False):
        outputs = []
        for text, p in zip(texts, params):
            ids = self.tokenizer(text, return_tensors="pt").input_ids
            with self.torch.inference_mode():
                out = self.model.generate(ids, max_new_tokens=p.max_tokens, do_sample=False,
                                          assistant_early_exit=self.early_exit)
            new = out[0, ids.shape[1]:].tolist()
            outputs.append(_Output([_Completion(new, self.tokenizer.decode(new, skip_special_tokens=True))]))
        return outputs


@dataclass
class _Completion:
    token_ids: list
    text: str


@dataclass
class _Output:
    outputs: list


def start_arm(arm: Arm, dtype: str) -> None:
    if arm.hf_early_exit is not None:
        gen = HfGenerator(arm.model_dir, arm.hf_early_exit, dtype)
        arm.engine = bench.Engine(arm.name, gen, {os.getpid()}, gen.tokenizer)
        return
    arm.engine = bench.start_engine(arm.name, model=arm.model_dir, **arm.kwargs)
    llm = arm.engine.llm
    if arm.is_depth:
        arm.engine.counters = {"exits": {}} if bench.exit_counters(llm) is not None else None
        arm.engine.drafts = {} if bench.draft_counters(llm) is not None else None


def warm_up(arm: Arm, prompts) -> None:
    """One short request (compiles, fills caches), then the counters start from zero."""
    bench.run_round(arm.engine, prompts[:1], 4, 1, per_request=arm.is_depth, record=False)
    llm = arm.engine.llm
    if arm.engine.counters is not None:
        bench.exit_counters(llm, reset=True)
    if arm.engine.drafts is not None:
        bench.draft_counters(llm, reset=True)
    if arm.counts_vllm_drafts:
        arm.spec_start = _spec_counts(llm)


def stop_arm(arm: Arm) -> None:
    if arm.hf_early_exit is None:
        arm.peak_rss_mb = bench._peak_rss_mb(arm.engine.pids)
        bench.stop_engine(arm.engine)
    arm.engine.llm = None


def _spec_counts(llm) -> tuple[int, int]:
    """(draft tokens, accepted tokens) vLLM's own speculation counted so far."""
    values = {m.name: getattr(m, "value", 0) for m in llm.get_metrics() if m.name in SPEC_METRICS}
    return tuple(int(values.get(k, 0)) for k in SPEC_METRICS)


def round_schedule(n_arms: int, rounds: int) -> list[int | None]:
    """The timed sequence of one group: None is stock, i is arm i.  Stock opens, closes and
    separates every two arm rounds.  Rounds come in pairs, an order and its reverse (ABBA), so
    over every pair each arm's mean position is the same; the order rotates by one each pair."""
    seq: list[int | None] = [None]
    for r in range(rounds):
        order = [(i + r // 2) % n_arms for i in range(n_arms)]
        for i in (order if r % 2 == 0 else order[::-1]):
            seq += [i, None]
    return seq


def groups_that_fit(n_arms: int, per_engine_mb: float, available_mb: float) -> int:
    """How many arm engines may be alive at once next to stock."""
    return max(1, min(n_arms, int((available_mb - MEMORY_RESERVE_MB) // max(per_engine_mb, 1.0))))


def plan_groups(arms: list, fit: int) -> list[list]:
    """The arms in order, in groups of at most ``fit``, with at most one arm that counts vLLM's own
    speculation per group: an engine with stats on unregisters every earlier engine's Prometheus
    collectors from the process's registry, so only the last one started can be read."""
    groups: list[list] = []
    for arm in arms:
        if not groups or len(groups[-1]) == fit or (arm.counts_vllm_drafts and any(a.counts_vllm_drafts
                                                                                   for a in groups[-1])):
            groups.append([])
        groups[-1].append(arm)
    return groups


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _time_group(stock: bench.Engine, arms: list[Arm], prompts, max_tokens: int, batch_size: int,
                rounds: int, progress) -> None:
    """The timed rounds of one group of arms (their engines alive) and stock, in ``round_schedule``."""
    stock_rounds: list[float] = []
    seq = round_schedule(len(arms), rounds)
    pending: list[Arm] = []  # arm rounds waiting for the stock round after them
    for slot in seq:
        if slot is None:
            bench.run_round(stock, prompts, max_tokens, batch_size, per_request=False, progress=progress)
            stock_rounds.append(stock.round_tokens_per_s[-1])
            for arm in pending:
                neighbours = (stock_rounds[-2] + stock_rounds[-1]) / 2
                arm.stock_neighbours.append(neighbours)
                arm.round_speedups.append(round(arm.engine.round_tokens_per_s[-1] / neighbours, 4))
            pending = []
        else:
            arm = arms[slot]
            if arm.forgets_responses:
                bench.forget_responses(arm.engine.llm)
            bench.run_round(arm.engine, prompts, max_tokens, batch_size,
                            per_request=arm.is_depth, progress=progress)
            pending.append(arm)
    for arm in arms:
        if arm.counts_vllm_drafts:
            arm.spec_end = _spec_counts(arm.engine.llm)


def _acceptance(arm: Arm) -> float | None:
    """Accepted / drafted tokens in the timed rounds (None: the arm does not draft)."""
    if arm.engine.drafts is not None:
        return bench._draft_report(arm.engine.drafts)["acceptance_rate"]
    if arm.spec_start is not None and arm.spec_end is not None:
        return ratio(arm.spec_end[1] - arm.spec_start[1], arm.spec_end[0] - arm.spec_start[0])
    return None


def pooled_speedup(arm_rounds: list[float], stock_neighbours: list[float]) -> tuple[float, float, float | None]:
    """(arm tokens/s, stock tokens/s, speedup): the means of the arm's rounds and of the stock rounds next
    to them. Their ratio is the mediant of the per-round ratios, so it lies inside their range."""
    arm_tps = sum(arm_rounds) / len(arm_rounds) if arm_rounds else 0.0
    stock_tps = sum(stock_neighbours) / len(stock_neighbours) if stock_neighbours else 0.0
    return arm_tps, stock_tps, (round(arm_tps / stock_tps, 4) if stock_tps else None)


def arm_report(stock: bench.Engine, arm: Arm) -> dict:
    e = arm.engine
    full_depth = bench._full_depth(e.llm) if e.counters is not None else None
    arm_tps, stock_tps, speedup = pooled_speedup(e.round_tokens_per_s, arm.stock_neighbours)
    agreements = [bench.token_agreement(a, b) for a, b in zip(stock.token_ids, e.token_ids)]
    report = {
        "spec": arm.spec,
        "tokens_per_s": round(arm_tps, 3),
        "stock_tokens_per_s": round(stock_tps, 3),
        "speedup": speedup,
        "round_speedups": arm.round_speedups,
        "identical": sum(a == b for a, b in zip(stock.token_ids, e.token_ids)),
        "n": len(e.token_ids),
        "token_agreement": round(sum(agreements) / len(agreements), 4),
        "acceptance_rate": _acceptance(arm),
        "first_token_acceptance": (bench._draft_report(e.drafts)["first_token_acceptance"]
                                   if e.drafts is not None else None),
        "mean_exit_layer": (round(bench.mean_exit_layer(e.counters, e.tokens, full_depth), 3)
                            if full_depth and e.tokens else None),
        "outputs": e.outputs,
    }
    if arm.forgets_responses:
        report["responses_forgotten_each_round"] = True
    return report


def run_arms(model: str, prompts_path: str, arms: list[tuple[str, dict]], max_tokens: int = 64,
             batch_size: int = 1, rounds: int = 2, engine_args: dict | None = None) -> dict:
    prompts = bench.load_prompts(prompts_path)
    model_dir = resolve_model(model)
    common = {**bench.DEFAULT_ENGINE_ARGS, **(engine_args or {})}
    planned = [arm_kwargs(name, spec, model_dir, common) for name, spec in arms]
    dtype = str(common.get("dtype", "auto"))
    stock = bench.start_engine("stock", model=model_dir, **{**common, "kv_cache_memory_bytes": ARM_KV_CACHE_BYTES})
    try:
        bench.run_round(stock, prompts[:1], 4, 1, per_request=False, record=False)
        stock_mb = bench._peak_rss_mb(stock.pids) or 2048.0
        fit = groups_that_fit(len(planned), stock_mb * 1.25, _available_mb())
        groups = plan_groups(planned, fit)
        total = sum(len(g) * rounds * 2 + 1 for g in groups) * len(prompts)
        with tqdm(total=total, desc="bench", unit="prompt") as progress:
            for group in groups:
                try:
                    for arm in group:
                        start_arm(arm, dtype)
                        warm_up(arm, prompts)
                    _time_group(stock, group, prompts, max_tokens, batch_size, rounds, progress)
                    for arm in group:
                        arm.report = arm_report(stock, arm)
                finally:
                    for arm in group:
                        if arm.engine is not None:
                            stop_arm(arm)
        for arm in planned:
            arm.report["peak_rss_mb"] = arm.peak_rss_mb  # read as its engine stopped
        return {
            "n": len(prompts),
            "model": model_dir,
            "prompts": prompts_path,
            "max_tokens": max_tokens,
            "batch_size": batch_size,
            "rounds": rounds,
            "groups": [[a.name for a in g] for g in groups],
            "stock": {"tokens_per_s": round(stock.tokens_per_s, 3),
                      "round_tokens_per_s": [round(x, 3) for x in stock.round_tokens_per_s],
                      "peak_rss_mb": bench._peak_rss_mb(stock.pids), "outputs": stock.outputs},
            "arms": {arm.name: arm.report for arm in planned},
        }
    finally:
        bench.stop_engine(stock)


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(result: dict) -> str:
    rows = [("arm", "tok/s", "speedup", "per round", "agreement", "identical", "acceptance", "peak RSS MB")]
    rows.append(("stock vLLM", f'{result["stock"]["tokens_per_s"]:.2f}', "1.000x", "", "1.000",
                 f'{result["n"]}/{result["n"]}', "-", _fmt(result["stock"]["peak_rss_mb"], ".0f")))
    for name, a in result["arms"].items():
        spread = f'{min(a["round_speedups"]):.2f}-{max(a["round_speedups"]):.2f}' if a["round_speedups"] else ""
        rows.append((name, f'{a["tokens_per_s"]:.2f}', _fmt(a["speedup"], ".3f") + "x", spread,
                     f'{a["token_agreement"]:.3f}', f'{a["identical"]}/{a["n"]}', _fmt(a["acceptance_rate"], ".3f"),
                     _fmt(a["peak_rss_mb"], ".0f")))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.append(f'(batch {result["batch_size"]}, {result["max_tokens"]} new tokens, {result["n"]} prompts, '
                 f'{result["rounds"]} rounds per arm; each ratio against the stock rounds next to it)')
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib  # plotting only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.axhline(1.0, color="#888888", lw=0.8, ls="--", label="stock vLLM")
    for name, a in result["arms"].items():
        rs = a["round_speedups"] or [a["speedup"]]
        yerr = [[max(0.0, a["speedup"] - min(rs))], [max(0.0, max(rs) - a["speedup"])]]  # 4-digit rounding
        ax.errorbar([a["token_agreement"]], [a["speedup"]], yerr=yerr, fmt="o", capsize=3)
        ax.annotate(name, (a["token_agreement"], a["speedup"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xlabel("token agreement with stock vLLM")
    ax.set_ylabel("speedup (tokens/s vs stock; bars: per-round range)")
    ax.set_title(f'{os.path.basename(result["model"])}, batch {result["batch_size"]}, '
                 f'{result["max_tokens"]} new tokens')
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
