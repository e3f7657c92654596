"""The tiny GGUF models load and behave as intended in real llama.cpp (low-level API)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from tiny_gguf import (
    BOS_ID,
    EOS_ID,
    N_BYTE,
    N_SPECIAL,
    SPACE,
    UNK_ID,
    build_vocab,
    write_not_gguf,
    write_tiny_model,
    write_truncated_copy,
)

PROMPTS = (
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is a test of the model",
    "people write water first and then some",
    "when you can see the number of it",
)
ENGLISH = "the quick brown fox jumps over the lazy dog and then the people write a word about the water"


@llama_cpp.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Discard llama.cpp log messages."""


@pytest.fixture(scope="module", autouse=True)
def _llama_quiet() -> Iterator[None]:
    """Initialise the llama.cpp backend with logging silenced for this module."""
    llama_cpp.llama_backend_init()
    llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))
    yield
    default_log = getattr(getattr(llama_cpp, "_logger", None), "llama_log_callback", None)
    if default_log is not None:
        llama_cpp.llama_log_set(default_log, ctypes.c_void_p(0))


def _load(path: Path) -> llama_cpp.llama_model_p:
    """Load a model on CPU without extra buffer types (AMX repacking raises SIGILL here)."""
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = False
    return llama_cpp.llama_model_load_from_file(str(path).encode(), params)


class _Model:
    """A loaded model with one context (sequence 0) and a reusable batch."""

    def __init__(self, path: Path, *, n_ctx: int = 1024, exact: bool = False) -> None:
        model = _load(path)
        if not model:
            raise RuntimeError(f"failed to load {path}")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        cparams.n_threads = cparams.n_threads_batch = 4
        if exact:  # bit-stable batched vs single decodes
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            cparams.type_k = cparams.type_v = llama_cpp.GGML_TYPE_F32
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise RuntimeError(f"failed to create a context for {path}")
        self.model, self.ctx, self.n_ctx = model, ctx, n_ctx
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def close(self) -> None:
        """Free the batch, context and model."""
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text`` (with BOS when ``add_special``)."""
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_special, False)
        assert n >= 0
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """Raw bytes of one token (special tokens rendered)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        assert n >= 0
        return buf.raw[:n]

    def decode(self, tokens: Sequence[int], pos: int) -> np.ndarray:
        """Drop cached positions >= ``pos``, decode ``tokens`` there, return their logits."""
        assert tokens and pos + len(tokens) <= self.n_ctx
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), 0, pos, -1)
        batch = self.batch
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        batch.n_tokens = len(tokens)
        assert llama_cpp.llama_decode(self.ctx, batch) == 0
        rows = [llama_cpp.llama_get_logits_ith(self.ctx, i) for i in range(len(tokens))]
        return np.stack([np.ctypeslib.as_array(r, shape=(self.n_vocab,)).copy() for r in rows])

    def greedy(self, prompt: Sequence[int], n: int) -> tuple[list[int], list[float]]:
        """Generate ``n`` greedy tokens one at a time; also return each step's top1-top2 gap."""
        logits = self.decode(prompt, 0)[-1]
        pos, out, gaps = len(prompt), [], []
        for _ in range(n):
            top2 = np.sort(logits)[-2:]
            gaps.append(float(top2[1] - top2[0]))
            token = int(np.argmax(logits))
            out.append(token)
            logits = self.decode([token], pos)[0]
            pos += 1
        return out, gaps


@contextmanager
def _open(path: Path, *, exact: bool = False) -> Iterator[_Model]:
    """A ``_Model`` that is closed on exit."""
    model = _Model(path, exact=exact)
    try:
        yield model
    finally:
        model.close()


def _text(model: _Model, tokens: Sequence[int]) -> str:
    """Concatenated pieces of ``tokens`` decoded as UTF-8."""
    return b"".join(model.piece(t) for t in tokens).decode()


def _agreement(target: _Model, draft: _Model, n_gen: int = 200) -> float:
    """Greedy next-token agreement of ``draft`` with ``target`` along the target's greedy paths."""
    hits: list[np.ndarray] = []
    for prompt in PROMPTS:
        tokens = target.tokenize(prompt)
        generated, _ = target.greedy(tokens, n_gen)
        seq = tokens + generated
        same = target.decode(seq, 0).argmax(1) == draft.decode(seq, 0).argmax(1)
        hits.append(same[len(tokens) - 1 : -1])
    return float(np.concatenate(hits).mean())


def test_write_is_deterministic(tmp_path: Path, tiny_target: Path) -> None:
    again = write_tiny_model(tmp_path / "again.gguf")
    assert again.read_bytes() == tiny_target.read_bytes()
    with _open(again) as model, _open(tiny_target) as first:
        prompt = model.tokenize("hello")
        assert model.greedy(prompt, 16) == first.greedy(prompt, 16)


def test_loads_with_expected_metadata(tiny_target: Path) -> None:
    with _open(tiny_target) as m:
        assert m.n_vocab == len(build_vocab()[0])
        assert llama_cpp.llama_vocab_type(m.vocab) == llama_cpp.LLAMA_VOCAB_TYPE_SPM
        assert llama_cpp.llama_vocab_bos(m.vocab) == BOS_ID
        assert llama_cpp.llama_vocab_eos(m.vocab) == EOS_ID
        assert llama_cpp.llama_vocab_get_add_bos(m.vocab)
        assert llama_cpp.llama_model_n_embd(m.model) == 128
        assert llama_cpp.llama_model_n_layer(m.model) == 2
        assert llama_cpp.llama_model_n_ctx_train(m.model) == 2048
        template = llama_cpp.llama_model_chat_template(m.model, None)
        assert template is not None and b"add_generation_prompt" in template
        assert m.piece(UNK_ID) == b"<unk>"


