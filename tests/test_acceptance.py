"""Unit tests for edge_spec.acceptance (no model): hand-built distributions, statistics, determinism."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from edge_spec.acceptance import (
    DIVERGENCES,
    LazyDivergence,
    Verdict,
    divergence,
    fuzzy_verify,
    greedy_verify,
    speculative_verify,
    validate_tau,
)
from edge_spec.errors import ConfigError
from edge_spec.sampling import SamplingConfig, Warped, make_rng, sample


class SeqRng:
    """Stands in for np.random.Generator: returns the given uniforms in order."""

    def __init__(self, *draws: float) -> None:
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logits_with_argmax(targets: list[int], vocab: int = 5) -> np.ndarray:
    """[len(targets), vocab] float32 logits whose row i has its maximum at targets[i]."""
    z = np.random.default_rng(len(targets)).normal(size=(len(targets), vocab)).astype(np.float32)
    z[np.arange(len(targets)), targets] = 10.0
    return z


def first_emitted(verdict: Verdict, draft: np.ndarray) -> int:
    return int(draft[0]) if verdict.n_accepted > 0 else verdict.token


# --- greedy_verify --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("draft", "targets", "expected"),
    [
        ([1, 2, 3], [1, 2, 3, 4], Verdict(3, 4, 3)),  # all accepted, bonus from row k
        ([1, 2, 3], [0, 2, 3, 4], Verdict(0, 0, 3)),  # none accepted, recovered
        ([1, 2, 3], [1, 2, 0, 4], Verdict(2, 0, 3)),  # prefix accepted
        ([1, 1], [1, 0, 1], Verdict(1, 0, 2)),  # later matches do not count after a mismatch
        ([], [4], Verdict(0, 4, 0)),  # empty proposal: just the verifier's token
    ],
)
def test_greedy_verify(draft: list[int], targets: list[int], expected: Verdict) -> None:
    verdict = greedy_verify(np.array(draft, dtype=np.int64), logits_with_argmax(targets))
    assert verdict == expected
    assert verdict.bonus == (expected.n_accepted == len(draft))


def test_greedy_verify_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="k\\+1"):
        greedy_verify(np.array([1, 2]), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="draft"):
        greedy_verify(np.array([[1]]), np.zeros((2, 5)))


# --- speculative_verify: hand-built cases ---------------------------------------------------------

P_ALL = np.array([[0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
Q_ALL = np.array([[0.5, 0.5, 0.0], [0.3, 0.7, 0.0]])
P_REJECT = np.array([[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
Q_REJECT = np.array([[0.1, 0.1, 0.8], [0.3, 0.7, 0.0]])
P_NGRAM = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("draft", "p", "q", "expected"),
    [
        ([0, 1], P_ALL, Q_ALL, Verdict(2, 2, 2)),  # p(x) >= q(x) everywhere: accepted, bonus from p[k]
        ([2, 1], P_REJECT, Q_REJECT, Verdict(0, 0, 2)),  # p(x) = 0: rejected, residual [.9, 0, 0]
        ([1, 2], P_NGRAM, None, Verdict(1, 1, 2)),  # one-hot q: p(1)=1 accepted; p(2)=0 -> p minus token 2
        ([1, 1], P_NGRAM, None, Verdict(2, 0, 2)),  # n-gram proposal fully accepted
    ],
)
def test_speculative_verify_deterministic_cases(
    draft: list[int], p: np.ndarray, q: np.ndarray | None, expected: Verdict
) -> None:
    for seed in range(20):
        assert speculative_verify(np.array(draft), p, q, make_rng(seed)) == expected


@pytest.mark.parametrize(
    ("u", "expected"),
    [
        (0.49, Verdict(1, 0, 1)),  # u < p/q = 0.5: accepted, then bonus draw u=0.0 -> token 0
        (0.50, Verdict(0, 1, 1)),  # rejected: residual max(0, p - q) = [0, 0.5, 0] -> token 1
    ],
)
def test_speculative_verify_accepts_with_probability_p_over_q(u: float, expected: Verdict) -> None:
    p = np.array([[0.3, 0.7, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[0.6, 0.2, 0.2]])
    assert speculative_verify(np.array([0]), p, q, SeqRng(u, 0.0)) == expected  # type: ignore[arg-type]


def test_speculative_verify_falls_back_to_p_when_residual_is_zero() -> None:
    p = np.array([[0.25, 0.25, 0.5], [1.0, 0.0, 0.0]])
    q = np.array([[0.3, 0.3, 0.6]])  # q >= p everywhere: the residual is all zero
    verdict = speculative_verify(np.array([2]), p, q, SeqRng(0.9, 0.9))  # type: ignore[arg-type]
    assert verdict == Verdict(0, 2, 1)  # rejected (0.9 * 0.6 >= 0.5), then drawn from p with u = 0.9


# --- speculative_verify: statistics and determinism -----------------------------------------------

P6 = np.array([0.35, 0.25, 0.2, 0.1, 0.06, 0.04])
Q6 = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.2])
TRIALS = 20_000
BOUND = 0.015  # about 4.5 standard deviations of the frequency of a p = 0.35 token at 20k trials


Verify = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", np.random.Generator], Verdict]


def wrong_verify(draft: np.ndarray, p: np.ndarray, q: np.ndarray | None, rng: np.random.Generator) -> Verdict:
    """A plausible bug: on rejection sample the recovered token from p instead of the residual."""
    for i, x in enumerate(draft):
        if rng.random() * (1.0 if q is None else q[i, x]) >= p[i, x]:
            return Verdict(i, sample(p[i], rng), len(draft))
    return Verdict(len(draft), sample(p[-1], rng), len(draft))


def emitted_frequencies(verify: Verify, one_hot_q: bool, seed: int) -> np.ndarray:
    """Frequencies of the first emitted token over TRIALS rounds with k = 2, target P6 at position 0.

    The proposer draws from Q6 at position 0, or (one_hot_q) always proposes token 4 and passes q = None.
    """
    rng = make_rng(seed)
    p = np.stack([P6, P6[::-1], np.full(6, 1 / 6)])
    q = np.stack([Q6, Q6[::-1]])
    counts = np.zeros(6)
    for _ in range(TRIALS):
        draft = np.array([4 if one_hot_q else sample(q[0], rng), sample(q[1], rng)])
        counts[first_emitted(verify(draft, p, None if one_hot_q else q, rng), draft)] += 1
    return counts / TRIALS


def test_speculative_verify_output_follows_target_distribution() -> None:
    assert np.abs(emitted_frequencies(speculative_verify, one_hot_q=False, seed=1) - P6).max() < BOUND


def test_speculative_verify_with_one_hot_proposer_follows_target_distribution() -> None:
    assert np.abs(emitted_frequencies(speculative_verify, one_hot_q=True, seed=2) - P6).max() < BOUND


def test_statistical_check_catches_recovery_from_p_instead_of_residual() -> None:
    assert np.abs(emitted_frequencies(wrong_verify, one_hot_q=False, seed=1) - P6).max() > 5 * BOUND


def test_speculative_verify_bonus_follows_last_row() -> None:
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = np.array([[0.5, 0.5, 0.0]])  # q == p: always accepted
    rng = make_rng(3)
    tokens = [speculative_verify(np.array([sample(q[0], rng)]), p, q, rng).token for _ in range(TRIALS)]
    assert np.abs(np.bincount(tokens, minlength=3) / TRIALS - p[1]).max() < BOUND


def random_case(
    rng: np.random.Generator, one_hot_q: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(draft [k], p [k+1, V], q [k, V] or None) with random k, V and sharpness; draft drawn from q."""
    k, vocab = int(rng.integers(0, 6)), int(rng.integers(2, 12))
    scale = rng.choice([0.5, 2.0, 6.0])
    p = softmax(rng.normal(size=(k + 1, vocab)) * scale)
    if one_hot_q:
        return rng.integers(0, vocab, size=k), p, None
    q = softmax(rng.normal(size=(k, vocab)) * scale)
    return np.array([sample(row, rng) for row in q], dtype=np.int64), p, q


