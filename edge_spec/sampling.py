"""Logits -> probabilities (temperature, top-k, top-p, min-p) and seeded sampling. Pure numpy, no model.

Warping order follows llama.cpp's default sampler chain: top-k, then top-p, then min-p, each on the
temperature-1 distribution of the tokens still in play, and temperature last, on the survivors only. So the
set of candidate tokens does not depend on the temperature; the temperature only reshapes the mass among
them. Greedy (temperature 0) ignores the truncations: the argmax survives all of them anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_spec.errors import ConfigError

# Top-p candidate set sizes tried before falling back to the whole vocabulary (see _top_p).
_TOP_P_FIRST = 64
_TOP_P_GROWTH = 8


@dataclass(frozen=True)
class SamplingConfig:
    """How a tier turns logits into a next-token distribution. Defaults: greedy, no truncation."""

    temperature: float = 0.0  # 0 = greedy (argmax); otherwise softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest most-likely set with mass >= top_p; 1 = off
    min_p: float = 0.0  # keep tokens with prob >= min_p * (max prob); 0 = off
    seed: int | None = None  # RNG seed for sampling; None = fresh OS entropy

    def __post_init__(self) -> None:
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


def warp(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Probabilities (float64, same shape, rows sum to 1) from logits [..., V]; `logits` is never written.

    Greedy: one-hot at the argmax. Otherwise top-k, top-p, min-p (temperature 1), then softmax of the
    survivors' logits / temperature; every other token gets probability 0.
    """
    x = np.asarray(logits)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"logits must have shape [..., V] with V > 0, got {x.shape}")
    out = np.zeros(x.shape, dtype=np.float64)
    if cfg.greedy:
        np.put_along_axis(out, x.argmax(axis=-1)[..., None], 1.0, axis=-1)
        return out
    for row, dst in zip(x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1]), strict=True):
        z = row.astype(np.float64)
        keep = _truncate(z, cfg)
        zk = z if keep is None else z[keep]
        e = np.exp((zk - zk.max()) / cfg.temperature)
        e /= e.sum()
        if keep is None:
            dst[:] = e
        else:
            dst[keep] = e
    return out


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token id from a 1-D distribution by inverse CDF on a single `rng.random()` draw.

    `probs` need not be normalised (it is scaled by its sum); tokens with probability 0 are never drawn.
    """
    cdf = np.cumsum(probs, dtype=np.float64)
    if cdf.ndim != 1 or cdf.size == 0 or not cdf[-1] > 0:
        raise ValueError("sample() needs a non-empty 1-D distribution with positive mass")
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    if i == cdf.size:  # u rounded up to the total: take the last token with mass
        i = int(np.flatnonzero(np.asarray(probs))[-1])
    return i


def _truncate(z: np.ndarray, cfg: SamplingConfig) -> np.ndarray | None:
    """Token ids surviving top-k, top-p, min-p of one row of float64 logits [V]; None when all survive."""
    keep: np.ndarray | None = None
    if 0 < cfg.top_k < z.size:
        keep = np.argpartition(-z, cfg.top_k - 1)[: cfg.top_k]
    if cfg.top_p < 1.0:
        zk = z if keep is None else z[keep]
        kept = _top_p(zk, cfg.top_p)
        keep = kept if keep is None else keep[kept]
    if cfg.min_p > 0.0:
        zk = z if keep is None else z[keep]
        kept = np.flatnonzero(zk >= zk.max() + math.log(cfg.min_p))
        keep = kept if keep is None else keep[kept]
    return keep


def _top_p(z: np.ndarray, top_p: float) -> np.ndarray:
    """Indices into `z` [n] of the smallest most-likely set whose softmax mass reaches `top_p`, exactly.

    Instead of sorting all n tokens, sort only the top 64, 512, 4096, ... candidates (argpartition) until
    their mass reaches top_p: the sorted prefix of the top-m candidates is the sorted prefix of the whole.
    """
    p = np.exp(z - z.max())
    p /= p.sum()
    m = _TOP_P_FIRST
    while True:
        cand = np.arange(p.size) if m >= p.size else np.argpartition(-p, m - 1)[:m]
        cand = cand[np.argsort(-p[cand])]
        cum = np.cumsum(p[cand])
        if cum[-1] >= top_p or m >= p.size:
            return cand[: min(int(np.searchsorted(cum, top_p)) + 1, cand.size)]
        m *= _TOP_P_GROWTH
