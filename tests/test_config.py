"""The depth config: parsing and errors that name the field, refused before any weight loads."""

from __future__ import annotations

import pytest

from vllm_depth.config import DepthConfigError, parse_depth_config


def test_exit_fields_and_defaults():
    cfg = parse_depth_config({"exit_layers": [1, 3]}, 4)
    assert (cfg.exit_layers, cfg.exit_criterion, cfg.exit_threshold, cfg.min_layer, cfg.kv_fill) == (
        (1, 3), "softmax", 0.9, 0, "propagate")
    assert parse_depth_config(cfg.to_dict(), 4) == cfg  # round trip
    assert "exit_criterion" not in parse_depth_config({}, 4).to_dict()  # no exit fields without exit points


def test_request_args():
    from vllm_depth.request_args import RequestDepth, parse_request_args

    assert parse_request_args(None) == RequestDepth()
    assert parse_request_args({"other": 1}) == RequestDepth()  # not ours
    assert parse_request_args({"depth_exit": 0}) == RequestDepth(exit=False)  # HTTP sends false as 0
    assert parse_request_args({"depth_exit_threshold": 0, "depth_min_layer": 8}) == RequestDepth(True, 0.0, 8)
    for bad, key in [({"depth_exit_threshold": 1.01}, "depth_exit_threshold"), ({"depth_exit_threshold": "x"}, "depth_exit_threshold"),
                     ({"depth_min_layer": 1.5}, "depth_min_layer"), ({"depth_exit": 2}, "depth_exit"),
                     ({"depth_exits": True}, "depth_exits")]:
        with pytest.raises(ValueError, match=key):
            parse_request_args(bad)


def test_sampling_params_leave_depth_args_to_the_engine_that_serves_the_depth_model():
    """Building ``SamplingParams`` checks nothing of ``depth_*`` (a stock engine ignores them); the
    depth engine's front end refuses bad ones (tests/test_early_exit.py, tests/test_serving.py)."""
    import vllm_depth

    vllm_depth.register()
    from vllm import SamplingParams

    assert SamplingParams(extra_args={"depth_min_layer": -3}).extra_args == {"depth_min_layer": -3}


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
        ({"layer_schedul": [0]}, r"unknown field\(s\) \['layer_schedul'\]; allowed fields: \['draft_backoff', 'draft_layers', 'draft_schedule', 'draft_threshold', 'draft_tokens', 'exit_check', 'exit_criterion', 'exit_heads', 'exit_layers', 'exit_threshold', 'kv_fill', 'layer_schedule', 'min_layer', 'relax_positions', 'relax_rank'\]"),
        ({"exit_layers": [4]}, r"depth.exit_layers: entry 0 is 4; the schedule has 4 positions, so 1..3"),
        ({"exit_layers": [0]}, r"depth.exit_layers: entry 0 is 0"),
        ({"exit_layers": [2, 1]}, r"depth.exit_layers: \[2, 1\] is not strictly increasing"),
        ({"exit_layers": [1, 1]}, r"not strictly increasing"),
        ({"exit_layers": []}, r"depth.exit_layers: expected a non-empty list"),
        ({"layer_schedule": [0, 1], "exit_layers": [2]}, r"the schedule has 2 positions, so 1..1"),
        ({"exit_threshold": 0.5}, r"depth.exit_layers: \['exit_threshold'\] given without exit_layers"),
        ({"exit_layers": [1], "exit_criterion": "entropy"}, r"depth.exit_criterion: 'entropy' is not a known criterion; allowed: one of 'softmax', 'margin', 'saturation', 'head'"),
        ({"exit_layers": [1, 2], "exit_threshold": [0.5]}, r"depth.exit_threshold: 1 thresholds for 2 exit layers"),
        ({"exit_layers": [1, 2], "exit_threshold": [0.5, 2]}, r"depth.exit_threshold: 2 is out of range"),
        ({"exit_layers": [1], "exit_threshold": [[0.5]]}, r"depth.exit_threshold: \[0.5\] is out of range"),
        ({"exit_layers": [1, 2], "exit_criterion": "head"}, r"depth.exit_criterion: 'head' needs a trained head at every exit layer; none at \[1, 2\]"),
        ({"exit_layers": [1, 2], "exit_criterion": "head", "exit_heads": {"layers": [2]}}, r"none at \[1\]"),
        ({"exit_heads": {"layers": [4]}}, r"depth.exit_heads: layers \[4\]: expected increasing ints in 1..3"),
        ({"exit_heads": {"layers": [1], "vocab": -1}}, r"depth.exit_heads: vocab -1 is not an int >= 0"),
        ({"exit_heads": {"layers": [1], "size": 3}}, r"depth.exit_heads: .* is not such an object"),
        ({"exit_layers": [1], "exit_threshold": 1.5}, r"depth.exit_threshold: 1.5 is out of range; allowed: a number from 0.0"),
        ({"exit_layers": [1], "exit_threshold": True}, r"depth.exit_threshold: True is out of range"),
        ({"exit_layers": [1], "min_layer": -1}, r"depth.min_layer: -1 is not an int >= 0"),
        ({"exit_layers": [1], "kv_fill": "exact"}, r"depth.kv_fill: 'exact' is not supported; allowed: 'propagate' \(state propagation\) or 'recompute'"),
        ({"exit_layers": [1], "exit_check": "gpu"}, r"depth.exit_check: 'gpu' is not supported; allowed: 'auto' \(fused on GPUs"),
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
    """Every error names the field and what is allowed."""
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


