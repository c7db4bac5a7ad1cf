"""The depth-aware decoder: vLLM's layers, run along a layer schedule.

Physical layers are vLLM's own decoder-layer modules, built (and loaded) only
when the schedule uses them.  Each logical position has its own ``Attention``
module, so a physical layer repeated at several positions has one set of
weights and one KV cache per position.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.distributed.utils import get_pp_indices
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    PPMissingLayer,
    make_empty_intermediate_tensors_factory,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors

from vllm_depth.config import check_parallel, depth_config_of
from vllm_depth.exits import ExitCounters, ExitRun, ExitStep, plan_step
from vllm_depth.kv_fill import KVPropagator
from vllm_depth.models.exit_head import ExitHead, ExitVocab
from vllm_depth.vllm_compat import check_exit_backend, current_query_start_loc, write_kv
from vllm_depth.models.families import family_of
from vllm_depth.schedule import LayerSchedule


class LowRankDelta(nn.Module):
    """A position's rank-R correction ``x @ B.T @ A.T`` to each projection of a shared layer.

    Relaxed Recursive Transformers: positions that share one weight set keep a
    small delta each, fitted (by ``vllm-depth compress --relax-rank``) to the
    weights that position had originally.  Parameters ``<proj>_a`` [out, R] and
    ``<proj>_b`` [R, in] for q, k, v, o, gate, up, down.
    """

    def __init__(self, self_attn: nn.Module, hidden: int, intermediate: int, rank: int, dtype):
        super().__init__()
        q, kv = self_attn.q_size, self_attn.kv_size
        shapes = {"q": (q, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, q),
                  "gate": (intermediate, hidden), "up": (intermediate, hidden), "down": (hidden, intermediate)}
        for name, (out_f, in_f) in shapes.items():
            self.register_parameter(f"{name}_a", nn.Parameter(torch.zeros(out_f, rank, dtype=dtype), requires_grad=False))
            self.register_parameter(f"{name}_b", nn.Parameter(torch.zeros(rank, in_f, dtype=dtype), requires_grad=False))

    def apply(self, names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x @ getattr(self, f"{n}_b").t()) @ getattr(self, f"{n}_a").t() for n in names], dim=-1)


def project_qkv(self_attn: nn.Module, positions, hidden_states, delta=None):
    """q, k, v of vLLM's ``LlamaAttention`` / ``Qwen3Attention`` (q/k norms, rotary), plus the delta."""
    qkv, _ = self_attn.qkv_proj(hidden_states)
    if delta is not None:
        qkv = qkv + delta.apply(("q", "k", "v"), hidden_states)
    q, k, v = qkv.split([self_attn.q_size, self_attn.kv_size, self_attn.kv_size], dim=-1)
    if hasattr(self_attn, "q_norm"):
        hd = self_attn.head_dim
        q = self_attn.q_norm(q.view(*q.shape[:-1], q.shape[-1] // hd, hd)).view(q.shape)
        k = self_attn.k_norm(k.view(*k.shape[:-1], k.shape[-1] // hd, hd)).view(k.shape)
    q, k = self_attn.rotary_emb(positions, q, k)
    return q, k, v


def mlp_forward(mlp: nn.Module, x: torch.Tensor, delta: LowRankDelta | None) -> torch.Tensor:
    """vLLM's ``LlamaMLP.forward`` plus the position's delta (vLLM's own when there is none)."""
    if delta is None:
        return mlp(x)
    gate_up, _ = mlp.gate_up_proj(x)
    h = mlp.act_fn(gate_up + delta.apply(("gate", "up"), x))
    out, _ = mlp.down_proj(h)
    return out + delta.apply(("down",), h)


def pre_attention(layer: nn.Module, positions, hidden_states, residual, delta=None):
    """The first half of vLLM's decoder layer: input norm (adding the residual), q, k, v.

    Returns q, k, v and the residual stream (the state entering the layer).
    """
    if residual is None:
        residual = hidden_states
        hidden_states = layer.input_layernorm(hidden_states)
    else:
        hidden_states, residual = layer.input_layernorm(hidden_states, residual)
    q, k, v = project_qkv(layer.self_attn, positions, hidden_states, delta)
    return q, k, v, residual


def post_attention(layer: nn.Module, attn: Attention, q, k, v, residual, delta=None):
    """The second half: attention (the position's module, so its KV cache), o_proj, MLP."""
    a = attn(q, k, v)
    out, _ = layer.self_attn.o_proj(a)
    if delta is not None:
        out = out + delta.apply(("o",), a)
    hidden_states, residual = layer.post_attention_layernorm(out, residual)
    return mlp_forward(layer.mlp, hidden_states, delta), residual


def layer_forward(layer: nn.Module, attn: Attention, positions, hidden_states, residual, delta=None):
    """vLLM's decoder-layer forward (``LlamaDecoderLayer`` / ``Qwen3DecoderLayer``), with the
    position's attention module (and delta)."""
    q, k, v, residual = pre_attention(layer, positions, hidden_states, residual, delta)
    return post_attention(layer, attn, q, k, v, residual, delta)


def _repeat_attention(template: Attention, vllm_config: VllmConfig, prefix: str) -> Attention:
    """A fresh attention module (own KV cache) shaped like ``template``."""
    return Attention(
        template.num_heads,
        template.head_size,
        template.impl.scale,
        num_kv_heads=template.num_kv_heads,
        cache_config=vllm_config.cache_config,
        quant_config=vllm_config.quant_config,
        per_layer_sliding_window=template.sliding_window,
        attn_type=template.attn_type,
        prefix=prefix,
    )


def run_positions(decoder, start: int, end: int, positions, hidden, residual):
    """Schedule positions ``start..end-1`` of ``decoder`` on the given rows."""
    for i in range(start, end):
        layer = decoder.layers[decoder.schedule.physical[i]]
        hidden, residual = layer_forward(layer, decoder.position_attn[i], positions, hidden, residual,
                                         decoder.position_delta[i])
    return hidden, residual


class DepthSegment(nn.Module):
    """The stretch between two exit points, compiled as one graph.

    With exit layers, a step where some token may exit runs as a chain of
    segments, each its own vLLM ``support_torch_compile`` graph: compiled code
    between the (eager) exit checks, on fewer rows after each.  Steps where no
    token can exit run the decoder's single full-depth graph, exactly as
    without exit layers.

    A segment is cut where vLLM's piecewise compilation already cuts the full
    graph, at an attention op: segment k runs the attention and the rest of
    position ``start`` (the exit point ``L_k``; segment 0 starts from the
    embedding instead), every position up to the next exit point ``end``, and
    the first half of position ``end`` (input norm, q, k, v).  On a later
    pipeline stage, segment 0 starts from the state the previous stage sent
    (``hidden`` in the ``v`` slot, and ``residual``).  So each compiled
    piece is the full graph's own piece (the same fusions, the same numbers),
    the state after ``end`` positions is the residual it returns, and the K/V
    of position ``end`` is exact for every row, exited or not.  The last
    segment ends with the final norm; on an earlier pipeline stage, with the
    state it sends on (``hidden, residual``).  The layers belong to the decoder
    (``_owner`` is a tuple, not a submodule: one weight set).
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", owner=None, start=0, end=0, last=False,
                 stage_end=False):
        super().__init__()
        self._owner = (owner,)
        self.start, self.end, self.last, self.stage_end = start, end, last, stage_end

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, q: torch.Tensor | None,
                k: torch.Tensor | None, v: torch.Tensor | None, residual: torch.Tensor | None):
        d = self._owner[0]
        if input_ids is not None:  # segment 0
            hidden, residual = run_positions(d, 0, self.end, positions, d.embed_input_ids(input_ids), None)
        elif q is None:  # segment 0 of a later pipeline stage: v is the hidden state received
            hidden, residual = run_positions(d, self.start, self.end, positions, v, residual)
        else:
            i = self.start
            layer = d.layers[d.schedule.physical[i]]
            hidden, residual = post_attention(layer, d.position_attn[i], q, k, v, residual, d.position_delta[i])
            hidden, residual = run_positions(d, self.start + 1, self.end, positions, hidden, residual)
        if self.last:
            return d.norm(hidden, residual)[0]
        if self.stage_end:
            return hidden, residual
        i = self.end
        return pre_attention(d.layers[d.schedule.physical[i]], positions, hidden, residual, d.position_delta[i])


def run_draft(decoder, input_ids: torch.Tensor, positions: torch.Tensor, draft: tuple[int, ...]) -> torch.Tensor:
    """The residual-stream state after schedule positions ``draft`` of ``decoder``, each with its
    own attention module (so the verifier's KV cache of that position)."""
    hidden, residual = decoder.embed_input_ids(input_ids), None
    for i in draft:
        layer = decoder.layers[decoder.schedule.physical[i]]
        hidden, residual = layer_forward(layer, decoder.position_attn[i], positions, hidden, residual,
                                         decoder.position_delta[i])
    return hidden if residual is None else hidden + residual  # no positions: the embedding


class DraftStack(nn.Module):
    """The self-draft's positions (``depth.draft_layers`` / ``draft_schedule``), compiled as one graph.

    Returns the residual-stream state after the last draft position; each
    position attends (and writes its K/V) through its own attention module,
    the verifier's.  The layers belong to the decoder (``_owner``).
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", owner=None, draft=()):
        super().__init__()
        self._owner = (owner,)
        self.draft = tuple(draft)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return run_draft(self._owner[0], input_ids, positions, self.draft)


def _compiled_class(base: type, name: str, dynamic: tuple[str, ...]) -> type:
    """A ``support_torch_compile`` subclass of ``base`` named ``name``, with a forward of its own.

    vLLM 0.32 keys its AOT compile cache by the forward's ``__qualname__`` and
    line (``_model_hash_key``): graphs must not share a key, so each class
    gets a copy of ``forward`` named after it.
    """
    import types

    fn = base.forward
    fwd = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    fwd.__qualname__ = f"{name}.forward"
    fwd.__annotations__ = dict(fn.__annotations__)
    cls = type(name, (base,), {"forward": fwd, "__module__": __name__})
    return support_torch_compile(dynamic_arg_dims={arg: {0: "b"} for arg in dynamic})(cls)


@support_torch_compile(
    dynamic_arg_dims={
        "input_ids": {0: "b"},
        "positions": {0: "b"},
        "intermediate_tensors": {0: "b"},
        "inputs_embeds": {0: "b"},
    },
)
class DepthDecoderModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.family = family_of(config.architectures[0])
        self.depth = depth_config_of(config)
        # Self-drafting verifies at full depth: the verifier never exits early (lossless).
        self.exits_enabled = self.depth.exit_layers is not None and vllm_config.speculative_config is None
        physical = self.depth.schedule(config.num_hidden_layers)
        pp = get_pp_group()
        check_parallel(self.depth, get_tensor_model_parallel_world_size(), pp.world_size, len(physical))
        # pipeline parallelism splits the schedule's positions (not the checkpoint's layers) into stages
        self.schedule = LayerSchedule(physical, config.num_hidden_layers,
                                      *get_pp_indices(len(physical), pp.rank_in_group, pp.world_size))
        self.first_stage, self.last_stage = pp.is_first_rank, pp.is_last_rank
        local = self.schedule.local
        # the exit points this pipeline stage checks (all of them with one stage)
        exits = self.depth.exit_layers if self.exits_enabled else ()
        self.local_exits = tuple(e for e in exits if local.start <= e < local.stop)
        # the LM head lives on the last stage and on every stage that checks exits
        self.has_head = self.last_stage or bool(self.local_exits)

        # embeddings: the first stage's, and a tied LM head's
        if self.first_stage or (config.tie_word_embeddings and self.has_head):
            self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        else:
            self.embed_tokens = PPMissingLayer()
        used = self.schedule.used
        # built (and loaded) only where a position of this stage runs them: pruned or other stages' layers are not
        self.layers = nn.ModuleList(
            self.family.make_layer(vllm_config, f"{prefix}.layers.{i}") if i in used else PPMissingLayer()
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        states = make_empty_intermediate_tensors_factory(["hidden_states", "residual"], config.hidden_size)

        def make_empty_intermediate_tensors(batch_size: int, dtype, device) -> IntermediateTensors:
            # depth_exit: per token, the exit layer of a token that left on an earlier stage (0: none)
            t = states(batch_size, dtype, device)
            return IntermediateTensors({**t.tensors, "depth_exit": torch.zeros(batch_size, device=device)})

        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors
        self.exit_heads = nn.ModuleDict()
        self.exit_vocab = None
        if self.depth.exit_heads is not None:
            spec = self.depth.exit_heads
            for n in spec.layers:
                self.exit_heads[str(n)] = ExitHead(config.hidden_size, config.rms_norm_eps, spec.mlp_width,
                                                   reduced=spec.vocab > 0, prefix=f"{prefix}.exit_heads.{n}",
                                                   prev_state=spec.prev_state)
            if spec.vocab:
                self.exit_vocab = ExitVocab(spec.vocab)

        self.position_attn = self._position_attention(vllm_config, prefix)
        if self.exits_enabled:
            for attn in self.position_attn:
                if attn is not None:
                    check_exit_backend(attn)
        self.position_delta = self._position_deltas(vllm_config)
        self.exit_counters = ExitCounters()
        self.prefix = prefix
        self.segments = self._segments(vllm_config, prefix)
        self.draft_stack = self._draft_stack(vllm_config, prefix)
        self.kv_propagator: KVPropagator | None = None  # built from the loaded weights (load_weights)
        self.warmed_up = False
        self.exit_trace: dict[str, list[int]] | None = None  # set to {} to record exit layers

    def _position_attention(self, vllm_config: VllmConfig, prefix: str) -> list[Attention]:
        """The attention module (so the KV cache) of every position.

        The physical layer's own at its first use, a new one for each repeat.
        The index in a repeat's name is num_layers + position: unique among
        layer names, as vLLM's KV-cache binding requires.
        """
        n = self.config.num_hidden_layers
        physical = self.schedule.physical
        self.repeat_attn = nn.ModuleDict(
            {
                str(n + i): _repeat_attention(
                    self.layers[physical[i]].self_attn.attn, vllm_config, f"{prefix}.repeat_attn.{n + i}"
                )
                for i in self.schedule.repeat_positions()
            }
        )
        local = self.schedule.local
        return [
            None if i not in local  # another pipeline stage's position
            else self.layers[p].self_attn.attn if self.schedule.owns_attention(i) else self.repeat_attn[str(n + i)]
            for i, p in enumerate(physical)
        ]

    def _segments(self, vllm_config: VllmConfig, prefix: str) -> list[DepthSegment]:
        """With exit layers: one compiled segment per stretch between exit points (else none)."""
        if not self.exits_enabled:
            return []
        from vllm.compilation.backends import set_model_tag

        local = self.schedule.local
        bounds = [local.start, *self.local_exits, local.stop]
        segments = []
        for k, (start, end) in enumerate(zip(bounds, bounds[1:])):
            # its own compile-cache tag (vLLM names caches by the tag current at construction)
            with set_model_tag(f"depth_segment_{k}"):
                segment_class = _compiled_class(DepthSegment, f"DepthSegment{k}",
                                                ("input_ids", "positions", "q", "k", "v", "residual"))
                ends = end == bounds[-1]
                segments.append(segment_class(vllm_config=vllm_config, prefix=f"{prefix}.segment{k}", owner=self,
                                              start=start, end=end, last=ends and self.last_stage,
                                              stage_end=ends and not self.last_stage))
        return segments

    def _draft_stack(self, vllm_config: VllmConfig, prefix: str) -> DraftStack | None:
        """With a self-draft configured and speculative decoding on: the draft's compiled graph."""
        draft = self.depth.draft_positions()
        if not draft or vllm_config.speculative_config is None:  # () : a head over the embedding, no graph
            return None
        from vllm.compilation.backends import set_model_tag

        with set_model_tag("depth_draft"):
            cls = _compiled_class(DraftStack, "DepthDraftStack", ("input_ids", "positions"))
            return cls(vllm_config=vllm_config, prefix=f"{prefix}.draft_stack", owner=self, draft=draft)

    def _position_deltas(self, vllm_config: VllmConfig) -> list[LowRankDelta | None]:
        """The low-rank delta of every relaxed position (``relax`` in the checkpoint), else None."""
        self.relax = nn.ModuleDict()
        if self.depth.relax_rank is not None:
            for i in (i for i in self.depth.relax_positions if i in self.schedule.local):
                self.relax[str(i)] = LowRankDelta(
                    self.layers[self.schedule.physical[i]].self_attn,
                    self.config.hidden_size,
                    self.config.intermediate_size,
                    self.depth.relax_rank,
                    vllm_config.model_config.dtype,
                )
        return [self.relax[str(i)] if str(i) in self.relax else None for i in range(len(self.schedule.physical))]

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.first_stage:
            hidden = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
            residual = None
        else:
            hidden, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]
        local = self.schedule.local
        hidden, residual = run_positions(self, local.start, local.stop, positions, hidden, residual)
        if not self.last_stage:
            return IntermediateTensors({"hidden_states": hidden, "residual": residual})
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def first_segment(self, input_ids, positions, hidden=None, residual=None):
        """Segment 0: from the tokens, or on a later pipeline stage from the state received."""
        if self.first_stage:
            return self.segments[0](input_ids, positions, None, None, None, None)
        return self.segments[0](None, positions, None, None, hidden, residual)

    def run_segments(self, input_ids, positions, intermediate_tensors=None) -> torch.Tensor:
        """Full depth through the segments (vLLM's warm-up compiles them this way; tests)."""
        it = intermediate_tensors
        out = self.first_segment(input_ids, positions, *((it["hidden_states"], it["residual"]) if it else ()))
        for segment in self.segments[1:]:
            out = segment(None, positions, *out)
        return out

    def warm_up(self, input_ids, positions, intermediate_tensors=None) -> None:
        """Compile the exit segments and the draft stack in vLLM's warm-up run, with the main graph."""
        if self.segments:
            self.run_segments(input_ids, positions, intermediate_tensors)
        if self.draft_stack is not None:
            self.draft_stack(input_ids, positions)
        self.warmed_up = True

    def forward_with_exits(self, input_ids, positions, step: ExitStep, groups: dict, logits_of, stats_of=None,
                           intermediate_tensors=None):
        """One step with token-level early exit.

        The compiled segments run between exit points; after each, the
        candidates are checked (eagerly: which tokens go on is data-dependent).
        A token that exits leaves the active rows (the later segments'
        projections, MLP and attention run for the others only): its K/V at
        the exit position is the one the segment computed, and at every later
        position it is filled by state propagation.  Returns the normed final
        hidden states of all rows (exit states for exited tokens) and the run;
        on an earlier pipeline stage, the state to send on instead.
        ``groups``: each layer's attention group (``vllm_compat.attention_groups_by_layer``), whose
        builder gives the narrowed attention metadata.
        ``stats_of``: the check's statistics without full logits (``depth.exit_check``; not for a
        reduced-vocabulary exit head, whose logits are a sixth of the full ones).

        Under pipeline parallelism a token that exited on an earlier stage
        arrives with its exit layer in ``depth_exit`` and its exit state as its
        hidden state: its K/V at this stage's positions are filled from that
        state, and it takes no part in this stage's compute.
        """
        from vllm_depth.vllm_compat import AttentionViews

        run = ExitRun(step, input_ids, positions, self.depth.exit_criterion, self.embed_input_ids,
                      self.depth.exit_layers)
        views = AttentionViews(groups)
        final = None
        local = self.schedule.local
        try:
            hidden, residual = (None, None) if self.first_stage else self._arrive(intermediate_tensors, run, views)
            out = self.first_segment(input_ids, run.positions, hidden, residual) if run.num_active else None
            for segment in self.segments[1:]:
                if out is None:
                    break
                q, k, v, residual = out
                layer = segment.start
                reduced = self.exit_vocab is not None and str(layer) in self.exit_heads
                keep = run.check(layer, residual, self.exit_norm(layer), lambda x: logits_of(layer, x),
                                 self.exit_counters, shortcut=not reduced, stats_of=None if reduced else stats_of)
                if keep is not None:
                    self._fill(segment.start, run, run.take_exited(k), run.take_exited(v), views)
                    if not run.num_active:
                        out = None
                        break
                    q, k, v, residual = q[keep], k[keep], v[keep], residual[keep]
                    views.narrow(self.position_attn[segment.start : local.stop], run.req_of_row, run.rows)
                out = segment(None, run.positions, q, k, v, residual)
            final = out
        finally:
            views.restore()
        t, h = input_ids.shape[0], self.config.hidden_size
        if self.last_stage:
            return run.output(final, t, h, self.norm.weight), run
        return IntermediateTensors(run.stage_output(final, t, h, self.norm.weight)), run

    def _arrive(self, intermediate_tensors, run: ExitRun, views):
        """A later pipeline stage's input: tokens that exited earlier get this stage's K/V filled from
        their exit state and leave; returns the remaining rows' hidden state and residual."""
        hidden, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]
        exited = intermediate_tensors["depth_exit"].to(torch.long)
        if not bool((exited > 0).any()):
            return hidden, residual
        start = self.schedule.local.start
        for layer in torch.unique(exited[exited > 0]).tolist():
            idx = torch.isin(run.rows, (exited == layer).nonzero()[:, 0]).nonzero()[:, 0]  # active-row indices
            states = hidden[run.rows[idx]]
            run.leave(idx.tolist(), layer, states, self.exit_norm(layer)(states), None)
            self._propagate(start, run, views.slots_of(run.exit_rows[-1]))
        if run.num_active:
            views.narrow(self.position_attn[start : self.schedule.local.stop], run.req_of_row, run.rows)
        return hidden[run.rows], residual[run.rows]

    def exit_norm(self, layer: int) -> nn.Module:
        """What turns the state after ``layer`` positions into the LM head's input: its exit head, or the final norm."""
        return self.exit_heads[str(layer)] if str(layer) in self.exit_heads else self.norm

    def _fill(self, layer: int, run: ExitRun, k, v, views) -> None:
        """KV of the tokens that just exited after ``layer`` positions: exact at ``layer``, propagated after."""
        attn = self.position_attn[layer]
        slots = views.slots_of(run.exit_rows[-1])
        write_kv(attn, k, v, slots(attn))
        self._propagate(layer + 1, run, slots)

    def _propagate(self, start: int, run: ExitRun, slots) -> None:
        """State propagation of the run's last exited tokens into positions ``start`` .. the stage's end
        (``slots``: ``AttentionViews.slots_of`` those tokens; timed and counted for /metrics and the bench)."""
        t0 = time.perf_counter()
        rows = run.exit_rows[-1]
        self.kv_propagator.fill(self, start, run.exit_states[-1], run.exit_positions[-1], slots)
        self.exit_counters.fill_tokens += rows.numel() * (self.schedule.local.stop - start)
        self.exit_counters.fill_seconds += time.perf_counter() - t0

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self)
        loaded = loader.load_weights(weights, mapper=self.family.mapper)
        if self.exits_enabled:
            # from the loaded weights, before vLLM repacks them for its GEMMs
            local = self.schedule.local
            # fills start after each local exit point, and (later pipeline stages) at the stage's first position
            starts = [e + 1 for e in self.local_exits] + ([] if self.first_stage else [local.start])
            self.kv_propagator = KVPropagator(self, starts, local.stop, prefix=f"{self.prefix}.kv_propagator")
        return loaded


class DepthForCausalLM(nn.Module, SupportsPP):
    """Registered as ``Depth<Arch>`` for every supported architecture."""

    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = DepthDecoderModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        if self.model.has_head:
            self.lm_head = ParallelLMHead(
                config.vocab_size,
                config.hidden_size,
                quant_config=vllm_config.quant_config,
                prefix=maybe_prefix(prefix, "lm_head"),
            )
            if config.tie_word_embeddings:
                self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        else:
            self.lm_head = PPMissingLayer()
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        self.logits_processor = LogitsProcessor(
            config.vocab_size, scale=getattr(config, "logit_scale", 1.0)
        )
        self._heads_file = _exit_heads_file(self.model.depth, vllm_config.model_config.model)
        self._step_requests = None  # set by the runner before each forward (vllm_compat)
        self._step_groups = None  # with them: each layer's attention group
        if self.model.exits_enabled:
            from vllm_depth.vllm_compat import patch_runner

            patch_runner()
        self._cached_logits = None  # exit logits of the last step, reused by compute_logits
        self._kernels = None  # platform kernels for the eager early-exit steps
        self._step_exits = None  # the last step's exit layer per decode request

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._cached_logits = None
        requests, self._step_requests = self._step_requests, None
        groups, self._step_groups = self._step_groups, None
        step = self._exit_step(requests, groups) if inputs_embeds is None else None
        if step is not None and not self._stage_exits(intermediate_tensors):
            step = None  # nothing to check or fill on this pipeline stage
        if step is None:  # no token can exit: the compiled full-depth graph, no check at all
            self._record(requests, None)
            hidden = self.model(input_ids, positions, intermediate_tensors, inputs_embeds)
            if requests is None and not self.model.warmed_up and input_ids is not None:
                # the warm-up run (no step requests) compiles the segments and the draft too
                self.model.warm_up(input_ids, positions, intermediate_tensors)
                self._warm_up_check(positions.device)
            if isinstance(hidden, IntermediateTensors):  # to the next stage: no token exited here or before
                residual = hidden["residual"]
                hidden = IntermediateTensors({**hidden.tensors, "depth_exit": residual.new_zeros(
                    residual.shape[0], dtype=torch.float32)})
            return hidden
        if self._kernels is None:
            from vllm_depth.vllm_compat import NativeKernels

            self._kernels = NativeKernels(self)
        counters = self.model.exit_counters
        checks, fill = counters.checked, counters.fill_seconds
        stats_of = self._exit_stats if self._fused_check() else None
        with self._kernels:
            hidden, run = self.model.forward_with_exits(input_ids, positions, step, groups, self._exit_logits,
                                                        stats_of, intermediate_tensors)
        cached = run.cached_logits()
        if cached is not None:
            self._cached_logits = (step.num_reqs, *cached)
        self._record(requests, run, counters.checked - checks, counters.fill_seconds - fill)
        return hidden

    def _warm_up_check(self, device) -> None:
        """Build the CPU exit check's native reductions (``kernels.cpu_reduce``) in vLLM's warm-up,
        rather than in the first step that checks."""
        if device.type == "cpu" and self.model.local_exits:
            from vllm_depth.kernels import cpu_reduce

            cpu_reduce.load()

    def _fused_check(self) -> bool:
        """``depth.exit_check``: the fused check (no logits) or the LM head's logits.  "auto" fuses
        on GPUs, where the fused kernel costs about the LM-head product and a softmax over
        materialised logits 1.3-4x it (benchmarks/exit_check.py), and under tensor parallelism,
        where the logits are not gathered; on the CPU vLLM's LM-head GEMM is faster than any fused
        product here, and its logits are reused as the step's for exited tokens."""
        mode = self.model.depth.exit_check
        if mode == "auto":
            return get_tensor_model_parallel_world_size() > 1 or self.lm_head.weight.is_cuda
        return mode == "fused"

    def _stage_exits(self, intermediate_tensors) -> bool:
        """Whether this pipeline stage checks exits or receives tokens that exited before it."""
        if self.model.local_exits:
            return True
        return not self.model.first_stage and bool((intermediate_tensors["depth_exit"] > 0).any())

    def _record(self, requests, run, checks: int = 0, fill_seconds: float = 0.0) -> None:
        """Each decode token's exit layer (on the last pipeline stage, where every exit is known):
        to ``model.exit_trace`` (when a dict) and to /metrics."""
        from vllm_depth import metrics

        trace = self.model.exit_trace
        if not requests or not self.model.last_stage:
            return
        exits, per_layer = {}, {}
        if run is not None:
            for reqs, layer in zip(run.exit_reqs, run.exit_layers):
                exits.update(dict.fromkeys(reqs.tolist(), layer))
                per_layer[layer] = reqs.numel()
        full = len(self.model.schedule.physical)
        layers = [(req.req_id, exits.get(r, full)) for r, req in enumerate(requests) if req.decode]
        self._step_exits = dict(layers)  # for the scheduler (take_step_exits)
        if trace is not None:
            for req_id, layer in layers:
                trace.setdefault(req_id, []).append(layer)
        if metrics.enabled():
            metrics.record_step([layer for _, layer in layers], full, per_layer, checks, fill_seconds)

    def take_step_exits(self) -> dict[str, int] | None:
        """{request id: layers run} of the last step's decode tokens (read once, by the runner)."""
        exits, self._step_exits = self._step_exits, None
        return exits

    def depth_prepare_step(self, requests, groups: dict) -> None:
        """Called by the runner before each forward with the step's ``StepRequest`` list and each
        layer's attention group (``vllm_compat.attention_groups_by_layer``)."""
        self._step_requests, self._step_groups = requests, groups

    def _exit_step(self, requests, groups) -> ExitStep | None:
        depth = self.model.depth
        if not self.model.exits_enabled or not requests:
            return None
        qsl = current_query_start_loc(groups)
        if qsl is None:
            return None
        return plan_step(requests, qsl, thresholds=depth.thresholds(), min_layer=depth.min_layer,
                         exit_layers=depth.exit_layers)

    def _exit_logits(self, layer: int, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The exit distribution's logits after ``layer`` positions, and a reduced head's "other" logit."""
        heads, vocab = self.model.exit_heads, self.model.exit_vocab
        if vocab is None or str(layer) not in heads:
            return self.logits_processor(self.lm_head, normed), None
        return vocab.logits(self.lm_head, heads[str(layer)], normed, self.config.vocab_size)

    def _exit_stats(self, normed: torch.Tensor):
        """The exit check over the vocabulary-parallel LM head: each rank reduces its shard, then
        one all-gather of ``[T, 5]`` partials per rank (the full logits are never gathered)."""
        from vllm.distributed import tensor_model_parallel_all_gather

        from vllm_depth.kernels.exit_check import exit_stats

        shard = self.lm_head.shard_indices
        scale = self.logits_processor.scale
        x = normed * scale if scale != 1.0 else normed
        return exit_stats(x, None, 0.0, self.lm_head.weight, valid=shard.num_org_elements,
                          offset=shard.org_vocab_start_index, gather=tensor_model_parallel_all_gather)

    def draft_logits(self, state: torch.Tensor, layer: int | None, prev: torch.Tensor | None = None):
        """Logits of a draft from its state: the exit head after ``layer`` positions (a prefix
        draft) when the checkpoint has one, else the final norm and LM head.  Returns (logits, a
        reduced head's "other" logit or None, the token id of each logit column or None for all of
        them, the LM head's input); ``prev``: the previous token's final (normed) state, which a
        ``prev_state`` head reads."""
        head = self._draft_head(layer)
        normed = self.model.norm(state) if head is None else head(state, prev)
        vocab = self.model.exit_vocab
        if head is None or vocab is None:
            return self.logits_processor(self.lm_head, normed), None, None, normed
        return (*vocab.reduced_logits(self.lm_head, head, normed), vocab.ids.data, normed)

    def _draft_head(self, layer: int | None) -> ExitHead | None:
        """The exit head after ``layer`` positions (None: a skip-set draft, or no head there)."""
        return self.model.exit_heads[str(layer)] if layer is not None and str(layer) in self.model.exit_heads else None

    def draft_reads_prev_state(self, layer: int | None) -> bool:
        """Whether the draft head after ``layer`` positions reads the previous token's final state."""
        head = self._draft_head(layer)
        return head is not None and head.prev_state

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        cached, self._cached_logits = self._cached_logits, None
        if cached is None or hidden_states.shape[0] != cached[0]:
            return self.logits_processor(self.lm_head, hidden_states)
        # One sampled row per request (no speculative tokens): exited requests' rows
        # are their exit logits, computed by the exit check; only the others need the LM head.
        _, reqs, exit_logits = cached  # (computed under NativeKernels: the same LM head matmul)
        todo = torch.ones(hidden_states.shape[0], dtype=torch.bool)
        todo[reqs] = False
        logits = exit_logits.new_empty(hidden_states.shape[0], exit_logits.shape[1])
        logits[reqs] = exit_logits
        if bool(todo.any()):
            logits[todo] = self.logits_processor(self.lm_head, hidden_states[todo])
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(self._with_exit_heads(weights))

    def _with_exit_heads(self, weights):
        """The checkpoint's weights, then its exit heads' (``_exit_heads_file``)."""
        yield from weights
        if self._heads_file is not None:
            from safetensors import safe_open

            with safe_open(str(self._heads_file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)


def _exit_heads_file(depth, model_dir: str) -> Path | None:
    """Where the engine reads the exit heads that ``depth.exit_heads`` names: ``depth/exit_heads.safetensors``,
    a folder vLLM 0.32's loader (``DefaultModelLoader._prepare_weights``: the top-level files) does not
    read, so stock vLLM still loads the checkpoint.  None without heads, and for a legacy top-level
    file, which vLLM's loader hands over with the weights.  Raises before any weight loads if there is none."""
    if depth.exit_heads is None:
        return None
    from vllm_depth.exit_heads import LEGACY_HEADS_FILE, heads_file

    path = heads_file(model_dir)
    if path is None:
        raise ValueError(f"depth.exit_heads: {model_dir} has no exit heads file; allowed: a local "
                         "checkpoint written by vllm-depth train-exits (or no depth.exit_heads)")
    return None if path == Path(model_dir) / LEGACY_HEADS_FILE else path
