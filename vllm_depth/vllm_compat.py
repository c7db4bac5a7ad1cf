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

import vllm

from vllm_depth.config import DepthConfigError, check_parallel, depth_config_of
from vllm_depth.models.families import SUPPORTED_ARCHITECTURES

VLLM_VERSION = "0.32"
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
    if not vllm.__version__.startswith(VLLM_VERSION):
        import warnings

        warnings.warn(
            f"vllm-depth was written against vLLM {VLLM_VERSION}.x; found {vllm.__version__}",
            stacklevel=2,
        )
    _patch_registry()
    _patch_sampling_params()
    _patch_engine_args()
    _patch_lookahead()


# -- token-level exits: attention over the rows that are still running --------------------


def subset_attention_metadata(meta, req_of_row, keep_rows, layer, dtype):
    """vLLM 0.32 ``CPUAttentionMetadataBuilder.build``, redone for a subset of rows.

    Exited decode tokens leave the batch; the later positions' attention runs
    over the kept rows only (``keep_rows``, of requests ``req_of_row``: their
    query/sequence lengths, block tables and slots), so it does proportionally
    less work.  The rows a request keeps are its first ones (only a request's
    last row can exit).  The scheduler metadata
    is rebuilt for the smaller batch exactly as the builder builds it.
    """
    import dataclasses

    import torch
    from vllm import _custom_ops as ops
    from vllm import envs
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionMetadata

    if not isinstance(meta, CPUAttentionMetadata):
        raise NotImplementedError(
            f"token-level early exit needs the CPU attention backend here (got {type(meta).__name__}); "
            "allowed: CPU_ATTN"
        )
    if meta.dynamic_causal is not None or meta.encoder_cache is not None:
        raise NotImplementedError("token-level early exit supports causal decoder attention only")
    qsl = meta.query_start_loc
    keep_reqs, qlen = torch.unique_consecutive(req_of_row, return_counts=True)
    new_qsl = torch.zeros(keep_reqs.numel() + 1, dtype=qsl.dtype)
    torch.cumsum(qlen, 0, out=new_qsl[1:])
    # a request that kept only its first rows (kv_fill 'recompute': the re-run token goes on, the new
    # one exited) attends as a shorter one
    seq_lens = meta.seq_lens[keep_reqs] - ((qsl[1:] - qsl[:-1])[keep_reqs] - qlen).to(meta.seq_lens.dtype)
    scheduler_metadata = ops.cpu_attn_get_scheduler_metadata(
        num_reqs=keep_reqs.numel(),
        num_heads=layer.num_heads,
        num_kv_heads=layer.num_kv_heads,
        head_dim=layer.head_size,
        seq_lens=seq_lens,
        dtype=dtype,
        query_start_loc=new_qsl,
        causal=meta.causal,
        sliding_window_size=layer.impl.sliding_window,
        isa=layer.isa,
        enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV,
        dynamic_causal=None,
        kv_cache_dtype=layer.impl.kv_cache_dtype,
    )
    return dataclasses.replace(
        meta,
        num_actual_tokens=keep_rows.numel(),
        max_query_len=int(qlen.max()),
        query_start_loc=new_qsl,
        max_seq_len=int(seq_lens.max()),
        seq_lens=seq_lens,
        block_table=meta.block_table[keep_reqs],
        slot_mapping=meta.slot_mapping[keep_rows],
        scheduler_metadata=scheduler_metadata,
    )


class AttentionViews:
    """The forward context's attention metadata and slots, narrowed as tokens exit.

    vLLM 0.32 ``ForwardContext.attn_metadata`` / ``slot_mapping`` (dicts keyed
    by layer name) are what ``Attention.forward`` reads; they are replaced for
    the rest of the step and restored by ``restore()``.
    """

    def __init__(self):
        from vllm.forward_context import get_forward_context

        self.ctx = get_forward_context()
        self.attn_metadata = self.ctx.attn_metadata
        self.slot_mapping = self.ctx.slot_mapping
        if not isinstance(self.attn_metadata, dict) or not isinstance(self.slot_mapping, dict):
            raise NotImplementedError("token-level early exit needs one attention metadata per layer")

    def slots_of(self, rows):
        """``attn ->`` the original cache slots of ``rows`` at ``attn``'s layer (for the KV fill),
        indexing each distinct slot mapping once (the layers of one KV cache group share theirs)."""
        memo = {}

        def slots(attn):
            mapping = self.slot_mapping[attn.layer_name]
            out = memo.get(id(mapping))
            if out is None:
                out = memo[id(mapping)] = mapping[rows]
            return out

        return slots

    def narrow(self, layers, req_of_row, keep_rows, dtype) -> None:
        """From now on, ``layers`` attend for the kept rows only (``req_of_row``: their requests)."""
        subsets: dict[int, object] = {}
        metadata, slots = dict(self.attn_metadata), dict(self.slot_mapping)
        for attn in layers:
            meta = self.attn_metadata[attn.layer_name]
            if id(meta) not in subsets:
                subsets[id(meta)] = subset_attention_metadata(meta, req_of_row, keep_rows, attn, dtype)
            metadata[attn.layer_name] = subsets[id(meta)]
            slots[attn.layer_name] = self.slot_mapping[attn.layer_name][keep_rows]
        self.ctx.attn_metadata, self.ctx.slot_mapping = metadata, slots

    def restore(self) -> None:
        self.ctx.attn_metadata, self.ctx.slot_mapping = self.attn_metadata, self.slot_mapping


