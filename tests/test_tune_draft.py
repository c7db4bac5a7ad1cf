"""tune-draft's search logic (pure); the engines it drives are the ones tests/test_self_spec.py checks."""

from __future__ import annotations

import json

from vllm_depth.tools.tune_draft import Candidate, candidates, rank, write_best


def test_candidates_are_prefixes_head_layers_and_middle_skip_sets():
    cands = candidates(30, head_layers=(9,))
    names = [c.name for c in cands]
    assert names[:7] == ["first 8", "first 9 + head", "first 12", "first 15", "first 18", "first 21", "first 24"]
    assert next(c for c in cands if c.name == "first 9 + head").setting() == {"draft_layers": 9}
    assert "skip 14-19" in names and "skip 13-19" in names
    skip = next(c for c in cands if c.name == "skip 14-19")
    assert len(skip.positions) == 24 and 14 not in skip.positions and 20 in skip.positions
    assert skip.setting() == {"draft_schedule": list(skip.positions)}
    assert cands[0].setting() == {"draft_layers": 8}
    # a draft head at 0 (train-exits --prev-state) is a candidate; without a head 0 layers is none
    zero = candidates(30, head_layers=(0, 2))[0]
    assert zero.name == "first 0 + head" and zero.setting() == {"draft_layers": 0}
    assert all(c.positions for c in cands)


def test_expected_tokens_and_rank_prefer_accepted_cheap_drafts():
    cheap = Candidate("first 6", tuple(range(6)), accepted={0: 50, 1: 30, 2: 20})
    dear = Candidate("first 24", tuple(range(24)), accepted={0: 50, 1: 30, 2: 20})
    assert cheap.expected_tokens(1) == 1.5 and cheap.expected_tokens(2) == 1.7
    best = rank([dear, cheap], 30, 2)[0]
    assert best[1] is cheap and best[2] == 1


def test_write_best_replaces_an_earlier_draft(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 30, "depth": {"draft_layers": 12}}))
    written = write_best(str(tmp_path), {"draft": "skip 14-19", "draft_schedule": [0, 1, 2], "k": 2})
    assert written == {"draft_schedule": [0, 1, 2], "draft_tokens": 2}
    depth = json.loads((tmp_path / "config.json").read_text())["depth"]
    assert depth == {"draft_schedule": [0, 1, 2], "draft_tokens": 2}
