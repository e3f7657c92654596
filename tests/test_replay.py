"""scripts/replay_lookahead.py: recorded traces on tiny models, and the replay's arithmetic."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_spec.lookahead import parse_lookahead

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "replay_lookahead.py"
_SPEC = importlib.util.spec_from_file_location("replay_lookahead", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
replay_lookahead = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = replay_lookahead  # dataclasses look their module up there
_SPEC.loader.exec_module(replay_lookahead)
Machine = replay_lookahead.Machine
MAX_BATCH = replay_lookahead.MAX_BATCH

# decode seconds by batch length: the draft 10 ms a call plus 1 ms a token, the target 100 ms + 5 ms a token
QUIET = Machine(
    target=[0.1 + 0.005 * n for n in range(1, MAX_BATCH + 1)],
    draft=[0.01 + 0.001 * n for n in range(1, MAX_BATCH + 1)],
    overhead=0.002,
    sigma=0.0,
    burst=0.0,
)


def trace(draft_runs: list[int], suite: str = "code", name: str = "p") -> dict:
    n = len(draft_runs)
    return {"id": name, "suite": suite, "n": n, "max_tokens": 128, "draft": draft_runs, "ngram": [0] * n,
            "ngram_offered": [0] * n}  # fmt: skip


def test_matched_runs_and_prefixes() -> None:
    runs = replay_lookahead.matched_run(np.array([1, 2, 9, 4, 5]), np.array([1, 2, 3, 4, 5]))
    assert runs == [2, 1, 0, 2, 1]
    assert replay_lookahead.matched_prefix([7, 8, 0], [7, 8, 9, 10]) == 2
    assert replay_lookahead.matched_prefix([7, 8], [7]) == 1 and replay_lookahead.matched_prefix([], [1]) == 0


def test_fixed_block_replays_to_the_planted_costs() -> None:
    """12 tokens the draft always gets right: fixed:3 commits 4 a round, so 3 rounds, each drafting 3
    tokens (a decode of 2, then 2 of 1) and verifying 4."""
    rng = np.random.default_rng(0)
    seconds = replay_lookahead.replay_one(
        trace(list(range(12, 0, -1))), "draft", parse_lookahead("fixed:3")(), QUIET, rng
    )
    round_ = QUIET.draft[1] + 2 * QUIET.draft[0] + QUIET.target[3] + QUIET.overhead
    assert seconds == pytest.approx(3 * round_)


def test_a_draft_that_never_matches_is_skipped_by_goodput_and_costs_fixed_blocks() -> None:
    """Nothing the draft proposes is accepted: every fixed block is pure loss, goodput learns to skip."""
    traces = [trace([0] * 60, name=f"p{i}") for i in range(4)]
    fixed = replay_lookahead.replay(traces, "draft", lambda: parse_lookahead("fixed:3"), QUIET, draws=2)
    goodput = replay_lookahead.replay(traces, "draft", lambda: parse_lookahead("goodput"), QUIET, draws=2)
    alone = QUIET.target[0] + QUIET.overhead
    assert fixed["code"] == pytest.approx(
        alone / (QUIET.draft[1] + 2 * QUIET.draft[0] + QUIET.target[3] + QUIET.overhead)
    )
    assert goodput["code"] > 0.9 > 0.8 > fixed["code"] and set(goodput) == {"code", "all"}


@pytest.mark.parametrize(
    ("t", "k", "proposed"),
    [
        (0, 4, 2),  # 0.9 kept, 0.5 below p_min: that token kept, the block stops
        (2, 4, 3),  # 0.95, 0.99, then 0.3
        (4, 3, 1),  # 0.3 first
        (5, 4, 4),  # past the trace's end: the draft drafts on, with no recorded confidence
        (5, 2, 2),
    ],
)
def test_a_confidence_stop_replays_on_recorded_top1(t: int, k: int, proposed: int) -> None:
    recorded = trace([0] * 7) | {
        "draft_top1": [0.9, 0.5, 0.95, 0.99, 0.3, 0.9, 0.8],
        "draft_entropy": [0.1] * 7,
    }
    got, confidences = replay_lookahead.drafted(recorded, t, k, parse_lookahead("pmin:0.75")())
    assert got == proposed and confidences == tuple(recorded["draft_top1"][t : t + proposed])


def test_record_on_tiny_models(tmp_path: Path, tiny_target: Path, tiny_same: Path) -> None:
    """A draft with the target's own weights gets every token right: each position's run reaches the end.
    The replay command then reads the file back into a table."""
    out = tmp_path / "traces.jsonl"
    args = ["record", str(out), "--target", str(tiny_target), "--draft", str(tiny_same), "--suite", "code"]
    result = CliRunner().invoke(
        replay_lookahead.main, [*args, "--limit", "2", "--max-tokens", "10", "--ctx", "512"]
    )
    assert result.exit_code == 0, result.output
    costs, *rows = (json.loads(line) for line in out.read_text().splitlines())
    assert all(len(c) == MAX_BATCH and min(c) > 0 for c in costs["costs"].values())
    assert [r["id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    for r in rows:
        assert r["draft"] == list(range(r["n"], 0, -1))
        assert len(r["ngram"]) == len(r["ngram_offered"]) == r["n"]
        assert all(0 <= m <= o for m, o in zip(r["ngram"], r["ngram_offered"], strict=True))
        assert len(r["draft_top1"]) == len(r["draft_entropy"]) == r["n"]
        assert all(0 < p <= 1 for p in r["draft_top1"]) and min(r["draft_entropy"]) >= 0
    table = CliRunner().invoke(
        replay_lookahead.main, ["replay", str(out), "--draws", "2", "--lookahead", "fixed:3"]
    )
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[0] == "| proposer | policy | code | all |"
    assert [line.split(" | ")[:2] for line in table.output.splitlines()[2:]] == [
        ["| draft", "fixed:3"],
        ["| ngram", "fixed:3"],
    ]


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    """A missing model, a bad lookahead spec and a file that is not a recording end in one line, exit 2."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    cases = [
        ["record", str(tmp_path / "t.jsonl"), "--target", str(tmp_path / "none.gguf"), "--draft", "x.gguf"],
        ["replay", str(bad), "--lookahead", "fixed:0x"],
        ["replay", str(bad)],
    ]
    for args in cases:
        result = CliRunner().invoke(replay_lookahead.main, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