def test_speculative_verify_is_deterministic_for_a_seed() -> None:
    rng = make_rng(4)
    verdicts = set()
    for i in range(200):
        draft, p, q = random_case(rng, one_hot_q=i % 3 == 0)
        verdict = speculative_verify(draft, p, q, make_rng(i))
        assert speculative_verify(draft, p, q, make_rng(i)) == verdict
        verdicts.add(verdict)
    assert len(verdicts) > 50


# --- divergence ---------------------------------------------------------------------------------

PD, QD = np.array([0.5, 0.5]), np.array([0.9, 0.1])
LN = math.log
# p = [0.5, 0.5], q = [0.9, 0.1], m = (p + q) / 2 = [0.7, 0.3]
KL_MP = 0.7 * LN(0.7 / 0.5) + 0.3 * LN(0.3 / 0.5)
KL_MQ = 0.7 * LN(0.7 / 0.9) + 0.3 * LN(0.3 / 0.1)
KL_PM = 0.5 * LN(0.5 / 0.7) + 0.5 * LN(0.5 / 0.3)
KL_QM = 0.9 * LN(0.9 / 0.7) + 0.1 * LN(0.1 / 0.3)
HAND = {
    "tv": 0.4,
    "kl": 0.9 * LN(0.9 / 0.5) + 0.1 * LN(0.1 / 0.5),  # KL(q || p)
    "js": 0.5 * KL_MP + 0.5 * KL_MQ,
    "js-sym": 0.5 * KL_PM + 0.5 * KL_QM,
}


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_hand_computed(kind: str) -> None:
    p_logits = np.log(np.stack([PD, QD])).astype(np.float32) + np.float32(3.0)  # logits: any shift
    q_logits = np.log(np.stack([QD, QD])).astype(np.float32)
    got = divergence(p_logits, q_logits, kind)
    assert got.shape == (2,) and got.dtype == np.float64
    np.testing.assert_allclose(got, [HAND[kind], 0.0], rtol=1e-6, atol=1e-6)  # float32 math: 1e-6 from 0


