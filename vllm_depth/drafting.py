"""Self-speculative decoding: drafts from the model's own layers, verified by the full model.

Turned on with vLLM's own switch, a custom proposer class::

    vllm serve MODEL --model-impl depth \\
        --hf-overrides '{"depth": {"draft_layers": 20}}' \\
        --speculative-config '{"model": "vllm_depth.SelfDraft", "num_speculative_tokens": 3}'

The draft runs the depth config's ``draft_layers`` (the first E positions,
LayerSkip) or ``draft_schedule`` (any positions in order, Draft & Verify /
SWIFT) of the *same* model object the verifier runs: no second copy of any
weight.  Each draft position attends with the verifier's own attention module
and paged cache, so a draft writes its K/V for the positions it runs into the
verifier's cache at the draft tokens' slots; those slots lie at or past the
request's computed tokens, and the verifier's next pass, which checks the
draft, overwrites every one of them before anything reads it.  Verification,
rejection sampling (lossless also at temperature > 0: a greedy draft is a
deterministic proposal) and the bookkeeping of accepted and rejected tokens are
vLLM's.

Adaptive length (SWIFT / DEL style, ``DraftPolicy``): each request drafts the
length that maximises expected tokens per unit of time, from its measured
acceptance, the measured cost of a draft forward and the measured cost of
verifying a draft token (decode steps that verified drafts against those that
verified none); when no length pays, it
only probes, first ``draft_backoff`` steps later, each time after twice the
wait before (up to 16x), so a poor draft costs little.  A new request starts
from the acceptance and backoff of the last request that finished, not from
the prior: a server's requests do not each pay for learning them again.
A draft also stops at the first token whose draft confidence is not above
``draft_threshold``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

PROPOSER = "vllm_depth.SelfDraft"


@dataclass
class DraftCounters:
    """What the proposer did, summed since the last reset (read by the bench over ``collective_rpc``)."""

    proposals: int = 0  # request-steps that drafted at least one token
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens the verifier accepted
    draft_forwards: int = 0  # draft forward passes (each one token per drafting request)
    seconds: float = 0.0  # time spent drafting
    plain_steps: int = 0  # steps that verified no draft, run as plain decode steps (vllm_compat.patch_plain_steps)
    # accepted tokens of each full-length draft: {accepted: proposals} (vllm-depth tune-draft)
    accepted_of_full: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = self.__dict__.copy()
        d["accepted_of_full"] = dict(self.accepted_of_full)
        d["acceptance_rate"] = round(self.accepted / self.drafted, 4) if self.drafted else None
        d["mean_accepted_length"] = round(self.accepted / self.proposals, 4) if self.proposals else None
        return d


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a step yields with a k-token draft whose tokens are each accepted with
    probability ``alpha`` (independently): 1 + alpha + ... + alpha^k."""
    return sum(alpha ** i for i in range(k + 1))


def best_length(alpha: float, cost: float, k_max: int) -> int:
    """The draft length that maximises tokens per unit of time, a draft forward costing
    ``cost`` verifier steps (0: drafting does not pay)."""
    return max(range(k_max + 1), key=lambda k: (expected_tokens(alpha, k) / (1 + k * cost), -k))


@dataclass
class _RequestState:
    proposed: int = 0  # draft tokens proposed at the last step
    hits: float = 0.0  # decayed counts of accepted draft tokens ...
    trials: float = 0.0  # ... and of draft tokens judged (accepted, or the first rejected)
    wait: int = 0  # steps left before the next probe
    backoff: int = 0  # the wait after the next probe (0: the policy's ``probe``)

    def alpha(self, prior: float) -> float:
        return (self.hits + prior) / (self.trials + 1.0)