def write_kv(attn, key, value, slots) -> None:
    """vLLM 0.32 ``unified_kv_cache_update``: write K/V rows into ``attn``'s paged cache at ``slots``."""
    attn.impl.do_kv_cache_update(
        attn,
        key.view(-1, attn.num_kv_heads, attn.head_size),
        value.view(-1, attn.num_kv_heads, attn.head_size_v),
        attn.kv_cache,
        slots,
    )


def current_query_start_loc():
    """The step's ``query_start_loc`` (any layer's attention metadata), or None (profiling runs)."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return None
    metadata = get_forward_context().attn_metadata
    if not isinstance(metadata, dict) or not metadata:
        return None
    return getattr(next(iter(metadata.values())), "query_start_loc", None)


# -- per-request depth controls -----------------------------------------------------------


def step_requests(runner) -> list:
    """The step's requests in token-layout order, with their depth controls (vLLM 0.32 ``InputBatch``)."""
    from vllm_depth.exits import StepRequest
    from vllm_depth.request_args import parse_request_args

    batch = runner.input_batch
    qsl = current_query_start_loc()
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
    requests (token-layout order) and their per-request depth controls.
    Installed by the depth model when it is built (in the worker, where the
    runner module is already imported), so other processes never import it.
    """
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def wrap(original):
        def method(self, *args, **kwargs):
            model = self.get_model()
            prepare = getattr(model, "depth_prepare_step", None)
            if prepare is not None and model.model.exits_enabled:
                prepare(step_requests(self))
            return original(self, *args, **kwargs)

        return method

    _patch(GPUModelRunner, "_model_forward", wrap)
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
    seq_lens ``position + 1``, and each attention group's metadata builder.
    Returns (per-layer metadata, per-layer slot mapping) for ``set_forward_context``.
    """
    import torch
    from vllm.v1.attention.backend import CommonAttentionMetadata

    n = rows.numel()
    metadata, slot_mapping = {}, {}
    for gid, group in enumerate(runner.kv_cache_config.kv_cache_groups):
        table = runner.input_batch.block_table[gid]
        blocks = table.get_cpu_tensor()[rows]
        bs = table.block_size
        slots = blocks.gather(1, (positions // bs)[:, None])[:, 0].long() * bs + positions % bs
        seq_lens = (positions + 1).to(torch.int32)
        qsl = torch.arange(n + 1, dtype=torch.int32)
        common = CommonAttentionMetadata(
            query_start_loc=qsl, query_start_loc_cpu=qsl, seq_lens=seq_lens, num_reqs=n,
            num_actual_tokens=n, max_query_len=1, max_seq_len=int(seq_lens.max()),
            block_table_tensor=blocks, slot_mapping=slots, causal=True,
            seq_lens_cpu_upper_bound=seq_lens, positions=positions,
        )
        for attn_group in runner.attn_groups[gid]:
            meta = attn_group.get_metadata_builder().build(common_prefix_len=0, common_attn_metadata=common)
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
    import torch

    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1, dtype=torch.long))
    out = x.new_zeros(num_tokens)
    expanded = torch.repeat_interleave(x, counts)
    out[: expanded.numel()] = expanded
    if replace_from != replace_to:
        out = torch.where(out == replace_from, torch.tensor(replace_to, dtype=out.dtype), out)
    return out


async def openai_app(cli_args: list[str]):
    """An engine and vLLM's own OpenAI FastAPI app in this process, for a front end of one's own
    (the Ray Serve example): ``(app, engine)`` from ``vllm serve`` arguments.

    vLLM 0.32 ``entrypoints.launchers.api_server.entry.build_and_serve`` without
    the socket: the same parser (``launchers.cli_args.make_arg_parser``), engine
    (``build_async_engine_client_from_engine_args``'s ``AsyncLLM.from_vllm_config``),
    app (``launchers.app.build_app``) and state (``init_app_state``), so requests
    get what ``vllm serve`` gives them (``vllm_xargs``, 400 on bad values, /metrics).
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
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
