"""The depth config: parsing and errors that name the field, refused before any weight loads."""

from __future__ import annotations

import pytest

from vllm_depth.config import DepthConfigError, parse_depth_config


def test_identity_by_default():
    cfg = parse_depth_config(None, 30)
    assert cfg.schedule(30) == tuple(range(30))
    assert parse_depth_config({}, 4).schedule(4) == (0, 1, 2, 3)


@pytest.mark.parametrize(
    "schedule", [[0, 1, 3], [3, 2, 1, 0], [0, 0, 1, 1, 2, 2, 3, 3], [2]]
)
def test_valid_schedules(schedule):
    assert parse_depth_config({"layer_schedule": schedule}, 4).schedule(4) == tuple(schedule)


@pytest.mark.parametrize(
    "raw, pattern",
    [
        ({"layer_schedul": [0]}, r"unknown field\(s\) \['layer_schedul'\]; allowed fields: \['layer_schedule', 'relax_positions', 'relax_rank'\]"),
        ({"relax_rank": 4}, r"depth.relax_positions: relax_rank and relax_positions go together"),
        ({"relax_rank": 0, "relax_positions": [0]}, r"depth.relax_rank: 0 is not an int in 1..64"),
        ({"relax_rank": 65, "relax_positions": [0]}, r"depth.relax_rank: 65 is not an int in 1..64"),
        ({"relax_rank": 4, "relax_positions": [4]}, r"depth.relax_positions: entry 0 is 4; the schedule has 4 positions, so 0..3"),
        ({"layer_schedule": [0, 0], "relax_rank": 4, "relax_positions": [2]}, r"the schedule has 2 positions, so 0..1"),
        ({"relax_rank": 4, "relax_positions": [1, 1]}, r"depth.relax_positions: positions repeat"),
        ({"layer_schedule": []}, r"depth.layer_schedule: the schedule is empty; allowed: a non-empty list"),
        ({"layer_schedule": [0, 4]}, r"depth.layer_schedule: entry 1 is 4, out of range: .* 4 layers, so indices 0..3"),
        ({"layer_schedule": [-1]}, r"depth.layer_schedule: entry 0 is -1, out of range"),
        ({"layer_schedule": [0, 1.0]}, r"depth.layer_schedule: entry 1 is 1.0, not an int"),
        ({"layer_schedule": [True]}, r"depth.layer_schedule: entry 0 is True, not an int"),
        ({"layer_schedule": "0,1"}, r"depth.layer_schedule: expected a list, got str"),
        ([0, 1], r"depth: expected an object"),
        ("{not json", r"depth: not valid JSON"),
    ],
)
def test_bad_configs_name_the_field(raw, pattern):
    with pytest.raises(DepthConfigError, match=pattern):
        parse_depth_config(raw, 4, hidden_size=64)


def _engine_config(model, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=model, gpu_memory_utilization=0.3, **kwargs).create_engine_config()


def test_bad_config_refused_when_the_engine_config_is_built(tiny_dir):
    # EngineArgs -> VllmConfig is what LLM() and `vllm serve` do before starting
    # any process or loading any weight.
    with pytest.raises(Exception, match=r"depth.layer_schedule: entry 0 is 99, out of range"):
        _engine_config(tiny_dir, model_impl="depth", hf_overrides={"depth": {"layer_schedule": [99]}})
    with pytest.raises(Exception, match=r"unknown field\(s\) \['exits'\]"):
        _engine_config(tiny_dir, model_impl="depth", hf_overrides={"depth": {"exits": 1}})


def test_stored_depth_config_is_read_from_the_checkpoint(tiny_dir, tmp_path):
    import json
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["depth"] = {"layer_schedule": [0, 7]}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match=r"entry 1 is 7, out of range"):
        _engine_config(str(ckpt), model_impl="depth")
    # without --model-impl depth the depth config is not consulted: stock vLLM
    assert _engine_config(str(ckpt)).model_config.architecture == "LlamaForCausalLM"


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128).save_pretrained(tmp_path)
    with pytest.raises(Exception, match=r"cannot run architecture.*GPT2.*supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
        _engine_config(str(tmp_path), model_impl="depth", skip_tokenizer_init=True)
