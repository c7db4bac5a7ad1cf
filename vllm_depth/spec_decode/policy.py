"""How much the self-draft drafts each step, from measurements only, and what it did.

Each request keeps its own estimate of how often its draft tokens are accepted, starting from a
fixed prior: what one request's drafts did never changes how another request drafts.  Each step the
whole batch's draft tokens are chosen together (``DraftPolicy.plan``): the set of draft tokens that
maximises the tokens the next step is expected to yield per second, from the measured time of a
verifier step as a function of the rows it runs (``StepTimes``) and the measured cost of a draft
token.  At batch 1 a verifier row is almost free on a memory-bound machine, so drafts pay; as the
batch grows each verified row costs more, and the plan drafts less, then not at all.  A request
whose drafts the plan leaves out probes with one draft token ``draft_backoff`` steps later, then
after doubling waits (up to 16x), so that its estimate stays current at little cost.
"""

from __future__ import annotations

import bisect
import heapq
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


# the row counts that bucket a verifier step's time: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ...
_EDGES = sorted({1, 2, 3} | {int(m * 2 ** e) for e in range(1, 14) for m in (1, 1.5)})


@dataclass
class StepTimes:
    """The seconds of a verifier step as a function of the rows it runs: an EMA per bucket of row
    counts (``_EDGES``), with its mean row count, interpolated linearly between measured buckets.
    Steps of every kind fill it (plain decode steps, steps that verify drafts, prefill chunks)."""

    decay: float = 0.9
    rows: dict[int, float] = field(default_factory=dict)  # bucket -> mean rows (EMA)
    seconds: dict[int, float] = field(default_factory=dict)  # bucket -> seconds (EMA)

    def add(self, rows: int, seconds: float) -> None:
        b = bisect.bisect_right(_EDGES, rows) - 1
        if b not in self.seconds:
            self.rows[b], self.seconds[b] = float(rows), seconds
        else:
            d = self.decay
            self.rows[b] = d * self.rows[b] + (1 - d) * rows
            self.seconds[b] = d * self.seconds[b] + (1 - d) * seconds

    def predict(self, rows: float) -> float | None:
        """The seconds of a step of ``rows`` rows (None: nothing measured yet), from the buckets made
        non-decreasing in rows (``monotone``; a step with more rows never costs less); past the
        measured range, the slope of the two nearest points."""
        points = monotone(sorted((self.rows[b], self.seconds[b]) for b in self.seconds))
        if not points:
            return None
        if len(points) == 1:
            return points[0][1]
        xs = [x for x, _ in points]
        i = min(max(bisect.bisect_left(xs, rows), 1), len(points) - 1)
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
        return max(0.0, y0 + slope * (rows - x0))


