"""Llama-shaped GGUF tiers with random Q4_0 weights, for timing llama.cpp where no real model can be fetched
(scripts/gpu_check.sh).

    python scripts/llama_tiers.py OUT_DIR [--small]

Writes OUT_DIR/llama-1b.gguf, llama-3b.gguf and llama-8b.gguf in the shapes of Llama-3.2-1B (16 layers,
2048 wide, FFN 8192, 32 heads / 8 KV heads), Llama-3.2-3B (28, 3072, 8192, 24 / 8) and Llama-3.1-8B (32,
4096, 14336, 32 / 8), vocabulary 128,256, every matrix Q4_0 and the norms f32: a decode's cost depends on
shapes and types alone. `--small` scales the shapes down (vocabulary kept) for a rehearsal on a CPU.

The tiers agree as drafts by construction: every block's output projections (attn_output, ffn_down) are
zero, so the residual stream carries the token's embedding to the output matrix, whose row for token v is
the embedding of v's predecessor: the greedy next token of t is succ(t), one permutation of the non-special
tokens shared by the tiers, its logit SUCCESSOR_LOGIT above the mean and about 30 above the next one at
every width (the other 128,255 tokens hold no visible mass). The blocks still compute in full (no kernel
skips zeros). A tier whose `disagree` share of tokens has other successors drafts for the target with a
per-token acceptance of about 1 - disagree (target 0, 3B 0.1, 1B 0.2: the carried Qwen pair's 81-88%).

The quantized blocks (a float16 scale and 32 four-bit values) are written directly, not through llama.cpp's
quantizer: quantizing 8B float weights would spend minutes of gpu_check.sh's budget on random numbers. The
vocabulary is tests/tiny_gguf.py's SentencePiece one, padded to 128,256 tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_gguf import BOS_ID, DEFAULT_TEMPLATE, EOS_ID, N_SPECIAL, SPACE, UNK_ID, build_vocab

N_VOCAB = 128_256
QK = 32  # values per Q4_0 block
BLOCK_BYTES = 18  # float16 scale + 16 bytes of 4-bit values
WEIGHT_STD = 0.02
SUCCESSOR_LOGIT = 40.0  # the greedy next token's logit (embeddings of std SUCCESSOR_LOGIT / width)
Q4_STD = 4.64  # standard deviation of a Q4_0 value (q - 8, q uniform in 0..15) in units of its scale


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    disagree: float  # share of tokens whose successor differs from the target's


TIERS = {
    "llama-1b": Shape(16, 2048, 8192, 32, 8, 0.2),
    "llama-3b": Shape(28, 3072, 8192, 24, 8, 0.1),
    "llama-8b": Shape(32, 4096, 14336, 32, 8, 0.0),
}
SMALL = {
    "llama-1b": Shape(4, 256, 1024, 8, 2, 0.2),
    "llama-3b": Shape(6, 384, 1536, 6, 2, 0.1),
    "llama-8b": Shape(8, 512, 1792, 8, 2, 0.0),
}


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens, scores, types = build_vocab()
    extra = N_VOCAB - len(tokens)
    tokens += [f"{SPACE}w{i}" for i in range(extra)]
    scores += [-float(len(scores) + i) for i in range(extra)]
    types += [int(gguf.TokenType.NORMAL)] * extra
    return tokens, scores, types


def _q4_0(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """[rows, cols / 32 * 18] bytes of random Q4_0 blocks whose values have this standard deviation."""
    blocks = rng.integers(0, 256, size=(rows, cols // QK, BLOCK_BYTES), dtype=np.uint8)
    blocks[..., :2] = np.frombuffer(np.float16(std / Q4_STD).tobytes(), dtype=np.uint8)
    return blocks.reshape(rows, -1)


def _successors(rng: np.random.Generator, disagree: float) -> np.ndarray:
    """[N_VOCAB] the greedy next token of each token: one permutation of the non-special tokens (seed 0),
    with a `disagree` share of them rotated among themselves."""
    succ = np.arange(N_VOCAB)
    succ[N_SPECIAL:] = N_SPECIAL + np.random.default_rng(0).permutation(N_VOCAB - N_SPECIAL)
    moved = N_SPECIAL + rng.choice(
        N_VOCAB - N_SPECIAL, size=int(disagree * (N_VOCAB - N_SPECIAL)), replace=False
    )
    succ[moved] = succ[np.roll(moved, 1)]
    return succ


def _layout(shape: Shape) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, kind, values shape) of every tensor in file order; kind: random, zero, norm, embd, output."""
    n_embd, n_kv = shape.n_embd, shape.n_embd // shape.n_head * shape.n_head_kv
    layout = [("token_embd.weight", "embd", (N_VOCAB, n_embd))]
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        layout += [
            (p + "attn_norm.weight", "norm", (n_embd,)),
            (p + "attn_q.weight", "random", (n_embd, n_embd)),
            (p + "attn_k.weight", "random", (n_kv, n_embd)),
            (p + "attn_v.weight", "random", (n_kv, n_embd)),
            (p + "attn_output.weight", "zero", (n_embd, n_embd)),
            (p + "ffn_norm.weight", "norm", (n_embd,)),
            (p + "ffn_gate.weight", "random", (shape.n_ff, n_embd)),
            (p + "ffn_up.weight", "random", (shape.n_ff, n_embd)),
            (p + "ffn_down.weight", "zero", (n_embd, shape.n_ff)),
        ]
    return [
        *layout,
        ("output_norm.weight", "norm", (n_embd,)),
        ("output.weight", "output", (N_VOCAB, n_embd)),
    ]


