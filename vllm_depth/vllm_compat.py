"""Every adaptation of vLLM internals, in one place.

Each patch names the vLLM version and the function it adapts, and
``tests/test_vllm_compat.py`` fails when vLLM changes under it.  All patches
are idempotent and are no-ops unless ``model_impl == "depth"``.

Relied on without a patch (and tested): vLLM 0.32 ``ModelConfig.compute_hash``,
the key of the torch.compile / AOT cache, hashes ``hf_config`` and so the
``depth`` object in it; two schedules on one checkpoint never share a graph.
"""

from __future__ import annotations

import functools

import torch
import vllm

from vllm_depth.config import DepthConfigError, check_parallel, depth_config_of
from vllm_depth.models.families import SUPPORTED_ARCHITECTURES

# the vLLM releases this module is checked against (benchmarks/gpu/compat_audit.py for 0.33)
VLLM_VERSIONS = ("0.32", "0.33")
MODEL_IMPL = "depth"
_PATCHED = "__vllm_depth_patched__"


def depth_arch(architecture: str) -> str:
    return "Depth" + architecture


def _is_depth(model_config) -> bool:
    return str(getattr(model_config, "model_impl", "")) == MODEL_IMPL


def _depth_architectures(architectures, model_config) -> list[str]:
    """Map HF architectures to the plugin's, validating the depth config first."""
    if isinstance(architectures, str):
        architectures = [architectures]
    supported = [a for a in architectures if a in SUPPORTED_ARCHITECTURES]
    if not supported:
        raise ValueError(
            f"--model-impl depth cannot run architecture(s) {list(architectures)}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    # Refuse a bad depth config here: this runs while the engine config is
    # built, before any process is started or any weight loaded.
    depth_config_of(model_config.hf_config)
    return [depth_arch(a) for a in supported]


def _patch(owner, name: str, make_wrapper) -> None:
    original = getattr(owner, name)
    if getattr(original, _PATCHED, False):
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, _PATCHED, True)
    setattr(owner, name, wrapper)


def _patch_registry() -> None:
    """vLLM 0.32 ``_ModelRegistry.inspect_model_cls`` / ``resolve_model_cls``.

    vLLM routes ``model_impl`` values it knows ("auto", "vllm", "transformers",
    "terratorch") and ignores others; for "depth" we map each architecture to
    the plugin's ``Depth<Arch>`` class before vLLM's own lookup.
    """
    from vllm.model_executor.models.registry import _ModelRegistry

    def routed(original):
        def method(self, architectures, model_config):
            if _is_depth(model_config):
                architectures = _depth_architectures(architectures, model_config)
            return original(self, architectures, model_config)

        return method

    _patch(_ModelRegistry, "inspect_model_cls", routed)
    _patch(_ModelRegistry, "resolve_model_cls", routed)


def install() -> None:
    """Apply every patch (idempotent)."""
    if not vllm.__version__.startswith(VLLM_VERSIONS):
        import warnings

        warnings.warn(
            f"vllm-depth is checked against vLLM {' and '.join(v + '.x' for v in VLLM_VERSIONS)}; "
            f"found {vllm.__version__}",
            stacklevel=2,
        )
    _patch_registry()
    _patch_sampling_params()
    _patch_engine_args()
    _patch_lookahead()


# -- token-level exits: attention over the rows that are still running --------------------


# CommonAttentionMetadata fields, by how a subset of the step's rows takes them (vLLM 0.32).
# The compat tests fail when vLLM adds a field that is in none of these.
_PER_REQUEST = ("seq_lens", "seq_lens_cpu_upper_bound", "block_table_tensor", "is_prefilling", "req_idx",
                "rswa_prefix_lens", "replayssm_decode_base_cpu")
_PER_TOKEN = ("slot_mapping", "positions")
_DERIVED = ("query_start_loc", "query_start_loc_cpu", "num_reqs", "num_actual_tokens", "max_query_len",
            "max_seq_len", "causal")
# features a subset cannot carry (fast-prefill KV sharing, cross attention, decode context parallelism,
# multimodal bidirectional ranges): the step must not use them
_UNSUPPORTED = ("logits_indices_padded", "num_logits_indices", "max_logits_per_req", "encoder_seq_lens",
                "encoder_seq_lens_cpu", "dcp_local_seq_lens", "dcp_local_seq_lens_cpu_upper_bound",
                "mm_req_doc_ranges")
# memoised values of the full batch, computed again by whoever asks the subset
_CACHES = ("_num_computed_tokens_cache", "_token_to_req_indices_cache")
SUBSET_FIELDS = _PER_REQUEST + _PER_TOKEN + _DERIVED + _UNSUPPORTED + _CACHES