def test_divergence_forms_and_directions() -> None:
    p, q = np.log(PD)[None], np.log(QD)[None]
    assert divergence(p, q, "js")[0] != pytest.approx(divergence(p, q, "js-sym")[0], rel=1e-3)
    for kind in ("js", "js-sym", "tv"):  # symmetric in p and q
        assert divergence(p, q, kind)[0] == pytest.approx(divergence(q, p, kind)[0], rel=1e-12)
    kl_pq = 0.5 * LN(0.5 / 0.9) + 0.5 * LN(0.5 / 0.1)
    assert divergence(p, q, "kl")[0] == pytest.approx(HAND["kl"])
    assert divergence(q, p, "kl")[0] == pytest.approx(kl_pq)
    assert HAND["kl"] != pytest.approx(kl_pq, rel=1e-3)


def test_divergence_floors_zero_probabilities() -> None:
    p = np.array([[0.0, -np.inf]])  # p = [1, 0]
    q = np.array([[0.0, 0.0]])  # q = [0.5, 0.5]
    assert divergence(p, q, "kl")[0] == pytest.approx(0.5 * LN(0.5) + 0.5 * LN(0.5 / 1e-10))
    assert all(np.isfinite(divergence(p, q, kind)[0]) for kind in DIVERGENCES)


def test_divergence_top_k_buckets_by_verifier() -> None:
    p, q = np.log([[0.5, 0.3, 0.2]]), np.log([[0.2, 0.3, 0.5]])
    # top 1 of p is token 0: p -> [0.5, 0.5], q -> [0.2, 0.8]
    assert divergence(p, q, "tv", top_k=1)[0] == pytest.approx(0.3)
    assert divergence(p, q, "kl", top_k=1)[0] == pytest.approx(0.2 * LN(0.2 / 0.5) + 0.8 * LN(0.8 / 0.5))
    for kind in DIVERGENCES:
        assert divergence(p, q, kind, top_k=3) == pytest.approx(divergence(p, q, kind))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_top_k_close_to_exact_when_tail_is_tiny(kind: str) -> None:
    rng = np.random.default_rng(5)
    p = rng.normal(size=(4, 5000))
    p[:, :20] += 15.0  # 20 dominant tokens; the tail holds ~1e-3 of the mass
    q = p + rng.normal(size=p.shape) * 0.5
    exact, approx = divergence(p, q, kind), divergence(p, q, kind, top_k=50)
    assert (exact > 1e-3).all()
    np.testing.assert_allclose(approx, exact, rtol=0.05)


