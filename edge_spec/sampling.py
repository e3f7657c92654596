"""Logits -> probabilities (temperature, top-k, top-p, min-p) and seeded sampling. No model.

Warping order follows llama.cpp's default sampler chain: top-k, then top-p, then min-p, each on the
temperature-1 distribution of the tokens still in play, and temperature last, on the survivors only. So the
set of candidate tokens does not depend on the temperature; the temperature only reshapes the mass among
them. Greedy (temperature 0) ignores the truncations: the argmax survives all of them anyway.

Rows are float32 logits over vocabularies of up to ~256k tokens, on the critical path of every verification
round: full-row normalisers go through the fused C kernel (edge_spec/_rowmath.c), truncations select
candidates by comparing logits instead of sorting, and sampling searches block sums, not a full cumsum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_spec import _rowmath
from edge_spec.errors import ConfigError

_TOP_P_CUTS = (1e-1, 1e-3, 1e-6, 0.0)  # top-p candidates: weights relative to the top token (see _top_p)
_SAMPLE_BLOCK = 1024  # tokens per block in sample()'s two-level search


@dataclass(frozen=True)
class SamplingConfig:
    """How a tier turns logits into a next-token distribution. Defaults: greedy, no truncation."""

    temperature: float = 0.0  # 0 = greedy (argmax); otherwise softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest most-likely set with mass >= top_p; 1 = off
    min_p: float = 0.0  # keep tokens with prob >= min_p * (max prob); 0 = off
    seed: int | None = None  # RNG seed for sampling; None = fresh OS entropy

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        seed = self.seed
        integer = isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
        if seed is not None and (not integer or seed < 0):
            raise ConfigError(f"seed must be an integer >= 0 or None, got {seed!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ConfigError(f"min_p must be in [0, 1) (0 = off), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax (temperature 0)."""
        return self.temperature == 0.0


def make_rng(seed: int | None) -> np.random.Generator:
    """A numpy Generator; the same seed gives the same stream, None draws a fresh seed from the OS."""
    return np.random.default_rng(seed)


