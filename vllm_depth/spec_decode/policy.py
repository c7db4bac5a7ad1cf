"""How long the self-draft drafts, per request, from measurements only (SWIFT / DEL style), and what it did.

Each request drafts the length that maximises expected tokens per unit of time, from its measured
acceptance, the measured cost of a draft forward and the measured cost of verifying a draft token
(decode steps that verified drafts against those that verified none); when no length pays, it only
probes, first ``draft_backoff`` steps later, each time after twice the wait before (up to 16x), so a
poor draft costs little.  A new request starts from the acceptance and backoff of the last request
that finished, not from the prior: a server's requests do not each pay for learning them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def ratio(part: float, whole: float) -> float | None:
    """``part / whole`` to 4 places, None when ``whole`` is 0 (nothing to rate)."""
    return round(part / whole, 4) if whole else None


@dataclass
class DraftCounters:
    """What the proposer did, summed since the last reset (read by the bench over ``collective_rpc``)."""

    proposals: int = 0  # request-steps that drafted at least one token
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens the verifier accepted
    judged: int = 0  # drafts the verifier judged ...
    first_accepted: int = 0  # ... and those whose first token it accepted (a one-token draft's acceptance)
    draft_forwards: int = 0  # draft forward passes (each one token per drafting request)
    seconds: float = 0.0  # time spent drafting
    plain_steps: int = 0  # steps that verified no draft, run as plain decode steps (patches.worker.model_runner)
    # accepted tokens of each full-length draft: {accepted: proposals} (vllm-depth tune-draft)
    accepted_of_full: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = self.__dict__.copy()
        d["accepted_of_full"] = dict(self.accepted_of_full)
        d["acceptance_rate"] = ratio(self.accepted, self.drafted)
        d["mean_accepted_length"] = ratio(self.accepted, self.proposals)
        d["first_token_acceptance"] = ratio(self.first_accepted, self.judged)
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
    # decayed counts of accepted draft tokens and of draft tokens judged (accepted, or the first
    # rejected), from one pseudo-trial at the prior, which fades with them: a draft that is never
    # accepted has its estimate fall towards 0
    hits: float = 0.0
    trials: float = 0.0
    wait: int = 0  # steps left before the next probe
    backoff: int = 0  # the wait after the next probe (0: the policy's ``probe``)
    judged: bool = False  # the verifier has judged a draft of this request

    def alpha(self) -> float:
        return self.hits / self.trials if self.trials > 0 else 0.0


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
            st = (_RequestState(hits=self.prior, trials=1.0) if s is None
                  else _RequestState(hits=s.hits, trials=s.trials, backoff=s.backoff))
            self.states[req_id] = st
        return st

    def observe(self, req_id: str, num_sampled: int) -> tuple[int, int]:
        """Record a step's outcome (``num_sampled`` tokens = accepted drafts + 1);
        returns (drafts accepted, drafts proposed) of the request's last draft."""
        st = self.state(req_id)
        if not st.proposed:
            return 0, 0
        proposed, st.proposed, st.judged = st.proposed, 0, True
        accepted = max(0, min(proposed, num_sampled - 1))
        st.hits = self.decay * st.hits + accepted
        st.trials = self.decay * st.trials + accepted + (accepted < proposed)
        return accepted, proposed

    def length(self, req_id: str) -> int:
        """Draft tokens to propose for ``req_id`` this step (0: none)."""
        st = self.state(req_id)
        if self.probe == 0:
            return self.k_max
        k = best_length(st.alpha(), self.cost + self.verify, self.k_max)
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
            if st.judged:
                self.start = st
