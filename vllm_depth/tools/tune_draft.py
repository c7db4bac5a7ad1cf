"""``vllm-depth tune-draft``: find a self-draft that pays, by measurement (SWIFT-style).

1. **Acceptance** of every candidate draft (prefixes of the schedule, and
   skip sets that leave out a middle block) on the sample prompts, in one
   self-speculative engine: each candidate drafts the full length at every
   step (run uncompiled: only its accepted lengths are read here), so the
   distribution of accepted lengths gives the expected tokens per step for
   every speculation length k.
2. **Speed**: the most promising (draft, k) pairs, ranked by expected tokens
   per unit of cost (cost: the draft's share of the schedule's positions, the
   verifier step being 1), each get an engine of their own, compiled as served,
   timed against stock vLLM in alternating rounds on the same prompts.
3. The fastest measured pair goes into the checkpoint's ``depth`` config
   (``draft_layers`` or ``draft_schedule``, ``draft_tokens``), where
   ``vllm-depth bench --self-spec`` and the README's serve command find it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_depth.compat.runner import worker_drafter
from vllm_depth.config import PROPOSER, depth_config_of
from vllm_depth.tools.bench import (
    DEFAULT_ENGINE_ARGS,
    Prompt,
    round_order,
    run_round,
    start_engine,
    stop_engine,
)
from vllm_depth.tools.checkpoints import update_depth_config


@dataclass
class Candidate:
    name: str
    positions: tuple[int, ...]
    accepted: dict | None = None  # {accepted tokens of a full-length draft: count}

    def setting(self) -> dict:
        if self.positions == tuple(range(len(self.positions))):
            return {"draft_layers": len(self.positions)}
        return {"draft_schedule": list(self.positions)}

    def expected_tokens(self, k: int) -> float:
        """1 + E[min(accepted, k)] over the measured full-length drafts."""
        total = sum(self.accepted.values())
        return 1 + sum(min(a, k) * c for a, c in self.accepted.items()) / total if total else 1.0


def candidates(n: int, head_layers: tuple[int, ...] = ()) -> list[Candidate]:
    """Prefix drafts at 1/4 .. 4/5 of the ``n`` positions (and every exit-head layer: 0 too, a
    ``prev_state`` head over the embedding), and two skip sets that leave out a block ending at 2/3
    of the depth (Draft & Verify / SWIFT)."""
    prefixes = sorted({max(1, round(n * f)) for f in (0.25, 0.4, 0.5, 0.6, 0.7, 0.8)} | set(head_layers))
    out = [Candidate(f"first {e}" + (" + head" if e in head_layers else ""), tuple(range(e)))
           for e in prefixes if (0 if e in head_layers else 1) <= e < n]
    end = round(2 * n / 3)
    for size in sorted({max(1, n // 5), max(1, n // 4)}):
        skip = range(end - size, end)
        out.append(Candidate(f"skip {skip.start}-{skip.stop - 1}", tuple(i for i in range(n) if i not in skip)))
    return out


def _configure(worker, draft, k, probe, threshold):
    worker_drafter(worker).configure(draft, k, probe, threshold)


def _counters(worker):
    return worker_drafter(worker).take_counters(reset=True)


def measure_acceptance(model_dir: str, depth: dict, cands: list[Candidate], prompts: list[Prompt],
                       k_max: int, max_tokens: int, engine_args: dict, progress) -> None:
    """Fill ``accepted`` of every candidate (one engine, drafts switched over collective_rpc)."""
    first = cands[0].setting()
    engine = start_engine("acceptance", model=model_dir, model_impl="depth",
                          hf_overrides={"depth": {**depth, **first, "draft_backoff": 0}},
                          speculative_config={"model": PROPOSER, "num_speculative_tokens": k_max},
                          **engine_args)
    try:
        for c in cands:
            engine.llm.collective_rpc(_configure, args=(c.positions, k_max, 0, 0.0))
            engine.llm.collective_rpc(_counters)
            run_round(engine, prompts, max_tokens, len(prompts), per_request=False, record=False)
            c.accepted = {int(a): n for a, n in engine.llm.collective_rpc(_counters)[0]["accepted_of_full"].items()}
            progress.update(1)
    finally:
        stop_engine(engine)


def rank(cands: list[Candidate], n: int, k_max: int) -> list[tuple[float, Candidate, int]]:
    """(expected tokens per unit of cost, candidate, k), best first; a draft forward costs its
    share of the schedule's positions of a verifier step."""
    scored = []
    for c in cands:
        cost = len(c.positions) / n
        for k in range(1, k_max + 1):
            scored.append((c.expected_tokens(k) / (1 + k * cost), c, k))
    return sorted(scored, key=lambda t: -t[0])


def measure_speed(model_dir: str, depth: dict, trials: list[tuple[Candidate, int]], prompts: list[Prompt],
                  max_tokens: int, engine_args: dict, rounds: int, progress) -> list[dict]:
    """Tokens/s of each (draft, k), compiled as served, against stock vLLM in alternating (ABBA) rounds."""
    baseline = start_engine("stock", model=model_dir, **engine_args)
    rows = []
    try:
        run_round(baseline, prompts[:1], 4, 1, per_request=False, record=False)
        for c, k in trials:
            engine = start_engine(c.name, model=model_dir, model_impl="depth",
                                  hf_overrides={"depth": {**depth, **c.setting(), "draft_tokens": k}},
                                  speculative_config={"model": PROPOSER, "num_speculative_tokens": k},
                                  **engine_args)
            try:
                run_round(engine, prompts[:1], 4, 1, per_request=False, record=False)
                engine.llm.collective_rpc(_counters)
                base0 = (baseline.seconds, baseline.tokens)
                for r in range(rounds):
                    for e in round_order([baseline, engine], r):
                        run_round(e, prompts, max_tokens, 1, per_request=False)
                    progress.update(1)
                counts = engine.llm.collective_rpc(_counters)[0]
                stock_tps = (baseline.tokens - base0[1]) / (baseline.seconds - base0[0])
                rows.append({"draft": c.name, **c.setting(), "k": k, "tokens_per_s": round(engine.tokens_per_s, 3),
                             "stock_tokens_per_s": round(stock_tps, 3),
                             "speedup": round(engine.tokens_per_s / stock_tps, 4),
                             "acceptance_rate": counts["acceptance_rate"] or 0.0})
            finally:
                stop_engine(engine)
    finally:
        stop_engine(baseline)
    return rows


