"""Many generations decoded together by the engine, on tiny generated models: every sequence's output equals
its output alone, whatever joins and leaves around it; sampled outputs follow the target distribution."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pyramid import assert_follows_target

from edge_spec.api import Pyramid, Result
from edge_spec.backend import Tier, TierConfig
from edge_spec.errors import ContextOverflowError, EdgeSpecError
from edge_spec.pyramid import StageConfig
from edge_spec.sampling import SamplingConfig

EXACT = TierConfig(n_ctx=256, cache_type="f32", flash_attn=False)  # batched = single decodes (~1e-5)
SLOTS = 3
JOBS = [  # (raw prompt, max_tokens): lengths far apart, so sequences join and leave at different rounds
    ("the quick brown fox jumps over the lazy dog and the cat", 40),
    ("a b c d e f g", 3),
    ("once upon a time there was a", 25),
    ("the cat", 60),
    ("one two three four five six seven eight nine ten eleven twelve", 9),
    ("hello", 1),
    ("the lazy dog sleeps and the quick fox", 33),
]


@pytest.fixture(scope="module")
def models(tiny_target: Path, tiny_same: Path, tiny_noisy: Path) -> dict[str, Path]:
    return {"target": tiny_target, "same": tiny_same, "noisy": tiny_noisy}


@pytest.fixture(scope="module")
def alone(models: dict[str, Path]) -> Iterator[dict[str, Tier]]:
    tiers = {name: Tier(path, EXACT) for name, path in models.items()}
    yield tiers
    for t in tiers.values():
        t.close()


@pytest.fixture(scope="module")
def together(models: dict[str, Path]) -> Iterator[dict[str, Tier]]:
    tiers = {name: Tier(path, dataclasses.replace(EXACT, n_seq=SLOTS)) for name, path in models.items()}
    yield tiers
    for t in tiers.values():
        t.close()


def _pyramid(tiers: dict[str, Tier], draft: str | None, qualifier: str | None, lookahead: str) -> Pyramid:
    d = None if draft is None else draft if draft == "ngram" else tiers[draft]
    q = None if qualifier is None else tiers[qualifier]
    n_stages = (d is not None) + (q is not None)
    return Pyramid(tiers["target"], q, d, [StageConfig(lookahead=lookahead)] * max(n_stages, 1))


def _each(pyr: Pyramid, jobs: list[tuple[str, int]], **options: object) -> dict[int, Result | Exception]:
    work = ((i, p, {"max_tokens": m, "raw": True, **options}) for i, (p, m) in enumerate(jobs))
    return dict(pyr.generate_each(work))


TIERS = [(None, None), ("ngram", None), ("noisy", None), ("noisy", "same"), ("ngram", "noisy")]


@pytest.mark.parametrize(("draft", "qualifier"), TIERS)
@pytest.mark.parametrize("lookahead", ["fixed:3", "goodput"])
def test_each_sequence_equals_its_output_alone(
    alone: dict[str, Tier],
    together: dict[str, Tier],
    draft: str | None,
    qualifier: str | None,
    lookahead: str,
) -> None:
    reference = [
        _pyramid(alone, draft, qualifier, lookahead).generate(p, max_tokens=m, raw=True).token_ids
        for p, m in JOBS
    ]
    pyr = _pyramid(together, draft, qualifier, lookahead)
    assert pyr.parallel == SLOTS
    outs = _each(pyr, JOBS)
    assert [outs[i].token_ids for i in range(len(JOBS))] == reference  # type: ignore[union-attr]
    batches = {b for r in outs.values() for s in r.stats.stages for b in s.by_batch}  # type: ignore[union-attr]
    assert max(batches, default=SLOTS) > 1  # some rounds were decoded together
    assert len(reference[1]) == 3 and len(reference[5]) == 1


def test_block_lengths_by_batch_size_are_in_the_json_stats(together: dict[str, Tier]) -> None:
    outs = _each(_pyramid(together, "noisy", None, "goodput"), JOBS)
    longest = outs[3].stats.summary()["stages"][0]  # type: ignore[union-attr]
    by_batch = longest["block_lengths_by_batch"]
    assert sum(sum(ks.values()) for ks in by_batch.values()) == longest["rounds"]
    assert len(by_batch) > 1  # the batch shrank as the others finished


def test_tier_seconds_count_the_decode_phase_only(together: dict[str, Tier]) -> None:
    target = together["target"]
    before = target.decode_seconds
    result = _pyramid(together, None, None, "goodput").generate("word " * 150, max_tokens=4, raw=True)
    spent = target.decode_seconds - before  # the prefill and the four tokens
    in_decode = result.stats.tier_seconds[target.path.name]
    assert 0 < in_decode < spent
    assert 0 <= result.stats.summary()["python_overhead_share"] < 1


def test_a_failing_sequence_leaves_the_others_unharmed(
    alone: dict[str, Tier], together: dict[str, Tier]
) -> None:
    jobs = [JOBS[0], ("word " * 400, 5), JOBS[3]]
    reference = [
        _pyramid(alone, "noisy", None, "fixed:3").generate(p, max_tokens=m, raw=True).token_ids
        for p, m in (jobs[0], jobs[2])
    ]
    outs = _each(_pyramid(together, "noisy", None, "fixed:3"), jobs)
    assert isinstance(outs[1], ContextOverflowError)
    assert [outs[0].token_ids, outs[2].token_ids] == reference  # type: ignore[union-attr]


def test_generate_many_keeps_the_prompts_order(alone: dict[str, Tier], together: dict[str, Tier]) -> None:
    prompts = [p for p, _ in JOBS]
    reference = [
        _pyramid(alone, "ngram", None, "goodput").generate(p, max_tokens=12, raw=True).text for p in prompts
    ]
    results = _pyramid(together, "ngram", None, "goodput").generate_many(prompts, max_tokens=12, raw=True)
    assert [r.text for r in results] == reference
    with pytest.raises(ContextOverflowError):
        _pyramid(together, None, None, "goodput").generate_many(["ok", "word " * 400], max_tokens=4, raw=True)


def test_concurrent_threads_are_served_together(alone: dict[str, Tier], together: dict[str, Tier]) -> None:
    reference = [
        _pyramid(alone, "noisy", None, "fixed:2").generate(p, max_tokens=m, raw=True).token_ids
        for p, m in JOBS
    ]
    pyr = _pyramid(together, "noisy", None, "fixed:2")
    outs: dict[int, list[int]] = {}
    start = threading.Barrier(len(JOBS))

    def work(i: int) -> None:
        start.wait()
        outs[i] = pyr.generate(JOBS[i][0], max_tokens=JOBS[i][1], raw=True).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(JOBS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [outs[i] for i in range(len(JOBS))] == reference


def test_a_stream_closed_early_frees_its_slot(together: dict[str, Tier]) -> None:
    pyr = _pyramid(together, "ngram", None, "goodput")
    streams = [pyr.stream(p, max_tokens=200, raw=True) for p, _ in JOBS[:SLOTS]]
    for s in streams:
        next(s)
        s.close()  # cancelled: the engine ends it before its next round
    out = pyr.generate(JOBS[0][0], max_tokens=5, raw=True)  # would wait forever if no slot came free
    assert len(out.token_ids) == 5


def test_closing_the_pyramid_ends_the_generations_under_way(models: dict[str, Path]) -> None:
    pyr = Pyramid.open(str(models["target"]), draft=None, ctx=256, parallel=2, calibration_cache=False)
    stream = pyr.stream("the cat", max_tokens=200, raw=True)
    next(stream)
    pyr.close()
    with pytest.raises(EdgeSpecError, match="closed"):
        for _ in stream:
            pass


def test_lossless_sampling_together_follows_the_target_distribution(together: dict[str, Tier]) -> None:
    """As test_pyramid's test of the same name, with every generation decoded among others."""
    sampling = SamplingConfig(temperature=2.0)
    pyr = _pyramid(together, "noisy", None, "fixed:3")
    n = 1500
    outs = dict(
        pyr.generate_each(
            (s, "the cat", {"max_tokens": 2, "raw": True, "temperature": 2.0, "seed": s}) for s in range(n)
        )
    )
    pairs = Counter(tuple(r.token_ids) for r in outs.values())  # type: ignore[union-attr]
    target = together["target"]
    target.forget(0)
    assert_follows_target(pairs, target, pyr.encode("the cat", raw=True), sampling, (0.07, 0.15), least=150)