def subset_common_metadata(common, req_of_row, keep_rows):
    """The step's ``CommonAttentionMetadata`` (vLLM 0.32) for the kept token rows ``keep_rows`` only.

    ``req_of_row``: the request index of each kept row (ascending; a request keeps its first rows:
    only its last can exit, so a request that kept fewer rows attends as a shorter one).  Derived for
    any attention backend: the kept requests' block-table rows, sequence lengths and flags, the kept
    rows' slots and positions, new query start locations and maxima (from the CPU copies: no device
    sync).  The result goes to the attention group's own metadata builder.
    """
    for name in _UNSUPPORTED:
        if getattr(common, name, None) is not None:
            raise NotImplementedError(f"token-level early exit cannot attend over a subset of rows with "
                                      f"CommonAttentionMetadata.{name} set")
    if isinstance(common.causal, torch.Tensor):
        raise NotImplementedError("token-level early exit supports causal decoder attention only")
    keep_reqs, qlen = torch.unique_consecutive(req_of_row, return_counts=True)
    qsl_cpu = torch.zeros(keep_reqs.numel() + 1, dtype=common.query_start_loc_cpu.dtype)
    torch.cumsum(qlen.to(qsl_cpu.dtype), 0, out=qsl_cpu[1:])
    old_qlen = common.query_start_loc_cpu[1:] - common.query_start_loc_cpu[:-1]
    dropped = (old_qlen[keep_reqs] - qlen).to(common.seq_lens.dtype)  # rows left behind (kv_fill 'recompute')
    fields = {name: _rows_of(getattr(common, name, None), keep_reqs) for name in _PER_REQUEST}
    fields.update({name: _rows_of(getattr(common, name, None), keep_rows) for name in _PER_TOKEN})
    fields["seq_lens"] = fields["seq_lens"] - _to(dropped, fields["seq_lens"].device)
    upper = fields["seq_lens_cpu_upper_bound"]
    if upper is not None:
        upper = fields["seq_lens_cpu_upper_bound"] = upper - dropped.to(upper.dtype)
    elif fields["seq_lens"].device.type == "cpu":
        upper = fields["seq_lens"]
    return common.replace(
        **fields,
        **dict.fromkeys(_CACHES),
        query_start_loc=_to(qsl_cpu, common.query_start_loc.device),
        query_start_loc_cpu=qsl_cpu,
        num_reqs=keep_reqs.numel(),
        num_actual_tokens=keep_rows.numel(),
        max_query_len=int(qlen.max()),
        max_seq_len=int(upper.max()) if upper is not None else common.max_seq_len,  # an upper bound is allowed
    )


def _rows_of(x, index):
    """``x[index]`` (index moved to ``x``'s device), or None for None."""
    return None if x is None else x[_to(index, x.device)]


def _to(x, device):
    """``x`` on ``device`` (no copy when it is there)."""
    return x if x.device == device else x.to(device, non_blocking=True)


def patch_metadata_record() -> None:
    """vLLM 0.32 ``AttentionGroup.build_metadata`` (``vllm.v1.worker.utils``): every step the runner
    hands each attention group the step's ``CommonAttentionMetadata`` and stores what the group's
    builder returns for its layers.  The group keeps both (``depth_common``, ``depth_metadata``), so
    a depth model can rebuild its layers' metadata for a subset of the rows through the same builder
    (``AttentionViews.narrow``).  Installed with ``patch_runner``."""
    from vllm.v1.worker.utils import AttentionGroup

    def wrap(original):
        def method(self, common_attn_metadata, ubatch_idx: int = 0, *args, **kwargs):
            out = original(self, common_attn_metadata, ubatch_idx, *args, **kwargs)
            if ubatch_idx == 0:
                self.depth_common, self.depth_metadata = common_attn_metadata, out
            return out

        return method

    _patch(AttentionGroup, "build_metadata", wrap)


def build_group_metadata(group, common):
    """``group``'s metadata for ``common`` from its own builder, not kept as the step's (a subset, a draft)."""
    build = type(group).build_metadata
    return getattr(build, "__wrapped__", build)(group, common)


def attention_groups_by_layer(attn_groups) -> dict:
    """{layer name: its attention group} over the runner's ``attn_groups`` (one list per KV cache group)."""
    return {name: group for groups in attn_groups for group in groups for name in group.layer_names}