def monotone(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The least-squares non-decreasing fit of ``(x, y)`` points sorted by x (pool adjacent
    violators): a run of points that decreases is replaced by its mean, at each point's x."""
    blocks: list[list[float]] = []  # [sum of y, count]
    for _, y in points:
        blocks.append([y, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            y_sum, n = blocks.pop()
            blocks[-1][0] += y_sum
            blocks[-1][1] += n
    ys = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    return [(x, y) for (x, _), y in zip(points, ys)]


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

    def alpha(self) -> float:
        return self.hits / self.trials if self.trials > 0 else 0.0


@dataclass
class DraftPolicy:
    """The draft length of every request of a step, chosen for the batch as a whole.

    ``plan`` takes the requests that may draft this step and returns their lengths: with ``probe``
    0, always ``k_max``; otherwise the draft tokens, taken in order of their expected yield
    (``alpha ** j`` for a request's j-th token), that maximise expected tokens per second of the
    next step: its verifier time at the rows it would run (``StepTimes``) plus ``draft_cost``
    seconds per draft token.  Until a step has been timed, every request drafts ``k_max`` (the
    first timings come from those steps).  A request the plan leaves out probes (see the module)
    while a draft token that is surely accepted would pay; under a load where none would, no
    request probes.
    """

    k_max: int
    probe: int
    max_backoff: int = 16  # the wait between probes doubles up to this many times ``probe``
    decay: float = 0.8
    prior: float = 0.5
    draft_cost: float = 0.0  # seconds per draft token (EMA over the steps that drafted)
    times: StepTimes = field(default_factory=StepTimes)
    states: dict[str, _RequestState] = field(default_factory=dict)
    # the last plan found that no draft token could pay, not even one surely accepted (heavy load)
    nothing_pays: bool = False

    def state(self, req_id: str) -> _RequestState:
        st = self.states.get(req_id)
        if st is None:
            st = self.states[req_id] = _RequestState(hits=self.prior, trials=1.0)
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

    def plan(self, req_ids: list[str], rows: int | None = None) -> list[int]:
        """The draft length of each request in ``req_ids`` (0: none).  ``rows``: the rows the next
        step runs without drafts (default: one per request)."""
        n = len(req_ids)
        self.nothing_pays = False
        if self.probe == 0:
            return [self.k_max] * n
        base = n if rows is None else rows
        t0 = self.times.predict(base)
        if t0 is None:
            return [self.k_max] * n
        lengths, bar = self._best(req_ids, base, t0)
        self.nothing_pays = bar >= 1.0 and not any(lengths)
        out = []
        for r, k in zip(req_ids, lengths):
            st = self.states[r]
            if k:  # drafts of its own: its probes start over from ``probe``
                st.wait = st.backoff = 0
            # a probe only where a better estimate could change the plan (a draft token of yield 1 would pay)
            out.append(k if k or bar >= 1.0 else self._probe(st))
        return out

    def _best(self, req_ids: list[str], base: int, t0: float) -> tuple[list[int], float]:
        """The lengths whose draft tokens, taken by expected yield, give the most tokens per second, and
        the yield a further draft token would need to pay for itself."""
        alphas = [self.state(r).alpha() for r in req_ids]
        heap = [(-a, i, 1) for i, a in enumerate(alphas) if a > 0]  # (minus yield, request, its j-th token)
        heapq.heapify(heap)

        def seconds(added: int) -> float:
            return self.times.predict(base + added) + self.draft_cost * added

        tokens, added, best_added = float(len(req_ids)), 0, 0
        best = tokens / t0 if t0 > 0 else 0.0
        order = []
        while heap and added < len(req_ids) * self.k_max:
            gain, i, j = heapq.heappop(heap)
            order.append(i)
            tokens -= gain
            added += 1
            if seconds(added) > 0 and tokens / seconds(added) > best:
                best, best_added = tokens / seconds(added), added
            if j < self.k_max:
                heapq.heappush(heap, (gain * alphas[i], i, j + 1))
        lengths = [0] * len(req_ids)
        for i in order[:best_added]:
            lengths[i] += 1
        # (tokens + y) / (t + dt) > tokens / t  <=>  y > (tokens / t) * dt
        return lengths, best * (seconds(best_added + 1) - seconds(best_added))

    def _probe(self, st: _RequestState) -> int:
        """A request the plan leaves out: one draft token when its wait is over, then a longer wait."""
        if st.wait > 0:
            st.wait -= 1
            return 0
        backoff = st.backoff or self.probe
        st.wait = backoff - 1
        st.backoff = min(2 * backoff, self.probe * self.max_backoff)
        return 1

    def timed_step(self, rows: int, seconds: float) -> None:
        """A verifier step of ``rows`` rows took ``seconds``."""
        if seconds > 0 and rows > 0:
            self.times.add(rows, seconds)

    def timed_drafts(self, seconds: float, tokens: int) -> None:
        """Drafting ``tokens`` draft tokens took ``seconds``."""
        if tokens > 0:
            c = seconds / tokens
            self.draft_cost = c if self.draft_cost == 0.0 else 0.9 * self.draft_cost + 0.1 * c

    def proposed(self, req_id: str, n: int) -> None:
        self.states[req_id].proposed = n

    def forget_except(self, live: set[str]) -> None:
        for req_id in [r for r in self.states if r not in live]:
            del self.states[req_id]