def tune(model_dir: str, prompts: list[Prompt], k_max: int = 4, max_tokens: int = 64, top: int = 3,
         rounds: int = 1, engine_args: dict | None = None, cands: list[Candidate] | None = None) -> dict:
    from tqdm import tqdm
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    config = depth_config_of(cfg)
    n = len(config.schedule(cfg.num_hidden_layers))
    depth = {k: v for k, v in config.to_dict().items() if not k.startswith("draft_")}
    engine_args = {**DEFAULT_ENGINE_ARGS, **(engine_args or {})}
    heads = config.exit_heads.layers if config.exit_heads is not None else ()
    cands = cands or candidates(n, heads)
    with tqdm(total=len(cands), desc="tune-draft: acceptance", unit="draft") as bar:
        measure_acceptance(model_dir, depth, cands, prompts, k_max, max_tokens, engine_args, bar)
    ranked = rank(cands, n, k_max)
    trials = [(c, k) for _, c, k in ranked[:top]]
    with tqdm(total=len(trials) * rounds, desc="tune-draft: speed", unit="round") as bar:
        speed = measure_speed(model_dir, depth, trials, prompts, max_tokens, engine_args, rounds, bar)
    best = max(speed, key=lambda r: r["speedup"])
    return {
        "model": model_dir, "positions": n, "k_max": k_max, "max_tokens": max_tokens, "prompts": len(prompts),
        "acceptance": [{"draft": c.name, "positions": len(c.positions),
                        **{f"tokens_per_step_k{k}": round(c.expected_tokens(k), 4) for k in range(1, k_max + 1)}}
                       for c in cands],
        "predicted": [{"draft": c.name, "k": k, "tokens_per_cost": round(score, 4)} for score, c, k in ranked[:top]],
        "speed": speed,
        "best": best,
    }


def write_best(model_dir: str, best: dict) -> dict:
    """Put the chosen draft into the checkpoint's depth config (replacing any earlier draft)."""

    settings = {k: best[k] for k in ("draft_layers", "draft_schedule") if k in best}
    settings["draft_tokens"] = best["k"]
    drop = tuple(k for k in ("draft_layers", "draft_schedule") if k not in settings)
    update_depth_config(model_dir, settings, drop=drop)
    return settings


def format_table(result: dict) -> str:
    k_max = result["k_max"]
    lines = ["acceptance (expected tokens per verifier step, full-length drafts measured):",
             "  draft            positions  " + "  ".join(f"k={k}" for k in range(1, k_max + 1))]
    for a in result["acceptance"]:
        lines.append(f'  {a["draft"]:<16} {a["positions"]:>9}  '
                     + "  ".join(f'{a[f"tokens_per_step_k{k}"]:.2f}' for k in range(1, k_max + 1)))
    lines.append("speed (compiled, batch 1, against stock vLLM in alternating rounds):")
    lines.append("  draft            k  tokens/s  stock  speedup  acceptance")
    for r in result["speed"]:
        lines.append(f'  {r["draft"]:<16} {r["k"]}  {r["tokens_per_s"]:8.2f}  {r["stock_tokens_per_s"]:5.2f}  '
                     f'{r["speedup"]:.3f}x   {r["acceptance_rate"]:.3f}')
    b = result["best"]
    lines.append(f'best: {b["draft"]}, k={b["k"]}: {b["speedup"]:.3f}x stock')
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Expected tokens per verifier step against the draft's positions, one curve per k (prefix drafts;
    those with a trained exit head apart from those without), skip sets as squares; the measured
    speedups in the title."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    prefixes = [a for a in result["acceptance"] if a["draft"].startswith("first")]
    headed = [a for a in prefixes if a["draft"].endswith("+ head")]
    plain = [a for a in prefixes if a not in headed]
    skips = [a for a in result["acceptance"] if not a["draft"].startswith("first")]
    for k in range(1, result["k_max"] + 1):
        key = f"tokens_per_step_k{k}"
        color = None
        # prefixes drafting through a trained exit head (solid), through the final norm and LM head (open, dashed)
        for group, style, fill, tag in ((headed, "o-", None, "prefix + exit head"), (plain, "o--", "none", "prefix")):
            if group:
                line, = ax.plot([a["positions"] for a in group], [a[key] for a in group], style, color=color,
                                mfc=fill, label=f"{tag}, k={k}")
                color = line.get_color()
        ax.plot([a["positions"] for a in skips], [a[key] for a in skips], "s", color=color)
    ax.set_xlabel("draft positions (of %d)" % result["positions"])
    ax.set_ylabel("expected tokens per verifier step")
    title = "; ".join(f'{r["draft"]} k={r["k"]}: {r["speedup"]:.2f}x' for r in result["speed"])
    ax.set_title(textwrap.fill(title, 90), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