class AttentionViews:
    """The forward context's attention metadata and slots, narrowed as tokens exit.

    vLLM 0.32 ``ForwardContext.attn_metadata`` / ``slot_mapping`` (dicts keyed
    by layer name) are what ``Attention.forward`` reads; they are replaced for
    the rest of the step and restored by ``restore()``.  The narrowed metadata
    comes from each layer's attention group's own builder, given the step's
    ``CommonAttentionMetadata`` for the kept rows (``subset_common_metadata``).

    The step runs without CUDA graphs while it is narrowed (``cudagraph_runtime_mode`` NONE):
    vLLM captures graphs of the full-depth forward only, never of the compacted stretches
    (``cudagraph_policy``).
    """

    def __init__(self, groups: dict):
        from vllm.config import CUDAGraphMode
        from vllm.forward_context import get_forward_context

        self.groups = groups  # attention_groups_by_layer
        self.ctx = get_forward_context()
        self.attn_metadata = self.ctx.attn_metadata
        self.slot_mapping = self.ctx.slot_mapping
        self.graph_mode = self.ctx.cudagraph_runtime_mode
        if not isinstance(self.attn_metadata, dict) or not isinstance(self.slot_mapping, dict):
            raise NotImplementedError("token-level early exit needs one attention metadata per layer")
        self.ctx.cudagraph_runtime_mode = CUDAGraphMode.NONE

    def slots_of(self, rows):
        """``attn ->`` the original cache slots of ``rows`` at ``attn``'s layer (for the KV fill),
        indexing each distinct slot mapping once (the layers of one KV cache group share theirs)."""
        memo = {}

        def slots(attn):
            mapping = self.slot_mapping[attn.layer_name]
            out = memo.get(id(mapping))
            if out is None:
                out = memo[id(mapping)] = mapping[_to(rows, mapping.device)]
            return out

        return slots

    def narrow(self, layers, req_of_row, keep_rows) -> None:
        """From now on, ``layers`` attend for the kept rows only (``req_of_row``: their requests)."""
        subsets: dict[int, object] = {}
        metadata, slots = dict(self.attn_metadata), dict(self.slot_mapping)
        for attn in layers:
            name = attn.layer_name
            meta = self.attn_metadata[name]
            if id(meta) not in subsets:
                subsets[id(meta)] = self._subset(name, meta, req_of_row, keep_rows)
            metadata[name] = subsets[id(meta)]
            mapping = self.slot_mapping[name]
            slots[name] = mapping[_to(keep_rows, mapping.device)]
        self.ctx.attn_metadata, self.ctx.slot_mapping = metadata, slots

    def _subset(self, name: str, meta, req_of_row, keep_rows):
        group = self.groups[name]
        if getattr(group, "depth_metadata", None) is not meta:
            raise NotImplementedError(f"token-level early exit: the attention metadata of {name} was not built "
                                      "by its attention group's builder this step")
        return build_group_metadata(group, subset_common_metadata(group.depth_common, req_of_row, keep_rows))

    def restore(self) -> None:
        self.ctx.attn_metadata, self.ctx.slot_mapping = self.attn_metadata, self.slot_mapping
        self.ctx.cudagraph_runtime_mode = self.graph_mode


def write_kv(attn, key, value, slots) -> None:
    """vLLM 0.32 ``unified_kv_cache_update``: write K/V rows into ``attn``'s paged cache at ``slots``."""
    attn.impl.do_kv_cache_update(
        attn,
        key.view(-1, attn.num_kv_heads, attn.head_size),
        value.view(-1, attn.num_kv_heads, attn.head_size_v),
        attn.kv_cache,
        slots,
    )


def current_query_start_loc(groups: dict):
    """The step's ``query_start_loc`` (CPU), from the ``CommonAttentionMetadata`` the runner handed the
    attention groups (``groups``: ``attention_groups_by_layer``), or None (profiling runs, or metadata
    that no group's builder built this step)."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return None
    metadata = get_forward_context().attn_metadata
    if not isinstance(metadata, dict) or not metadata:
        return None
    name, meta = next(iter(metadata.items()))
    group = groups.get(name)
    if group is None or getattr(group, "depth_metadata", None) is not meta:
        return None
    return group.depth_common.query_start_loc_cpu


# -- per-request depth controls -----------------------------------------------------------


def step_requests(runner, groups: dict) -> list:
    """The step's requests in token-layout order, with their depth controls (vLLM 0.32 ``InputBatch``)."""
    from vllm_depth.exits import StepRequest
    from vllm_depth.request_args import parse_request_args

    batch = runner.input_batch
    qsl = current_query_start_loc(groups)
    qlen = (qsl[1:] - qsl[:-1]).tolist() if qsl is not None else [0] * len(batch.req_ids)
    out = []
    for i, req_id in enumerate(batch.req_ids):
        params = runner.requests[req_id].sampling_params
        extra = params.extra_args if params is not None else None
        done = int(batch.num_computed_tokens_cpu[i])
        # a decode token: after the prompt, and the last of the request's known tokens (it samples the
        # next one); with kv_fill 'recompute' it may follow the exited token it re-runs
        decode = done >= int(batch.num_prompt_tokens[i]) and done + qlen[i] >= int(batch.num_tokens_no_spec[i])
        out.append(StepRequest(req_id, parse_request_args(extra), decode))
    return out