def test_chat_template_can_be_omitted(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "no_template.gguf", chat_template=None)
    with _open(path) as m:
        assert llama_cpp.llama_model_chat_template(m.model, None) is None


def test_tokenize_and_detokenize(tiny_target: Path) -> None:
    tokens, _, types = build_vocab()
    with _open(tiny_target) as m:
        ids = m.tokenize("hello world")
        assert [tokens[i] for i in ids] == ["<s>", f"{SPACE}hello", f"{SPACE}world"]
        assert _text(m, ids[1:]) == " hello world"
        assert _text(m, m.tokenize(ENGLISH)[1:]) == " " + ENGLISH

        text = "The café 日本 🙂 ñ!"
        ids = m.tokenize(text, add_special=False)
        assert _text(m, ids) == " " + text
        assert f"{SPACE}café" in [tokens[i] for i in ids]
        # "ñ" is not a piece: it falls back to two byte tokens (partial UTF-8 pieces).
        byte_ids = [i for i in ids if types[i] == 6]  # gguf.TokenType.BYTE
        assert [m.piece(i) for i in byte_ids] == [b"\xc3", b"\xb1"]


def test_greedy_generation_is_long_and_decisive(tiny_target: Path) -> None:
    with _open(tiny_target) as m:
        out, gaps = m.greedy(m.tokenize("hello world"), 256)
    assert all(t >= N_SPECIAL for t in out)  # no unk/bos/eos, ever
    assert sum(t < N_SPECIAL + N_BYTE for t in out) < 8  # mostly word pieces
    assert len(set(out[-128:])) > 20  # not stuck in a short loop
    assert np.median(gaps) > 3.0
    assert np.mean(np.array(gaps) > 0.5) > 0.9


def test_batched_decode_matches_single_token_decode(tiny_target: Path) -> None:
    with _open(tiny_target, exact=True) as m:
        prompt = m.tokenize(PROMPTS[0])
        generated, _ = m.greedy(prompt, 250)
        seq = prompt + generated
        batched = m.decode(seq, 0)
        single = np.stack([m.decode([t], i)[0] for i, t in enumerate(seq)])
        chunked = np.concatenate([m.decode(seq[i : i + 5], i) for i in range(0, len(seq), 5)])
    assert np.abs(batched - single).max() < 1e-3
    assert np.abs(batched - chunked).max() < 1e-3
    assert (batched.argmax(1) == single.argmax(1)).all()
    assert batched[len(prompt) - 1 : -1].argmax(1).tolist() == generated


def test_same_weights_agree_fully(tiny_target: Path, tiny_same: Path) -> None:
    assert tiny_same != tiny_target
    assert tiny_same.read_bytes() == tiny_target.read_bytes()
    with _open(tiny_target) as target, _open(tiny_same) as draft:
        assert _agreement(target, draft, n_gen=64) == 1.0


def test_noisy_draft_mostly_agrees(tiny_target: Path, tiny_noisy: Path) -> None:
    with _open(tiny_target) as target, _open(tiny_noisy) as draft:
        assert 0.55 <= _agreement(target, draft) <= 0.85
        english = target.tokenize(ENGLISH)
        same = target.decode(english, 0).argmax(1) == draft.decode(english, 0).argmax(1)
        assert 0.4 <= same.mean() <= 0.95


def test_unrelated_draft_disagrees(tiny_target: Path, tiny_unrelated: Path) -> None:
    with _open(tiny_target) as target, _open(tiny_unrelated) as draft:
        assert _agreement(target, draft) < 0.05


def test_incompatible_vocabularies(tiny_target: Path, tiny_other_vocab: Path, tiny_small_vocab: Path) -> None:
    def texts(m: _Model) -> list[bytes]:
        return [llama_cpp.llama_vocab_get_text(m.vocab, i) for i in range(m.n_vocab)]

    with _open(tiny_target) as t, _open(tiny_other_vocab) as o, _open(tiny_small_vocab) as s:
        target, other, small = texts(t), texts(o), texts(s)
        assert len(other) == len(target) and other[:5] == target[:5]
        assert sum(a != b for a, b in zip(target[5:], other[5:], strict=True)) > 50
        assert len(target) - len(small) == 200 > 128  # llama.cpp allows a difference of 128
        assert small == target[: len(small)]
        assert llama_cpp.llama_vocab_bos(o.vocab) == BOS_ID and llama_cpp.llama_vocab_eos(s.vocab) == EOS_ID
        o.greedy(o.tokenize("hello"), 8)
        s.greedy(s.tokenize("hello"), 8)


def test_broken_files_fail_to_load(tmp_path: Path, tiny_target: Path) -> None:
    for fraction in (0.01, 0.5, 0.99):
        truncated = write_truncated_copy(tiny_target, tmp_path / f"cut{fraction}.gguf", fraction)
        assert 0 < truncated.stat().st_size < tiny_target.stat().st_size
        assert not _load(truncated)
    assert not _load(write_not_gguf(tmp_path / "text.gguf"))