@dataclass
class DraftPolicy:
    """Per-request adaptive draft length (SWIFT / DEL style), from measurements only.

    Each request keeps a decayed estimate of its per-token acceptance; the
    proposer measures what a draft forward costs against a verifier step, and
    what each draft token adds to the step that verifies it (steps that verify
    drafts against steps that verify none).  A request drafts the length that
    maximises expected tokens per unit of time; when that is 0 (drafting does
    not pay) it drafts a one-token probe ``probe`` steps later, to keep
    measuring, and each probe after which drafting still does not pay doubles
    the wait, up to ``max_backoff`` times ``probe`` (a draft that never pays
    then costs a probe every 256 steps by default, not every 16); a length
    that pays again resets it.  ``probe=0``: always draft the full length.
    A new request starts from the acceptance and backoff of the last request
    that finished having judged drafts (``start``).
    """

    k_max: int
    probe: int
    max_backoff: int = 16  # the wait between probes doubles up to this many times ``probe``
    decay: float = 0.8
    prior: float = 0.5
    cost: float = 0.0  # draft forward time / verifier step time (EMA)
    verify: float = 0.0  # extra step time per verified draft token / plain step time (EMA)
    plain: float = 0.0  # seconds of a step that verified no draft (EMA)
    states: dict[str, _RequestState] = field(default_factory=dict)
    # where a new request starts: the acceptance and backoff of the last request that finished
    # having judged drafts (None: the prior), so that each request does not learn them again
    start: _RequestState | None = None

    def state(self, req_id: str) -> _RequestState:
        st = self.states.get(req_id)
        if st is None:
            s = self.start
            st = _RequestState() if s is None else _RequestState(hits=s.hits, trials=s.trials, backoff=s.backoff)
            self.states[req_id] = st
        return st

    def observe(self, req_id: str, num_sampled: int) -> tuple[int, int]:
        """Record a step's outcome (``num_sampled`` tokens = accepted drafts + 1);
        returns (drafts accepted, drafts proposed) of the request's last draft."""
        st = self.state(req_id)
        if not st.proposed:
            return 0, 0
        proposed, st.proposed = st.proposed, 0
        accepted = max(0, min(proposed, num_sampled - 1))
        st.hits = self.decay * st.hits + accepted
        st.trials = self.decay * st.trials + accepted + (accepted < proposed)
        return accepted, proposed

    def length(self, req_id: str) -> int:
        """Draft tokens to propose for ``req_id`` this step (0: none)."""
        st = self.state(req_id)
        if self.probe == 0:
            return self.k_max
        k = best_length(st.alpha(self.prior), self.cost + self.verify, self.k_max)
        if k:
            st.wait = st.backoff = 0
            return k
        if st.wait > 0:
            st.wait -= 1
            return 0
        backoff = st.backoff or self.probe
        st.wait = backoff - 1
        st.backoff = min(2 * backoff, self.probe * self.max_backoff)
        return 1

    def measured(self, forward_seconds: float, step_seconds: float) -> None:
        if step_seconds > 0:
            c = forward_seconds / step_seconds
            self.cost = c if self.cost == 0.0 else 0.9 * self.cost + 0.1 * c

    def stepped(self, seconds: float, verified: int) -> None:
        """A verifier step took ``seconds`` and checked ``verified`` draft tokens in all."""
        if seconds <= 0:
            return
        if verified == 0:
            self.plain = seconds if self.plain == 0.0 else 0.9 * self.plain + 0.1 * seconds
        elif self.plain > 0:
            v = min(1.0, max(0.0, (seconds / self.plain - 1.0) / verified))
            self.verify = v if self.verify == 0.0 else 0.9 * self.verify + 0.1 * v

    def proposed(self, req_id: str, n: int) -> None:
        self.states[req_id].proposed = n

    def forget_except(self, live: set[str]) -> None:
        for req_id in [r for r in self.states if r not in live]:
            st = self.states.pop(req_id)
            if st.trials > 0:
                self.start = st


