"""The multi-arm bench's pure logic: the round order, the groups that fit, arm parsing."""

from __future__ import annotations

import pytest

from vllm_depth.tools import bench_arms as ba


@pytest.mark.parametrize("n_arms, rounds", [(1, 2), (3, 2), (4, 3)])
def test_stock_separates_every_two_arm_rounds_and_every_arm_runs_each_round(n_arms, rounds):
    seq = ba.round_schedule(n_arms, rounds)
    assert seq[0] is None and seq[-1] is None
    assert all((a is None) != (b is None) for a, b in zip(seq, seq[1:]))  # stock, arm, stock, arm, ...
    arm_rounds = [s for s in seq if s is not None]
    assert len(arm_rounds) == n_arms * rounds
    for r in range(rounds):
        assert sorted(arm_rounds[r * n_arms:(r + 1) * n_arms]) == list(range(n_arms))


@pytest.mark.parametrize("n_arms, rounds", [(3, 2), (3, 4), (4, 6)])
def test_every_arm_has_the_same_mean_position_over_each_pair_of_rounds(n_arms, rounds):
    """Rounds run an order and its reverse (ABBA), so linear drift falls on all arms alike."""
    arm_rounds = [s for s in ba.round_schedule(n_arms, rounds) if s is not None]
    orders = [arm_rounds[i:i + n_arms] for i in range(0, len(arm_rounds), n_arms)]
    for pair in zip(orders[::2], orders[1::2]):
        assert {pair[0].index(a) + pair[1].index(a) for a in range(n_arms)} == {n_arms - 1}
    assert len({tuple(o) for o in orders[::2]}) == min(n_arms, rounds // 2)  # the order rotates between pairs


@pytest.mark.parametrize("arm, stock", [([10.0, 30.0], [20.0, 10.0]), ([5.0, 5.2, 4.9], [5.1, 5.0, 6.0]),
                                         ([12.0], [8.0])])
def test_the_pooled_speedup_lies_inside_the_per_round_range(arm, stock):
    arm_tps, stock_tps, speedup = ba.pooled_speedup(arm, stock)
    per_round = [a / s for a, s in zip(arm, stock)]
    assert min(per_round) - 1e-4 <= speedup <= max(per_round) + 1e-4
    assert arm_tps == pytest.approx(sum(arm) / len(arm)) and speedup == pytest.approx(arm_tps / stock_tps, abs=1e-4)
    assert ba.pooled_speedup([], [])[2] is None


def test_groups_that_fit_the_free_memory():
    assert ba.groups_that_fit(4, 2000, 3072 + 8000) == 4
    assert ba.groups_that_fit(4, 2000, 3072 + 4100) == 2
    assert ba.groups_that_fit(4, 2000, 1000) == 1  # at least one arm at a time
    assert ba.groups_that_fit(2, 100, 1e6) == 2


def test_groups_hold_at_most_one_arm_that_counts_vllms_own_speculation():
    from types import SimpleNamespace

    arms = [SimpleNamespace(name=n, counts_vllm_drafts=c) for n, c in
            [("ngram", True), ("eagle", True), ("a", False), ("b", False), ("c", False), ("suffix", True)]]
    names = [[a.name for a in g] for g in ba.plan_groups(arms, 3)]
    assert names == [["ngram"], ["eagle", "a", "b"], ["c", "suffix"]]


def test_middle_skip_schedule_scales_the_skip_set():
    assert ba.middle_skip_schedule(30) == [*range(13), *range(20, 30)]
    assert ba.middle_skip_schedule(6) == [0, 1, 2, 4, 5]  # 6 * 13/30 rounds to 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("stock", "needs a name other than 'stock'"),
        ("=ngram", "needs a name other than 'stock'"),
        ("nope", "unknown preset 'nope'; allowed: ngram, suffix, eagle, self-draft, self-draft-attention, "
                 "hf-early-exit"),
        ('a={"depht": {}}', r"unknown key\(s\) \['depht'\]; allowed: \['depth', 'engine_args', 'self_spec', "
                            r"'hf_early_exit', 'model'\]"),
        ('a={"depth": [1]}', "'depth' must be an object"),
        ("a={bad json", "not valid JSON"),
        ('a={"hf_early_exit": 6}', r"'hf_early_exit' must be the only key, an int in \[1, 5\]"),
        ('a={"hf_early_exit": 2, "depth": {}}', "'hf_early_exit' must be the only key"),
        ('a={"model": "/nonexistent", "self_spec": {}}', "--arm a: model '/nonexistent' is neither an alias"),
        ('a={"model": 3}', "'model' must be an alias or a checkpoint directory"),
        ("eagle", "--arm eagle: no trained head at .*-eagle; train it with vllm-depth train-exits MODEL "
                  "--draft-attention --format eagle"),
        ("self-draft-attention", "--arm self-draft-attention: no trained head at .*-draft-attention"),
    ],
)
def test_bad_arms_name_the_field_and_the_allowed_values(tiny_dir, text, message):
    with pytest.raises(ValueError, match=message):
        ba.parse_arm(text, tiny_dir)


