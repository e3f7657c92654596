"""Several sequences in one Tier (TierConfig.n_seq): `score_many` and the per-sequence cache, on tiny models.

Every result is compared with the same tokens decoded alone in a one-sequence tier (f32 KV cache, flash
attention off, one thread, CPU: batched and single decodes agree to ~1e-5). That a sequence's KV entries
sit under its own id in llama.cpp's memory, not only in `caches`, is checked by decoding one more token
on it and comparing with the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_gguf import BOS_ID, N_BYTE, N_SPECIAL, build_vocab

import edge_spec.backend as backend
from edge_spec.backend import MAX_SEQUENCES, Tier, TierConfig
from edge_spec.errors import ConfigError, ContextOverflowError

EXACT = {"cache_type": "f32", "flash_attn": False, "n_threads": 1, "n_gpu_layers": 0}
ATOL = 1e-4
N_CTX = 64  # per sequence
N_SEQ = 4
FIRST_NORMAL = N_SPECIAL + N_BYTE
N_VOCAB = len(build_vocab()[0])
NEXT = FIRST_NORMAL + 11  # the token decoded to check what a sequence's KV cache holds


def tokens(n: int, seed: int) -> list[int]:
    """BOS and n - 1 random normal tokens."""
    rng = np.random.default_rng(seed)
    return [BOS_ID, *(int(t) for t in rng.integers(FIRST_NORMAL, N_VOCAB, n - 1))]


A, B, C, D = tokens(40, 1), tokens(12, 2), tokens(25, 3), tokens(6, 4)


@pytest.fixture(scope="module")
def multi_tier(tiny_target: Path):
    with Tier(tiny_target, TierConfig(n_ctx=N_CTX, n_seq=N_SEQ, **EXACT)) as t:
        yield t


@pytest.fixture
def tier(multi_tier: Tier) -> Tier:
    multi_tier.reset()
    return multi_tier


@pytest.fixture(scope="module")
def split_tier(tiny_target: Path):
    """n_batch 16: most requests below go over several llama_decode calls."""
    with Tier(tiny_target, TierConfig(n_ctx=N_CTX, n_seq=N_SEQ, n_batch=16, **EXACT)) as t:
        yield t


@pytest.fixture(scope="module")
def reference(tiny_target: Path):
    """reference(seq, n): copied logits of the last n tokens of seq, decoded alone from an empty cache."""
    memo: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
    with Tier(tiny_target, TierConfig(n_ctx=N_CTX, **EXACT)) as alone:

        def rows(seq: list[int], n: int = 1) -> np.ndarray:
            key = (tuple(seq), n)
            if key not in memo:
                alone.reset()
                memo[key] = alone.decode(seq, n).copy()
            return memo[key]

        yield rows


@pytest.fixture
def llama_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The token count of every llama_decode call."""
    calls: list[int] = []
    real = backend.lc.llama_decode

    def recording(ctx, batch):
        calls.append(batch.n_tokens)
        return real(ctx, batch)

    monkeypatch.setattr(backend.lc, "llama_decode", recording)
    return calls


def assert_holds(t: Tier, reference, expected: dict[int, list[int]]) -> None:
    """Each sequence's cache holds `expected[seq]`, in `caches` and in llama.cpp's memory."""
    for seq, toks in expected.items():
        assert t.caches[seq] == toks
        assert t.past(seq) == len(toks)
    for seq, toks in expected.items():
        np.testing.assert_allclose(t.decode([NEXT], seq=seq)[0], reference([*toks, NEXT])[0], atol=ATOL)
        t.truncate(len(toks), seq=seq)


# ---- configuration ---------------------------------------------------------------------------------------


