"""Acceptance rules for speculative decoding: pure functions over numpy arrays, no model.

A proposer (draft model, n-gram lookup) proposes k tokens; the verifier scores all of them in one pass,
giving k + 1 rows (row i scores the position of draft[i], row k the position after the last one). A rule
returns a `Verdict`.

Glossary (as in vLLM's rejection sampler):
  - accepted tokens: the prefix of the proposal the verifier keeps (`n_accepted` of the k);
  - recovered token: the verifier's own token emitted at the first rejected position (n_accepted < k);
  - bonus token: the verifier's token after all k proposed tokens were accepted (from row k).
Either way one verifier token follows the accepted prefix, so a round commits n_accepted + 1 tokens.

Rules:
  - `greedy_verify`: accept while the draft equals the verifier's argmax (output == greedy target).
  - `speculative_verify`: lossless speculative sampling (Leviathan et al. 2023, "Fast Inference from
    Transformers via Speculative Decoding"; Chen et al. 2023, "Accelerating Large Language Model Decoding
    with Speculative Sampling"): the output is distributed exactly as the verifier's.
  - `fuzzy_verify`: also accept a position whose verifier/proposer divergence is <= tau (Fuzzy Speculative
    Decoding, Holsman et al. 2025; used at both stages of PyramidSD, Byun et al. 2025, "3-Model
    Speculative Decoding"). Trades exactness for longer accepted prefixes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from edge_spec import _rowmath
from edge_spec.errors import ConfigError
from edge_spec.sampling import Warped, f32_row, top_k_ids

DIVERGENCES = ("js", "js-sym", "kl", "tv")


class Verdict(NamedTuple):
    """Outcome of verifying one proposal of k tokens."""

    n_accepted: int  # length of the accepted prefix of the proposal, 0..k
    token: int  # recovered token if n_accepted < k, else bonus token
    k: int  # proposal length

    @property
    def bonus(self) -> bool:
        """True when every proposed token was accepted and `token` is the bonus token."""
        return self.n_accepted == self.k


def greedy_verify(
    draft: np.ndarray,  # [k] int, proposed token ids
    p_logits: np.ndarray,  # [k+1, V] verifier logits (or probabilities): row i scores draft[i]
) -> Verdict:
    """Accept while draft[i] == argmax p_logits[i]; emit the argmax of the first mismatching row or row k."""
    draft = _check(draft, p_logits)
    k = draft.size
    target = np.asarray(p_logits).argmax(axis=-1)  # [k+1]
    mismatch = np.flatnonzero(draft != target[:k])
    n = int(mismatch[0]) if mismatch.size else k
    return Verdict(n, int(target[n]), k)


def speculative_verify(
    draft: np.ndarray,  # [k] int, proposed token ids
    p: Warped | np.ndarray,  # [k+1, V] verifier distributions (warped; an array: probabilities)
    q: Warped | np.ndarray | None,  # [k, V] proposer distributions (warped); None = one-hot on draft (n-gram)
    rng: np.random.Generator,
) -> Verdict:
    """Lossless speculative sampling: the emitted tokens are distributed exactly as the verifier's p.

    Accept draft[i] with probability min(1, p_i(x) / q_i(x)), one `rng.random()` per position in order. At
    the first rejection emit a draw from the residual norm(max(0, p_i - q_i)) (from p_i if the residual is
    all zero); if all k are accepted, emit a bonus draw from p_k. Reads p_i(x) and q_i(x) per position; whole
    rows only at the one rejected position or for the bonus.
    """
    draft = _check(draft, p, q)
    p, q = _warped(p), None if q is None else _warped(q)
    k = draft.size
    for i, x in enumerate(draft.tolist()):
        if not _lossless_accepts(rng.random(), p, q, i, x):
            return Verdict(i, _draw_residual(p, q, i, x, rng), k)
    return Verdict(k, p.sample(k, rng), k)


def fuzzy_verify(
    draft: np.ndarray,  # [k] int, proposed token ids
    p: Warped | np.ndarray,  # [k+1, V] verifier's (warped); greedy mode: logits do, only argmax is read
    q: Warped | np.ndarray | None,  # [k, V] proposer's (warped); None = one-hot on draft; unused if greedy
    div: np.ndarray | LazyDivergence,  # [k] float divergences, read where the exact rule rejects
    tau: float,  # threshold >= 0; 0 = the exact rule alone
    rng: np.random.Generator | None,  # None = greedy mode
) -> Verdict:
    """Fuzzy acceptance (FSD): position i is accepted if div[i] <= tau OR the exact rule accepts it.

    The exact rule is greedy_verify's match (rng None) or speculative_verify's min(1, p/q) test, so the
    divergence only adds acceptances, never removes one the lossless rule makes; this is a superset of
    FSD's rule (divergence alone). tau = 0 turns the divergence test off, reproducing greedy_verify /
    speculative_verify exactly (even where div[i] == 0 for a draft that is not the verifier's choice). In
    sampled mode the uniform for the lossless test is drawn at every position, even one the divergence
    already accepted, so the randomness consumed matches speculative_verify and seeded outputs agree.
    At the first position rejected by both tests emit argmax p_i (greedy) or a draw from the residual
    norm(max(0, p_i - q_i)); if all pass, the bonus argmax p_k / a draw from p_k.
    """
    draft = _check(draft, p, None if rng is None else q)
    p, q = _warped(p), None if q is None else _warped(q)
    k = draft.size
    if np.shape(div) != (k,):
        raise ValueError(f"div must have shape [k] = ({k},), got {np.shape(div)}")
    tau = validate_tau(tau)
    for i, x in enumerate(draft.tolist()):
        exact = x == p.argmax(i) if rng is None else _lossless_accepts(rng.random(), p, q, i, x)
        if exact or (tau > 0.0 and div[i] <= tau):
            continue
        return Verdict(i, p.argmax(i) if rng is None else _draw_residual(p, q, i, x, rng), k)
    return Verdict(k, p.argmax(k) if rng is None else p.sample(k, rng), k)


def divergence(
    p_logits: np.ndarray,  # [k, V] verifier raw logits
    q_logits: np.ndarray,  # [k, V] proposer raw logits
    kind: str = "js",
    top_k: int | None = None,
) -> np.ndarray:  # [k] float64
    """Per-row divergence between softmax(p_logits) and softmax(q_logits), temperature 1.

    kinds (probabilities floored at 1e-10 inside logs):
      - "js": FSD reference form 0.5 * KL(m || p) + 0.5 * KL(m || q), m = (p + q) / 2. Not the textbook
        Jensen-Shannon divergence, but what the FSD code computes and what its thresholds (0.2-0.5) were
        tuned with, hence the default;
      - "js-sym": textbook 0.5 * KL(p || m) + 0.5 * KL(q || m);
      - "kl": KL(q || p), the draft relative to the target;
      - "tv": total variation 0.5 * sum |p - q|.
    top_k=N: cheaper approximation on N + 1 buckets: the verifier's N most likely tokens, plus one bucket
    holding the rest of each distribution's mass.
    Computed in float32 by a fused C kernel (edge_spec/_rowmath.c): within 1e-5 of the float64 value.
    """
    _check_divergence(p_logits, q_logits, kind, top_k)
    zp, zq = np.asarray(p_logits), np.asarray(q_logits)
    rows = zip(zp.reshape(-1, zp.shape[-1]), zq.reshape(-1, zq.shape[-1]), strict=True)
    return np.array([_row_divergence(a, b, kind, top_k) for a, b in rows]).reshape(zp.shape[:-1])


class LazyDivergence:
    """`divergence` of each row [k], computed on its first read: a rule that decides a position without it,
    or stops before it, never pays for it."""

    def __init__(
        self,
        p_logits: np.ndarray,  # [k, V] verifier raw logits
        q_logits: np.ndarray,  # [k, V] proposer raw logits
        kind: str = "js",
        top_k: int | None = None,
    ) -> None:
        _check_divergence(p_logits, q_logits, kind, top_k)
        if np.ndim(p_logits) != 2:
            raise ValueError(f"p_logits must have shape [k, V], got {np.shape(p_logits)}")
        self.p_logits, self.q_logits, self.kind, self.top_k = p_logits, q_logits, kind, top_k
        self._values: dict[int, float] = {}

    @property
    def shape(self) -> tuple[int]:
        return (len(self.p_logits),)

    def __getitem__(self, i: int) -> float:
        if i not in self._values:
            self._values[i] = _row_divergence(self.p_logits[i], self.q_logits[i], self.kind, self.top_k)
        return self._values[i]


def validate_tau(tau: float) -> float:
    """`tau` as a float; ConfigError unless it is finite and >= 0."""
    tau = float(tau)
    if not math.isfinite(tau) or tau < 0:
        raise ConfigError(f"fuzzy threshold tau must be a finite number >= 0, got {tau}")
    return tau


def _check(
    draft: np.ndarray,  # [k] int
    p: Warped | np.ndarray,  # [k+1, V]
    q: Warped | np.ndarray | None = None,  # [k, V]
) -> np.ndarray:
    """`draft` as a 1-D int array, after checking the shapes of p and q against it."""
    draft = np.asarray(draft)
    if draft.ndim != 1 or (draft.size and not np.issubdtype(draft.dtype, np.integer)):
        raise ValueError(f"draft must be a 1-D array of token ids, got shape {draft.shape} {draft.dtype}")
    k = draft.size
    p_shape, q_shape = _shape(p), None if q is None else _shape(q)
    if len(p_shape) != 2 or p_shape[0] != k + 1:
        raise ValueError(f"p must have shape [k+1, V] with k = {k}, got {p_shape}")
    if q_shape is not None and q_shape != (k, p_shape[1]):
        raise ValueError(f"q must have shape [k, V] = ({k}, {p_shape[1]}), got {q_shape}")
    return draft


def _shape(a: Warped | np.ndarray) -> tuple[int, ...]:
    return a.logits.shape if isinstance(a, Warped) else np.shape(a)


def _warped(a: Warped | np.ndarray) -> Warped:
    return a if isinstance(a, Warped) else Warped.from_probs(a)


def _lossless_accepts(u: float, p: Warped, q: Warped | None, i: int, x: int) -> bool:
    """The min(1, p_i(x) / q_i(x)) test for uniform u in [0, 1), written without a division."""
    return u * (1.0 if q is None else q.prob(i, x)) < p.prob(i, x)


def _draw_residual(p: Warped, q: Warped | None, i: int, x: int, rng: np.random.Generator) -> int:
    """A draw from max(0, p_i - q_i) (one-hot q: p_i without token x); from p_i if that is all zero."""
    u = rng.random()
    token = p.draw_residual(i, q, x, u)
    return token if token >= 0 else p.draw(i, u)


def _check_divergence(p_logits: np.ndarray, q_logits: np.ndarray, kind: str, top_k: int | None) -> None:
    if kind not in DIVERGENCES:
        raise ConfigError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"divergence top_k must be >= 1, got {top_k}")
    if np.shape(p_logits) != np.shape(q_logits) or np.ndim(p_logits) < 1:
        raise ValueError(
            f"p_logits and q_logits must share shape [k, V], got {np.shape(p_logits)}, {np.shape(q_logits)}"
        )


def _row_divergence(zp: np.ndarray, zq: np.ndarray, kind: str, top_k: int | None) -> float:
    """`divergence` of one pair of logits rows [V], in float32 (edge_spec/_rowmath.c: two passes a row)."""
    if top_k is not None and top_k < zp.size:
        top = top_k_ids(zp, top_k)  # p's top tokens
        zp, zq = _bucket(zp, top), _bucket(zq, top)
    return _rowmath.divergence(kind, f32_row(zp), f32_row(zq))


def _bucket(z: np.ndarray, top: np.ndarray) -> np.ndarray:  # [n+1] float64
    """Log-probabilities of softmax(z) [V] on the tokens `top` [n], plus one bucket holding the rest (its
    own log-sum-exp, exact however small the rest is)."""
    row = f32_row(z)
    lse = _rowmath.logsumexp(row, 1.0)
    rest = row.copy()
    rest[top] = -np.inf
    return np.append(row[top].astype(np.float64) - lse, _rowmath.logsumexp(rest, 1.0) - lse)
