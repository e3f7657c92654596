"""The Tier backend on tiny generated GGUF models (real llama.cpp, CPU, milliseconds per call).

Tiers that compare logits across batchings use an f32 KV cache with flash attention off, where batched and
single-token decodes agree to ~1e-5. They run on one thread and on the CPU: a 2-core machine shared with
other processes makes ggml's spinning thread barrier slow by 100x, and GPU kernels may differ across batch
shapes by more than these tolerances.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_gguf import (
    BOS_ID,
    DEFAULT_TEMPLATE,
    EOS_ID,
    N_BYTE,
    N_SPECIAL,
    build_vocab,
    write_not_gguf,
    write_tiny_model,
    write_truncated_copy,
)

from edge_spec.backend import (
    VOCAB_CHECK_START_TOKEN_ID,
    VOCAB_MAX_SIZE_DIFFERENCE,
    Tier,
    TierConfig,
    _common_prefix,
    gpu_available,
)
from edge_spec.errors import (
    ConfigError,
    ContextOverflowError,
    EdgeSpecError,
    IncompatibleTiersError,
    ModelError,
)

EXACT = {"cache_type": "f32", "flash_attn": False, "n_threads": 1, "n_gpu_layers": 0}
ATOL = 1e-3
FIRST_NORMAL = N_SPECIAL + N_BYTE
N_VOCAB = len(build_vocab()[0])


def tokens(n: int, seed: int = 0) -> list[int]:
    """BOS and n - 1 random normal (word piece) tokens."""
    rng = np.random.default_rng(seed)
    return [BOS_ID, *(int(t) for t in rng.integers(FIRST_NORMAL, N_VOCAB, n - 1))]


SEQ = tokens(50)


# ---- fixtures: a few module-scoped tiers, always closed ------------------------------------------------


@pytest.fixture(scope="module")
def exact_tier(tiny_target: Path):
    with Tier(tiny_target, TierConfig(n_ctx=256, **EXACT)) as tier:
        yield tier


@pytest.fixture
def tier(exact_tier: Tier) -> Tier:
    """The module's exact tier with an empty cache."""
    exact_tier.reset()
    return exact_tier


@pytest.fixture(scope="module")
def batch16_tier(tiny_target: Path):
    with Tier(tiny_target, TierConfig(n_ctx=256, n_batch=16, **EXACT)) as tier:
        yield tier


@pytest.fixture(scope="module")
def small_ctx_tier(tiny_target: Path):
    with Tier(tiny_target, TierConfig(n_ctx=32, **EXACT)) as tier:
        yield tier


@pytest.fixture(scope="module")
def reference(exact_tier: Tier):
    """reference(seq, n): copied logits of the last n tokens of seq decoded from an empty cache."""
    memo: dict[tuple[tuple[int, ...], int], np.ndarray] = {}

    def rows(seq: list[int], n: int = 1) -> np.ndarray:
        key = (tuple(seq), n)
        if key not in memo:
            exact_tier.reset()
            memo[key] = exact_tier.decode(seq, n).copy()
            exact_tier.reset()
        return memo[key]

    return rows


@pytest.fixture(scope="module")
def others(tiny_same, tiny_noisy, tiny_unrelated, tiny_other_vocab, tiny_small_vocab):
    """Tiers of the other tiny models, by name."""
    paths = {
        "same": tiny_same,
        "noisy": tiny_noisy,
        "unrelated": tiny_unrelated,
        "other_vocab": tiny_other_vocab,
        "small_vocab": tiny_small_vocab,
    }
    opened: dict[str, Tier] = {}
    try:
        for name, path in paths.items():
            opened[name] = Tier(path, TierConfig(n_ctx=16, n_threads=1, n_gpu_layers=0))
        yield opened
    finally:
        for t in opened.values():
            t.close()


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], int]]:
    """Record every Tier.decode call as (tokens, n_logits)."""
    calls: list[tuple[list[int], int]] = []
    original = Tier.decode

    def recording(self: Tier, toks, n_logits: int = 1):
        calls.append((list(toks), n_logits))
        return original(self, toks, n_logits)

    monkeypatch.setattr(Tier, "decode", recording)
    return calls


# ---- loading and metadata ------------------------------------------------------------------------------


