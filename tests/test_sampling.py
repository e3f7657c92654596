"""Unit tests for edge_spec.sampling (no model)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from edge_spec import _rowmath
from edge_spec.errors import ConfigError
from edge_spec.proposers import confidence
from edge_spec.sampling import SamplingConfig, Warped, make_rng, sample, warp


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_warp(row: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Slow reference: full sort of the vocabulary; top-k, top-p, min-p at T=1, then temperature."""
    z = row.astype(np.float64)
    keep = np.argsort(-z, kind="stable")
    if cfg.top_k:
        keep = keep[: cfg.top_k]
    if cfg.top_p < 1.0:
        cum = np.cumsum(softmax(z[keep]))
        keep = keep[: min(int(np.searchsorted(cum, cfg.top_p)) + 1, keep.size)]
    if cfg.min_p > 0.0:
        pk = softmax(z[keep])
        keep = keep[pk >= cfg.min_p * pk.max()]
    out = np.zeros(z.size)
    out[keep] = softmax(z[keep] / cfg.temperature)
    return out


def read_only(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a.flags.writeable = False
    return a


# --- SamplingConfig -------------------------------------------------------------------------------


def test_config_defaults_are_greedy_and_untruncated() -> None:
    cfg = SamplingConfig()
    assert cfg.greedy
    assert (cfg.top_k, cfg.top_p, cfg.min_p, cfg.seed) == (0, 1.0, 0.0, None)
    assert not SamplingConfig(temperature=0.7).greedy
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.temperature = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"min_p": -0.01}, "min_p"),
        ({"min_p": 1.0}, "min_p"),
        ({"min_p": math.nan}, "min_p"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": None}, "top_p"),
        ({"min_p": True}, "min_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_config_rejects_invalid_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"temperature": 1e-3}, {"top_k": 1}, {"top_p": 1e-9}, {"min_p": 0.999}, {"seed": 0}]
)
def test_config_accepts_boundary_values(kwargs: dict) -> None:
    SamplingConfig(**kwargs)


# --- warp -----------------------------------------------------------------------------------------


def test_greedy_is_one_hot_at_argmax_and_keeps_shape() -> None:
    logits = read_only(np.random.default_rng(0).normal(size=(2, 3, 50)))
    probs = warp(logits, SamplingConfig(top_k=5, top_p=0.5))
    assert probs.shape == logits.shape and probs.dtype == logits.dtype
    assert np.array_equal(probs.argmax(-1), logits.argmax(-1))
    assert np.array_equal(probs.sum(-1), np.ones((2, 3)))
    assert np.count_nonzero(probs) == 6


@pytest.mark.parametrize("temperature", [0.25, 1.0, 2.0])
def test_temperature_scales_logits(temperature: float) -> None:
    logits = read_only(np.random.default_rng(1).normal(size=(4, 100)) * 3)
    probs = warp(logits, SamplingConfig(temperature=temperature))
    want = softmax(logits.astype(np.float64) / temperature)
    np.testing.assert_allclose(probs, want, rtol=1e-5)  # float32 logits: float32 math
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_top_k_keeps_k_most_likely_renormalised() -> None:
    logits = np.log(np.array([0.1, 0.4, 0.05, 0.3, 0.15], dtype=np.float32))
    probs = warp(logits, SamplingConfig(temperature=1.0, top_k=2))
    np.testing.assert_allclose(probs, [0, 4 / 7, 0, 3 / 7, 0], rtol=1e-6)


def test_top_p_keeps_smallest_set_reaching_mass() -> None:
    logits = np.log(np.array([0.1, 0.4, 0.05, 0.3, 0.15], dtype=np.float32))
    # 0.4 + 0.3 = 0.7 < 0.75 <= 0.85: the token that crosses the threshold is kept
    probs = warp(logits, SamplingConfig(temperature=1.0, top_p=0.75))
    np.testing.assert_allclose(probs, [0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85], rtol=1e-6)


def test_min_p_is_relative_to_max_probability() -> None:
    logits = np.log(np.array([0.1, 0.4, 0.05, 0.3, 0.15], dtype=np.float32))
    # threshold 0.3 * 0.4 = 0.12 keeps 0.4, 0.3, 0.15
    probs = warp(logits, SamplingConfig(temperature=1.0, min_p=0.3))
    np.testing.assert_allclose(probs, [0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85], rtol=1e-6)


def test_truncation_uses_temperature_one_then_temperature_reshapes_survivors() -> None:
    logits = np.log(np.array([0.1, 0.4, 0.05, 0.3, 0.15], dtype=np.float32))
    for temperature in (0.1, 1.0, 10.0):
        probs = warp(logits, SamplingConfig(temperature=temperature, top_p=0.75))
        assert np.array_equal(np.flatnonzero(probs), [1, 3, 4])
    probs = warp(logits, SamplingConfig(temperature=0.5, top_p=0.75))
    np.testing.assert_allclose(probs[[1, 3, 4]], softmax(np.log([0.4, 0.3, 0.15]) / 0.5), rtol=1e-6)


@pytest.mark.parametrize(
    ("vocab", "scale", "cfg"),
    [
        (10, 1.0, SamplingConfig(temperature=1.0, top_p=0.5)),
        (1000, 1.0, SamplingConfig(temperature=0.8, top_p=0.9)),
        (1000, 5.0, SamplingConfig(temperature=1.3, top_p=0.95, top_k=40)),
        (1000, 2.0, SamplingConfig(temperature=1.0, top_p=0.9, min_p=0.05)),
        (152_000, 1.0, SamplingConfig(temperature=1.0, top_p=0.999)),  # needs the whole vocabulary
        (152_000, 3.0, SamplingConfig(temperature=0.7, top_p=0.9)),  # ~7000 kept: 32768 candidates
        (152_000, 4.0, SamplingConfig(temperature=1.0, top_p=0.95)),  # ~2000 kept: 4096 candidates
        (152_000, 5.0, SamplingConfig(temperature=1.2, top_p=0.95)),  # ~300 kept: 512 candidates
        (152_000, 8.0, SamplingConfig(temperature=0.7, top_p=0.95)),  # ~12 kept: 64 candidates
        (152_000, 4.0, SamplingConfig(temperature=0.9, top_k=200, top_p=0.8, min_p=0.01)),
    ],
)
def test_warp_matches_full_sort_reference(vocab: int, scale: float, cfg: SamplingConfig) -> None:
    logits = read_only(np.random.default_rng(vocab + int(scale)).normal(size=(3, vocab)) * scale)
    probs = warp(logits, cfg)
    for row, got in zip(logits, probs, strict=True):
        want = reference_warp(row, cfg)
        assert np.array_equal(np.flatnonzero(got), np.flatnonzero(want))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)  # float32 logits: float32 math
        assert got.sum(dtype=np.float64) == pytest.approx(1.0, abs=1e-6)