def test_the_attention_draft_head_on_gemma3_refused_when_the_engine_config_is_built(gemma3_dir):
    heads = {"layers": [0], "prev_state": True, "attention": True}
    with pytest.raises(Exception, match=r"depth.exit_heads: attention \(the attention draft head\) is not available "
                                        r"for the gemma3 family; allowed: attention false"):
        _engine_config(gemma3_dir, model_impl="depth", hf_overrides={"depth": {"exit_heads": heads}})
    _engine_config(gemma3_dir, model_impl="depth", hf_overrides={"depth": {"exit_heads": {"layers": [6]}}})


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


def test_per_layer_thresholds_and_heads():
    d = parse_depth_config({"exit_layers": [1, 2], "exit_threshold": [0.9, 0.5], "exit_criterion": "head",
                            "exit_heads": {"layers": [1, 2, 3], "vocab": 16}}, 4, hidden_size=64)
    assert d.thresholds() == (0.9, 0.5) and d.exit_heads.vocab == 16
    assert parse_depth_config(d.to_dict(), 4, hidden_size=64) == d  # round trip
    assert parse_depth_config({"exit_layers": [1, 2]}, 4).thresholds() == (0.9, 0.9)
    heads_only = parse_depth_config({"exit_heads": {"layers": [2]}}, 4)  # trained, not yet used for exits
    assert heads_only.exit_layers is None and heads_only.to_dict() == {"exit_heads": {"layers": [2], "mlp_width": 0, "vocab": 0}}


@pytest.mark.parametrize(
    "raw, pattern",
    [
        ({"draft_layers": 30}, r"depth.draft_layers: 30; the schedule has 30 positions, so 1..29"),
        ({"draft_layers": 4, "draft_schedule": [0, 1]}, r"depth.draft_schedule: give draft_layers or draft_schedule"),
        ({"draft_schedule": [3, 1]}, r"depth.draft_schedule: \[3, 1\] is not strictly increasing"),
        ({"draft_threshold": 0.5}, r"depth.draft_layers: \['draft_threshold'\] given without draft_layers"),
        ({"draft_layers": 4, "draft_tokens": 0}, r"depth.draft_tokens: 0 is not an int >= 1"),
        ({"draft_layers": 4, "draft_backoff": -1}, r"depth.draft_backoff: -1 is not an int >= 0"),
    ],
)
def test_bad_draft_settings_name_the_field(raw, pattern):
    with pytest.raises(DepthConfigError, match=pattern):
        parse_depth_config(raw, 30)


def test_draft_positions_of_prefix_and_skip_set():
    assert parse_depth_config({"draft_layers": 3}, 30).draft_positions() == (0, 1, 2)
    cfg = parse_depth_config({"draft_schedule": [0, 1, 5], "draft_tokens": 2}, 30)
    assert cfg.draft_positions() == (0, 1, 5)
    assert cfg.to_dict() == {"draft_schedule": [0, 1, 5], "draft_threshold": 0.0, "draft_backoff": 16, "draft_tokens": 2}