class SelfDraft:
    """vLLM 0.32 ``custom_class`` proposer (``speculative_config.model = "vllm_depth.SelfDraft"``).

    vLLM builds it with the engine config, hands it the loaded target model
    (``load_model``), and after each step asks it for the next drafts
    (``propose``); the runner is bound to it after the KV cache exists
    (``vllm_compat._patch_drafter_binding``), for the block tables and the
    attention metadata builders.
    """

    def __init__(self, vllm_config):
        from vllm_depth.vllm_compat import (
            patch_draft_states,
            patch_drafter_binding,
            patch_plain_steps,
            patch_rejection_sampler,
            patch_step_output,
        )

        self.vllm_config = vllm_config
        self.k = vllm_config.speculative_config.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.model = None
        self.runner = None
        self.draft: tuple[int, ...] = ()
        self.threshold = 0.0
        self.policy = DraftPolicy(self.k, 0)
        self._last_end = None  # when the last propose returned (the verifier step runs in between)
        self.counters = DraftCounters()
        self._kernels = self._head_kernels = None
        self.eager_draft: tuple[int, ...] | None = None  # tune-draft: try another draft, uncompiled
        self._verifier = None  # the step's final states at its sampled rows, and its spec metadata
        patch_draft_states()
        patch_drafter_binding()
        patch_plain_steps()
        patch_rejection_sampler()
        patch_step_output()

    def load_model(self, target_model) -> None:
        depth = getattr(getattr(target_model, "model", None), "depth", None)
        if depth is None or not hasattr(target_model, "draft_logits"):
            raise ValueError(f"speculative_config.model={PROPOSER!r} drafts from a depth model; "
                             "allowed: with model_impl='depth'")
        draft = depth.draft_positions()
        if draft is None:
            raise ValueError(f"speculative_config.model={PROPOSER!r}: the depth config names no draft; "
                             "allowed: depth.draft_layers or depth.draft_schedule")
        self.model, self.draft = target_model, draft
        self.threshold = depth.draft_threshold
        self.policy = DraftPolicy(self.k, depth.draft_backoff)

    def bind_runner(self, runner) -> None:
        self.runner = runner

    def take_verifier_states(self, sample_hidden_states, spec_decode_metadata) -> None:
        """The verifier step's final states at its sampled rows (``vllm_compat.patch_draft_states``)."""
        self._verifier = (sample_hidden_states, spec_decode_metadata)

    def _prev_states(self, sampled_token_ids, rows: list[int]) -> torch.Tensor:
        """Per drafting row, the verifier's final state at the position before its last sampled
        token: the state that sampled it (a request has 1 + its draft tokens' rows, in batch order)."""
        states, meta = self._verifier
        if meta is None:
            return states[rows]
        start, offset = [], 0
        for num_draft in meta.num_draft_tokens:
            start.append(offset)
            offset += num_draft + 1
        return states[[start[i] + len(sampled_token_ids[i]) - 1 for i in rows]]

    def _draft_positions(self) -> tuple[int, ...]:
        return self.eager_draft if self.eager_draft is not None else self.draft

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None) -> list[list[int]]:
        t0 = time.perf_counter()
        batch = self.runner.input_batch
        req_ids = batch.req_ids
        drafts: list[list[int]] = [[] for _ in sampled_token_ids]
        step_seconds = t0 - self._last_end if self._last_end is not None else 0.0
        rows, tokens, positions, lengths = [], [], [], []
        verified = 0  # draft tokens the step just run checked
        decode_only = True  # the step ran no prefill (its time says what verification costs)
        for i, sampled in enumerate(sampled_token_ids):
            if not sampled:  # a prefill chunk: no token sampled yet
                decode_only = False
                continue
            req_id = req_ids[i]
            decode_only &= req_id in self.policy.states  # a request's first token: its prefill ran
            accepted, proposed = self.policy.observe(req_id, len(sampled))
            verified += proposed
            self.counters.accepted += accepted
            if proposed == self.policy.k_max:
                full = self.counters.accepted_of_full
                full[accepted] = full.get(accepted, 0) + 1
            position = int(num_tokens_no_spec[i]) - 1  # the position of the token just sampled
            k = min(self.policy.length(req_id), self.max_model_len - 1 - position)
            if k <= 0:
                continue
            rows.append(i)
            tokens.append(sampled[-1])
            positions.append(position)
            lengths.append(k)
        self.policy.forget_except(set(req_ids))
        if decode_only:
            self.policy.stepped(step_seconds, verified)
        if rows:
            forwards = self._draft(rows, tokens, positions, lengths, drafts, sampled_token_ids)
            for i in rows:
                if drafts[i]:
                    self.policy.proposed(req_ids[i], len(drafts[i]))
                    self.counters.proposals += 1
                    self.counters.drafted += len(drafts[i])
            self.policy.measured((time.perf_counter() - t0) / forwards, step_seconds)
        self._last_end = time.perf_counter()
        self.counters.seconds += self._last_end - t0
        return drafts

    @torch.inference_mode()
    def _draft(self, rows: list[int], tokens: list[int], positions: list[int], lengths: list[int],
               drafts: list[list[int]], sampled_token_ids) -> int:
        """Up to ``lengths[j]`` greedy draft tokens for request row ``rows[j]``, stopping a row at low
        confidence; returns the draft forwards run.  A ``prev_state`` head reads, per row, the
        verifier's final state that sampled its last token (``_prev_states``); a later draft token
        reads the head's output for the one before (it has no final state: EAGLE's approximation of
        a feature by the draft's own)."""
        from vllm.forward_context import set_forward_context

        from vllm_depth.models.decoder import run_draft
        from vllm_depth.vllm_compat import NativeKernels, draft_attention

        if self._kernels is None:
            self._kernels = NativeKernels(self.model)
            # the head's own ops only: switching every layer's (about 120) would cost ~0.2 ms a draft token
            self._head_kernels = NativeKernels(torch.nn.ModuleList([self.model.model.exit_heads,
                                                                    self.model.model.norm]))
        active = torch.tensor(rows, dtype=torch.long)
        # the dtypes of the runner's inputs: the compiled draft is traced once (vLLM's warm-up), unguarded
        ids = torch.tensor(tokens, dtype=torch.int32)
        pos = torch.tensor(positions, dtype=torch.long)
        limit = torch.tensor(lengths)
        positions_run = self._draft_positions()
        layer = head_layer(positions_run)
        prev = self._prev_states(sampled_token_ids, rows) if self.model.draft_reads_prev_state(layer) else None
        for step in range(max(lengths)):
            if not positions_run:  # a head over the embedding: no layer runs, no K/V is written
                state = self.model.model.embed_input_ids(ids)
            else:
                metadata, slots = draft_attention(self.runner, active, pos)
                with set_forward_context(metadata, self.vllm_config, num_tokens=ids.numel(), slot_mapping=slots):
                    if self.eager_draft is None:
                        state = self.model.model.draft_stack(ids, pos)  # compiled, like the verifier's graph
                    else:
                        with self._kernels:
                            state = run_draft(self.model.model, ids, pos, self.eager_draft)
            with self._head_kernels:  # the head runs eagerly: vLLM's platform kernels
                logits, rest, columns, normed = self.model.draft_logits(state, layer, prev)
            self.counters.draft_forwards += 1
            token, confident = draft_choice(logits, rest, self.threshold, columns)
            go = confident & (limit > step)
            for r, t in zip(active[go].tolist(), token[go].tolist()):
                drafts[r].append(t)
            go &= limit > step + 1
            if not bool(go.any()):
                break
            active, ids, pos, limit = active[go], token[go].to(torch.int32), pos[go] + 1, limit[go]
            prev = None if prev is None else normed[go]
        return step + 1

    def configure(self, draft: tuple[int, ...] | None = None, k: int | None = None, probe: int | None = None,
                  threshold: float | None = None) -> None:
        """Change the draft in a running engine (``vllm-depth tune-draft``, over ``collective_rpc``).

        ``draft``: schedule positions run eagerly instead of the compiled draft
        (None: the compiled one); ``k``: draft length, at most the engine's
        ``num_speculative_tokens``; ``probe``: ``draft_backoff``.
        """
        self.eager_draft = tuple(draft) if draft is not None else None
        if threshold is not None:
            self.threshold = threshold
        k = self.policy.k_max if k is None else min(k, self.k)
        self.policy = DraftPolicy(k, self.policy.probe if probe is None else probe)

    def take_counters(self, reset: bool = False) -> dict:
        out = self.counters.as_dict()
        if reset:
            self.counters = DraftCounters()
        return out


