"""Tiny llama-architecture GGUF models for tests.

The models are random float32 transformers (~0.4M parameters, ~1.8 MB) with a
SentencePiece-style ("llama") vocabulary of byte tokens plus common English pieces.
They are written in ~20 ms and load and run in real llama.cpp in milliseconds.

* Each normal token's output row is 70% the embedding of a random "successor" token, so
  the greedy top1-top2 logit gap is large (median ~8 logits, logits std ~8) while the
  context still changes roughly 40% of greedy choices (KV-cache bugs show up).
* Special tokens' output rows are zero (logit 0, never the argmax) and byte tokens'
  rows are damped, so generation runs indefinitely and is made of word pieces.
* ``noise`` perturbs the same weights, giving a draft that mostly agrees with the target
  (noise=0.3: ~70% greedy agreement); another ``seed`` gives an unrelated draft (~0%).
* ``vocab="other"`` / ``vocab="small"`` are vocabularies that llama.cpp's draft/target
  compatibility check rejects (texts differ at ids >= 5 / 200 fewer tokens).

Batched and single-token decodes agree to ~1e-5 with flash attention disabled and an
f32 KV cache; llama.cpp's default (flash attention on CPU, f16) perturbs logits by up to
~0.05, which still flips a greedy choice about once per few thousand tokens.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

__all__ = [
    "BOS_ID",
    "DEFAULT_TEMPLATE",
    "EOS_ID",
    "N_BYTE",
    "N_SPECIAL",
    "SPACE",
    "UNK_ID",
    "build_vocab",
    "write_not_gguf",
    "write_tiny_model",
    "write_truncated_copy",
]

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
N_SPECIAL = 3
N_BYTE = 256
SPACE = "\u2581"  # SentencePiece's word-boundary marker "▁"
LOGIT_STD = 8.0
ALIGN = 0.7  # share of each output row taken from a successor token's embedding
BYTE_GAIN = 0.5  # byte tokens rarely win greedily, so generated text is mostly words

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS_TEXT = (
    "the of and to in is it you that he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who now find long down day did get come made may part hello world "
    "quick brown fox jumps over lazy dog cat speculative decoding draft target model token"
)
_PUNCT = list(".,!?;:'\"-()/<>|")
_MULTIBYTE = ["é", f"{SPACE}café", "日", "本", "日本", "\U0001f642"]  # é, ▁café, 日本, 🙂


def _normal_pieces() -> list[str]:
    """Ordered (most to least frequent) normal pieces of the default vocabulary."""
    lower = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    upper = [c.upper() for c in lower]
    pieces: list[str] = [SPACE, *lower, *[SPACE + c for c in lower], *"0123456789", *_PUNCT, *upper]
    seen = set(pieces)

    def add(piece: str) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)

    # Every "▁"-prefixed prefix of a word, so llama.cpp's SPM bigram merging can reach it.
    for word in [*_WORDS_TEXT.split(), "café"]:
        full = SPACE + word
        for end in range(3, len(full) + 1):
            add(full[:end])
    for piece in _MULTIBYTE:
        add(piece)
    return pieces


def _reversed_pieces(pieces: list[str]) -> list[str]:
    """Same-size piece list whose multi-letter word pieces are reversed (an incompatible vocab)."""
    used = set(pieces)
    out: list[str] = []
    for piece in pieces:
        body = piece.removeprefix(SPACE)
        new = piece[: len(piece) - len(body)] + body[::-1]
        if len(body) >= 2 and new != piece and new not in used:
            used.add(new)
            out.append(new)
        else:
            out.append(piece)
    return out


def build_vocab(vocab: str = "default") -> tuple[list[str], list[float], list[int]]:
    """Token texts, scores and token types for vocabulary ``vocab`` ("default", "other", "small")."""
    normal = _normal_pieces()
    if vocab == "other":
        normal = _reversed_pieces(normal)
    elif vocab == "small":
        normal = normal[:-200]
    elif vocab != "default":
        raise ValueError(f"unknown vocab {vocab!r}")
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(N_BYTE)], *normal]
    scores = [0.0] * (N_SPECIAL + N_BYTE) + [-float(i + 1) for i in range(len(normal))]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        *[gguf.TokenType.BYTE] * N_BYTE,
        *[gguf.TokenType.NORMAL] * len(normal),
    ]
    return tokens, scores, [int(t) for t in types]


def _weights(
    rng: np.random.Generator,
    *,
    n_vocab: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
) -> dict[str, np.ndarray]:
    """Random float32 tensors keyed by GGUF name; numpy shapes are ggml ``ne`` reversed.

    Each output row is partly aligned with the embedding of a random "successor" token
    (a bigram skeleton): the top logit stands well clear of the rest (median top1-top2
    gap ~8-10 logits) while attention still changes about 40% of the greedy choices.
    """
    n_kv = (n_embd // n_head) * n_head_kv
    inv = 1.0 / np.sqrt(n_embd)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def ones() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    embd = normal((n_vocab, n_embd), 1.0)
    out: dict[str, np.ndarray] = {"token_embd.weight": embd}
    for i in range(n_layer):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = ones()
        out[p + "attn_q.weight"] = normal((n_embd, n_embd), inv)
        out[p + "attn_k.weight"] = normal((n_kv, n_embd), inv)
        out[p + "attn_v.weight"] = normal((n_kv, n_embd), inv)
        out[p + "attn_output.weight"] = normal((n_embd, n_embd), inv)
        out[p + "ffn_norm.weight"] = ones()
        out[p + "ffn_gate.weight"] = normal((n_ff, n_embd), inv)
        out[p + "ffn_up.weight"] = normal((n_ff, n_embd), inv)
        out[p + "ffn_down.weight"] = normal((n_embd, n_ff), 2.0 / np.sqrt(n_ff))
    out["output_norm.weight"] = ones()
    # Normal tokens' rows: ALIGN of a random permutation of the normal tokens' embeddings,
    # the rest noise. Byte rows: damped noise. Special rows: zero (logit 0, never the argmax).
    first = N_SPECIAL + N_BYTE
    rows = np.sqrt(1.0 - ALIGN**2) * rng.standard_normal((n_vocab, n_embd))
    rows[first:] += ALIGN * embd[first + rng.permutation(n_vocab - first)]
    rows[N_SPECIAL:first] *= BYTE_GAIN
    rows[:N_SPECIAL] = 0.0
    # The final RMS-normed hidden state has norm ~sqrt(n_embd): logits std ~ LOGIT_STD.
    output = (rows * (LOGIT_STD * inv)).astype(np.float32)
    out["output.weight"] = output
    return out


def write_tiny_model(
    path: Path,
    *,
    seed: int = 0,
    noise: float = 0.0,
    noise_seed: int = 1,
    n_layer: int = 2,
    n_embd: int = 128,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 256,
    n_ctx_train: int = 2048,
    vocab: str = "default",
    chat_template: str | None = DEFAULT_TEMPLATE,
) -> Path:
    """Write a tiny random llama GGUF to ``path`` and return ``path``.

    Weights come from ``default_rng(seed)``; with ``noise > 0`` each tensor gets
    ``noise * std(tensor) * N(0, 1)`` added, drawn from ``default_rng(noise_seed)``.
    """
    path = Path(path)
    tokens, scores, types = build_vocab(vocab)
    n_vocab = len(tokens)
    tensors = _weights(
        np.random.default_rng(seed),
        n_vocab=n_vocab,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ff=n_ff,
    )
    if noise > 0:
        noise_rng = np.random.default_rng(noise_seed)
        for name, arr in tensors.items():
            eps = noise_rng.standard_normal(arr.shape) * (noise * float(arr.std()))
            tensors[name] = (arr + eps).astype(np.float32)
    # Special tokens get logit 0 while the others spread with std ~8: never the argmax.
    tensors["output.weight"][:N_SPECIAL] = 0.0

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"tiny-llama-s{seed}-n{noise:g}-{vocab}")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for name, arr in tensors.items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Write the first ``fraction`` of ``src``'s bytes to ``dst`` (a corrupt GGUF)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def write_not_gguf(dst: Path) -> Path:
    """Write a plain text file that is not a GGUF to ``dst``."""
    Path(dst).write_text("this is not a GGUF model file\n", encoding="utf-8")
    return Path(dst)