def test_warp_rejects_scalar() -> None:
    with pytest.raises(ValueError, match="shape"):
        warp(np.float32(1.0), SamplingConfig(temperature=1.0))


# --- sample / make_rng ----------------------------------------------------------------------------


def test_sample_is_deterministic_for_a_seed_and_uses_one_draw() -> None:
    probs = softmax(np.random.default_rng(2).normal(size=1000))
    a = [sample(probs, make_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng, twin = make_rng(11), make_rng(11)
    sample(probs, rng)
    twin.random()
    assert rng.random() == twin.random()


@pytest.mark.parametrize(
    ("probs", "u", "token"),
    [
        ([0.0, 1.0, 0.0], 0.0, 1),
        ([0.0, 1.0, 0.0], 0.999999, 1),
        ([0.5, 0.0, 0.5], 0.4999, 0),
        ([0.5, 0.0, 0.5], 0.5, 2),
        ([1.0, 3.0], 0.3, 1),  # unnormalised: scaled by its sum
    ],
)
def test_sample_inverse_cdf(probs: list[float], u: float, token: int) -> None:
    class FixedRng:
        def random(self) -> float:
            return u

    assert sample(np.array(probs), FixedRng()) == token  # type: ignore[arg-type]


def test_sample_never_draws_zero_probability_tokens_and_follows_distribution() -> None:
    probs = np.array([0.0, 0.2, 0.0, 0.5, 0.3, 0.0])
    rng = make_rng(3)
    counts = np.bincount([sample(probs, rng) for _ in range(20_000)], minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    assert np.abs(counts / counts.sum() - probs).max() < 0.015


def test_sample_rejects_empty_or_zero_mass() -> None:
    with pytest.raises(ValueError):
        sample(np.zeros(4), make_rng(0))
    with pytest.raises(ValueError):
        sample(np.zeros(0), make_rng(0))


# --- Warped: p(x) from the row's normaliser alone ---------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(temperature=0.8),
        SamplingConfig(temperature=1.7, top_k=40),
        SamplingConfig(temperature=0.8, top_p=0.95),
        SamplingConfig(temperature=0.5, min_p=0.05),
        SamplingConfig(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
        SamplingConfig(),
    ],
)
def test_warped_prob_matches_the_dense_reference(cfg: SamplingConfig) -> None:
    rng = np.random.default_rng(21)
    logits = read_only(rng.normal(size=(3, 151_936)) * 3)
    rows = Warped(logits, cfg)
    for i, row in enumerate(logits):
        want = reference_warp(row, cfg) if not cfg.greedy else (np.arange(row.size) == row.argmax()) * 1.0
        for x in [int(row.argmax()), *np.argsort(-row)[1:30:7].tolist(), int(row.argmin())]:
            assert rows.prob(i, x) == pytest.approx(want[x], rel=1e-5, abs=1e-12)


def test_warped_reads_only_the_rows_asked_for() -> None:
    logits = np.zeros((3, 10), dtype=np.float32)
    logits[2] = np.nan  # never read
    rows = Warped(logits, SamplingConfig(temperature=1.0))
    assert rows.prob(0, 3) == pytest.approx(0.1)
    assert rows.sample(1, make_rng(0)) in range(10)


def test_sample_two_level_search_over_a_large_row() -> None:
    probs = np.zeros(5000, dtype=np.float32)
    probs[[0, 1023, 1024, 2047, 4999]] = [0.1, 0.2, 0.3, 0.15, 0.25]  # on block edges
    rng = make_rng(5)
    counts = np.bincount([sample(probs, rng) for _ in range(20_000)], minlength=5000)
    assert counts.sum() == counts[[0, 1023, 1024, 2047, 4999]].sum()
    assert np.abs(counts[[0, 1023, 1024, 2047, 4999]] / 20_000 - [0.1, 0.2, 0.3, 0.15, 0.25]).max() < 0.015


def test_rowmath_kernel_edges() -> None:
    assert _rowmath.logsumexp(np.full(7, -np.inf, dtype=np.float32), 1.0) == -np.inf
    assert _rowmath.logsumexp(np.array([0.0, 0.0], dtype=np.float32), 2.0) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="same length"):
        _rowmath.divergence("js", np.zeros(3, dtype=np.float32), np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="float32"):
        _rowmath.logsumexp(b"", 1.0)


def test_confidence_matches_float64() -> None:
    rng = np.random.default_rng(41)
    for scale in (0.1, 3.0, 30.0):
        z = (rng.normal(size=151_936) * scale).astype(np.float32)
        z[rng.choice(z.size, 100, replace=False)] = -np.inf
        p = softmax(z.astype(np.float64))
        top1, entropy = confidence(z)
        assert top1 == pytest.approx(p.max(), rel=1e-5)
        assert entropy == pytest.approx(-(p[p > 0] * np.log(p[p > 0])).sum(), rel=1e-5, abs=1e-6)