def head_layer(draft: tuple[int, ...]) -> int | None:
    """A prefix draft's layer count (where an exit head may sit); None for a skip set."""
    return len(draft) if tuple(draft) == tuple(range(len(draft))) else None


DRAFT_KEYS = ("draft_layers", "draft_schedule", "draft_threshold", "draft_backoff")  # depth fields --self-spec sets
SELF_SPEC_KEYS = (*DRAFT_KEYS, "num_speculative_tokens")


def self_spec_engine_args(depth: dict | None, spec: dict) -> tuple[dict, dict]:
    """The depth config and ``speculative_config`` of a self-speculative engine.

    ``depth`` is the depth object to start from (the checkpoint's own, or
    ``--depth``); ``spec`` overrides its draft (``draft_layers`` or
    ``draft_schedule``, ``draft_threshold``, ``draft_backoff``) and its
    speculation length (``num_speculative_tokens``, stored as ``draft_tokens``).
    Raises ValueError naming the key for anything else.
    """
    unknown = sorted(set(spec) - set(SELF_SPEC_KEYS))
    if unknown:
        raise ValueError(f"--self-spec: unknown key(s) {unknown}; allowed: {list(SELF_SPEC_KEYS)}")
    out = dict(depth or {})
    for key in ("draft_layers", "draft_schedule"):
        if key in spec:
            out.pop("draft_schedule" if key == "draft_layers" else "draft_layers", None)
    for key in DRAFT_KEYS:
        if key in spec:
            out[key] = spec[key]
    if "num_speculative_tokens" in spec:
        out["draft_tokens"] = spec["num_speculative_tokens"]
    if "draft_layers" not in out and "draft_schedule" not in out:
        raise ValueError("--self-spec: the checkpoint's depth config names no draft; allowed: "
                         "--self-spec '{\"draft_layers\": E, \"num_speculative_tokens\": K}' "
                         "(or draft_schedule), or run vllm-depth tune-draft first")
    from vllm_depth.config import DRAFT_DEFAULTS

    k = out.get("draft_tokens", DRAFT_DEFAULTS["draft_tokens"])
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"--self-spec: num_speculative_tokens {k!r} is not an int >= 1")
    return out, {"model": PROPOSER, "num_speculative_tokens": k}


def draft_choice(logits: torch.Tensor, rest: torch.Tensor | None, threshold: float,
                 ids: torch.Tensor | None = None):
    """Greedy draft tokens and whether each is confident: softmax max probability (a reduced
    head's "other" mass counted) strictly above ``threshold``.  ``ids``: the token of each column
    (a reduced vocabulary's logits), None when the columns are the vocabulary."""
    logits = logits.float()
    column = logits.argmax(dim=-1)
    token = column if ids is None else ids[column]
    if threshold <= 0.0:
        return token, torch.ones_like(token, dtype=torch.bool)
    top = logits.gather(-1, column[:, None])[:, 0]
    z = torch.logsumexp(logits, dim=-1)
    if rest is not None:
        z = torch.logaddexp(z, rest.float().reshape(-1))
    return token, torch.exp(top - z) > threshold
