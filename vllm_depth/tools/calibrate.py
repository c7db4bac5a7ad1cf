"""Calibrated early exit (``vllm-depth calibrate``): thresholds with a distribution-free guarantee.

CALM's calibration, done with Learn-then-Test (Angelopoulos et al.):

- the loss of a prompt under a setting is ``1 - token agreement`` of its
  early-exit output with its full-depth output (position by position, as the
  bench measures it), from real generation in one depth engine;
- settings are ``(min_layer m, threshold t)``: the exit layers at or after
  ``m``, each with threshold ``t``.  For each ``m`` the thresholds are tested in
  a fixed sequence from the most cautious (1.0 never exits) down, with the
  Hoeffding-Bentkus p-value of "mean loss > 1 - target"; a setting is valid
  while every setting before it in its sequence was rejected at
  ``delta / len(min_layers)`` (Bonferroni over the sequences).  The
  sequence stops at its first failure, so only what is needed is run;
- among valid settings the fastest (measured tokens/s) is written into the
  checkpoint's depth config.  With probability at least ``1 - delta`` over the
  draw of the calibration prompts, the chosen setting's expected agreement
  on prompts from the same distribution is at least the target.

The guarantee is per prompt: it needs many prompts (with 32, only a setting
that agrees perfectly on every prompt can pass at target 0.9, delta 0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vllm_depth.tools import bench
from vllm_depth.tools.arguments import CalibrateError, check_calibrate
from vllm_depth.tools.checkpoints import update_depth_config

THRESHOLDS = (0.999, 0.995, 0.99, 0.98, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


def _binom_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, k + 1))


def hb_p_value(risk: float, n: int, alpha: float) -> float:
    """Hoeffding-Bentkus p-value of the null "expected loss > alpha", losses in [0, 1]."""
    if risk >= alpha:
        return 1.0

    def kl(a, b):
        a = min(max(a, 1e-12), 1 - 1e-12)
        return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))

    hoeffding = math.exp(-n * kl(risk, alpha))
    bentkus = math.e * _binom_cdf(math.ceil(n * risk), n, alpha)
    return min(1.0, hoeffding, bentkus)


@dataclass
class Point:
    min_layer: int
    threshold: float
    agreement: float  # mean over prompts
    risk: float
    p_value: float
    valid: bool
    tokens_per_s: float
    speedup: float  # against the full-depth run of the same engine
    mean_exit_layer: float | None


@dataclass
class Calibration:
    exit_layers: list[int]
    criterion: str
    target: float
    delta: float
    prompts: int
    full_depth_tokens_per_s: float
    points: list[Point] = field(default_factory=list)
    chosen: Point | None = None
    written: dict | None = None


def calibrate(model_dir: str, prompts_path: str, target: float = 0.9, delta: float = 0.1,
              exit_layers: list[int] | None = None, min_layers: list[int] | None = None,
              thresholds: list[float] | None = None, max_tokens: int = 64, engine_args: dict | None = None,
              write: bool = True, full_curve: bool = False, progress: bool = True) -> Calibration:
    """``full_curve``: measure every threshold, also past a sequence's first failure (for the plot;
    such points are never valid)."""
    from tqdm import tqdm

    thresholds = sorted(thresholds or THRESHOLDS, reverse=True)
    depth, positions = check_calibrate(model_dir, exit_layers, target, delta, prompts_path, min_layers, thresholds)
    heads = depth.exit_heads.layers if depth.exit_heads else ()
    layers = exit_layers or list(heads) or list(depth.exit_layers or ())
    if not layers:
        raise CalibrateError("--exit-layers: the checkpoint has no exit heads or exit layers; give --exit-layers")
    criterion = "head" if heads and all(n in heads for n in layers) else "softmax"
    min_layers = sorted(set(min_layers if min_layers is not None else layers))
    prompts = bench.load_prompts(prompts_path)

    run_depth = {**depth.to_dict(), "exit_layers": layers, "exit_criterion": criterion, "exit_threshold": 1.0}
    run_depth.pop("min_layer", None)
    kwargs = {**bench.DEFAULT_ENGINE_ARGS, **(engine_args or {}), "model_impl": "depth",
              "hf_overrides": {"depth": run_depth}}
    engine = bench.start_engine("depth", model=model_dir, **kwargs)
    try:
        def run(extra: dict) -> tuple[list[list[int]], float, dict | None]:
            engine.seconds, engine.tokens = 0.0, 0
            bench.exit_counters(engine.llm, reset=True)
            bench.run_round(engine, prompts, max_tokens, len(prompts), per_request=True, extra=extra)
            return engine.token_ids, engine.tokens_per_s, bench.exit_counters(engine.llm, reset=True)

        bench.run_round(engine, prompts[:2], 4, 2, per_request=True, record=False)  # warm-up
        reference, full_tps, _ = run({"depth_exit": False})
        result = Calibration(layers, criterion, target, delta, len(prompts), full_tps)
        level = delta / len(min_layers)
        bar = tqdm(total=len(min_layers) * len(thresholds), desc="calibrate", unit="setting", disable=not progress)
        for m in min_layers:
            failed = False
            for t in thresholds:
                ids, tps, counters = run({"depth_exit_threshold": t, "depth_min_layer": m})
                agree = [bench.token_agreement(a, b) for a, b in zip(reference, ids)]
                risk = 1.0 - sum(agree) / len(agree)
                p = hb_p_value(risk, len(agree), 1.0 - target)
                generated = sum(len(x) for x in ids)
                mean_layer = bench.mean_exit_layer(counters, generated, positions) if counters else None
                point = Point(m, t, 1.0 - risk, risk, p, p <= level and not failed, tps,
                              tps / full_tps if full_tps else 0.0, mean_layer)
                result.points.append(point)
                bar.update(1)
                bar.set_postfix(min_layer=m, threshold=t, agreement=f"{point.agreement:.3f}")
                failed = failed or not point.valid
                if failed and not full_curve:  # fixed-sequence testing stops at the first failure
                    bar.update(len(thresholds) - thresholds.index(t) - 1)
                    break
        bar.close()
    finally:
        bench.stop_engine(engine)
    valid = [p for p in result.points if p.valid]
    if valid:
        result.chosen = max(valid, key=lambda p: p.tokens_per_s)
        chosen_layers = [n for n in layers if n >= result.chosen.min_layer]
        result.written = {"exit_layers": chosen_layers, "exit_criterion": criterion,
                          "exit_threshold": [result.chosen.threshold] * len(chosen_layers)}
        if write:
            update_depth_config(model_dir, result.written, drop=("min_layer",))
    return result


def format_table(c: Calibration) -> str:
    rows = ["| min layer | threshold | agreement | p-value | valid | tokens/s | speed vs full depth | mean layers |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in c.points:
        mark = " (chosen)" if p is c.chosen else ""
        ml = f"{p.mean_exit_layer:.1f}" if p.mean_exit_layer is not None else "-"
        rows.append(f"| {p.min_layer} | {p.threshold}{mark} | {p.agreement:.3f} | {p.p_value:.3g} | "
                    f"{'yes' if p.valid else 'no'} | {p.tokens_per_s:.1f} | {p.speedup:.3f}x | {ml} |")
    return "\n".join(rows)


def plot(c: Calibration, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for m in sorted({p.min_layer for p in c.points}):
        pts = [p for p in c.points if p.min_layer == m]
        a1.plot([p.threshold for p in pts], [p.agreement for p in pts], "o-", label=f"min layer {m}")
        a2.plot([p.threshold for p in pts], [p.speedup for p in pts], "o-", label=f"min layer {m}")
    a1.axhline(c.target, color="grey", ls="--", lw=1, label="target")
    for ax, name in ((a1, "agreement with full depth"), (a2, "speed vs full depth (same engine)")):
        ax.set_xlabel("exit threshold")
        ax.set_ylabel(name)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    if c.chosen is not None:
        a1.plot([c.chosen.threshold], [c.chosen.agreement], "k*", ms=12, label="chosen")
        a2.plot([c.chosen.threshold], [c.chosen.speedup], "k*", ms=12)
    a1.legend(fontsize=8)
    fig.suptitle(f"calibration: {c.criterion} exits, target {c.target}, delta {c.delta}, {c.prompts} prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
