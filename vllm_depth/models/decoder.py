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
from safetensors import safe_open
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.distributed.utils import get_pp_indices
from vllm.model_executor.layers.attention import Attention
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

from vllm_depth.compat.attention import (
    AttentionViews,
    backend_name,
    exit_capable_backends,
    kv_write_is_separate,
    write_kv,
    writes_kv_cache,
)
from vllm_depth.compat.compile import build_compiled
from vllm_depth.compat.kernels import NativeKernels
from vllm_depth.compat.loader import heads_file_to_load
from vllm_depth.config import DepthConfigError, check_parallel, depth_config_of
from vllm_depth.early_exit.controller import ExitController
from vllm_depth.early_exit.kernels import cpu_reduce
from vllm_depth.early_exit.step import ExitCounters, ExitRun, ExitStep
from vllm_depth.models.draft_head import AttentionDraftHead
from vllm_depth.models.drafting import Drafting
from vllm_depth.models.exit_head import ExitHead, ExitVocab
from vllm_depth.models.exit_outputs import ExitOutputs
from vllm_depth.models.families import check_family, family_of
from vllm_depth.models.kv_fill import KVPropagator
from vllm_depth.models.layers import LowRankDelta, repeat_attention, run_positions
from vllm_depth.models.schedule import LayerSchedule
from vllm_depth.models.segments import DepthSegment, DraftStack


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
        check_family(self.family, self.depth)
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
        self.norm = self.family.make_norm(config.hidden_size, config.rms_norm_eps)
        if self.family.embed_scale:  # in the model's dtype, as vLLM's Gemma3Model keeps it
            self.register_buffer("normalizer", torch.tensor(config.hidden_size**0.5), persistent=False)
        states = make_empty_intermediate_tensors_factory(["hidden_states", "residual"], config.hidden_size)

        def make_empty_intermediate_tensors(batch_size: int, dtype, device) -> IntermediateTensors:
            # depth_exit: per token, the exit layer of a token that left on an earlier stage (0: none)
            t = states(batch_size, dtype, device)
            return IntermediateTensors({**t.tensors, "depth_exit": torch.zeros(batch_size, device=device)})

        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors
        self.exit_heads = nn.ModuleDict()
        self.exit_vocab = None
        self.draft_head = None
        if self.depth.exit_heads is not None:
            spec = self.depth.exit_heads
            if spec.attention and vllm_config.speculative_config is not None and self.last_stage:
                self.draft_head = AttentionDraftHead(vllm_config, self.family.make_layer,
                                                     config.num_hidden_layers + len(physical), spec.vocab > 0,
                                                     f"{prefix}.draft_head")
            for n in () if spec.attention else spec.layers:
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
                str(n + i): repeat_attention(
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
        local = self.schedule.local
        bounds = [local.start, *self.local_exits, local.stop]
        segments = []
        for k, (start, end) in enumerate(zip(bounds, bounds[1:])):
            ends = end == bounds[-1]
            segments.append(build_compiled(
                f"depth_segment_{k}", DepthSegment, f"DepthSegment{k}", ("input_ids", "positions", "q", "k", "v", "residual"),
                vllm_config=vllm_config, prefix=f"{prefix}.segment{k}", owner=self, start=start, end=end,
                last=ends and self.last_stage, stage_end=ends and not self.last_stage))
        return segments

    def _draft_stack(self, vllm_config: VllmConfig, prefix: str) -> DraftStack | None:
        """With a self-draft configured and speculative decoding on: the draft's compiled graph."""
        draft = self.depth.draft_positions()
        if not draft or vllm_config.speculative_config is None:  # () : a head over the embedding, no graph
            return None
        return build_compiled("depth_draft", DraftStack, "DepthDraftStack", ("input_ids", "positions"),
                              vllm_config=vllm_config, prefix=f"{prefix}.draft_stack", owner=self, draft=draft)

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
        if self.family.embed_scale:
            return self.embed_tokens(input_ids) * self.normalizer
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
        hidden, residual = run_positions(self, local, positions, hidden, residual)
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
        """Compile the exit segments and the draft stack in vLLM's warm-up run, with the main graph, and
        build the CPU exit check's native reductions (``kernels.cpu_reduce``) rather than in the first
        step that checks."""
        if self.segments:
            self.run_segments(input_ids, positions, intermediate_tensors)
        if self.draft_stack is not None:
            self.draft_stack(input_ids, positions)
        if positions.device.type == "cpu" and self.local_exits:
            cpu_reduce.load()
        self.warmed_up = True

    def stage_checks(self, intermediate_tensors) -> bool:
        """Whether this pipeline stage checks exits or receives tokens that exited before it."""
        if self.local_exits:
            return True
        return not self.first_stage and bool((intermediate_tensors["depth_exit"] > 0).any())

    def forward_with_exits(self, input_ids, positions, step: ExitStep, groups: dict, outputs: ExitOutputs,
                           fused: bool = False, intermediate_tensors=None):
        """One step with token-level early exit.

        The compiled segments run between exit points; after each, the
        candidates are checked (eagerly: which tokens go on is data-dependent).
        A token that exits leaves the active rows (the later segments'
        projections, MLP and attention run for the others only): its K/V at
        the exit position is the one the segment computed, and at every later
        position it is filled by state propagation.  Returns the normed final
        hidden states of all rows (exit states for exited tokens) and the run;
        on an earlier pipeline stage, the state to send on instead.
        ``groups``: each layer's attention group (``compat.attention.attention_groups_by_layer``), whose
        builder gives the narrowed attention metadata.  ``outputs``: the exit distribution at each exit
        point; ``fused``: the check's statistics without full logits (``depth.exit_check``; not for a
        reduced-vocabulary exit head, whose logits are a sixth of the full ones).

        Under pipeline parallelism a token that exited on an earlier stage
        arrives with its exit layer in ``depth_exit`` and its exit state as its
        hidden state: its K/V at this stage's positions are filled from that
        state, and it takes no part in this stage's compute.
        """
        run = ExitRun(step, input_ids, positions, self.depth.exit_criterion, self.embed_input_ids,
                      self.depth.exit_layers)
        views = AttentionViews(groups)
        final = None
        local = self.schedule.local
        try:
            hidden, residual = (None, None) if self.first_stage else self._arrive(intermediate_tensors, run, views,
                                                                                  outputs)
            out = self.first_segment(input_ids, run.positions, hidden, residual) if run.num_active else None
            for segment in self.segments[1:]:
                if out is None:
                    break
                q, k, v, residual = out
                point = segment.start
                reduced = outputs.reduced(point)
                keep = run.check(point, residual, outputs.norm(point), lambda x: outputs.logits(point, x),
                                 self.exit_counters, shortcut=not reduced,
                                 stats_of=outputs.stats if fused and not reduced else None)
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

    def _arrive(self, intermediate_tensors, run: ExitRun, views, outputs: ExitOutputs):
        """A later pipeline stage's input: tokens that exited earlier get this stage's K/V filled from
        their exit state and leave; returns the remaining rows' hidden state and residual."""
        hidden, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]
        exited = intermediate_tensors["depth_exit"].to(torch.long)
        if not bool((exited > 0).any()):
            return hidden, residual
        start = self.schedule.local.start
        for point in torch.unique(exited[exited > 0]).tolist():
            idx = torch.isin(run.rows, (exited == point).nonzero()[:, 0]).nonzero()[:, 0]  # active-row indices
            states = hidden[run.rows[idx]]
            run.leave(idx.tolist(), point, states, outputs.norm(point)(states), None)
            self._propagate(start, run, views.slots_of(run.exit_rows[-1]))
        if run.num_active:
            views.narrow(self.position_attn[start : self.schedule.local.stop], run.req_of_row, run.rows)
        return hidden[run.rows], residual[run.rows]

    def _fill(self, point: int, run: ExitRun, k, v, views) -> None:
        """KV of the tokens that just exited after ``point`` positions: exact at ``point``, propagated after."""
        attn = self.position_attn[point]
        slots = views.slots_of(run.exit_rows[-1])
        write_kv(attn, k, v, slots(attn))
        self._propagate(point + 1, run, slots)

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
    """Registered as ``Depth<Arch>`` for every supported architecture.

    ``exits``: the exit controller (``early_exit.controller``) when tokens may exit, which the model
    runner hands each step; ``drafting``: what the self-draft reaches of the model (``models.drafting``).
    """

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
            config.vocab_size, scale=getattr(config, "logit_scale", 1.0),
            soft_cap=getattr(config, "final_logit_softcapping", None),
        )
        self._heads_file = _exit_heads_file(self.model.depth, vllm_config.model_config.model)
        self.exits = ExitController(self.model.depth, full_depth=len(self.model.schedule.physical),
                                    last_stage=self.model.last_stage,
                                    counters=self.model.exit_counters) if self.model.exits_enabled else None
        self.exit_outputs = ExitOutputs(self)
        self.drafting = Drafting(self)
        self._kernels = None  # platform kernels for layers run eagerly (``native_kernels``)

    @property
    def depth_config(self):
        return self.model.depth

    def native_kernels(self) -> NativeKernels:
        """vLLM's platform kernels for the model's custom ops, for layers run eagerly."""
        if self._kernels is None:
            self._kernels = NativeKernels(self)
        return self._kernels

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        exits = self.exits
        plan = exits.plan() if exits is not None and inputs_embeds is None else None
        if plan is not None and self.model.stage_checks(intermediate_tensors):
            return self._forward_with_exits(input_ids, positions, plan, intermediate_tensors)
        # no token can exit here: the compiled full-depth graph, no check at all
        if exits is not None:
            exits.record(None)
        hidden = self.model(input_ids, positions, intermediate_tensors, inputs_embeds)
        if not self.model.warmed_up and input_ids is not None and not writes_kv_cache():
            # vLLM's warm-up run compiles the segments and the draft too.  Never a scheduled step: there
            # the draft stack would write its own K/V (a skip set's differs from the verifier's) over
            # the K/V the step just wrote at the step's slots (vLLM skips its warm-up run on the CPU
            # when the model runs eagerly with an explicit KV-cache size)
            self.model.warm_up(input_ids, positions, intermediate_tensors)
        if isinstance(hidden, IntermediateTensors):  # to the next stage: no token exited here or before
            residual = hidden["residual"]
            hidden = IntermediateTensors({**hidden.tensors, "depth_exit": residual.new_zeros(
                residual.shape[0], dtype=torch.float32)})
        return hidden

    def _forward_with_exits(self, input_ids, positions, plan: ExitStep, intermediate_tensors):
        counters, outputs = self.exits.counters, self.exit_outputs
        checks, fill = counters.checked, counters.fill_seconds
        with outputs.kernels():
            hidden, run = self.model.forward_with_exits(input_ids, positions, plan, self.exits.groups, outputs,
                                                        outputs.fused(), intermediate_tensors)
        self.exits.record(run, counters.checked - checks, counters.fill_seconds - fill)
        return hidden

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """The LM head's logits; after a step with exits, the step's sampling (one row per request):
        exited requests' rows are their exit logits, computed by the exit check; only the others need
        the LM head."""
        cached = self.exits.take_logits() if self.exits is not None else None
        if cached is None:
            return self.logits_processor(self.lm_head, hidden_states)
        reqs, exit_logits = cached  # (the same LM head matmul)
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
        """The checkpoint's weights, then its exit heads' (``_exit_heads_file``; the attention draft
        head's only where it was built: with speculative decoding)."""
        yield from weights
        if self._heads_file is not None:
            skip = "model.draft_head." if self.model.draft_head is None else None
            with safe_open(str(self._heads_file), framework="pt") as f:
                for name in f.keys():
                    if skip is None or not name.startswith(skip):
                        yield name, f.get_tensor(name)


def _exit_heads_file(depth, model_dir: str) -> Path | None:
    """The exit heads file the engine reads itself (``compat.loader``): None without heads, and for a
    legacy top-level file, which vLLM's loader hands over with the weights.  Raises before any
    weight loads if there is none."""
    if depth.exit_heads is None:
        return None
    try:
        return heads_file_to_load(model_dir)
    except FileNotFoundError:
        raise ValueError(f"depth.exit_heads: {model_dir} has no exit heads file; allowed: a local "
                         "checkpoint written by vllm-depth train-exits (or no depth.exit_heads)") from None


def check_exit_backend(attn) -> None:
    """Refuse, when the model is built (before weights load), an attention backend that early exit
    cannot use: the KV fill writes the K/V of skipped layers through the backend's own
    ``do_kv_cache_update``, which backends whose forward writes the cache itself do not offer."""
    if kv_write_is_separate(attn):
        return
    raise DepthConfigError(f"depth.exit_layers: attention backend {backend_name(attn)} writes the KV cache "
                           "inside its forward, so the K/V of skipped layers cannot be filled; allowed: "
                           f"{', '.join(exit_capable_backends())}, or no exit_layers")
