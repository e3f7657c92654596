"""Derived drafts: a smaller, faster copy of a target GGUF, requantized and/or layer-pruned through
llama.cpp's quantize API (ML-SpecQD's self-drafts). The copy keeps the target's vocabulary, so it always
stacks under it.

    edge-spec derive qwen-1.5b --kind q4_0                  # -> <model cache>/<target>-q4_0.gguf
    edge-spec derive model.gguf --kind prune:16 --out draft.gguf
    edge-spec derive model.gguf --kind q4_0+prune:16

Kinds: q8_0, q4_0 (every weight, the embeddings and output too: Q4_0 gets CPU weight repacking), q2_k
(llama.cpp's Q2_K mix; rows that are not whole 256-value blocks fall back to Q4_0), mxfp4 (every weight
MXFP4, 32-value blocks), prune:N (keep the first N blocks, tensors copied in their own types).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_spec.backend import FILE_TYPES, GGML_TYPES, quantize_file
from edge_spec.errors import ConfigError, ModelError
from edge_spec.memory import read_shape
from edge_spec.models import model_dir, resolve

QUANT_KINDS: dict[str, dict[str, Any]] = {
    "q8_0": {"file_type": "q8_0"},
    "q4_0": {"file_type": "q4_0", "output_type": "q4_0", "embedding_type": "q4_0"},
    "q2_k": {"file_type": "q2_k"},
    "mxfp4": {"file_type": "mxfp4_moe", "tensor_types": {".": "mxfp4"}},
}
"""Each quantization kind as `quantize` arguments. MXFP4_MOE alone would only touch expert tensors,
so mxfp4 overrides every quantizable tensor to MXFP4."""

KINDS_HELP = f"{' | '.join(QUANT_KINDS)} | prune:N (keep the first N blocks), or both: q4_0+prune:N"


@dataclass(frozen=True)
class Fallback:
    """A tensor llama.cpp stored in another type than asked: its rows are not whole blocks of that type."""

    tensor: str
    row_length: int
    block: int
    wanted: str
    used: str


_FALLBACK_LOG = re.compile(
    r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by\s+(\d+) \(required for type\s+(\S+)\)"
    r"[^>]*-> falling back to\s+(\S+)"
)
_QUANTIZE_FAILED_LOG = re.compile(r"failed to quantize: (.+)")


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    file_type: str | None,
    tensor_types: dict[str, str] | None = None,
    output_type: str | None = None,
    embedding_type: str | None = None,
    prune_layers: Sequence[int] = (),
    threads: int = 0,
) -> list[Fallback]:
    """Write GGUF model `src` to `dst` through llama.cpp's quantizer (llama_model_quantize).

    file_type: a FILE_TYPES recipe, or None to copy every tensor in its own type (with prune_layers).
    tensor_types: regex searched in tensor names -> GGML_TYPES name, overriding the recipe (first match
    wins; llama.cpp's tt_overrides). output_type / embedding_type: the type of output.weight /
    token_embd.weight (None = the recipe's choice). prune_layers: blocks to drop; the kept blocks are
    renumbered and block_count is updated. threads: 0 = every hardware thread. Already-quantized tensors
    are requantized. Returns the tensors that fell back to another type (llama.cpp picks a smaller block,
    else F16); raises ModelError with llama.cpp's reason when quantization fails.
    """
    names = [*(tensor_types or {}).values(), output_type, embedding_type]
    unknown = sorted({t for t in names if t is not None} - set(GGML_TYPES))
    if unknown:
        raise ConfigError(f"unknown tensor type(s) {', '.join(unknown)}; known: {', '.join(GGML_TYPES)}")
    if file_type is not None and file_type not in FILE_TYPES:
        raise ConfigError(f"unknown file type {file_type!r}; known: {', '.join(FILE_TYPES)}")
    if file_type is None and any(t is not None for t in names):
        raise ConfigError("tensor types need a file type: without one every tensor is copied as it is")
    rc, warnings, errors = quantize_file(
        src,
        dst,
        file_type=file_type,
        tensor_types=tensor_types or {},
        output_type=output_type,
        embedding_type=embedding_type,
        prune_layers=prune_layers,
        threads=threads,
    )
    if rc != 0:
        reason = _QUANTIZE_FAILED_LOG.search(errors)
        raise ModelError(f"llama.cpp could not quantize {Path(src).name}: {reason[1] if reason else rc}")
    return [Fallback(m[1], int(m[2]), int(m[3]), m[4], m[5]) for m in _FALLBACK_LOG.finditer(warnings)]


@dataclass(frozen=True)
class Recipe:
    """What to derive: a quantization kind (None = keep the tensor types) and the blocks kept (None = all)."""

    quant: str | None = None
    keep_layers: int | None = None

    @property
    def name(self) -> str:
        """For file names: "q4_0", "prune16", "q4_0-prune16"."""
        parts = [self.quant, None if self.keep_layers is None else f"prune{self.keep_layers}"]
        return "-".join(p for p in parts if p)


def parse_kind(kind: str) -> Recipe:
    """A --kind value to a Recipe: one quantization kind, prune:N, or both joined by '+'."""
    quant: str | None = None
    keep: int | None = None
    for part in kind.lower().split("+"):
        part = part.strip()
        if part in QUANT_KINDS and quant is None:
            quant = part
        elif part.startswith("prune:") and keep is None:
            try:
                keep = int(part.removeprefix("prune:"))
            except ValueError:
                raise ConfigError(f"prune:N needs a whole number of blocks to keep, got {part!r}") from None
            if keep < 1:
                raise ConfigError(f"prune:N must keep at least one block, got {part!r}")
        else:
            raise ConfigError(f"unknown derive kind {kind!r}; use {KINDS_HELP}")
    return Recipe(quant, keep)


@dataclass(frozen=True)
class Derived:
    """A derived draft written to `path`."""

    path: Path
    source: Path
    recipe: Recipe
    n_layer: int  # blocks in the derived model
    size: int  # bytes
    fallbacks: list[Fallback] = field(default_factory=list)

    def line(self) -> str:
        """One line: what was written, from what, and how big."""
        return (
            f"derived {self.path} from {self.source.name}: {self.recipe.name}, {self.n_layer} blocks, "
            f"{self.size / 1e6:.1f} MB"
        )

    def notes(self) -> list[str]:
        """One line per group of tensors llama.cpp stored in another type than asked."""
        groups: dict[tuple[str, str, int, int], int] = {}
        for f in self.fallbacks:
            key = (f.wanted, f.used, f.row_length, f.block)
            groups[key] = groups.get(key, 0) + 1
        return [
            f"{n} tensor(s) with {row}-value rows stored as {used}, not {wanted}: "
            f"rows must be whole {block}-value blocks"
            for (wanted, used, row, block), n in groups.items()
        ]


def default_out(source: Path, recipe: Recipe) -> Path:
    """Where a derived draft goes by default: the model cache, named after the target and the recipe."""
    return model_dir() / f"{source.stem}-{recipe.name}.gguf"


def derive(
    target: str | os.PathLike[str],
    kind: str,
    out: str | os.PathLike[str] | None = None,
    *,
    threads: int = 0,
) -> Derived:
    """Derive a draft from `target` (any reference `edge_spec.models.resolve` accepts) as `kind` says (see
    parse_kind) and write it to `out`: a file, a directory (the default name inside it), or None for
    `default_out`. An existing file is replaced once the new one is complete. threads: 0 = all cores."""
    recipe = parse_kind(kind)
    source = resolve(target)
    if not source.is_file():
        raise ModelError(f"model file not found: {source}")
    n_layer = read_shape(source).n_layer
    keep = n_layer if recipe.keep_layers is None else recipe.keep_layers
    if recipe.keep_layers is not None and keep >= n_layer:
        raise ConfigError(
            f"prune:{keep} must keep fewer blocks than {source.name} has ({n_layer}): use 1 to {n_layer - 1}"
        )
    path = default_out(source, recipe) if out is None else Path(out).expanduser()
    if path.is_dir():
        path = path / default_out(source, recipe).name
    if path.exists() and path.samefile(source):
        raise ConfigError(f"the derived draft would overwrite its target {source}; choose another --out")
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.touch()
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    types = QUANT_KINDS[recipe.quant] if recipe.quant else {"file_type": None}  # None: copy the tensors
    try:
        fallbacks = quantize(source, partial, **types, prune_layers=range(keep, n_layer), threads=threads)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return Derived(path, source, recipe, keep, path.stat().st_size, fallbacks)