def test_load_and_shapes(exact_tier: Tier) -> None:
    assert exact_tier.n_vocab == N_VOCAB
    assert exact_tier.n_layer == 2
    assert exact_tier.n_ctx == 256
    assert exact_tier.n_batch == 256  # capped at the context
    assert exact_tier.device == "CPU"
    assert exact_tier.metadata("general.architecture") == "llama"
    assert exact_tier.metadata("no.such.key") is None
    assert (exact_tier.bos, exact_tier.eos, exact_tier.adds_bos) == (BOS_ID, EOS_ID, True)


def test_n_ctx_is_capped_at_training_length_and_default_device(tiny_target: Path) -> None:
    with Tier(tiny_target, TierConfig(n_ctx=100_000, n_threads=1)) as t:
        n_train = int(t.metadata("llama.context_length"))
        assert n_train == 2048
        assert t.n_ctx == n_train
        assert t.n_batch == 512
        if gpu_available():
            assert t.device.startswith("GPU (")
        else:
            assert t.device == "CPU"


def test_chat_template(exact_tier: Tier, tmp_path: Path) -> None:
    assert exact_tier.chat_template == DEFAULT_TEMPLATE
    path = write_tiny_model(tmp_path / "no_template.gguf", chat_template=None)
    with Tier(path, TierConfig(n_ctx=16, n_threads=1)) as t:
        assert t.chat_template is None


# ---- tokens and text -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["hello world", "the quick brown fox jumps over the lazy dog.", "café 日本 🙂", "straße ẞ", "a  b"],
)
def test_tokenize_detokenize_round_trip(exact_tier: Tier, text: str) -> None:
    ids = exact_tier.tokenize(text)
    assert ids[0] == BOS_ID
    assert exact_tier.tokenize(text, add_bos=False) == ids[1:]
    # SentencePiece adds one word-boundary space in front; BOS renders as nothing.
    assert exact_tier.detokenize(ids) == " " + text


def test_tokenize_empty_and_special(exact_tier: Tier) -> None:
    assert exact_tier.tokenize("") == [BOS_ID]
    assert exact_tier.tokenize("", add_bos=False) == []
    assert exact_tier.tokenize("hi</s>", add_bos=False, special=True)[-1] == EOS_ID
    assert EOS_ID not in exact_tier.tokenize("hi</s>", add_bos=False, special=False)


def test_piece_of_multibyte_tokens_is_raw_bytes(exact_tier: Tier) -> None:
    # Whole multi-byte pieces of the vocabulary.
    for text in ["日本", "🙂"]:
        (tok,) = exact_tier.tokenize(text, add_bos=False)[-1:]
        assert exact_tier.piece(tok) == text.encode()
    # Byte-fallback tokens: one raw byte each, not valid UTF-8 alone.
    ids = exact_tier.tokenize("ß", add_bos=False)
    assert ids[-2:] == [N_SPECIAL + 0xC3, N_SPECIAL + 0x9F]
    assert [exact_tier.piece(t) for t in ids[-2:]] == [b"\xc3", b"\x9f"]
    assert b"".join(exact_tier.piece(t) for t in ids).decode() == " ß"
    assert exact_tier.piece(N_SPECIAL + 0xE6) == b"\xe6"
    # Half a character detokenizes with a replacement character, not an exception.
    assert exact_tier.detokenize([N_SPECIAL + 0xE6]) == "\ufffd"


def test_control_tokens_render_empty_unless_special(exact_tier: Tier) -> None:
    assert exact_tier.piece(BOS_ID) == b""
    assert exact_tier.piece(EOS_ID) == b""
    assert exact_tier.piece(BOS_ID, special=True) == b"<s>"
    assert exact_tier.piece(EOS_ID, special=True) == b"</s>"
    ids = [BOS_ID, *exact_tier.tokenize("hello", add_bos=False), EOS_ID]
    assert exact_tier.detokenize(ids) == " hello"
    assert exact_tier.detokenize(ids, special=True) == "<s> hello</s>"


def test_is_eog_and_token_text(exact_tier: Tier) -> None:
    assert exact_tier.is_eog(exact_tier.eos)
    assert not exact_tier.is_eog(exact_tier.bos)
    assert not exact_tier.is_eog(FIRST_NORMAL)
    texts = build_vocab()[0]
    for tok in (BOS_ID, N_SPECIAL + 0x41, FIRST_NORMAL, N_VOCAB - 1):
        assert exact_tier.token_text(tok) == texts[tok]