class Warped:
    """The warped next-token distributions of n rows of logits, each row computed on its first use.

    Row i keeps the tokens surviving truncation and, for reading p_i(x), only its log normaliser (a fused
    C pass over an untruncated row); whole rows are built only to sample from them. A rule that stops at
    its first rejected row never touches the rows after it. Greedy: row i is one-hot at argmax z_i.
    """

    def __init__(
        self,
        logits: np.ndarray,  # [n, V] raw logits; never written
        cfg: SamplingConfig,
    ) -> None:
        self.logits = np.asarray(logits)
        if self.logits.ndim != 2 or self.logits.shape[1] == 0:
            raise ValueError(f"logits must have shape [n, V] with V > 0, got {self.logits.shape}")
        self.cfg = cfg
        self._given = False  # rows are probabilities taken as they are (from_probs)
        self._keep: dict[int, np.ndarray | None] = {}
        self._log_totals: dict[int, float] = {}

    @classmethod
    def from_probs(cls, probs: np.ndarray) -> Warped:
        """Rows of probabilities [n, V] taken as they are (each row sums to 1): hand-built cases."""
        rows = cls(probs, SamplingConfig(temperature=1.0))
        rows._given = True
        return rows

    def __len__(self) -> int:
        return self.logits.shape[0]

    def argmax(self, i: int) -> int:
        """The most likely token of row i (truncation keeps it and temperature does not move it)."""
        return int(self.logits[i].argmax())

    def prob(self, i: int, x: int) -> float:
        """Probability of token x in row i."""
        z = self.logits[i]
        if self._given:
            return float(z[x])
        if self.cfg.greedy:
            return float(x == self.argmax(i))
        keep = self._survivors(i)
        if keep is not None and not (keep == x).any():
            return 0.0
        return math.exp(float(z[x]) / self.cfg.temperature - self._log_total(i))

    def dense(self, i: int) -> np.ndarray:  # [V], the logits' float type
        """Row i as probabilities over the whole vocabulary (0 for truncated tokens)."""
        ids, w = self._weights(i)
        w = w / w.sum(dtype=np.float64).astype(w.dtype)
        if ids is None:
            return w
        out = np.zeros(self.logits.shape[1], dtype=w.dtype)
        out[ids] = w
        return out

    def sample(self, i: int, rng: np.random.Generator) -> int:
        """One token drawn from row i with a single `rng.random()` (see `sample`)."""
        return self.draw(i, rng.random())

    def draw(self, i: int, u: float) -> int:
        """The token of row i at uniform u in [0, 1), by inverse CDF."""
        if not self._fused(i):
            ids, w = self._weights(i)
            j = _inverse_cdf(w, u)
            return j if ids is None else int(ids[j])
        token = _rowmath.sample_softmax(f32_row(self.logits[i]), 1.0 / self.cfg.temperature, u, -1)
        if token < 0:
            raise ValueError(f"row {i} has no token with positive probability")
        return token

    def draw_residual(self, i: int, q: Warped | None, x: int, u: float) -> int:
        """The token at uniform u from max(0, p_i - q_i), this row p_i (q None: p_i without token x); -1
        when that is all zero."""
        if self._fused(i) and (q is None or (q._fused(i) and q.cfg.temperature == self.cfg.temperature)):
            scale, row = 1.0 / self.cfg.temperature, f32_row(self.logits[i])
            if q is None:
                return _rowmath.sample_softmax(row, scale, u, x)
            return _rowmath.sample_residual(
                row, f32_row(q.logits[i]), scale, self._log_total(i), q._log_total(i), u
            )
        r = self.dense(i)  # [V], a fresh array
        if q is None:
            r[x] = 0.0
        else:
            r -= q.dense(i)
            np.maximum(r, 0.0, out=r)
        return _inverse_cdf(r, u) if r.any() else -1

    def _fused(self, i: int) -> bool:
        """Whether row i is a whole-vocabulary softmax of logits, which the C kernel draws from."""
        return not self._given and not self.cfg.greedy and self._survivors(i) is None

    def _survivors(self, i: int) -> np.ndarray | None:
        """Ids of the tokens of row i that survive truncation; None when all do."""
        if i not in self._keep:
            self._keep[i] = _truncate(self.logits[i], self.cfg)
        return self._keep[i]

    def _log_total(self, i: int) -> float:
        """log sum over the survivors of row i of exp(z / T)."""
        if i not in self._log_totals:
            keep, scale = self._survivors(i), 1.0 / self.cfg.temperature
            if keep is None:
                total = _rowmath.logsumexp(f32_row(self.logits[i]), scale)
            else:
                zk = self.logits[i][keep].astype(np.float64)
                top = zk.max()
                total = scale * top + math.log(np.exp(scale * (zk - top)).sum())
            self._log_totals[i] = total
        return self._log_totals[i]

    def _weights(self, i: int) -> tuple[np.ndarray | None, np.ndarray]:  # ids [n] or None, weights [n]
        """Unnormalised weights of row i's survivors, exp((z - max z) / T) in the logits' float type."""
        z = self.logits[i]
        if self._given:
            return None, z
        if self.cfg.greedy:
            return np.array([z.argmax()]), np.ones(1, dtype=_float(z))
        ids = self._survivors(i)
        zk = z if ids is None else z[ids]
        w = np.subtract(zk, zk.max(), dtype=_float(zk))
        w *= w.dtype.type(1.0 / self.cfg.temperature)
        return ids, np.exp(w, out=w)