def test_presets_and_custom_arms(tiny_dir):
    assert ba.parse_arm("ngram", tiny_dir) == ("ngram", {"engine_args": {"speculative_config": ba.NGRAM}})
    name, spec = ba.parse_arm("mine=self-draft", tiny_dir)
    assert name == "mine" and spec["self_spec"]["draft_schedule"] == ba.middle_skip_schedule(6)
    assert ba.parse_arm("hf-early-exit", tiny_dir) == ("hf-early-exit", {"hf_early_exit": 5})
    arm = ba.arm_kwargs("e", {"depth": {"exit_layers": [2]}}, tiny_dir, {"seed": 0})
    assert arm.kwargs["model_impl"] == "depth" and arm.kwargs["hf_overrides"] == {"depth": {"exit_layers": [2]}}
    # vLLM counts its own drafts only with stats on
    assert ba.arm_kwargs("n", ba.preset("ngram", tiny_dir), tiny_dir, {}).kwargs["disable_log_stats"] is False
    with pytest.raises(ValueError, match=r"--arm e: depth.exit_layers: entry 0 is 9"):
        ba.arm_kwargs("e", {"depth": {"exit_layers": [9]}}, tiny_dir, {})


def test_only_suffix_decoding_forgets_its_responses_before_each_round(tiny_dir):
    def arm(spec):
        return ba.arm_kwargs("a", spec, tiny_dir, {})

    assert arm(ba.preset("suffix", tiny_dir)).forgets_responses
    assert not arm(ba.preset("ngram", tiny_dir)).forgets_responses
    assert not arm(ba.preset("self-draft", tiny_dir)).forgets_responses
    assert not arm({"depth": {"exit_layers": [2]}}).forgets_responses


def test_an_arm_serves_its_own_copy_of_the_model_and_no_other(tiny_dir, smollm2_dir, tmp_path):
    """An arm's ``model``: the bench's model with something added (trained heads); another model is refused."""
    import json
    import shutil

    copy = tmp_path / "tiny-with-heads"
    copy.mkdir()
    shutil.copy(f"{tiny_dir}/config.json", copy / "config.json")
    name, spec = ba.parse_arm(f'h={{"model": "{copy}", "depth": {{"exit_layers": [2]}}}}', tiny_dir)
    assert ba.arm_kwargs(name, spec, tiny_dir, {}).model_dir == str(copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 7}))
    with pytest.raises(ValueError, match=r"is not the bench's model: \['num_hidden_layers'\] differ"):
        ba.parse_arm(f'h={{"model": "{copy}"}}', tiny_dir)
    with pytest.raises(ValueError, match="is not the bench's model"):
        ba.parse_arm(f'h={{"model": "{smollm2_dir}"}}', tiny_dir)
