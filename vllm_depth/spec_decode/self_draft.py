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

With the attention draft head (``models.draft_head``, ``exit_heads.attention``) the draft runs none
of the model's layers: after each step the head first runs over every row of the step whose next
token is known (the verifier's final states there), which writes the head's own K/V at those
positions, then drafts from the last one, one head forward per further token.  Its K/V past the
accepted tokens is written again, from the verifier's states, after the next step.

How much each request drafts is chosen for the whole batch each step (``spec_decode.policy``): as
much as pays at the measured cost of verifying and drafting at this batch size, so that under load
the self-draft drafts less, then not at all.  A draft also stops at the first token whose draft
confidence is not above ``draft_threshold``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from vllm.forward_context import set_forward_context

from vllm_depth.compat.attention import draft_attention
from vllm_depth.compat.runner import request_ids, seeded_sampling
from vllm_depth.config import PROPOSER, require_draft
from vllm_depth.spec_decode.policy import DraftCounters, DraftPolicy


class SelfDraft:
    """vLLM 0.32 ``custom_class`` proposer (``speculative_config.model = "vllm_depth.SelfDraft"``).

    vLLM builds it with the engine config, hands it the loaded target model
    (``load_model``), and after each step asks it for the next drafts
    (``propose``).  What it can do beyond a plain proposer, which the runner's patches
    (``patches.worker.model_runner``) look for: ``bind_runner`` (the runner, after the KV cache
    exists: block tables and attention metadata builders), ``take_verifier_states`` (the
    verifier's final states, for draft heads that read them), ``plain_step`` (a step that verifies
    no draft runs as a plain decode step) and ``drafts_in_step_output``.  The model is reached only
    through its ``drafting`` object (``models.drafting.Drafting``: draft forwards and their logits).
    """

    drafts_in_step_output = True

    def __init__(self, vllm_config):
        self.vllm_config = vllm_config
        self.k = vllm_config.speculative_config.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.drafts = None  # the target model's ``drafting`` (models.drafting.Drafting)
        self.runner = None
        self.draft: tuple[int, ...] = ()
        self.threshold = 0.0
        self.policy = DraftPolicy(self.k, 0)
        self._last_end = None  # when the last propose returned (the verifier step runs in between)
        self._last_ids: set[str] = set()  # the requests of the last propose
        self._gaps: set[str] = set()  # requests the attention head's pass skipped in some step (``_pass_pays``)
        self.counters = DraftCounters()
        self.eager_draft: tuple[int, ...] | None = None  # tune-draft: try another draft, uncompiled
        self.attends = False  # the attention draft head drafts (``_draft_attending``)
        # the step's final states at its sampled rows, its spec metadata, the final states of all its
        # rows and its common attention metadata
        self._verifier = None

    def load_model(self, target_model) -> None:
        depth = getattr(target_model, "depth_config", None)
        if depth is None or getattr(target_model, "drafting", None) is None:
            raise ValueError(f"speculative_config.model={PROPOSER!r} drafts from a depth model; "
                             "allowed: with model_impl='depth'")
        self.drafts, self.draft = target_model.drafting, require_draft(depth)
        self.threshold = depth.draft_threshold
        self.attends = self.drafts.attends
        self.policy = DraftPolicy(self.k, depth.draft_backoff)

    def bind_runner(self, runner) -> None:
        self.runner = runner

    def plain_step(self) -> None:
        """The runner runs a step that verifies no draft as a plain decode step."""
        self.counters.plain_steps += 1

    def take_verifier_states(self, sample_hidden_states, spec_decode_metadata, hidden_states=None,
                             common_attn_metadata=None) -> None:
        """The verifier step's final states at its sampled rows, and at all its rows."""
        self._verifier = (sample_hidden_states, spec_decode_metadata, hidden_states, common_attn_metadata)

    def _prev_states(self, sampled_token_ids, rows: list[int]) -> torch.Tensor:
        """Per drafting row, the verifier's final state at the position before its last sampled
        token: the state that sampled it (a request has 1 + its draft tokens' rows, in batch order)."""
        states, meta = self._verifier[:2]
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
        req_ids = request_ids(self.runner)
        drafts: list[list[int]] = [[] for _ in sampled_token_ids]
        self._time_step(t0, req_ids)
        candidates = []  # (row, request id, position of its last sampled token)
        for i, sampled in enumerate(sampled_token_ids):
            if not sampled:  # a prefill chunk: no token sampled yet
                continue
            self._observe(req_ids[i], len(sampled))
            position = int(num_tokens_no_spec[i]) - 1  # the position of the token just sampled
            if position < self.max_model_len - 1:
                candidates.append((i, req_ids[i], position))
        self.policy.forget_except(set(req_ids))
        self._gaps &= set(req_ids)
        candidates = [c for c in candidates if c[1] not in self._gaps]
        lengths = self._lengths([r for _, r, _ in candidates], len(req_ids))
        rows, tokens, positions, ks = [], [], [], []
        for (i, req_id, position), k in zip(candidates, lengths):
            k = min(k, self.max_model_len - 1 - position)
            if k > 0:
                rows.append(i)
                tokens.append(sampled_token_ids[i][-1])
                positions.append(position)
                ks.append(k)
        if self.attends:
            if self._pass_pays(rows, req_ids):
                normed = self._attend_step(rows, num_tokens_no_spec, token_ids_cpu)
            else:  # nothing drafts, and nothing would pay: no pass, and these requests draft no more
                self._gaps.update(req_ids)
                normed = None
            t1 = time.perf_counter()
            if normed is not None and rows:
                self._draft_attending(normed, rows, positions, ks, drafts)
        else:
            t1 = time.perf_counter()
            if rows:
                self._draft(rows, tokens, positions, ks, drafts, sampled_token_ids)
        self.policy.timed_drafts(time.perf_counter() - t1, sum(map(len, drafts)))
        for i, k in zip(rows, ks):
            if drafts[i]:
                self.policy.proposed(req_ids[i], len(drafts[i]))
                self.counters.proposals += 1
                self.counters.drafted += len(drafts[i])
        self._last_end = time.perf_counter()
        self.counters.seconds += self._last_end - t0
        return drafts

    def _pass_pays(self, rows: list[int], req_ids: list[str]) -> bool:
        """Whether the attention head's pass over the step's rows runs: it writes the head's K/V, which
        later drafts attend to, so it runs in every step (drafting or not) but where no request drafts,
        no draft token could pay at this load (``DraftPolicy.nothing_pays``) and no seeded request is in
        the batch (whose drafts must not depend on the load).  Requests whose rows a step skips have a
        gap in the head's K/V: they draft no more (``_gaps``); requests that arrive later do."""
        if rows or not self.policy.nothing_pays:
            return True
        return any(seeded_sampling(self.runner, r) for r in req_ids)

    def _lengths(self, req_ids: list[str], rows: int) -> list[int]:
        """The draft length of each request: the policy's plan for the batch, but the full length for a
        seeded sampled request, whose random draws in verification follow its drafts: so that its
        output repeats whatever else runs beside it."""
        fixed = [seeded_sampling(self.runner, r) for r in req_ids]
        planned = iter(self.policy.plan([r for r, f in zip(req_ids, fixed) if not f], rows=rows))
        return [self.policy.k_max if f else next(planned) for f in fixed]

    def _time_step(self, t0: float, req_ids: list[str]) -> None:
        """The verifier step just run, from the end of the last ``propose`` to now, with its rows: timed
        only when a request of it was in the step before (otherwise the engine may have been idle)."""
        common = self._verifier[3] if self._verifier is not None else None
        live = set(req_ids)
        if self._last_end is not None and common is not None and live & self._last_ids:
            self.policy.timed_step(int(common.query_start_loc_cpu[-1]), t0 - self._last_end)
        self._last_ids = live

    def _observe(self, req_id: str, num_sampled: int) -> None:
        """What the verifier made of the request's last draft, into the policy and the counters."""
        accepted, proposed = self.policy.observe(req_id, num_sampled)
        self.counters.accepted += accepted
        if proposed:
            self.counters.judged += 1
            self.counters.first_accepted += accepted > 0
        if proposed == self.policy.k_max:
            full = self.counters.accepted_of_full
            full[accepted] = full.get(accepted, 0) + 1

    @torch.inference_mode()
    def _draft(self, rows: list[int], tokens: list[int], positions: list[int], lengths: list[int],
               drafts: list[list[int]], sampled_token_ids) -> None:
        """Up to ``lengths[j]`` greedy draft tokens for request row ``rows[j]``, stopping a row at low
        confidence.  A ``prev_state`` head reads, per row, the
        verifier's final state that sampled its last token (``_prev_states``); a later draft token
        reads the head's output for the one before (it has no final state: EAGLE's approximation of
        a feature by the draft's own)."""
        active = torch.tensor(rows, dtype=torch.long)
        # the dtypes of the runner's inputs: the compiled draft is traced once (vLLM's warm-up), unguarded
        ids = torch.tensor(tokens, dtype=torch.int32)
        pos = torch.tensor(positions, dtype=torch.long)
        limit = torch.tensor(lengths)
        positions_run = self._draft_positions()
        layer = head_layer(positions_run)
        prev = self._prev_states(sampled_token_ids, rows) if self.drafts.reads_prev_state(layer) else None
        for step in range(max(lengths)):
            if not positions_run:  # a head over the embedding: no layer runs, no K/V is written
                state = self.drafts.forward(ids, pos, ())
            else:
                metadata, slots = draft_attention(self.runner, active, pos)
                with set_forward_context(metadata, self.vllm_config, num_tokens=ids.numel(), slot_mapping=slots):
                    state = self.drafts.forward(ids, pos, self.eager_draft)
            out = self.drafts.logits(state, layer, prev)
            token, go = self._choose(out, active, limit, step, drafts)
            if not bool(go.any()):
                break
            active, ids, pos, limit = active[go], token[go].to(torch.int32), pos[go] + 1, limit[go]
            prev = None if prev is None else out.normed[go]

    @torch.inference_mode()
    def _draft_attending(self, normed: torch.Tensor, rows: list[int], positions: list[int], lengths: list[int],
                         drafts: list[list[int]]) -> None:
        """The attention draft head's drafts: ``normed`` is the head's pass (``_attend_step``) at each
        drafting row's last row, which gives its first draft token; each further token is one head
        forward over one row, reading the head's own output in place of a final state."""
        device = self.runner.device
        active, limit = torch.tensor(rows, dtype=torch.long), torch.tensor(lengths)
        pos = torch.tensor(positions, dtype=torch.long)  # the head's row for a first draft: its last sampled token's
        for step in range(max(lengths)):
            token, go = self._choose(self.drafts.head_logits(normed), active, limit, step, drafts)
            if not bool(go.any()):
                break
            active, pos, limit, prev = active[go], pos[go], limit[go], normed[go.to(normed.device)]
            metadata, slots = draft_attention(self.runner, active, pos)
            with set_forward_context(metadata, self.vllm_config, num_tokens=active.numel(), slot_mapping=slots):
                normed = self.drafts.attend(token[go].to(device, torch.int32), pos.to(device), prev)
            pos = pos + 1

    @torch.inference_mode()
    def _attend_step(self, rows: list[int], num_tokens_no_spec, token_ids_cpu) -> torch.Tensor | None:
        """The head over every row of the step whose next token is known (the head at position ``p``
        reads token ``p + 1`` and the verifier's final state at ``p``), for every request, drafting or
        not, but those with a gap in the head's K/V: it writes the head's K/V there.  Returns its output
        at each drafting row's last such row (None: no row ran)."""
        _, _, hidden, common = self._verifier
        qsl = common.query_start_loc_cpu.tolist()
        step_positions = common.positions[: qsl[-1]].cpu()
        req_ids = request_ids(self.runner)
        reqs, counts, starts = [], [], []
        for i in range(len(qsl) - 1):
            if qsl[i + 1] == qsl[i] or req_ids[i] in self._gaps:
                continue
            first = int(step_positions[qsl[i]])
            m = min(qsl[i + 1] - qsl[i], int(num_tokens_no_spec[i]) - 1 - first)  # rows whose next token is known
            if m > 0:
                reqs.append(i)
                counts.append(m)
                starts.append(first)
        if not reqs:
            return None
        step_rows = torch.cat([torch.arange(qsl[i], qsl[i] + m) for i, m in zip(reqs, counts)])
        pos = torch.cat([torch.arange(p, p + m) for p, m in zip(starts, counts)])
        ids = torch.from_numpy(np.concatenate([token_ids_cpu[i, p + 1 : p + 1 + m]
                                               for i, p, m in zip(reqs, starts, counts)])).to(torch.int32)
        metadata, slots = draft_attention(self.runner, torch.tensor(reqs), pos, torch.tensor(counts))
        device = self.runner.device
        with set_forward_context(metadata, self.vllm_config, num_tokens=ids.numel(), slot_mapping=slots):
            normed = self.drafts.attend(ids.to(device), pos.to(device), hidden[step_rows.to(hidden.device)])
        last = dict(zip(reqs, (torch.tensor(counts).cumsum(0) - 1).tolist()))
        return normed[torch.tensor([last[r] for r in rows], dtype=torch.long, device=normed.device)]

    def _choose(self, out, active: torch.Tensor, limit: torch.Tensor, step: int, drafts: list[list[int]]):
        """The greedy draft token of each active row from its head's ``DraftLogits``, appended to the
        row's draft where confident and within its length; returns the tokens (on the CPU) and which
        rows draft another."""
        self.counters.draft_forwards += 1
        token, confident = draft_choice(out.logits, out.rest, self.threshold, out.columns)
        token, confident = token.cpu(), confident.cpu()
        go = confident & (limit > step)
        for r, t in zip(active[go].tolist(), token[go].tolist()):
            drafts[r].append(t)
        return token, go & (limit > step + 1)

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
