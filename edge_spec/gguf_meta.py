"""A GGUF file's header read the quick way: metadata values and the tensor table, nothing else.

gguf-py's GGUFReader builds a numpy view for every element of every field, so a 151k-token vocabulary
alone takes about 30 s to read. Here scalars, strings and short numeric arrays are read; string arrays
and arrays longer than SHORT_ARRAY are skipped and kept as `LongArray` (their element type and length).
Tensor sizes follow gguf-py (elements x type size / block size), so they match llama.cpp to the byte.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from edge_spec.errors import ModelError

SHORT_ARRAY = 4096
"""Numeric arrays up to this length are read (per-layer head counts); longer ones are skipped."""
DEFAULT_ALIGNMENT = 32
"""Tensor data alignment when the file does not set general.alignment."""

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
"""GGUF value types with a fixed size -> struct format (8 = string, 9 = array)."""
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class LongArray:
    """An array value left unread: its GGUF element type and its length."""

    type: int
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the table: name, ggml shape (ne), ggml type, bytes in the file."""

    name: str
    shape: tuple[int, ...]
    type: int
    n_bytes: int
    offset: int  # from the start of the tensor data


@dataclass(frozen=True)
class Header:
    fields: dict[str, object]
    tensors: tuple[TensorInfo, ...]


class _Cursor:
    """Reads little- or big-endian GGUF values from a buffer, moving forward."""

    def __init__(self, buf: mmap.mmap, order: str) -> None:
        self.buf, self.order, self.pos = buf, order, 0

    def take(self, fmt: str) -> object:
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = int(self.take("Q"))  # type: ignore[call-overload]
        end = self.pos + n
        if end > len(self.buf):
            raise ValueError("a string runs past the end of the file")
        text = self.buf[self.pos : end].decode("utf-8", "replace")
        self.pos = end
        return text

    def value(self, kind: int) -> object:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        elem, n = int(self.take("I")), int(self.take("Q"))  # type: ignore[call-overload]
        if elem in _SCALARS and n <= SHORT_ARRAY:
            fmt = f"{self.order}{n}{_SCALARS[elem]}"
            values = list(struct.unpack_from(fmt, self.buf, self.pos))
            self.pos += struct.calcsize(fmt)
            return values
        if elem in _SCALARS:
            self.pos += n * struct.calcsize(_SCALARS[elem])
        elif elem == _STRING:
            length = struct.Struct(self.order + "Q").unpack_from
            for _ in range(n):
                self.pos += 8 + length(self.buf, self.pos)[0]
        else:
            raise ValueError(f"unsupported GGUF array element type {elem}")
        if self.pos > len(self.buf):
            raise ValueError("an array runs past the end of the file")
        return LongArray(elem, n)


def read_header(path: str | Path) -> Header:
    """The metadata fields and tensor table of a GGUF file. Raises ModelError when the file is missing,
    is not GGUF, or is cut short (its tensor data would end past the end of the file)."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf)
    except (OSError, ValueError, KeyError, struct.error) as e:
        raise ModelError(f"cannot read GGUF metadata from {path}: {e}") from None


def _parse(buf: mmap.mmap) -> Header:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if buf[:4] != b"GGUF":
        raise ValueError("not a GGUF file (bad magic)")
    (version,) = struct.unpack_from("<I", buf, 4)
    cur = _Cursor(buf, "<" if version & 0xFFFF else ">")
    cur.pos = 8
    n_tensors, n_fields = int(cur.take("Q")), int(cur.take("Q"))  # type: ignore[call-overload]
    fields: dict[str, object] = {}
    for _ in range(n_fields):
        key = cur.string()
        fields[key] = cur.value(int(cur.take("I")))  # type: ignore[call-overload]
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = int(cur.take("I"))  # type: ignore[call-overload]
        shape = tuple(int(cur.take("Q")) for _ in range(n_dims))  # type: ignore[call-overload]
        kind, offset = int(cur.take("I")), int(cur.take("Q"))  # type: ignore[call-overload]
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        n_elements = 1
        for d in shape:
            n_elements *= d
        tensors.append(TensorInfo(name, shape, kind, n_elements * size // block, offset))
    align = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    data_start = -(-cur.pos // int(align)) * int(align)  # type: ignore[call-overload]
    end = max((data_start + t.offset + t.n_bytes for t in tensors), default=cur.pos)
    if end > len(buf):
        raise ValueError(f"truncated: the tensor data ends at byte {end} but the file has {len(buf)}")
    return Header(fields, tuple(tensors))
