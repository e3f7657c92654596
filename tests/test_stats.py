"""Unit tests for edge_spec.stats (no model)."""

from __future__ import annotations

import json

import pytest

from edge_spec.stats import GenerationStats, StageStats


def stage(
    *rounds: tuple[int, int, int], verifier: str = "target.gguf", proposer: str = "draft.gguf"
) -> StageStats:
    s = StageStats(verifier, proposer)
    for proposed, accepted, requested in rounds:
        s.record(proposed, accepted, requested)
    return s


@pytest.mark.parametrize(
    ("rounds", "recovered", "bonus"),
    [
        pytest.param([(4, 4, 4)], 0, 1, id="all accepted -> bonus"),
        pytest.param([(4, 1, 4)], 1, 0, id="rejection -> recovered"),
        pytest.param([(3, 0, 4)], 1, 0, id="first rejected -> recovered"),
        pytest.param([(2, 2, 4)], 0, 1, id="short block fully accepted -> bonus"),
        pytest.param([(4, 4, 4), (4, 1, 4), (3, 0, 4), (2, 2, 5)], 2, 2, id="mixed"),
    ],
)
def test_record_counts(rounds: list[tuple[int, int, int]], recovered: int, bonus: int) -> None:
    s = stage(*rounds)
    assert s.rounds == len(rounds) == s.recovered + s.bonus
    assert (s.recovered, s.bonus) == (recovered, bonus)
    assert s.proposed == sum(r[0] for r in rounds)
    assert s.accepted == sum(r[1] for r in rounds)


def test_histograms_count_accepted_lengths_and_requested_blocks() -> None:
    s = stage((4, 4, 4), (4, 1, 4), (3, 1, 4), (2, 0, 6))
    assert dict(s.accepted_lengths) == {4: 1, 1: 2, 0: 1}
    assert dict(s.block_lengths) == {4: 3, 6: 1}  # the requested length, not the proposed one


def test_stage_summary() -> None:
    s = stage((4, 4, 4), (4, 1, 4), (2, 0, 6))
    assert s.summary() == {
        "verifier": "target.gguf",
        "proposer": "draft.gguf",
        "rounds": 3,
        "proposed": 10,
        "accepted": 5,
        "recovered": 2,
        "bonus": 1,
        "skipped": 0,
        "acceptance_rate": 0.5,
        "mean_accepted_length": 1.667,
        "accepted_length_histogram": {0: 1, 1: 1, 4: 1},
        "block_length_histogram": {4: 2, 6: 1},
        "lookahead": {},
    }
    assert list(s.summary()["accepted_length_histogram"]) == [0, 1, 4]  # sorted


def test_lookahead_shows_the_policy_summary_with_the_stage_counts() -> None:
    """The stage is the one home of the round counts; `lookahead` shows them beside the policy's report
    under the names its JSON has always had (the block-length histogram as k_histogram, string keys)."""
    s = stage((4, 4, 4), (4, 1, 4), (0, 0, 0), (2, 0, 6))
    s.policy = {"policy": "goodput", "early_stops": 1, "best_k": 3}
    assert s.lookahead == {
        "policy": "goodput",
        "rounds": 4,
        "requested": 14,
        "proposed": 10,
        "accepted": 5,
        "acceptance_rate": 0.5,
        "k_histogram": {"0": 1, "4": 2, "6": 1},
        "early_stops": 1,
        "best_k": 3,
    }
    assert s.summary()["lookahead"] == s.lookahead and s.summary()["block_length_histogram"] == {
        0: 1,
        4: 2,
        6: 1,
    }
    assert stage((4, 1, 4), (3, 1, 3), (3, 0, 3)).lookahead == {}  # before the policy reported


def test_stage_summary_rounding() -> None:
    summary = stage((3, 1, 3), (3, 1, 3), (3, 0, 3)).summary()
    assert summary["acceptance_rate"] == 0.2222
    assert summary["mean_accepted_length"] == 0.667


def test_rounds_without_a_proposal_count_as_skipped() -> None:
    s = stage((4, 2, 4), (0, 0, 4), (0, 0, 0))
    summary = s.summary()
    assert (summary["rounds"], summary["skipped"], summary["recovered"], summary["bonus"]) == (3, 2, 1, 0)
    assert summary["mean_accepted_length"] == 2.0  # over rounds with a proposal
    assert summary["block_length_histogram"] == {0: 1, 4: 2}