def warp(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Probabilities (same shape and float type, rows sum to 1) from logits [..., V]; never written.

    Greedy: one-hot at the argmax. Otherwise top-k, top-p, min-p (temperature 1), then softmax of the
    survivors' logits / temperature; every other token gets probability 0. The dense form of `Warped`.
    """
    x = np.asarray(logits)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"logits must have shape [..., V] with V > 0, got {x.shape}")
    rows = Warped(x.reshape(-1, x.shape[-1]), cfg)
    return np.stack([rows.dense(i) for i in range(len(rows))]).reshape(x.shape)


def sample(weights: np.ndarray, rng: np.random.Generator) -> int:
    """One token id from a 1-D distribution by inverse CDF on a single `rng.random()` draw.

    `weights` need not be normalised (they are scaled by their sum); tokens of weight 0 are never drawn.
    """
    return _inverse_cdf(np.asarray(weights), rng.random())


def _inverse_cdf(w: np.ndarray, u: float) -> int:
    """The index where the cumulative sum of weights w [n] first exceeds u * sum(w), for u in [0, 1).

    Large rows are searched in two levels (block sums, then one block's cumulative sum, in float64), so a
    draw costs about one summing pass instead of a full-length cumulative sum.
    """
    if w.ndim != 1 or w.size == 0:
        raise ValueError("sample() needs a non-empty 1-D distribution with positive mass")
    starts = np.arange(0, w.size, _SAMPLE_BLOCK)
    cdf = np.cumsum(np.add.reduceat(w, starts, dtype=np.float64))  # [blocks]
    if not cdf[-1] > 0:
        raise ValueError("sample() needs a non-empty 1-D distribution with positive mass")
    target = u * cdf[-1]
    b = int(np.searchsorted(cdf, target, side="right"))
    if b == cdf.size:  # u rounded up to the total: take the last token with mass
        return int(np.flatnonzero(w)[-1])
    block = w[starts[b] : starts[b] + _SAMPLE_BLOCK]
    local = np.cumsum(block, dtype=np.float64)
    j = int(np.searchsorted(local, target - (cdf[b - 1] if b else 0.0), side="right"))
    if j == block.size:  # rounding between the two levels: the block's last token with mass
        j = int(np.flatnonzero(block)[-1])
    return int(starts[b]) + j


def f32_row(z: np.ndarray) -> np.ndarray:  # [V] float32, C-contiguous
    """A row as the C kernel (edge_spec/_rowmath.c) reads it; no copy when it already is one."""
    return np.ascontiguousarray(z, dtype=np.float32)


def _truncate(z: np.ndarray, cfg: SamplingConfig) -> np.ndarray | None:
    """Token ids surviving top-k, top-p, min-p of one row of logits [V]; None when all survive."""
    keep: np.ndarray | None = None
    if 0 < cfg.top_k < z.size:
        keep = top_k_ids(z, cfg.top_k)
    if cfg.top_p < 1.0:
        zk = z if keep is None else z[keep]
        kept = _top_p(zk, cfg.top_p)
        keep = kept if keep is None else keep[kept]
    if cfg.min_p > 0.0:
        zk = z if keep is None else z[keep]
        kept = np.flatnonzero(zk >= zk.max() + math.log(cfg.min_p))
        keep = kept if keep is None else keep[kept]
    return keep


def top_k_ids(z: np.ndarray, k: int) -> np.ndarray:
    """Indices into `z` [n] of its k largest values (0 < k < n), ties going to the lower index.

    Only values at or above the smallest of k chunk maxima are ranked: those maxima are k distinct entries,
    so the k-th largest value is at least their minimum. One max pass and one compare pass over z.
    """
    floor = z[: z.size // k * k].reshape(k, -1).max(axis=1).min()
    cand = np.flatnonzero(z >= floor)
    zc = z[cand]
    kth = np.partition(zc, zc.size - k)[zc.size - k]
    above = np.flatnonzero(zc > kth)
    ties = np.flatnonzero(zc == kth)[: k - above.size]
    return cand[np.concatenate([above, ties])]


def _top_p(z: np.ndarray, top_p: float) -> np.ndarray:
    """Indices into `z` [n] of the smallest most-likely set whose softmax mass reaches `top_p`, exactly,
    ties going to the lower index.

    Only candidates whose weight relative to the most likely token is at least 0.1 (then 1e-3, 1e-6, then
    all) are sorted, stopping at the first candidate set that holds the mass: every token left out weighs
    less than every candidate, so the sorted candidates are the sorted prefix of the whole. The total mass
    comes from one fused log-sum-exp pass; candidates are found by comparing logits, without an exp pass.
    """
    top = float(z.max())
    need = top_p * math.exp(_rowmath.logsumexp(f32_row(z), 1.0) - top)
    for cut in _TOP_P_CUTS:
        cand = np.flatnonzero(z >= top + math.log(cut)) if cut > 0.0 else np.arange(z.size)
        w = np.exp(z[cand].astype(np.float64) - top)
        if cut == 0.0 or w.sum() >= need:
            break
    order = np.argsort(-w, kind="stable")
    cum = np.cumsum(w[order])
    return cand[order[: min(int(np.searchsorted(cum, need)) + 1, order.size)]]


def _float(a: np.ndarray) -> np.dtype:
    """The float type row math runs in: float32 for float32 logits (llama.cpp's), float64 otherwise."""
    return np.result_type(a.dtype, np.float32)