# ---- decode --------------------------------------------------------------------------------------------


def test_decode_returns_read_only_float32_view(tier: Tier) -> None:
    rows = tier.decode(SEQ[:10], 3)
    assert isinstance(rows, np.ndarray)
    assert rows.dtype == np.float32
    assert rows.shape == (3, tier.n_vocab)
    assert not rows.flags.writeable
    assert not rows.flags.owndata  # a view into llama.cpp's logits buffer
    with pytest.raises(ValueError):
        rows[0, 0] = 1.0
    assert np.isfinite(rows).all()
    assert len({int(r.argmax()) for r in rows}) > 1  # the positions differ (a meaningful comparison)
    assert tier.cached == SEQ[:10]
    assert tier.n_past == 10


@pytest.mark.parametrize(
    ("n_tokens", "n_logits"), [(0, 1), (3, 0), (3, -1), (3, 4)], ids=["empty", "zero", "neg", "too-many"]
)
def test_decode_validates_n_logits(tier: Tier, n_tokens: int, n_logits: int) -> None:
    tier.decode(SEQ[:5])
    with pytest.raises(ValueError, match="n_logits"):
        tier.decode(SEQ[5 : 5 + n_tokens], n_logits)
    assert tier.cached == SEQ[:5]


def test_decode_rejects_more_logits_rows_than_the_batch(batch16_tier: Tier) -> None:
    batch16_tier.reset()
    with pytest.raises(ValueError, match="n_batch 16"):
        batch16_tier.decode(SEQ[:20], 17)
    assert batch16_tier.cached == []


@pytest.mark.parametrize(("n_tokens", "n_logits"), [(50, 3), (48, 16), (17, 1), (16, 16), (33, 2)])
def test_decode_longer_than_batch_matches_one_batch(
    batch16_tier: Tier, reference, n_tokens: int, n_logits: int
) -> None:
    batch16_tier.reset()
    rows = batch16_tier.decode(SEQ[:n_tokens], n_logits)
    assert rows.shape == (n_logits, N_VOCAB)
    assert batch16_tier.cached == SEQ[:n_tokens]
    np.testing.assert_allclose(rows, reference(SEQ[:n_tokens], n_logits), atol=ATOL)