def test_each_sequence_gets_the_whole_context(tier: Tier, reference) -> None:
    assert (tier.n_seq, tier.n_ctx, tier.n_batch) == (
        N_SEQ,
        N_CTX,
        N_CTX * N_SEQ,
    )  # batch capped at the total
    assert tier.caches == [[]] * N_SEQ and tier.cached is tier.caches[0]
    full = {s: tokens(N_CTX, 10 + s) for s in range(N_SEQ)}
    tier.score_many([(s, toks, 1) for s, toks in full.items()])
    for s, toks in full.items():  # N_SEQ x N_CTX positions held at once
        assert tier.caches[s] == toks
        tier.truncate(N_CTX - 1, seq=s)
        np.testing.assert_allclose(tier.decode(toks[-1:], seq=s), reference(toks), atol=ATOL)
    assert tier.n_past == N_CTX and tier.cached == full[0]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"n_seq": 0}, "--parallel"),
        ({"n_seq": MAX_SEQUENCES + 1}, "--parallel"),
        ({"n_seq": 8, "n_batch": 7}, "at least the parallel sequences"),
    ],
)
def test_config_rejects_sequence_counts(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TierConfig(**config)


def test_config_accepts_llama_cpp_limits() -> None:
    assert TierConfig(n_seq=MAX_SEQUENCES).n_seq == MAX_SEQUENCES
    assert TierConfig(n_seq=8, n_batch=8).n_batch == 8


# ---- score_many ------------------------------------------------------------------------------------------

REQUESTS = [(2, A, 3), (0, B, 1), (3, C, 2), (1, D, 4)]  # lengths 40, 12, 25, 6; seq ids out of order


def test_score_many_matches_each_sequence_alone_in_one_call(tier: Tier, reference, llama_decodes) -> None:
    out = tier.score_many(REQUESTS)
    assert llama_decodes == [40 + 12 + 25 + 6] and sum(tier.last_decoded) == 83
    for (seq, toks, n), rows in zip(REQUESTS, out, strict=True):
        assert rows.shape == (n, N_VOCAB) and rows.dtype == np.float32
        assert not rows.flags.writeable and not rows.flags.owndata  # views into llama.cpp's logits
        np.testing.assert_allclose(rows, reference(toks, n), atol=ATOL)
        assert tier.caches[seq] == toks
    # The rows are told apart: another request's last row is far from this one's.
    lasts = [rows[-1] for rows in out]
    assert all(np.abs(lasts[i] - lasts[j]).max() > 1 for i in range(4) for j in range(i))
    assert_holds(tier, reference, {seq: toks for seq, toks, _ in REQUESTS})


def test_score_many_reuses_each_sequences_prefix(tier: Tier, reference, llama_decodes) -> None:
    tier.score_many([(0, A[:30], 1), (1, B, 1), (2, C[:10], 1), (3, D, 1)])
    other = tokens(20, 9)
    wanted = [
        (0, A, 2),  # extension: the 10 new tokens
        (1, B, 5),  # fully cached: re-decode the last 5
        (2, C[:6] + other[1:], 3),  # diverges after 6: roll back, decode 19
        (3, D + A[:3], 4),  # 3 new tokens but 4 rows: re-decode one cached token
    ]
    assert [tier.missing(toks, seq=s) for s, toks, _ in wanted] == [10, 0, 19, 3]
    llama_decodes.clear()
    out = tier.score_many(wanted)
    assert llama_decodes == [10 + 5 + 19 + 4] and sum(tier.last_decoded) == 38
    for (_, toks, n), rows in zip(wanted, out, strict=True):
        np.testing.assert_allclose(rows, reference(toks, n), atol=ATOL)
    assert_holds(tier, reference, {s: toks for s, toks, _ in wanted})


def test_rolling_back_one_sequence_leaves_the_others(tier: Tier, reference) -> None:
    start = {0: A, 1: B, 2: C, 3: D}
    tier.score_many([(s, toks, 1) for s, toks in start.items()])
    rows = tier.score(B[:5] + D[1:], 2, seq=1)  # rolls sequence 1 back to 5 tokens
    np.testing.assert_allclose(rows, reference(B[:5] + D[1:], 2), atol=ATOL)
    tier.truncate(20, seq=0)
    assert_holds(tier, reference, {0: A[:20], 1: B[:5] + D[1:], 2: C, 3: D})


def test_forget_clears_one_sequence(tier: Tier, reference) -> None:
    tier.score_many([(s, toks, 1) for s, toks in enumerate((A, B, C, D))])
    tier.forget(2)
    assert tier.caches[2] == [] and tier.missing(C, seq=2) == len(C)
    fresh = tokens(30, 7)  # the forgotten positions must not leak into a new sequence
    np.testing.assert_allclose(tier.score(fresh, 2, seq=2), reference(fresh, 2), atol=ATOL)
    assert_holds(tier, reference, {0: A, 1: B, 2: fresh, 3: D})
    tier.reset()
    assert tier.caches == [[]] * N_SEQ


def test_decode_and_score_by_sequence(tier: Tier, reference) -> None:
    tier.decode(C[:10], seq=3)
    np.testing.assert_allclose(tier.decode(C[10:], 2, seq=3), reference(C, 2), atol=ATOL)
    assert sum(tier.last_decoded) == len(C) - 10
    np.testing.assert_allclose(tier.score(C[:20] + B, 3, seq=3), reference(C[:20] + B, 3), atol=ATOL)
    assert sum(tier.last_decoded) == len(B)
    assert tier.n_past == 0 and tier.cached == []  # sequence 0 untouched
    assert_holds(tier, reference, {0: [], 3: C[:20] + B})


@pytest.mark.parametrize(
    ("requests", "calls", "copied"),
    [
        # new tokens 17, 40, 25, 6 (sequence 1 has 4 cached): ceil(88 / 16) calls, A split over three
        ([(1, B + A[1:10], 3), (0, A, 3), (3, C, 1), (2, D, 6)], [16, 16, 16, 16, 16, 8], [1, 1, 0, 1]),
        # each request's logits rows stay in one call: A[:20] splits 12 + 8, B (all 12 rows) waits
        ([(0, A[:20], 8), (1, B, 12)], [12, 8, 12], [1, 0]),
    ],
)
def test_score_many_over_several_llama_decode_calls(
    split_tier: Tier, reference, llama_decodes, requests: list, calls: list[int], copied: list[int]
) -> None:
    t = split_tier
    t.reset()
    t.decode(B[:4], seq=1)
    llama_decodes.clear()
    out = t.score_many(requests)
    assert llama_decodes == calls and sum(t.last_decoded) == sum(calls)
    for (seq, toks, n), rows in zip(requests, out, strict=True):
        np.testing.assert_allclose(rows, reference(toks, n), atol=ATOL)
        assert t.caches[seq] == toks
    # Rows of the last call are views, rows of earlier calls copies; all stay valid after the last call.
    assert [int(rows.flags.owndata) for rows in out] == copied
    assert_holds(t, reference, {seq: toks for seq, toks, _ in requests})


@pytest.mark.parametrize("failure", ["error code", "Ctrl-C"])
def test_failed_call_rolls_back_every_sequence(
    split_tier: Tier, reference, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    t = split_tier
    t.reset()
    t.score_many([(0, A[:10], 1), (1, B, 1), (2, C[:20], 1)])
    real, calls = backend.lc.llama_decode, []

    def flaky(ctx, batch):  # the first call goes in, the second fails
        calls.append(batch.n_tokens)
        if len(calls) == 2:
            if failure == "Ctrl-C":
                raise KeyboardInterrupt
            return 1
        return real(ctx, batch)

    monkeypatch.setattr(backend.lc, "llama_decode", flaky)
    with pytest.raises(KeyboardInterrupt if failure == "Ctrl-C" else RuntimeError):
        t.score_many([(0, A[:30], 1), (2, C[:5] + D[1:], 1), (3, D, 1)])
    assert len(calls) == 2
    monkeypatch.setattr(backend.lc, "llama_decode", real)
    # Extended sequences are as they were; sequence 2, rolled back to its common prefix, stays there.
    assert_holds(t, reference, {0: A[:10], 1: B, 2: C[:5], 3: []})


BAD_REQUESTS = [
    ([(1, B, 1), (1, C, 1)], ValueError, "one request per sequence"),
    ([(N_SEQ, B, 1)], ValueError, "out of range"),
    ([(-1, B, 1)], ValueError, "out of range"),
    ([(1, B, 0)], ValueError, "n_logits"),
    ([(1, B, len(B) + 1)], ValueError, "n_logits"),
    ([(1, tokens(40, 5), 17)], ValueError, "n_batch 16"),
    ([(1, tokens(N_CTX + 1, 5), 1)], ContextOverflowError, f"{N_CTX}-token context of sequence 1"),
]


@pytest.mark.parametrize(("bad", "error", "message"), BAD_REQUESTS)
def test_invalid_requests_change_nothing(
    split_tier: Tier, reference, llama_decodes, bad: list, error: type, message: str
) -> None:
    t = split_tier
    t.reset()
    t.score_many([(0, A, 1), (1, C, 1), (3, D, 1)])
    llama_decodes.clear()
    with pytest.raises(error, match=message):
        t.score_many([(0, A[:5] + B[1:], 1), (3, D + C, 1), *bad])  # valid ones first: a rollback, a growth
    assert llama_decodes == []
    assert_holds(t, reference, {0: A, 1: C, 2: [], 3: D})


def test_sequence_context_overflow(tier: Tier, reference) -> None:
    full = tokens(N_CTX, 8)
    tier.score_many([(1, full, 1), (2, B, 1)])
    with pytest.raises(
        ContextOverflowError, match=f"{N_CTX + 1} tokens do not fit in the {N_CTX}-token context"
    ):
        tier.decode([NEXT], seq=1)
    with pytest.raises(ContextOverflowError, match="of sequence 2"):
        tier.decode(tokens(60, 8)[: N_CTX - len(B) + 1], seq=2)
    with pytest.raises(ContextOverflowError, match="of sequence 2"):
        tier.score(B + full, 1, seq=2)
    assert tier.caches[1] == full
    tier.truncate(N_CTX - 1, seq=1)  # both still decode up to their own last position
    np.testing.assert_allclose(tier.decode(full[-1:], seq=1), reference(full), atol=ATOL)
    assert_holds(tier, reference, {2: B})


@pytest.mark.parametrize("method", ["decode", "truncate", "missing", "past", "forget"])
@pytest.mark.parametrize("seq", [-1, N_SEQ])
def test_sequence_ids_out_of_range(tier: Tier, method: str, seq: int) -> None:
    tier.decode(B, seq=N_SEQ - 1)
    call = {
        "decode": lambda: tier.decode(B, seq=seq),
        "truncate": lambda: tier.truncate(0, seq=seq),
        "missing": lambda: tier.missing(B, seq=seq),
        "past": lambda: tier.past(seq),
        "forget": lambda: tier.forget(seq),
    }[method]
    with pytest.raises(ValueError, match="out of range"):
        call()
    assert tier.caches == [[], [], [], B]


def test_score_many_of_nothing(tier: Tier) -> None:
    tier.decode(B, seq=2)
    assert tier.score_many([]) == [] and tier.last_decoded == []
    assert tier.caches[2] == B