def test_empty_stage_summary_has_no_rates() -> None:
    summary = StageStats("t", "ngram").summary()
    assert summary["rounds"] == summary["proposed"] == 0
    assert summary["acceptance_rate"] is None
    assert summary["mean_accepted_length"] is None
    assert summary["accepted_length_histogram"] == {} == summary["block_length_histogram"]


def make_generation(**overrides: object) -> GenerationStats:
    values: dict[str, object] = {
        "prompt_tokens": 7,
        "generated_tokens": 10,
        "prefill_seconds": 0.25,
        "decode_seconds": 2.0,
        "stages": [stage((4, 4, 4), (4, 1, 4), (2, 0, 6))],
        "tier_seconds": {"target.gguf": 1.0, "draft.gguf": 0.5},
        "finish_reason": "length",
    }
    values.update(overrides)
    return GenerationStats(**values)  # type: ignore[arg-type]


def test_generation_summary() -> None:
    g = make_generation()
    summary = g.summary()
    assert {
        "generated_tokens",
        "tokens_per_second",
        "prefill_seconds",
        "stages",
        "python_overhead_share",
    } <= summary.keys()
    assert summary["prompt_tokens"] == 7
    assert summary["generated_tokens"] == 10
    assert summary["tokens_per_second"] == 5.0
    assert summary["prefill_seconds"] == 0.25
    assert summary["decode_seconds"] == 2.0
    assert summary["finish_reason"] == "length"
    assert summary["tier_seconds"] == {"target.gguf": 1.0, "draft.gguf": 0.5}
    assert summary["python_overhead_share"] == 0.25  # 1 - 1.5 s in llama_decode / 2.0 s
    assert summary["stages"] == [g.stages[0].summary()]
    json.dumps(summary)  # written as JSON


@pytest.mark.parametrize(
    ("decode_seconds", "tokens_per_second", "overhead"),
    [
        pytest.param(0.0, 0.0, None, id="no decode time"),
        pytest.param(3.0, 3.33, 0.5, id="rounded"),
    ],
)
def test_generation_rates(decode_seconds: float, tokens_per_second: float, overhead: float | None) -> None:
    g = make_generation(decode_seconds=decode_seconds)
    assert g.summary()["tokens_per_second"] == tokens_per_second
    assert g.summary()["python_overhead_share"] == overhead


def test_generation_summary_rounds_timings() -> None:
    summary = make_generation(prefill_seconds=0.123456789, tier_seconds={"t": 0.987654321}).summary()
    assert summary["prefill_seconds"] == 0.1235
    assert summary["tier_seconds"] == {"t": 0.9877}


def test_empty_generation_summary() -> None:
    summary = GenerationStats().summary()
    assert summary["generated_tokens"] == 0
    assert summary["tokens_per_second"] == 0.0
    assert summary["python_overhead_share"] is None
    assert summary["stages"] == []


def test_line() -> None:
    line = make_generation(stages=[stage((4, 4, 4), (4, 1, 4), (2, 0, 6)), StageStats("big", "ngram")]).line()
    assert line == (
        "10 tokens, 5.0 tok/s, prefill 0.25s (7 prompt tokens), "
        "draft.gguf->target.gguf accepted 5/10 (50%), blocks of 4-6 in 3/3 rounds, ngram->big not drafting"
    )


@pytest.mark.parametrize(
    ("rounds", "policy", "words"),
    [
        ([(3, 2, 3), (0, 0, 0), (3, 3, 3)], {}, "accepted 5/6 (83%), blocks of 3 in 2/3 rounds"),
        (
            [(0, 0, 0)] * 4,
            {"policy": "goodput", "can_pay": False},
            "not drafting: cannot pay on this machine",
        ),
        ([(0, 0, 0)] * 4, {"policy": "goodput", "can_pay": True}, "not drafting: too little accepted to pay"),
        (
            [(0, 0, 3), (0, 0, 0)],
            {"policy": "goodput", "can_pay": True},
            "drafted nothing: no proposal found",
        ),
        ([(0, 0, 0)], {"policy": "fixed"}, "not drafting"),
    ],
)
def test_what_speculation_did_in_words(rounds: list, policy: dict, words: str) -> None:
    s = stage(*rounds)
    s.policy = policy
    assert s.speculation() == words


def test_line_without_stages() -> None:
    assert GenerationStats().line() == "0 tokens, 0.0 tok/s, prefill 0.00s (0 prompt tokens)"
