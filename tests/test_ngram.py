"""Unit tests for edge_spec.proposers.NgramProposer (no model)."""

from __future__ import annotations

import random

import pytest

from edge_spec.proposers import Block, NgramProposer
from edge_spec.steps import serve


def reference(seq: list[int], n: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Plain-Python prompt lookup: the latest earlier occurrence of the longest suffix n-gram."""
    for size in range(max_ngram, min_ngram - 1, -1):
        if size < 1 or size >= len(seq):
            continue
        suffix = seq[-size:]
        for start in range(len(seq) - size - 1, -1, -1):  # latest first, never the suffix itself
            if seq[start : start + size] == suffix:
                return seq[start + size : start + size + n]
    return []


@pytest.mark.parametrize(
    ("seq", "n", "expected"),
    [
        pytest.param([1, 2, 3, 4, 1, 2, 3], 3, [4, 1, 2], id="trigram match"),
        pytest.param([1, 2, 3, 9, 1, 2, 3, 8, 1, 2, 3], 2, [8, 1], id="latest occurrence wins"),
        pytest.param([5, 6, 7, 1, 6, 7, 2, 5, 6, 7], 3, [1, 6, 7], id="longest n-gram beats a later bigram"),
        pytest.param([1, 2, 3, 4, 8, 2, 3], 3, [4, 8, 2], id="falls back to a bigram"),
        pytest.param([5, 1, 9, 8, 7, 1], 2, [9, 8], id="falls back to a unigram"),
        pytest.param([1, 2, 3, 4], 3, [], id="no match"),
        pytest.param([1, 2, 1], 5, [2, 1], id="never beyond the sequence"),
        pytest.param([1, 2, 3, 1, 2, 3], 10, [1, 2, 3], id="stops at the end of the sequence"),
        pytest.param([7, 7, 7, 7], 4, [7], id="overlapping repeat"),
        pytest.param([4, 5, 4, 5, 4], 2, [5, 4], id="overlapping trigram"),
        pytest.param([1, 2, 3, 1, 2, 3], 0, [], id="n = 0"),
        pytest.param([1, 2, 3, 1, 2, 3], 1, [1], id="n = 1"),
        pytest.param([], 3, [], id="empty sequence"),
        pytest.param([5], 3, [], id="one token"),
        pytest.param([5, 5], 3, [5], id="two equal tokens"),
        pytest.param([150000, 2, 150000], 2, [2, 150000], id="large token ids"),
    ],
)
def test_propose(seq: list[int], n: int, expected: list[int]) -> None:
    before = list(seq)
    block = serve(NgramProposer().propose(seq, n))
    assert isinstance(block, Block)
    assert block.tokens == expected
    assert all(type(t) is int for t in block.tokens)
    assert block.logits is None
    assert seq == before  # the sequence is not touched


@pytest.mark.parametrize(
    ("max_ngram", "min_ngram", "seq", "expected"),
    [
        pytest.param(2, 2, [5, 1, 9, 8, 7, 1], [], id="min 2 rejects a unigram-only match"),
        pytest.param(3, 2, [1, 2, 3, 4, 8, 2, 3], [4, 8, 2], id="min 2 accepts a bigram"),
        pytest.param(1, 1, [5, 6, 7, 1, 6, 7, 2, 5, 6, 7], [2, 5, 6], id="max 1: latest unigram only"),
        pytest.param(4, 1, [1, 2, 3, 4, 9, 2, 3, 4, 8, 1, 2, 3, 4], [9, 2, 3], id="max 4 finds a 4-gram"),
        pytest.param(
            3, 1, [1, 2, 3, 4, 9, 2, 3, 4, 8, 1, 2, 3, 4], [8, 1, 2], id="max 3 takes latest trigram"
        ),
    ],
)
def test_ngram_size_limits(max_ngram: int, min_ngram: int, seq: list[int], expected: list[int]) -> None:
    proposer = NgramProposer(max_ngram=max_ngram, min_ngram=min_ngram)
    assert serve(proposer.propose(seq, 3)).tokens == expected


def test_name() -> None:
    assert NgramProposer().name == "ngram"


@pytest.mark.parametrize(("max_ngram", "min_ngram"), [(3, 1), (2, 1), (4, 2), (1, 1)])
def test_matches_a_plain_python_reference(max_ngram: int, min_ngram: int) -> None:
    rng = random.Random(7)
    proposer = NgramProposer(max_ngram=max_ngram, min_ngram=min_ngram)
    for _ in range(300):
        vocab = rng.randint(2, 8)
        seq = [rng.randrange(vocab) for _ in range(rng.randint(0, 40))]
        n = rng.randint(0, 8)
        block = serve(proposer.propose(seq, n))
        assert block.tokens == reference(seq, n, max_ngram, min_ngram), (seq, n)
        assert len(block.tokens) <= n
        assert block.logits is None