def test_divergence_rejects_bad_arguments() -> None:
    p = np.zeros((2, 4))
    with pytest.raises(ConfigError, match="unknown divergence"):
        divergence(p, p, "hellinger")
    with pytest.raises(ConfigError, match="top_k"):
        divergence(p, p, top_k=0)
    with pytest.raises(ValueError, match="shape"):
        divergence(p, p[:1])


# --- divergence against the float64 reference ------------------------------------------------------

EPS = 1e-10
PRECISION = 1e-5  # absolute: the float32 kernel against the float64 definition


def reference_divergence(p_logits: np.ndarray, q_logits: np.ndarray, kind: str, top_k: int | None) -> float:
    """The definition in float64 (acceptance.divergence's docstring), one pair of rows [V]."""

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        return float((a * (np.log(np.maximum(a, EPS)) - np.log(np.maximum(b, EPS)))).sum())

    p, q = softmax(p_logits.astype(np.float64)), softmax(q_logits.astype(np.float64))
    if top_k is not None and top_k < p.size:
        top = np.argsort(-p_logits.astype(np.float64), kind="stable")[:top_k]
        p = np.append(p[top], max(1.0 - p[top].sum(), 0.0))
        q = np.append(q[top], max(1.0 - q[top].sum(), 0.0))
    m = 0.5 * (p + q)
    return {
        "tv": lambda: 0.5 * float(np.abs(p - q).sum()),
        "kl": lambda: kl(q, p),
        "js": lambda: 0.5 * kl(m, p) + 0.5 * kl(m, q),
        "js-sym": lambda: 0.5 * kl(p, m) + 0.5 * kl(q, m),
    }[kind]()


