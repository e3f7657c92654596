"""The memory budget planner: place the tiers of a pyramid in a memory budget, or explain why they cannot fit.

Sizes come from GGUF metadata (the file's header, read by `gguf_meta`; no model load):
  - weights: each tensor's bytes; `blk.N.*` tensors belong to layer N. As llama.cpp places them, the token
    embeddings stay on the CPU, GPU layers are the last ones, and the output head joins the GPU only when
    every layer is there (n_gpu_layers > n_layer). A model with tied embeddings keeps a GPU copy of them.
  - KV cache: per layer, n_seq x context (each sequence's rounded up to KV_PADDING cells, as llama.cpp
    does) x (n_head_kv x key_length + n_head_kv x value_length) elements of the cache type (ggml block
    sizes: f16 2 bytes, q8_0 34 bytes per 32, q4_0 18 bytes per 32); each layer's cache lives where the
    layer runs. The context is per sequence: a tier holding n_seq sequences gives each its own.
  - compute buffer (an estimate, see `ModelShape.compute_bytes`) on the device holding the layers: it
    grows with the batch, not with the sequences. The logits output buffer (n_vocab x `output_rows`
    floats) in host memory.
Checked against what llama.cpp allocates (tests/test_memory.py): weights and KV cache match to the byte,
for one sequence and for several.

Placement (`plan`): with a GPU, the budget is GPU memory; layers go to the GPU target first, then qualifier,
then draft, and the preference is: the whole target on the GPU, then the full requested context (halved only
when that puts the whole target there), then more target, qualifier and draft layers, then the more precise
KV cache (f16 before q8_0 before q4_0). Without a GPU the
budget is host memory and must hold everything: the largest context, then the most precise cache, that fits.
A safety margin (SAFETY_FRACTION of the budget, at least SAFETY_MIN_BYTES) is kept free. The number of
sequences is the caller's (`max_parallel`: the most that cost the one-sequence placement nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_spec import options
from edge_spec.errors import ConfigError, ModelError
from edge_spec.gguf_meta import read_header
from edge_spec.options import draft_roles

MIB = 1 << 20
GIB = 1 << 30
SAFETY_FRACTION = 0.10
"""Share of the budget left free (driver / runtime overheads, fragmentation)."""
SAFETY_MIN_BYTES = 512 * MIB
"""The least memory left free, whatever the budget."""
OUTPUT_ROWS = 32
"""Logits rows per decode the output buffer is sized for, per sequence (a verification block plus its bonus
row)."""
KV_PADDING = 256
"""llama.cpp rounds each sequence's KV cache up to a multiple of this many cells."""
MIN_CTX = 512
"""The smallest context the planner will shrink to."""
CACHE_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
"""KV cache types the planner chooses from, most precise first, with ggml's bytes per element."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8GB', '8G', '7.5GiB', '512MB' -> bytes (binary units: GB = GiB = 2^30); a bare number is GB."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"cannot read {text!r} as a memory size; write e.g. 8GB or 512MB")
    unit = {"": GIB, "k": 1 << 10, "m": MIB, "g": GIB, "t": 1 << 40}[m[2].lower()]
    return int(float(m[1]) * unit)


def fmt(n: float) -> str:
    """Bytes as GiB (or MiB below 1 GiB)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about one GGUF file."""

    path: Path
    n_layer: int
    n_vocab: int
    n_embd: int
    n_head: int
    n_ctx_train: int
    layer_bytes: tuple[int, ...]  # weights of each block
    input_bytes: int  # token embeddings (always on the CPU)
    output_bytes: int  # output norm + head (a GPU copy of the embeddings when they are tied)
    kv_width: tuple[int, ...]  # K + V elements per position, per layer
    tied_bytes: int = 0  # tied embeddings: counted in output_bytes (GPU copy) but stored once in the file

    @property
    def weight_bytes(self) -> int:
        """Bytes of every tensor in the file (what llama_model_size reports)."""
        return sum(self.layer_bytes) + self.input_bytes + self.output_bytes_in_file

    @property
    def output_bytes_in_file(self) -> int:
        return self.output_bytes - self.tied_bytes

    def kv_bytes(self, n_ctx: int, cache_type: str, layers: range | None = None, n_seq: int = 1) -> int:
        """KV cache bytes for `n_seq` sequences of `n_ctx` positions (each rounded up to KV_PADDING cells)
        over `layers` (default all)."""
        per = {**CACHE_BYTES_PER_ELEMENT, "f32": 4.0}[cache_type]
        widths = self.kv_width if layers is None else [self.kv_width[i] for i in layers]
        cells = n_seq * -(-n_ctx // KV_PADDING) * KV_PADDING
        return int(cells * sum(widths) * per)

    def compute_bytes(self, n_batch: int) -> int:
        """Estimated compute buffer with flash attention (the default; a quantized cache needs it): the logits
        of a full batch plus a few activations, 4 x n_batch x (n_vocab + 4 x n_embd) bytes. Measured on CPU:
        Qwen2.5-Coder-0.5B 300 MiB (estimate 304), SmolLM2-135M 98 MiB (estimate 100)."""
        return 4 * n_batch * (self.n_vocab + 4 * self.n_embd)

    def output_buffer_bytes(self, rows: int = OUTPUT_ROWS) -> int:
        """Host memory for the logits llama.cpp hands back (`rows` rows, see `output_rows`)."""
        return 4 * self.n_vocab * rows


def output_rows(n_seq: int, n_batch: int) -> int:
    """Logits rows the output buffer is sized for: OUTPUT_ROWS per sequence (every sequence verifying a
    block in one llama_decode), but no more than one llama_decode returns (n_batch; llama.cpp allocates n_seq
    rows at load, at most n_batch, and grows the buffer to the most rows a decode returned), and never fewer
    than OUTPUT_ROWS."""
    return max(OUTPUT_ROWS, min(n_seq * OUTPUT_ROWS, n_batch))


def read_shape(path: str | Path) -> ModelShape:
    """A GGUF file's sizes and shapes, from its metadata and tensor table (`gguf_meta`: the header only)."""
    path = Path(path)
    header = read_header(path)
    arch = header.fields.get("general.architecture")

    def meta(key: str, default: object = None) -> object:
        value = header.fields.get(f"{arch}.{key}")
        if value is None and default is None:
            raise ModelError(f"{path.name}: GGUF metadata lacks {arch}.{key}")
        return default if value is None else value

    n_layer = int(meta("block_count"))  # type: ignore[arg-type]
    n_embd = int(meta("embedding_length"))  # type: ignore[arg-type]
    n_head = int(np.max(meta("attention.head_count")))  # type: ignore[arg-type]
    head_kv = np.broadcast_to(np.asarray(meta("attention.head_count_kv", n_head)), (n_layer,))
    k_len = int(meta("attention.key_length", n_embd // n_head))  # type: ignore[arg-type]
    v_len = int(meta("attention.value_length", n_embd // n_head))  # type: ignore[arg-type]
    tokens = header.fields.get("tokenizer.ggml.tokens", ())
    n_vocab = int(meta("vocab_size", len(tokens)))  # type: ignore[arg-type]
    layers = [0] * n_layer
    named: dict[str, int] = {}
    for t in header.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and int(m[1]) < n_layer:
            layers[int(m[1])] += int(t.n_bytes)
        else:
            named[t.name] = named.get(t.name, 0) + int(t.n_bytes)
    input_bytes = named.pop("token_embd.weight", 0)
    tied = 0 if "output.weight" in named else input_bytes
    return ModelShape(
        path=path,
        n_layer=n_layer,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_head=n_head,
        n_ctx_train=int(meta("context_length", 0)),  # type: ignore[arg-type]
        layer_bytes=tuple(layers),
        input_bytes=input_bytes,
        output_bytes=sum(named.values()) + tied,
        kv_width=tuple(int(h) * (k_len + v_len) for h in head_kv),
        tied_bytes=tied,
    )


@dataclass(frozen=True)
class TierPlan:
    """One tier's placement and the memory it takes on the device and in host memory."""

    role: str
    shape: ModelShape
    gpu_layers: int  # 0..n_layer + 1; n_layer + 1 puts the output head on the GPU too (= all)
    device_bytes: int
    host_bytes: int


@dataclass(frozen=True)
class Plan:
    device: str  # "gpu" or "cpu"
    budget: int
    usable: int  # budget minus the safety margin
    n_ctx: int  # per sequence
    cache_type: str
    tiers: tuple[TierPlan, ...]  # bottom-up: draft, qualifier, target
    n_seq: int = 1  # sequences each tier holds, n_ctx positions each

    @property
    def device_bytes(self) -> int:
        return sum(t.device_bytes for t in self.tiers)

    def table(self) -> str:
        """The placement as a plain-text table."""
        where = "GPU" if self.device == "gpu" else "RAM"
        head = f"{'tier':10} {'model':44} {'layers on GPU':>14} {where + ' bytes':>12} {'host bytes':>12}"
        rows = [head, "-" * len(head)]
        for t in self.tiers:
            layers = f"{min(t.gpu_layers, t.shape.n_layer)}/{t.shape.n_layer}"
            device = fmt(t.device_bytes) if self.device == "gpu" else fmt(t.host_bytes)
            host = fmt(t.host_bytes) if self.device == "gpu" else "-"
            rows.append(f"{t.role:10} {t.shape.path.name[:44]:44} {layers:>14} {device:>12} {host:>12}")
        used = self.device_bytes if self.device == "gpu" else sum(t.host_bytes for t in self.tiers)
        sequences = f" x {self.n_seq} sequences" if self.n_seq > 1 else ""
        rows.append(
            f"context {self.n_ctx} tokens{sequences}, KV cache {self.cache_type}; {fmt(used)} of "
            f"{fmt(self.budget)} ({fmt(self.usable)} usable after the safety margin)"
        )
        return "\n".join(rows)


def _tier(
    role: str, s: ModelShape, gpu_layers: int, n_ctx: int, cache: str, n_batch: int, n_seq: int
) -> TierPlan:
    on_gpu = range(s.n_layer - min(gpu_layers, s.n_layer), s.n_layer)
    layer_w = sum(s.layer_bytes[i] for i in on_gpu)
    head_on_gpu = gpu_layers > s.n_layer
    batch = min(n_batch, n_ctx * n_seq)  # as Tier caps it
    compute = s.compute_bytes(batch)
    kv_gpu = s.kv_bytes(n_ctx, cache, on_gpu, n_seq)
    device = layer_w + kv_gpu + (s.output_bytes if head_on_gpu else 0)
    device += compute if gpu_layers > 0 else 0
    kv_host = s.kv_bytes(n_ctx, cache, n_seq=n_seq) - kv_gpu
    rows = output_rows(n_seq, batch)
    host = s.input_bytes + sum(s.layer_bytes) - layer_w + kv_host + s.output_buffer_bytes(rows)
    host += 0 if head_on_gpu else s.output_bytes_in_file
    host += compute if gpu_layers == 0 else 0
    return TierPlan(role, s, gpu_layers, device, host)


def _contexts(n_ctx: int, shapes: dict[str, ModelShape]) -> list[int]:
    """The requested context (capped at the smallest training length), then halves down to MIN_CTX."""
    cap = min((s.n_ctx_train for s in shapes.values() if s.n_ctx_train > 0), default=n_ctx)
    ctx, out = min(n_ctx, cap), []
    while True:
        out.append(ctx)
        if ctx // 2 < MIN_CTX:
            return out
        ctx //= 2


def _roles(shapes: dict[str, ModelShape]) -> list[str]:
    """The roles present, in the order they get GPU layers: target, qualifier, draft, then the other
    candidate drafts (draft 2, draft 3, ...); ConfigError on an unknown one."""
    drafts = [r for r in shapes if r.startswith("draft")]
    if "target" not in shapes or set(shapes) - {"target", "qualifier"} - set(draft_roles(len(drafts))):
        raise ConfigError("plan needs a target and at most a qualifier and drafts")
    return [r for r in ("target", "qualifier") if r in shapes] + draft_roles(len(drafts))


def _order(tiers: dict[str, TierPlan]) -> tuple[TierPlan, ...]:
    return tuple(reversed(tiers.values()))


def plan(
    shapes: dict[str, ModelShape],
    budget: int,
    n_ctx: int = options.default("ctx"),
    n_batch: int = options.default("batch"),
    device: str = "gpu",
    n_seq: int = 1,
    cache_type: str | None = None,
) -> Plan:
    """Place tiers ({"target": shape, "qualifier": ..., "draft": ...}), each holding `n_seq` sequences of
    `n_ctx` tokens, in `budget` bytes on `device` ("gpu": GPU memory, the rest runs from host memory;
    "cpu": everything in host memory). `cache_type` fixes the KV cache type (None: the planner chooses).
    Raises ConfigError when nothing fits, naming the smallest placement and what it needs."""
    roles = _roles(shapes)
    usable = budget - max(int(budget * SAFETY_FRACTION), SAFETY_MIN_BYTES)
    contexts = _contexts(n_ctx, shapes)
    caches = [cache_type] if cache_type else list(CACHE_BYTES_PER_ELEMENT)
    best: tuple[tuple[int, ...], Plan] | None = None
    for ci, ctx in enumerate(contexts):
        for ki, cache in enumerate(caches):
            if device == "cpu":
                tiers = {r: _tier(r, shapes[r], 0, ctx, cache, n_batch, n_seq) for r in roles}
                if sum(t.host_bytes for t in tiers.values()) <= usable:
                    return Plan(device, budget, usable, ctx, cache, _order(tiers), n_seq)
                continue
            left, tiers = usable, {}
            for r in roles:
                s = shapes[r]
                options = (_tier(r, s, g, ctx, cache, n_batch, n_seq) for g in range(s.n_layer + 1, -1, -1))
                tiers[r] = next(t for t in options if t.device_bytes <= left or t.gpu_layers == 0)
                left -= tiers[r].device_bytes
            target = tiers["target"].gpu_layers
            score = (
                target > shapes["target"].n_layer,
                -ci,
                target,
                *(tiers[r].gpu_layers for r in roles[1:]),
                -ki,
            )
            if tiers["target"].gpu_layers > 0 and (best is None or score > best[0]):
                best = (score, Plan(device, budget, usable, ctx, cache, _order(tiers), n_seq))
    if best is not None:
        return best[1]
    raise ConfigError(_no_fit(shapes, budget, usable, contexts[-1], caches[-1], n_batch, n_seq, device))


def max_parallel(
    shapes: dict[str, ModelShape],
    budget: int,
    n_ctx: int = options.default("ctx"),
    n_batch: int = options.default("batch"),
    device: str = "gpu",
    *,
    most: int,
    cache_type: str | None = None,
) -> int:
    """The most sequences per tier, up to `most` (the caller's cap; llama.cpp holds at most 256) and
    n_batch (llama.cpp needs a batch row per sequence), that cost the one-sequence placement nothing: the
    largest N whose plan has the context, KV cache type and GPU layers of every tier of the plan for one
    sequence (memory only grows with N, so the search is by halves). `cache_type` as in `plan`.
    ConfigError as `plan` when one sequence does not fit."""
    args = (shapes, budget, n_ctx, n_batch, device)

    def placement(p: Plan) -> tuple[object, ...]:
        return p.n_ctx, p.cache_type, tuple(t.gpu_layers for t in p.tiers)

    one = placement(plan(*args, cache_type=cache_type))
    lo, hi = 1, max(1, min(most, n_batch))  # invariant: lo fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            fits = placement(plan(*args, n_seq=mid, cache_type=cache_type)) == one
        except ConfigError:
            fits = False
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    return lo


def _no_fit(
    shapes: dict[str, ModelShape],
    budget: int,
    usable: int,
    ctx: int,
    cache: str,
    n_batch: int,
    n_seq: int,
    device: str,
) -> str:
    """Why nothing fits, and the budget the smallest placement needs."""
    context = f"a {ctx}-token context" if n_seq == 1 else f"{n_seq} sequences of {ctx} tokens"
    if device == "cpu":
        need = sum(_tier(r, s, 0, ctx, cache, n_batch, n_seq).host_bytes for r, s in shapes.items())
        what = f"all tiers in memory with {context} and a {cache} KV cache"
    else:
        need = _tier("target", shapes["target"], 1, ctx, cache, n_batch, n_seq).device_bytes
        what = f"one target layer on the GPU with {context} and a {cache} KV cache"
    total = max(need + SAFETY_MIN_BYTES, int(need / (1 - SAFETY_FRACTION)) + 1)
    return (
        f"the tiers do not fit in {fmt(budget)} ({fmt(usable)} usable after the safety margin): the smallest "
        f"placement, {what}, needs {fmt(need)}; give --budget {total / GIB:.1f}GB or more, or smaller tiers"
    )