@pytest.mark.parametrize("failure", ["error code", "Ctrl-C"])
def test_failed_chunk_rolls_back_the_whole_call(
    batch16_tier: Tier, reference, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    import edge_spec.backend as backend

    t = batch16_tier
    t.reset()
    t.decode(SEQ[:5])
    real = backend.lc.llama_decode
    calls = []

    def flaky(ctx, batch):  # the first 16-token chunk goes in, the second fails
        calls.append(batch.n_tokens)
        if len(calls) == 2:
            if failure == "Ctrl-C":
                raise KeyboardInterrupt
            return 1
        return real(ctx, batch)

    monkeypatch.setattr(backend.lc, "llama_decode", flaky)
    expected_error = KeyboardInterrupt if failure == "Ctrl-C" else RuntimeError
    with pytest.raises(expected_error):
        t.decode(SEQ[5:45], 2)
    assert calls == [16, 16]
    assert t.cached == SEQ[:5]
    monkeypatch.setattr(backend.lc, "llama_decode", real)
    np.testing.assert_allclose(t.decode(SEQ[5:45], 2), reference(SEQ[:45], 2), atol=ATOL)


def test_single_token_decodes_match_one_batch(tier: Tier, reference) -> None:
    expected = reference(SEQ, 3)
    tier.decode(SEQ[:-3])
    for i, tok in enumerate(SEQ[-3:]):
        np.testing.assert_allclose(tier.decode([tok])[0], expected[i], atol=ATOL)
    assert tier.cached == SEQ


# ---- rollback and score --------------------------------------------------------------------------------


def test_truncate_and_redecode_reproduces_logits(tier: Tier, reference) -> None:
    expected = reference(SEQ, 3)
    tier.decode(SEQ, 3)
    tier.truncate(30)
    assert tier.cached == SEQ[:30]
    assert tier.n_past == 30
    # Fill the rolled-back positions with other tokens, roll back again: the stale KV entries must be gone.
    tier.decode(tokens(20, seed=7)[1:])
    tier.truncate(30)
    np.testing.assert_allclose(tier.decode(SEQ[30:], 3), expected, atol=ATOL)
    assert tier.cached == SEQ
    tier.truncate(tier.n_past)  # no-op
    assert tier.cached == SEQ
    tier.truncate(0)
    assert tier.cached == []
    np.testing.assert_allclose(tier.decode(SEQ, 3), expected, atol=ATOL)


@pytest.mark.parametrize("bad", [11, 100, -1])
def test_truncate_out_of_range(tier: Tier, bad: int) -> None:
    tier.decode(SEQ[:10])
    with pytest.raises(ValueError, match="cannot truncate"):
        tier.truncate(bad)
    assert tier.cached == SEQ[:10]


def test_reset_forgets_everything(tier: Tier, reference) -> None:
    tier.decode(tokens(30, seed=3))
    tier.reset()
    assert tier.cached == []
    np.testing.assert_allclose(tier.decode(SEQ[:20]), reference(SEQ[:20]), atol=ATOL)


DIVERGED = SEQ[:25] + tokens(20, seed=5)[1:]  # shares 25 tokens with SEQ


@pytest.mark.parametrize(
    ("cached", "seq", "n_logits", "start"),
    [
        ([], SEQ, 1, 0),  # empty cache: everything
        ([], SEQ, 4, 0),
        (SEQ[:30], SEQ, 1, 30),  # extension: only the suffix
        (SEQ[:30], SEQ, 5, 30),
        (SEQ[:30], SEQ, 25, 25),  # more logits rows than the new suffix: re-decode some cached tokens
        (SEQ, SEQ, 1, 49),  # fully cached: re-decode the last n_logits tokens
        (SEQ, SEQ, 4, 46),
        (SEQ, SEQ[:20], 2, 18),  # a prefix of the cache
        (SEQ, DIVERGED, 1, 25),  # diverges midway: roll back to the common prefix
        (SEQ[:40], DIVERGED, 3, 25),
        (SEQ[:10], DIVERGED, 2, 10),
        (tokens(10, seed=9)[1:], SEQ, 1, 0),  # nothing in common (no BOS in the cache)
    ],
)
def test_score_reuses_common_prefix(
    tier: Tier, reference, decode_calls, cached: list[int], seq: list[int], n_logits: int, start: int
) -> None:
    expected = reference(seq, n_logits)
    if cached:
        tier.decode(cached)
    decode_calls.clear()
    rows = tier.score(seq, n_logits)
    assert decode_calls == [(seq[start:], n_logits)]
    assert tier.cached == seq
    assert rows.shape == (n_logits, N_VOCAB)
    np.testing.assert_allclose(rows, expected, atol=ATOL)


def test_score_adds_to_decode_seconds(tier: Tier) -> None:
    tier.score(SEQ[:40])
    before = tier.decode_seconds
    tier.score(SEQ[:41])
    assert tier.decode_seconds > before


# ---- context overflow ----------------------------------------------------------------------------------


def test_context_overflow_leaves_cache_unchanged(small_ctx_tier: Tier, reference) -> None:
    t = small_ctx_tier
    t.reset()
    assert (t.n_ctx, t.n_batch) == (32, 32)
    t.decode(SEQ[:20])
    with pytest.raises(ContextOverflowError, match="32-token context") as info:
        t.decode(SEQ[20:33], 2)
    assert isinstance(info.value, EdgeSpecError)
    assert t.cached == SEQ[:20]
    assert t.n_past == 20
    # Still usable, up to the last position.
    np.testing.assert_allclose(t.decode(SEQ[20:32], 2), reference(SEQ[:32], 2), atol=ATOL)
    assert t.n_past == 32
    with pytest.raises(ContextOverflowError):
        t.decode([SEQ[32]])
    assert t.cached == SEQ[:32]
    t.truncate(31)
    np.testing.assert_allclose(t.decode([SEQ[31]]), reference(SEQ[:32]), atol=ATOL)


def test_context_overflow_from_empty(small_ctx_tier: Tier) -> None:
    small_ctx_tier.reset()
    with pytest.raises(ContextOverflowError):
        small_ctx_tier.decode(SEQ[:33])
    assert small_ctx_tier.cached == []


# ---- cache types and config validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_type", "flash_attn", "atol"),
    [
        ("f16", None, 0.05),
        ("f16", False, 0.05),
        ("q8_0", None, 0.5),  # q8_0 / q4_0 force flash attention on
        ("q8_0", True, 0.5),
        ("q4_0", None, None),  # errors up to ~2 logits: check the argmax and the correlation only
        ("f32", None, 0.05),
    ],
)
def test_cache_types_load_and_decode(
    tiny_target: Path, reference, cache_type: str, flash_attn: bool | None, atol: float | None
) -> None:
    expected = reference(SEQ[:20], 2)
    cfg = TierConfig(n_ctx=32, cache_type=cache_type, flash_attn=flash_attn, n_threads=1, n_gpu_layers=0)
    with Tier(tiny_target, cfg) as t:
        rows = t.decode(SEQ[:20], 2).copy()
    assert np.isfinite(rows).all()
    assert (rows.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.corrcoef(rows.ravel(), expected.ravel())[0, 1] > 0.99
    if atol is not None:
        np.testing.assert_allclose(rows, expected, atol=atol)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cache_type": "bf16"}, "KV cache type must be one of"),
        ({"cache_type": "F16"}, "KV cache type"),
        ({"n_ctx": 15}, "at least 16"),
        ({"n_ctx": 0}, "at least 16"),
        ({"cache_type": "q8_0", "flash_attn": False}, "needs flash attention"),
        ({"cache_type": "q4_0", "flash_attn": False}, "needs flash attention"),
        ({"n_gpu_layers": -2}, "GPU layers"),
        ({"n_batch": 0}, "batch size"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TierConfig(**kwargs)
    assert isinstance(info.value, EdgeSpecError)


def test_config_accepts_edge_values() -> None:
    TierConfig(n_ctx=16, n_batch=1, n_gpu_layers=-1)
    TierConfig(n_gpu_layers=0, cache_type="q4_0", flash_attn=True)
    TierConfig(cache_type="f32", flash_attn=False)


# ---- vocabulary compatibility --------------------------------------------------------------------------


def test_vocab_fingerprint(exact_tier: Tier, others: dict[str, Tier]) -> None:
    fp = exact_tier.vocab_fingerprint
    assert len(fp) == 64 and int(fp, 16) >= 0
    for name in ("same", "noisy", "unrelated"):
        assert others[name].vocab_fingerprint == fp, name
    for name in ("other_vocab", "small_vocab"):
        assert others[name].vocab_fingerprint != fp, name
    assert others["other_vocab"].vocab_fingerprint != others["small_vocab"].vocab_fingerprint


@pytest.mark.parametrize("name", ["same", "noisy", "unrelated"])
def test_check_compatible_passes(exact_tier: Tier, others: dict[str, Tier], name: str) -> None:
    exact_tier.check_compatible(others[name])
    others[name].check_compatible(exact_tier)


def test_check_compatible_names_first_differing_token(exact_tier: Tier, others: dict[str, Tier]) -> None:
    ours, theirs = build_vocab("default")[0], build_vocab("other")[0]
    assert len(ours) == len(theirs)
    first = next(i for i in range(VOCAB_CHECK_START_TOKEN_ID, len(ours)) if ours[i] != theirs[i])
    with pytest.raises(IncompatibleTiersError) as info:
        exact_tier.check_compatible(others["other_vocab"])
    msg = str(info.value)
    assert f"token {first} " in msg
    assert f"{theirs[first]!r} in other_vocab.gguf" in msg
    assert f"{ours[first]!r} in target.gguf" in msg
    assert isinstance(info.value, EdgeSpecError)
    with pytest.raises(IncompatibleTiersError, match=f"token {first} "):
        others["other_vocab"].check_compatible(exact_tier)


def test_check_compatible_size_difference(exact_tier: Tier, others: dict[str, Tier]) -> None:
    small = others["small_vocab"]
    assert exact_tier.n_vocab - small.n_vocab == 200 > VOCAB_MAX_SIZE_DIFFERENCE
    with pytest.raises(IncompatibleTiersError) as info:
        exact_tier.check_compatible(small)
    msg = str(info.value)
    assert f"differ by more than {VOCAB_MAX_SIZE_DIFFERENCE}" in msg
    assert f"{small.n_vocab} vs {exact_tier.n_vocab}" in msg
    assert "small_vocab.gguf" in msg and "target.gguf" in msg


# ---- bad model files -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model file not found: .*missing\.gguf"):
        Tier(tmp_path / "missing.gguf")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a file"):
        Tier(tmp_path)


@pytest.mark.parametrize("content", ["text", "empty"])
def test_not_gguf(tmp_path: Path, content: str) -> None:
    path = tmp_path / "model.gguf"
    if content == "text":
        write_not_gguf(path)
    else:
        path.write_bytes(b"")
    with pytest.raises(ModelError, match="not a GGUF model file"):
        Tier(path)


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.3, 0.5, 0.999])
def test_truncated_gguf(tiny_target: Path, tmp_path: Path, fraction: float) -> None:
    path = write_truncated_copy(tiny_target, tmp_path / "truncated.gguf", fraction)
    with pytest.raises(ModelError, match=r"could not load .*truncated\.gguf \(corrupt or truncated\?\)"):
        Tier(path, TierConfig(n_ctx=16, n_threads=1))