def patch_runner() -> None:
    """vLLM 0.32 ``GPUModelRunner._model_forward`` (also the CPU runner's).

    Before the forward, a depth model with exit layers is told the step's
    requests (token-layout order) and their per-request depth controls, and
    the attention group of each layer (whose builder narrows its metadata).
    Installed by the depth model when it is built (in the worker, where the
    runner module is already imported), so other processes never import it.
    """
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def wrap(original):
        def method(self, *args, **kwargs):
            model = self.get_model()
            prepare = getattr(model, "depth_prepare_step", None)
            if prepare is not None and model.model.exits_enabled:
                groups = attention_groups_by_layer(self.attn_groups)
                prepare(step_requests(self, groups), groups)
            return original(self, *args, **kwargs)

        return method

    _patch(GPUModelRunner, "_model_forward", wrap)
    patch_metadata_record()
    patch_step_output()


def patch_step_output() -> None:
    """vLLM 0.32 ``GPUModelRunner.sample_tokens``: what a depth engine's step output
    (``ModelRunnerOutput``, a plain dataclass pickled to the engine core) carries beside vLLM's fields:

    - ``depth_exits``: {request id: layers run} of the step's decode tokens, for the depth scheduler;
    - ``depth_drafts``: the self-draft's drafts (a ``DraftTokenIds`` or None).  Without async
      scheduling, vLLM's engine core asks the worker for them in a second RPC after every step
      (``EngineCore.post_step`` -> ``take_draft_token_ids``): one more round trip through the
      shared-memory queues per step, about 1.5% of a batch-1 step of SmolLM2 on this CPU (py-spy).
      ``take_draft_token_ids`` only reads what ``sample_tokens`` just stored, so taking it here gives
      the same value; the engine core's half is ``patch_draft_handoff_engine``.

    Installed in the worker by the depth model when it has exit layers (``patch_runner``) and by
    ``SelfDraft``."""
    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, DraftTokenIds
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_depth.drafting import SelfDraft

    def report(original):
        def method(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            take = getattr(self.get_model(), "take_step_exits", None)
            exits = take() if take is not None else None
            if out is None or out is EMPTY_MODEL_RUNNER_OUTPUT or not hasattr(out, "req_id_to_index"):
                return out
            if exits:
                out.depth_exits = exits
            if isinstance(getattr(self, "drafter", None), SelfDraft) and not self.use_async_scheduling:
                drafts = self.take_draft_token_ids()
                out.depth_drafts = (None if drafts is None
                                    else DraftTokenIds(list(drafts.req_ids), drafts.draft_token_ids))
            return out

        return method

    _patch(GPUModelRunner, "sample_tokens", report)


def _patch_sampling_params() -> None:
    """vLLM 0.32 ``SamplingParams._verify_args``: refuse bad ``depth_*`` extra_args up front.

    Runs where the request is built (``LLM.generate``, the OpenAI server's
    request conversion, which answers HTTP 400), so a bad value never reaches
    the engine.  Requests without ``depth_*`` keys are untouched.
    """
    from vllm.sampling_params import SamplingParams

    from vllm_depth.request_args import parse_request_args

    def wrap(original):
        def method(self, *args, **kwargs):
            original(self, *args, **kwargs)
            parse_request_args(self.extra_args)

        return method

    _patch(SamplingParams, "_verify_args", wrap)


class NativeKernels:
    """Eager steps of a compiled model run vLLM's platform kernels, not the torch-native ops.

    vLLM 0.32 ``CustomOp.dispatch_forward``: with torch.compile on, custom ops
    (RMSNorm, rotary, SiLU-and-mul) are set to ``forward_native`` so inductor
    can fuse them; run eagerly, those are many small torch ops.  The
    early-exit step runs eagerly (which tokens go on is data-dependent), so for
    its duration each op's ``_forward_method`` is the platform's kernel, as
    vLLM picks it when the op is enabled.
    """

    def __init__(self, module):
        from vllm.model_executor.custom_op import CustomOp
        from vllm.platforms import current_platform

        kind = "cpu" if current_platform.is_cpu() else "hip" if current_platform.is_rocm() else "cuda"
        self.ops = [
            (m, m._forward_method, getattr(m, f"forward_{kind}"))
            for m in module.modules()
            if isinstance(m, CustomOp) and hasattr(m, "_forward_method")
        ]

    # a plain attribute: ``object.__setattr__`` skips nn.Module's (about 4 us each, ~100 ops a step)
    def __enter__(self):
        for m, _, fast in self.ops:
            object.__setattr__(m, "_forward_method", fast)
        return self

    def __exit__(self, *exc):
        for m, default, _ in self.ops:
            object.__setattr__(m, "_forward_method", default)
        return False


def cudagraph_policy(mode, *, exits: bool, self_draft: bool = False):
    """The CUDA-graph mode a depth engine runs under, and why: ``(mode, reason)``.

    vLLM captures graphs of the model's whole forward (FULL) or of its pieces between attention ops
    (PIECEWISE), for fixed padded token counts, in warm-up runs where no token can exit.

    - Early exit: a step where a token may exit runs its compiled segments without graphs
      (``AttentionViews`` sets the step's runtime mode to NONE), so a compacted stretch never
      replays a graph captured for another row count; steps where no token can exit replay the
      full-depth graphs.  A FULL graph replays the whole forward without running the model's
      Python, so no exit check would run: the FULL part of a mode is dropped (FULL_AND_PIECEWISE ->
      PIECEWISE, FULL and FULL_DECODE_ONLY -> NONE).
    - Self-draft: the verifier runs at full depth and keeps every mode; the draft forwards run
      under their own forward context, without graphs.
    """
    from vllm.config import CUDAGraphMode

    if exits and mode.has_full_cudagraphs():
        kept = CUDAGraphMode.PIECEWISE if mode.has_mode(CUDAGraphMode.PIECEWISE) else CUDAGraphMode.NONE
        return kept, (f"{mode.name} -> {kept.name}: a full graph would replay the forward without its exit "
                      "checks; steps where a token may exit run their segments without graphs")
    if exits:
        return mode, (f"{mode.name}: steps where no token can exit replay the full-depth graphs; steps "
                      "where a token may exit run their segments without graphs")
    return mode, f"{mode.name}: the verifier keeps it; draft forwards run without graphs"


def _apply_cudagraph_policy(config, depth) -> None:
    """``cudagraph_policy`` on the engine config, with one start-up log line."""
    from vllm.logger import init_logger

    cc = config.compilation_config
    exits = depth.exit_layers is not None and config.speculative_config is None
    self_draft = is_self_draft(config.speculative_config)
    if not (exits or self_draft):
        return
    mode, reason = cudagraph_policy(cc.cudagraph_mode, exits=exits, self_draft=self_draft)
    cc.cudagraph_mode = mode
    init_logger(__name__).info("vllm-depth: cudagraph_mode %s", reason)


def check_exit_backend(attn) -> None:
    """Refuse (when the model is built, before weights load) an attention backend that early exit
    cannot use: the KV fill writes the K/V of skipped layers through the backend's own
    ``do_kv_cache_update``, which backends whose forward writes the cache itself
    (``forward_includes_kv_cache_update``) do not offer."""
    backend = attn.attn_backend
    if not backend.forward_includes_kv_cache_update:
        return
    raise DepthConfigError(f"depth.exit_layers: attention backend {backend.get_name()} writes the KV cache "
                           "inside its forward, so the K/V of skipped layers cannot be filled; allowed: "
                           f"{', '.join(exit_capable_backends())}, or no exit_layers")


def exit_capable_backends() -> list[str]:
    """The registered attention backends whose KV-cache write is a separate step (importable here)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    names = []
    for member in AttentionBackendEnum:
        try:
            backend = member.get_class()
        except Exception:  # a backend whose kernels this build lacks
            continue
        if not getattr(backend, "forward_includes_kv_cache_update", True):
            names.append(member.name)
    return names


def _sync_for_recompute(config, depth, asked_async) -> None:
    """kv_fill 'recompute' re-schedules an exited token in the step after its exit, which the
    scheduler knows only once that step's output is in: no async scheduling (vLLM 0.32 schedules
    step t+1 before step t's output), and the depth scheduler (``DepthScheduler._rerun_exited``)."""
    if not depth.recomputes():
        return
    sc = config.scheduler_config
    if asked_async:
        raise DepthConfigError("depth.kv_fill 'recompute' needs the step's exits before the next step is "
                               "scheduled; allowed: async_scheduling=False (or unset), or kv_fill 'propagate'")
    if sc.scheduler_cls is not None:
        raise DepthConfigError(f"depth.kv_fill 'recompute' is carried out by vllm-depth's scheduler; allowed: "
                               f"scheduler_cls unset (got {sc.scheduler_cls!r}), or kv_fill 'propagate'")
    if sc.async_scheduling:
        from vllm.logger import init_logger

        init_logger(__name__).info("vllm-depth: kv_fill 'recompute' runs with async scheduling off")
        sc.async_scheduling = False


def _patch_engine_args() -> None:
    """vLLM 0.32 ``EngineArgs.create_engine_config``: the depth scheduler for ``--model-impl depth``.

    Only when the user asked for no scheduler class of their own; chosen
    after vLLM has settled ``async_scheduling``.
    """
    from vllm.engine.arg_utils import EngineArgs

    def wrap(original):
        def method(self, *args, **kwargs):
            config = original(self, *args, **kwargs)
            if is_self_draft(config.speculative_config):
                _check_self_draft(config)
            if _is_depth(config.model_config):
                pc, hf = config.parallel_config, config.model_config.hf_config
                depth = depth_config_of(hf)
                check_parallel(depth, pc.tensor_parallel_size, pc.pipeline_parallel_size,
                               len(depth.schedule(hf.num_hidden_layers)))
                _sync_for_recompute(config, depth, self.async_scheduling)
                _apply_cudagraph_policy(config, depth)
                if config.scheduler_config.scheduler_cls is None:
                    name = "DepthAsyncScheduler" if config.scheduler_config.async_scheduling else "DepthScheduler"
                    config.scheduler_config.scheduler_cls = f"vllm_depth.scheduler.{name}"
            return config

        return method

    _patch(EngineArgs, "create_engine_config", wrap)


# -- self-speculative decoding ------------------------------------------------------------


def is_self_draft(speculative_config) -> bool:
    from vllm_depth.drafting import PROPOSER

    return (speculative_config is not None and speculative_config.method == "custom_class"
            and speculative_config.model in (PROPOSER, "vllm_depth.drafting.SelfDraft"))


def _check_self_draft(config) -> None:
    """Refuse a self-draft that cannot run, while the engine config is built (before any process starts)."""
    from vllm_depth.drafting import PROPOSER

    if not _is_depth(config.model_config):
        raise ValueError(f"speculative_config.model={PROPOSER!r} drafts from the depth model; "
                         f"allowed: with model_impl='depth' (got {config.model_config.model_impl!r})")
    if depth_config_of(config.model_config.hf_config).draft_positions() is None:
        raise ValueError(f"speculative_config.model={PROPOSER!r}: the depth config names no draft; allowed: "
                         "depth.draft_layers (int) or depth.draft_schedule (list), in the checkpoint's "
                         "config.json or hf_overrides={'depth': {...}}")


def _patch_lookahead() -> None:
    """vLLM 0.32 ``VllmConfig.num_lookahead_tokens`` (a property): KV slots for the self-draft.

    vLLM reserves no slots past the scheduled tokens for ``custom_class``
    proposers (they only return token ids).  The self-draft writes K/V at the
    draft tokens' positions, up to ``num_speculative_tokens`` past the last
    accepted token, as EAGLE and draft models do: reserve that many, as vLLM
    does for them.
    """
    from vllm.config import VllmConfig

    prop = VllmConfig.__dict__["num_lookahead_tokens"]
    if getattr(prop.fget, _PATCHED, False):
        return

    @functools.wraps(prop.fget)
    def fget(self):
        if is_self_draft(self.speculative_config):
            return self.speculative_config.num_speculative_tokens
        return prop.fget(self)

    setattr(fget, _PATCHED, True)
    VllmConfig.num_lookahead_tokens = property(fget)


def patch_drafter_binding() -> None:
    """vLLM 0.32 ``GPUModelRunner.initialize_kv_cache`` (the CPU runner calls it through ``super``):
    once the KV cache and the attention metadata builders exist, a drafter with
    ``bind_runner`` is given the runner (vLLM hands ``custom_class`` proposers
    only the target model).  Installed by ``SelfDraft`` in the worker."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def wrap(original):
        def method(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            bind = getattr(getattr(self, "drafter", None), "bind_runner", None)
            if bind is not None:
                bind(self)
            return out

        return method

    _patch(GPUModelRunner, "initialize_kv_cache", wrap)


def patch_plain_steps() -> None:
    """vLLM 0.32 ``GPUModelRunner._prepare_inputs``: with a speculative config, every step builds
    ``SpecDecodeMetadata`` and samples through the rejection sampler, also a step that verifies no
    draft (``use_spec_decode = self.speculative_config is not None``).  A self-draft that backs off
    drafts in few steps; a step whose scheduler output carries no draft tokens is prepared as a
    plain decode step (no metadata, the plain sampler: about 0.35 ms a step on this CPU).  The
    scheduler, bookkeeping and ``propose`` handle both shapes.  Installed by ``SelfDraft``."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_depth.drafting import SelfDraft

    def wrap(original):
        def method(self, scheduler_output, *args, **kwargs):
            drafter = getattr(self, "drafter", None)
            if scheduler_output.scheduled_spec_decode_tokens or not isinstance(drafter, SelfDraft):
                return original(self, scheduler_output, *args, **kwargs)
            drafter.counters.plain_steps += 1
            spec, self.speculative_config = self.speculative_config, None
            try:
                return original(self, scheduler_output, *args, **kwargs)
            finally:
                self.speculative_config = spec

        return method

    _patch(GPUModelRunner, "_prepare_inputs", wrap)


def patch_draft_states() -> None:
    """vLLM 0.32 ``GPUModelRunner.propose_draft_token_ids``: vLLM hands ``custom_class`` proposers
    the sampled tokens only; a drafter with ``take_verifier_states`` is also given the step's
    ``sample_hidden_states`` (the model's final, normed states at the sampled rows) and its
    ``spec_decode_metadata`` (None: one row per request), as vLLM's Medusa proposer reads them.
    A ``prev_state`` draft head reads the row that sampled each request's last token.
    Installed by ``SelfDraft``."""
    import inspect

    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def wrap(original):
        signature = inspect.signature(original)

        def method(self, *args, **kwargs):
            take = getattr(getattr(self, "drafter", None), "take_verifier_states", None)
            if take is not None:
                bound = signature.bind(self, *args, **kwargs).arguments
                take(bound["sample_hidden_states"], bound["spec_decode_metadata"])
            return original(self, *args, **kwargs)

        return method

    _patch(GPUModelRunner, "propose_draft_token_ids", wrap)


NO_HANDOFF = object()  # the step's output carried no drafts: ask the worker (vLLM's own path)


def patch_draft_handoff_engine() -> None:
    """vLLM 0.32 ``EngineCore.post_step``: when the step's output brought the drafts
    (``patch_step_output``; the depth scheduler keeps them as ``depth_drafts``), hand them
    to the scheduler as vLLM would, without the ``take_draft_token_ids`` RPC.  Any other step
    (another scheduler, an output that was rebuilt on the way) takes vLLM's own path.
    Installed by the depth scheduler in the engine core when the self-draft is configured."""
    from vllm.v1.engine.core import EngineCore

    def wrap(original):
        def method(self, model_executed: bool) -> None:
            drafts = getattr(self.scheduler, "depth_drafts", NO_HANDOFF)
            if drafts is NO_HANDOFF or self.async_scheduling or not self.check_for_draft_tokens:
                return original(self, model_executed)
            self.scheduler.depth_drafts = NO_HANDOFF
            if model_executed and drafts is not None:
                self.scheduler.update_draft_token_ids(drafts)

        return method

    _patch(EngineCore, "post_step", wrap)


def draft_attention(runner, rows, positions):
    """Attention metadata for one draft token per request row at ``positions`` (decode-shaped).

    vLLM 0.32 ``GPUModelRunner._build_attention_metadata`` for a step the
    runner did not schedule: the rows' block tables (``InputBatch.block_table``),
    seq_lens ``position + 1``, and each attention group's own metadata builder
    (``AttentionGroup.build_metadata``), as for a subset of a step's rows.
    Returns (per-layer metadata, per-layer slot mapping) for ``set_forward_context``.
    """
    from vllm.v1.attention.backend import CommonAttentionMetadata

    n = rows.numel()
    device = runner.device
    metadata, slot_mapping = {}, {}
    seq_lens_cpu = (positions + 1).to(torch.int32)
    qsl_cpu = torch.arange(n + 1, dtype=torch.int32)
    seq_lens, qsl, pos = (_to(x, device) for x in (seq_lens_cpu, qsl_cpu, positions))
    for gid, group in enumerate(runner.kv_cache_config.kv_cache_groups):
        table = runner.input_batch.block_table[gid]
        blocks_cpu = table.get_cpu_tensor()[rows]
        bs = table.block_size
        slots = blocks_cpu.gather(1, (positions // bs)[:, None])[:, 0].long() * bs + positions % bs
        slots = _to(slots, device)
        common = CommonAttentionMetadata(
            query_start_loc=qsl, query_start_loc_cpu=qsl_cpu, seq_lens=seq_lens, num_reqs=n,
            num_actual_tokens=n, max_query_len=1, max_seq_len=int(seq_lens_cpu.max()),
            block_table_tensor=_to(blocks_cpu, device), slot_mapping=slots, causal=True,
            seq_lens_cpu_upper_bound=seq_lens_cpu, positions=pos,
        )
        for attn_group in runner.attn_groups[gid]:
            meta = build_group_metadata(attn_group, common)
            for name in attn_group.layer_names:
                metadata[name] = meta
        for name in group.layer_names:
            slot_mapping[name] = slots
    return metadata, slot_mapping


def patch_rejection_sampler() -> None:
    """vLLM 0.32 ``vllm.v1.sample.rejection_sampler.expand_batch_to_tokens`` on the CPU.

    It expands per-request sampling settings (temperature, top-k, top-p) to
    one value per draft token through ``expand_kernel``, whose CPU version
    (``cpu_triton_utils._expand_kernel_impl``) converts the output buffer to
    int64 and writes into that copy: the float temperatures stay uninitialised
    memory.  Verified tokens of random requests then come from garbage-scaled
    logits (measured on SmolLM2 at temperature 0.8: stock vLLM's own ``ngram``
    method drew its second and third tokens from a visibly different
    distribution than plain decoding).  The expansion is done here with
    ``repeat_interleave``.  Installed by ``SelfDraft`` (its worker only).
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.v1.sample.rejection_sampler as rs

    def wrap(original):
        def method(x, cu_num_tokens, num_tokens, replace_from=0, replace_to=0):
            return expand_batch_to_tokens(x, cu_num_tokens, num_tokens, replace_from, replace_to)

        return method

    _patch(rs, "expand_batch_to_tokens", wrap)


def expand_batch_to_tokens(x, cu_num_tokens, num_tokens: int, replace_from=0, replace_to=0):
    """[a, b, c] with cu_num_tokens [2, 5, 6] -> [a, a, b, b, b, c]; ``replace_from`` values become ``replace_to``."""
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1, dtype=torch.long))
    out = x.new_zeros(num_tokens)
    expanded = torch.repeat_interleave(x, counts)
    out[: expanded.numel()] = expanded
    if replace_from != replace_to:
        out = torch.where(out == replace_from, torch.tensor(replace_to, dtype=out.dtype), out)
    return out


def serve_arg_parsing():
    """``vllm serve``'s ``(make_arg_parser, validate_parsed_serve_args)``: in
    ``vllm.entrypoints.common.cli_args`` from vLLM 0.33, ``vllm.entrypoints.launchers.cli_args`` in 0.32."""
    try:
        from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
    except ImportError:  # vLLM 0.32
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    return make_arg_parser, validate_parsed_serve_args


async def openai_app(cli_args: list[str]):
    """An engine and vLLM's own OpenAI FastAPI app in this process, for a front end of one's own
    (the Ray Serve example): ``(app, engine)`` from ``vllm serve`` arguments.

    vLLM 0.32 ``entrypoints.launchers.api_server.entry.build_and_serve`` without
    the socket: the same parser (``serve_arg_parsing``), engine
    (``build_async_engine_client_from_engine_args``'s ``AsyncLLM.from_vllm_config``),
    app (``launchers.app.build_app``) and state (``init_app_state``), so requests
    get what ``vllm serve`` gives them (``vllm_xargs``, 400 on bad values, /metrics).
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    make_arg_parser, validate_parsed_serve_args = serve_arg_parsing()
    from vllm.usage.usage_lib import UsageContext
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.engine.async_llm import AsyncLLM

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(cli_args)
    if args.model_tag is not None:
        args.model = args.model_tag
    validate_parsed_serve_args(args)
    engine_args = AsyncEngineArgs.from_cli_args(args)
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    engine = AsyncLLM.from_vllm_config(vllm_config=vllm_config, usage_context=UsageContext.OPENAI_API_SERVER,
                                       enable_log_requests=engine_args.enable_log_requests,
                                       disable_log_stats=engine_args.disable_log_stats)
    tasks = await engine.get_supported_tasks()
    app = build_app(args, tasks, engine.model_config)
    await init_app_state(engine, app.state, args, tasks)
    return app, engine
