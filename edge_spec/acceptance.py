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

from edge_spec.errors import ConfigError
from edge_spec.sampling import sample

DIVERGENCES = ("js", "js-sym", "kl", "tv")

_EPS = 1e-10  # floor on probabilities inside logs (divergence)


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
    p: np.ndarray,  # [k+1, V] verifier probabilities (warped)
    q: np.ndarray | None,  # [k, V] proposer probabilities (warped); None = one-hot on draft (n-gram)
    rng: np.random.Generator,
) -> Verdict:
    """Lossless speculative sampling: the emitted tokens are distributed exactly as the verifier's p.

    Accept draft[i] with probability min(1, p_i(x) / q_i(x)), one `rng.random()` per position in order. At
    the first rejection emit a draw from the residual norm(max(0, p_i - q_i)) (from p_i if the residual is
    all zero); if all k are accepted, emit a bonus draw from p_k.
    """
    draft = _check(draft, p, q)
    p, q = np.asarray(p), None if q is None else np.asarray(q)
    k = draft.size
    for i, x in enumerate(draft):
        if not _lossless_accepts(rng.random(), p, q, i, x):
            return Verdict(i, sample(_residual(p, q, i, x), rng), k)
    return Verdict(k, sample(p[k], rng), k)


def fuzzy_verify(
    draft: np.ndarray,  # [k] int, proposed token ids
    p: np.ndarray,  # [k+1, V] verifier probabilities (warped); greedy mode: logits do, only argmax is used
    q: np.ndarray | None,  # [k, V] proposer probabilities (warped); None = one-hot on draft; unused if greedy
    div: np.ndarray,  # [k] float, divergence between verifier and proposer at each position
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
    p, q = np.asarray(p), None if q is None else np.asarray(q)
    k = draft.size
    div = np.asarray(div)
    if div.shape != (k,):
        raise ValueError(f"div must have shape [k] = ({k},), got {div.shape}")
    tau = validate_tau(tau)
    for i, x in enumerate(draft):
        exact = x == int(np.argmax(p[i])) if rng is None else _lossless_accepts(rng.random(), p, q, i, x)
        if exact or (tau > 0.0 and div[i] <= tau):
            continue
        token = int(np.argmax(p[i])) if rng is None else sample(_residual(p, q, i, x), rng)
        return Verdict(i, token, k)
    return Verdict(k, int(np.argmax(p[k])) if rng is None else sample(p[k], rng), k)


def divergence(
    p_logits: np.ndarray,  # [k, V] verifier raw logits
    q_logits: np.ndarray,  # [k, V] proposer raw logits
    kind: str = "js",
    top_k: int | None = None,
) -> np.ndarray:  # [k] float64
    """Per-row divergence between softmax(p_logits) and softmax(q_logits), temperature 1, in float64.

    kinds (probabilities floored at 1e-10 inside logs):
      - "js": FSD reference form 0.5 * KL(m || p) + 0.5 * KL(m || q), m = (p + q) / 2. Not the textbook
        Jensen-Shannon divergence, but what the FSD code computes and what its thresholds (0.2-0.5) were
        tuned with, hence the default;
      - "js-sym": textbook 0.5 * KL(p || m) + 0.5 * KL(q || m);
      - "kl": KL(q || p), the draft relative to the target;
      - "tv": total variation 0.5 * sum |p - q|.
    top_k=N: cheaper approximation on N + 1 buckets: the verifier's N most likely tokens, plus one bucket
    holding the rest of each distribution's mass.
    """
    if kind not in DIVERGENCES:
        raise ConfigError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")
    if np.shape(p_logits) != np.shape(q_logits) or np.ndim(p_logits) < 1:
        raise ValueError(
            f"p_logits and q_logits must share shape [k, V], got {np.shape(p_logits)}, {np.shape(q_logits)}"
        )
    p, q = _softmax(p_logits), _softmax(q_logits)
    if top_k is not None:
        if top_k < 1:
            raise ConfigError(f"divergence top_k must be >= 1, got {top_k}")
        if top_k < p.shape[-1]:
            p, q = _bucket(p, q, top_k)
    if kind == "tv":
        return 0.5 * np.abs(p - q).sum(axis=-1)
    if kind == "kl":
        return _kl(q, p)
    m = 0.5 * (p + q)
    if kind == "js":
        return 0.5 * _kl(m, p) + 0.5 * _kl(m, q)
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def validate_tau(tau: float) -> float:
    """`tau` as a float; ConfigError unless it is finite and >= 0."""
    tau = float(tau)
    if not math.isfinite(tau) or tau < 0:
        raise ConfigError(f"fuzzy threshold tau must be a finite number >= 0, got {tau}")
    return tau


def _check(
    draft: np.ndarray,  # [k] int
    p: np.ndarray,  # [k+1, V]
    q: np.ndarray | None = None,  # [k, V]
) -> np.ndarray:
    """`draft` as a 1-D int array, after checking the shapes of p and q against it."""
    draft = np.asarray(draft)
    if draft.ndim != 1 or (draft.size and not np.issubdtype(draft.dtype, np.integer)):
        raise ValueError(f"draft must be a 1-D array of token ids, got shape {draft.shape} {draft.dtype}")
    k = draft.size
    if np.ndim(p) != 2 or np.shape(p)[0] != k + 1:
        raise ValueError(f"p must have shape [k+1, V] with k = {k}, got {np.shape(p)}")
    if q is not None and np.shape(q) != (k, np.shape(p)[1]):
        raise ValueError(f"q must have shape [k, V] = ({k}, {np.shape(p)[1]}), got {np.shape(q)}")
    return draft


def _lossless_accepts(u: float, p: np.ndarray, q: np.ndarray | None, i: int, x: int) -> bool:
    """The min(1, p_i(x) / q_i(x)) test for uniform u in [0, 1), written without a division."""
    return bool(u * (1.0 if q is None else q[i, x]) < p[i, x])


def _residual(p: np.ndarray, q: np.ndarray | None, i: int, x: int) -> np.ndarray:
    """max(0, p_i - q_i) [V], unnormalised (sample() normalises); p_i itself if that is all zero."""
    if q is None:  # one-hot q: max(0, p_i - onehot(x)) is p_i with token x removed
        r = np.array(p[i], dtype=np.float64)
        r[x] = 0.0
    else:
        r = np.maximum(np.asarray(p[i], dtype=np.float64) - q[i], 0.0)
    return r if r.sum() > 0 else np.asarray(p[i], dtype=np.float64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """softmax over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _bucket(
    p: np.ndarray,  # [k, V]
    q: np.ndarray,  # [k, V]
    n: int,
) -> tuple[np.ndarray, np.ndarray]:  # [k, n+1] each
    """p and q restricted to p's top n tokens per row, plus one bucket with the remaining mass."""
    top = np.argpartition(-p, n - 1, axis=-1)[..., :n]
    pt, qt = np.take_along_axis(p, top, axis=-1), np.take_along_axis(q, top, axis=-1)
    p_rest = np.clip(1.0 - pt.sum(axis=-1, keepdims=True), 0.0, None)
    q_rest = np.clip(1.0 - qt.sum(axis=-1, keepdims=True), 0.0, None)
    return np.concatenate([pt, p_rest], axis=-1), np.concatenate([qt, q_rest], axis=-1)


def _kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL(a || b) over the last axis, with both floored at 1e-10 inside the logs."""
    return (a * (np.log(np.maximum(a, _EPS)) - np.log(np.maximum(b, _EPS)))).sum(axis=-1)