def random_rows(rng: np.random.Generator, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """A pair of float32 logits rows [V]: any scale (extreme included), some -inf entries, some ties."""
    scale = float(rng.choice([0.01, 1.0, 3.0, 10.0, 40.0]))
    p = (rng.normal(size=vocab) * scale).astype(np.float32)
    q = (p + rng.normal(size=vocab) * rng.choice([0.0, 0.1, 1.0, scale])).astype(np.float32)
    if vocab > 2 and rng.random() < 0.3:  # masked tokens (a grammar, a banned token), never all of them
        p[rng.choice(vocab - 1, size=max(1, vocab // 5), replace=False) + 1] = -np.inf
    if vocab > 2 and rng.random() < 0.3:
        q[rng.choice(vocab - 1, size=max(1, vocab // 5), replace=False) + 1] = -np.inf
    if rng.random() < 0.3:  # ties
        p[: vocab // 2] = p[0]
    if rng.random() < 0.2:  # a row in the positive range of real logits
        p += np.float32(25.0)
    return p, q


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_matches_float64_reference_on_random_rows(kind: str) -> None:
    rng = np.random.default_rng(11)
    for _ in range(150):
        vocab = int(rng.choice([2, 3, 17, 600, 5000, 33000]))
        p, q = random_rows(rng, vocab)
        top_k = rng.choice([None, 1, 50])
        if top_k is not None and rng.random() < 0.5:  # a tie across the top-k boundary is ambiguous
            continue
        got = divergence(p[None], q[None], kind, top_k)[0]
        assert abs(got - reference_divergence(p, q, kind, top_k)) < PRECISION, (vocab, top_k)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_matches_float64_reference_at_qwen_size(kind: str) -> None:
    rng = np.random.default_rng(12)
    p = rng.normal(0.0, 3.0, size=(3, 151_936)).astype(np.float32)
    p[:, :8] += 20.0  # a confident head 20-30 nats over the bulk, as in Qwen2.5's rows
    q = p + rng.normal(size=p.shape).astype(np.float32) * np.float32([[0.01], [0.5], [3.0]])
    for top_k in (None, 50):
        got = divergence(p, q, kind, top_k)
        want = [reference_divergence(a, b, kind, top_k) for a, b in zip(p, q, strict=True)]
        np.testing.assert_allclose(got, want, rtol=0, atol=PRECISION)


def test_divergence_of_a_row_with_itself_is_zero_and_rows_are_independent() -> None:
    rng = np.random.default_rng(13)
    p = rng.normal(size=(4, 1000)).astype(np.float32) * 5
    for kind in DIVERGENCES:
        np.testing.assert_allclose(divergence(p, p, kind), 0.0, atol=1e-6)
    q = p[::-1].copy()
    both = divergence(p, q, "js")
    assert [divergence(p[i : i + 1], q[i : i + 1], "js")[0] for i in range(4)] == list(both)


def test_lazy_divergence_computes_only_the_rows_read() -> None:
    p = np.zeros((3, 4), dtype=np.float32)
    q = np.log(np.array([[0.7, 0.1, 0.1, 0.1]] * 3, dtype=np.float32))
    q[2] = np.nan  # a row never read must not matter
    lazy = LazyDivergence(p, q, "tv")
    assert lazy.shape == (3,)
    assert lazy[1] == pytest.approx(0.45, abs=1e-6)
    assert sorted(lazy._values) == [1]


# --- fuzzy_verify -------------------------------------------------------------------------------


def test_fuzzy_with_tau_zero_equals_greedy_verify() -> None:
    rng = make_rng(6)
    for _ in range(300):
        k, vocab = int(rng.integers(0, 6)), int(rng.integers(2, 12))
        p_logits = rng.normal(size=(k + 1, vocab)).astype(np.float32)
        draft = p_logits[:k].argmax(-1)
        flip = rng.random(k) < 0.3
        draft[flip] = rng.integers(0, vocab, size=int(flip.sum()))
        div = np.where(rng.random(k) < 0.3, 0.0, rng.random(k))  # div == 0 must not accept at tau = 0
        assert fuzzy_verify(draft, p_logits, None, div, 0.0, None) == greedy_verify(draft, p_logits)


def test_fuzzy_with_tau_zero_equals_speculative_verify_for_a_seed() -> None:
    rng = make_rng(7)
    for i in range(300):
        draft, p, q = random_case(rng, one_hot_q=i % 3 == 0)
        div = np.where(rng.random(draft.size) < 0.3, 0.0, rng.random(draft.size))
        fuzzy = fuzzy_verify(draft, p, q, div, 0.0, make_rng(i))
        assert fuzzy == speculative_verify(draft, p, q, make_rng(i))


def test_fuzzy_with_large_tau_accepts_everything() -> None:
    rng = make_rng(8)
    for i in range(100):
        draft, p, q = random_case(rng, one_hot_q=i % 2 == 0)
        div = rng.random(draft.size) * 0.5
        assert fuzzy_verify(draft, p, q, div, 1.0, make_rng(i)).bonus
        greedy = fuzzy_verify(draft, p, q, div, 1.0, None)
        assert greedy == Verdict(draft.size, int(p[-1].argmax()), draft.size)


@pytest.mark.parametrize(
    ("draft", "div", "tau", "expected"),
    [
        ([0, 0, 0], [0.1, 0.6, 0.1], 0.5, Verdict(1, 1, 3)),  # divergence accepts 0, not 1: recover argmax
        ([0, 1, 0], [0.1, 0.6, 0.1], 0.5, Verdict(3, 3, 3)),  # 1 matches the argmax: exact rule accepts
        ([0, 0, 0], [0.5, 0.5, 0.5], 0.5, Verdict(3, 3, 3)),  # div == tau passes
        ([0, 0, 0], [0.1, 0.1, 0.1], 0.0, Verdict(0, 2, 3)),  # tau = 0: greedy
    ],
)
def test_fuzzy_greedy_cases(draft: list[int], div: list[float], tau: float, expected: Verdict) -> None:
    p_logits = logits_with_argmax([2, 1, 0, 3])
    assert fuzzy_verify(np.array(draft), p_logits, None, np.array(div), tau, None) == expected


def test_fuzzy_sampled_rejection_draws_from_residual_and_keeps_draw_order() -> None:
    p = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    q = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    draft, div = np.array([0, 0]), np.array([0.1, 0.9])
    # position 0: lossless test fails (u=0.9) but div passes; position 1: both fail -> residual [0, .5, 0]
    verdict = fuzzy_verify(draft, p, q, div, 0.5, SeqRng(0.9, 0.9, 0.0))  # type: ignore[arg-type]
    assert verdict == Verdict(1, 1, 2)
    # the same draws without the divergence: rejected at position 0
    assert speculative_verify(draft, p, q, SeqRng(0.9, 0.0)) == Verdict(0, 1, 2)  # type: ignore[arg-type]


def test_fuzzy_rejects_bad_arguments() -> None:
    p = np.zeros((3, 4))
    with pytest.raises(ConfigError, match="tau"):
        fuzzy_verify(np.array([0, 1]), p, None, np.zeros(2), -0.1, None)
    with pytest.raises(ValueError, match="div"):
        fuzzy_verify(np.array([0, 1]), p, None, np.zeros(3), 0.1, None)


# --- validate_tau / Verdict -------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [-0.1, math.nan, math.inf])
def test_validate_tau_rejects(tau: float) -> None:
    with pytest.raises(ConfigError, match="tau"):
        validate_tau(tau)


def test_validate_tau_accepts() -> None:
    assert validate_tau(0) == 0.0 and validate_tau(0.4) == 0.4


def test_verdict_bonus() -> None:
    assert Verdict(3, 7, 3).bonus and not Verdict(2, 7, 3).bonus


# --- speculative_verify over logits rows (the fused C draws) ----------------------------------------


def logits_case(rng: np.random.Generator, vocab: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """(p [3, V], q [2, V]) float32 logits: 6 likely tokens spread over several 1024-token blocks."""
    p = rng.normal(size=(3, vocab)).astype(np.float32)
    q = p[:2] + rng.normal(size=(2, vocab)).astype(np.float32)
    likely = np.array([5, 700, 1023, 1024, 2100, vocab - 1])
    p[:, likely] += np.float32([9.0, 8.5, 8.0, 7.5, 7.0, 6.0])
    q[:, likely] += np.float32([6.0, 8.0, 9.0, 7.0, 8.5, 6.5])
    return p, q


@pytest.mark.parametrize("one_hot_q", [False, True])
def test_speculative_verify_on_logits_follows_target_distribution(one_hot_q: bool) -> None:
    cfg = SamplingConfig(temperature=0.8)
    p_logits, q_logits = logits_case(np.random.default_rng(31))
    want = Warped(p_logits, cfg).dense(0).astype(np.float64)
    rng = make_rng(32)
    counts = np.zeros(p_logits.shape[1])
    for _ in range(TRIALS):
        p, q = Warped(p_logits, cfg), Warped(q_logits, cfg)
        draft = np.array([700 if one_hot_q else q.sample(0, rng), 5 if one_hot_q else q.sample(1, rng)])
        counts[first_emitted(speculative_verify(draft, p, None if one_hot_q else q, rng), draft)] += 1
    assert np.abs(counts / TRIALS - want).max() < BOUND


def test_fused_residual_draw_matches_the_dense_one() -> None:
    cfg = SamplingConfig(temperature=0.8)
    p_logits, q_logits = logits_case(np.random.default_rng(33))
    p, q = Warped(p_logits, cfg), Warped(q_logits, cfg)
    dense_p = Warped(p_logits, SamplingConfig(temperature=0.8, top_k=p_logits.shape[1] - 1))
    residual = np.maximum(p.dense(0).astype(np.float64) - q.dense(0), 0.0)
    cdf = np.cumsum(residual) / residual.sum()
    us = np.random.default_rng(34).random(300)
    fused = [p.draw_residual(0, q, 0, u) for u in us]
    assert sum(f != int(np.searchsorted(cdf, u, side="right")) for f, u in zip(fused, us, strict=True)) <= 2
    assert p.draw_residual(0, p, 0, 0.5) == -1  # q == p: nothing left
    one_hot = [p.draw_residual(0, None, 5, u) for u in us]
    assert 5 not in one_hot and dense_p.draw_residual(0, None, 5, 0.3) != 5


def test_speculative_verify_on_logits_is_deterministic_for_a_seed() -> None:
    cfg = SamplingConfig(temperature=0.7, top_p=0.9)
    verdicts = set()
    for seed in range(40):
        p_logits, q_logits = logits_case(np.random.default_rng(seed), vocab=2500)
        runs = []
        for _ in range(2):
            rng = make_rng(seed)
            p, q = Warped(p_logits, SamplingConfig(temperature=0.7)), Warped(q_logits, cfg)
            draft = np.array([q.sample(0, rng), q.sample(1, rng)])
            runs.append((tuple(draft), speculative_verify(draft, p, q, rng)))
        assert runs[0] == runs[1]
        verdicts.add(runs[0])
    assert len(verdicts) > 10