def write_tier(path: Path, shape: Shape, seed: int) -> Path:
    """Write one tier (see the module docstring), one tensor in memory at a time; return its path."""
    rng = np.random.default_rng(seed)
    embd = _q4_0(rng, N_VOCAB, shape.n_embd, SUCCESSOR_LOGIT / shape.n_embd)

    def make(kind: str, dims: tuple[int, ...]) -> np.ndarray:
        if kind == "norm":
            return np.ones(dims, dtype=np.float32)
        if kind == "embd":
            return embd
        if kind == "random":
            return _q4_0(rng, *dims, WEIGHT_STD)
        out = np.zeros((dims[0], dims[1] // QK * BLOCK_BYTES), dtype=np.uint8)  # scale 0: every value 0
        if kind == "output":  # row succ(t) = the embedding of t; the special tokens' rows stay zero
            out[_successors(rng, shape.disagree)[N_SPECIAL:]] = embd[N_SPECIAL:]
        return out

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"random {path.stem}")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    writer.add_context_length(8192)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
    writer.add_rope_freq_base(500_000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(N_VOCAB)
    tokens, scores, types = _vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(DEFAULT_TEMPLATE)
    layout = _layout(shape)
    for name, kind, dims in layout:
        if kind == "norm":
            writer.add_tensor_info(name, dims, np.dtype(np.float32), 4 * dims[0])
        else:
            byte_shape = (dims[0], dims[1] // QK * BLOCK_BYTES)
            nbytes = byte_shape[0] * byte_shape[1]
            writer.add_tensor_info(
                name, byte_shape, np.dtype(np.uint8), nbytes, gguf.GGMLQuantizationType.Q4_0
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, kind, dims in layout:
        writer.write_tensor_data(make(kind, dims))
    writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--small", action="store_true", help="Scaled-down shapes for a CPU rehearsal.")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for seed, (name, shape) in enumerate((SMALL if args.small else TIERS).items()):
        t0 = time.perf_counter()
        path = write_tier(args.out_dir / f"{name}.gguf", shape, seed + 1)
        size = path.stat().st_size / 2**30
        print(f"llama_tiers: {path} ({size:.2f} GiB) in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