def test_truncated_gguf_message_carries_llama_cpp_reason(tiny_target: Path, tmp_path: Path) -> None:
    path = write_truncated_copy(tiny_target, tmp_path / "truncated.gguf", 0.5)
    with pytest.raises(ModelError, match=r"\(corrupt or truncated\?\): \S"):
        Tier(path, TierConfig(n_ctx=16, n_threads=1))


# ---- lifetime ------------------------------------------------------------------------------------------


def test_close_twice_and_context_manager(tiny_target: Path) -> None:
    t = Tier(tiny_target, TierConfig(n_ctx=16, n_threads=1))
    t.decode([BOS_ID])
    t.close()
    t.close()
    with Tier(tiny_target, TierConfig(n_ctx=16, n_threads=1)) as t2:
        assert t2.decode([BOS_ID]).shape == (1, N_VOCAB)
    assert t2._model is None and t2._ctx is None and t2._batch is None
    t2.close()


def test_context_manager_closes_on_error(tiny_target: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), Tier(tiny_target, TierConfig(n_ctx=16)) as t:
        raise RuntimeError("boom")
    assert t._model is None and t._ctx is None


def test_use_after_close_raises_instead_of_crashing(tiny_target: Path) -> None:
    code = (
        "import sys\n"
        "from edge_spec.backend import Tier, TierConfig\n"
        f"t = Tier({str(tiny_target)!r}, TierConfig(n_ctx=16, n_threads=1))\n"
        "t.close()\n"
        "for call in (lambda: t.decode([1]), lambda: t.tokenize('hi'), t.reset):\n"
        "    try:\n"
        "        call()\n"
        "    except Exception:\n"
        "        continue\n"
        "    sys.exit('no error')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-500:]


# ---- _common_prefix ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([], [], 0),
        ([], [1, 2], 0),
        ([1, 2], [], 0),
        ([1], [1], 1),
        ([1], [2], 0),
        ([1, 2, 3], [1, 2, 3], 3),
        ([1, 2, 3], [1, 2], 2),
        ([1, 2], [1, 2, 3], 2),
        ([1, 2, 3], [4, 2, 3], 0),
        ([1, 2, 3], [1, 9, 3], 1),
        ([1, 2, 3, 4], [1, 2, 3, 5], 3),
        ([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 0, 8], 6),
        (list(range(1000)), [*range(999), -1], 999),
        (list(range(1000)), list(range(1000)), 1000),
    ],
)
def test_common_prefix_table(a: list[int], b: list[int], expected: int) -> None:
    assert _common_prefix(a, b) == expected
    assert _common_prefix(b, a) == expected


def test_common_prefix_matches_naive() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        a = [int(x) for x in rng.integers(0, 3, rng.integers(0, 40))]
        b = [int(x) for x in rng.integers(0, 3, rng.integers(0, 40))]
        if rng.random() < 0.5:  # long shared prefixes
            b = a[: rng.integers(0, len(a) + 1)] + b
        naive = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert _common_prefix(a, b) == naive, (a, b)
