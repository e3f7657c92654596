"""The tier backend: the only module that imports llama_cpp.

A `Tier` owns one GGUF model and one llama.cpp context holding `n_seq` sequences (ids 0..n_seq-1, each
with its own n_ctx cells). It decodes token blocks in one batch, or blocks of several sequences in one batch
(`score_many`), and hands back logits rows as zero-copy numpy views, rolls a sequence's KV cache back to a
position, tokenizes and renders tokens to bytes. Each sequence's cached tokens, hence the position of its
next token, live here and nowhere else.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import FrameType

import llama_cpp as lc
import numpy as np

from edge_spec import options
from edge_spec.errors import (
    ConfigError,
    ContextOverflowError,
    EdgeSpecError,
    IncompatibleTiersError,
    ModelError,
)
from edge_spec.host import usable_cores

CACHE_TYPES = {name: getattr(lc, f"GGML_TYPE_{name.upper()}") for name in options.CACHE_TYPES}
"""KV cache element types: q8_0 / q4_0 save memory and need flash attention; f32 (with flash attention off)
makes batched and single-token decodes agree to ~1e-5, for exactness checks."""

MAX_THREADS = 512
"""The most CPU threads llama.cpp runs (GGML_MAX_N_THREADS)."""

MAX_SEQUENCES = 256
"""The most sequences one llama.cpp context holds (LLAMA_MAX_SEQ)."""

VOCAB_MAX_SIZE_DIFFERENCE = 128
"""llama.cpp's limit on the vocabulary size difference between a draft and its target."""
VOCAB_CHECK_START_TOKEN_ID = 5
"""llama.cpp compares token texts from this id upward (the first ids are often special tokens)."""

_ALL_LAYERS = 10_000
"""n_gpu_layers that puts every layer of any model on the GPU."""
_LOG_TAIL: deque[str] = deque(maxlen=8)
_LOG_WARN, _LOG_ERROR = 3, 4  # ggml_log_level values (ggml.h)


@lc.llama_log_callback
def _log_to_tail(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    """Keep llama.cpp's last warnings and errors for error messages instead of printing its log."""
    if level in (_LOG_WARN, _LOG_ERROR) and text.strip():
        _LOG_TAIL.append(text.decode("utf-8", "replace").strip())


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[Callable[[], bool]]:
    """Run a llama.cpp call that calls back into Python (its log, load progress) with Ctrl-C noted, not
    raised: a KeyboardInterrupt raised inside a ctypes callback is printed and dropped by ctypes, and the
    call would run on as if no key was pressed. The block gets a function that says whether Ctrl-C was
    pressed (a progress callback returns False on it to stop a load); when the block ends, the Python
    SIGINT handler runs (KeyboardInterrupt by default), replacing any error the stopped call caused.
    Outside the main thread, or with SIGINT ignored or left to the OS, nothing changes."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield lambda: False
        return
    pressed: list[tuple[int, FrameType | None]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append((signum, frame)))
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)
        if pressed:
            previous(*pressed[0])


@functools.cache
def _init_backend() -> None:
    """Start llama.cpp once, at the first use rather than at import: its log goes to _LOG_TAIL."""
    lc.llama_log_set(_log_to_tail, ctypes.c_void_p(0))
    with _ctrl_c_deferred():
        lc.llama_backend_init()


def gpu_available() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (CUDA, Metal, Vulkan, ...)."""
    _init_backend()
    return bool(lc.llama_supports_gpu_offload())


def build_info() -> dict[str, str]:
    """The llama-cpp-python version and llama.cpp's system line (backends, ISA features compiled in)."""
    return {
        "llama_cpp_python": lc.__version__,
        "system_info": lc.llama_print_system_info().decode("utf-8", "replace").strip(),
    }


@dataclass(frozen=True)
class Device:
    """A compute device llama.cpp registered (ggml's backend device)."""

    name: str  # ggml's name, e.g. 'CUDA0' or 'CPU'
    description: str  # e.g. 'NVIDIA H200' or the CPU's model name
    kind: str  # 'cpu', 'gpu', 'igpu' (integrated, host memory), 'accel' or 'meta'
    free_bytes: int  # memory free on the device now (host memory for the CPU)
    total_bytes: int


_DEVICE_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")  # enum ggml_backend_dev_type (ggml-backend.h)


@functools.cache
def _ggml_device_functions() -> ctypes.CDLL:
    """ggml's device registry, which llama-cpp-python does not bind: found through libllama's handle (its
    dependencies' symbols resolve through it)."""
    lib = lc.llama_cpp._lib
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    lib.ggml_backend_dev_memory.restype = None
    return lib


def devices() -> list[Device]:
    """The devices this llama.cpp build registered, GPUs first as llama.cpp lists them, with free memory."""
    _init_backend()
    lib = _ggml_device_functions()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = lib.ggml_backend_dev_type(dev)
        found.append(
            Device(
                name=(lib.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace"),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace"),
                kind=_DEVICE_KINDS[kind] if 0 <= kind < len(_DEVICE_KINDS) else str(kind),
                free_bytes=free.value,
                total_bytes=total.value,
            )
        )
    return found


def _cpu_has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _use_extra_buffer_types() -> bool:
    """Weight repacking buffers, unless this build has llama.cpp's AMX kernels and the CPU reports AMX: that
    buffer type dies with SIGILL in VMs (Sapphire Rapids cloud machines). scripts/setup.sh builds without
    AMX kernels on such CPUs so repacking stays on. EDGE_SPEC_EXTRA_BUFTS=0/1 overrides."""
    override = os.environ.get("EDGE_SPEC_EXTRA_BUFTS")
    if override in ("0", "1"):
        return override == "1"
    build_has_amx = b"AMX_INT8 = 1" in lc.llama_print_system_info()
    return not (build_has_amx and _cpu_has_amx())


@dataclass(frozen=True)
class TierConfig:
    """How to load one tier. Defaults suit a single small GPU or a laptop CPU."""

    n_ctx: int = options.default(
        "ctx"
    )  # context per sequence (prompt + generated); capped at training length
    n_batch: int = options.default("batch")  # most tokens per llama_decode call; longer inputs are split
    n_gpu_layers: int = -1  # layers offloaded to the GPU; -1 = all when a GPU backend exists, else none
    cache_type: str = "f16"  # KV cache type: f16 | q8_0 | q4_0 | f32
    flash_attn: bool | None = None  # None = llama.cpp decides (forced on for a quantized KV cache)
    n_threads: int = 0  # CPU threads; 0 = all cores this process may use
    n_seq: int = 1  # sequences the context holds, each with n_ctx positions of its own

    def __post_init__(self) -> None:
        if self.n_ctx < 16:
            raise ConfigError(f"context length (--ctx) must be at least 16 tokens, got {self.n_ctx}")
        if self.n_batch < 1:
            raise ConfigError(f"batch size (--batch) must be positive, got {self.n_batch}")
        if self.cache_type not in CACHE_TYPES:
            raise ConfigError(
                f"KV cache type must be one of {', '.join(CACHE_TYPES)}, got {self.cache_type!r}"
            )
        if self.cache_type in ("q8_0", "q4_0") and self.flash_attn is False:
            raise ConfigError(f"a {self.cache_type} KV cache needs flash attention; drop --no-flash-attn")
        if self.n_gpu_layers < -1:
            raise ConfigError(f"GPU layers (--gpu-layers) must be -1 (all) or >= 0, got {self.n_gpu_layers}")
        if not 1 <= self.n_seq <= MAX_SEQUENCES:
            raise ConfigError(
                f"parallel sequences (--parallel) must be 1 to {MAX_SEQUENCES}, got {self.n_seq}"
            )
        if self.n_batch < self.n_seq:  # llama.cpp aborts the process on it (a logits row per sequence)
            raise ConfigError(
                f"batch size (--batch) must be at least the parallel sequences (--parallel), "
                f"got {self.n_batch} < {self.n_seq}"
            )


def _check_gguf_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"not a GGUF model file (bad magic {magic!r}): {path}")


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix, by binary search over C-speed slice comparisons."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo + 1 < hi:  # invariant: a[:lo] == b[:lo], a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _llama_error() -> str:
    """The first warning or error llama.cpp logged since _LOG_TAIL was cleared, as a message suffix."""
    return f": {_LOG_TAIL[0]}" if _LOG_TAIL else ""


class Tier:
    """One model and its context. Not thread-safe; close() frees the llama.cpp memory."""

    def __init__(self, path: str | os.PathLike[str], config: TierConfig | None = None) -> None:
        self.path = Path(path)
        self.config = config or TierConfig()
        _check_gguf_file(self.path)
        _init_backend()
        _LOG_TAIL.clear()
        mparams = lc.llama_model_default_params()
        want_layers = min(self.config.n_gpu_layers, _ALL_LAYERS)
        self.n_gpu_layers = 0 if not gpu_available() else (_ALL_LAYERS if want_layers < 0 else want_layers)
        mparams.n_gpu_layers = self.n_gpu_layers
        mparams.use_extra_bufts = _use_extra_buffer_types()
        self._model = self._ctx = self._batch = None
        with _ctrl_c_deferred() as pressed:  # Ctrl-C stops the load and raises KeyboardInterrupt
            progress = lc.llama_progress_callback(lambda _fraction, _data: not pressed())
            mparams.progress_callback = progress
            self._model = lc.llama_model_load_from_file(str(self.path).encode(), mparams)
            if not self._model:
                raise ModelError(
                    f"llama.cpp could not load {self.path} (corrupt or truncated?){_llama_error()}"
                )
            try:
                self._open_context()
            except BaseException:
                self.close()
                raise
            if pressed():
                self.close()
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab: int = lc.llama_vocab_n_tokens(self._vocab)
        self.n_layer: int = lc.llama_model_n_layer(self._model)
        self.n_gpu_layers = min(self.n_gpu_layers, self.n_layer + 1)
        self.caches: list[list[int]] = [[] for _ in range(self.n_seq)]
        """Per sequence id, its cached tokens by position; its next token takes position len(caches[seq])."""
        self.decode_seconds = 0.0
        """Wall time spent inside llama_decode since load."""
        self.last_decoded: list[int] = []
        """Tokens the latest decode / score / score_many call decoded, per request (one for decode and
        score), over all its llama_decode calls."""

    def _open_context(self) -> None:
        cfg = self.config
        n_ctx_train = lc.llama_model_n_ctx_train(self._model)
        self.n_ctx: int = min(cfg.n_ctx, n_ctx_train) if n_ctx_train > 0 else cfg.n_ctx
        """Positions per sequence."""
        self.n_seq: int = cfg.n_seq
        self.n_batch: int = min(cfg.n_batch, self.n_ctx * self.n_seq)
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = self.n_ctx * self.n_seq
        cparams.n_batch = cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = self.n_seq
        cparams.kv_unified = False  # one KV stream per sequence: each gets its own n_ctx cells
        self.n_threads: int = cfg.n_threads or usable_cores()
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        cparams.type_k = cparams.type_v = CACHE_TYPES[cfg.cache_type]
        quantized = cfg.cache_type in ("q8_0", "q4_0")
        flash = {None: lc.LLAMA_FLASH_ATTN_TYPE_AUTO, True: lc.LLAMA_FLASH_ATTN_TYPE_ENABLED}.get(
            True if quantized else cfg.flash_attn, lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.flash_attn_type = flash
        cparams.swa_full = True  # sliding-window models must keep positions a rollback may return to
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelError(
                f"llama.cpp could not create a {self.n_ctx}-token context"
                + (f" x {self.n_seq} sequences" if self.n_seq > 1 else "")
                + f" for {self.path}{_llama_error()}"
            )
        if lc.llama_n_ctx_seq(self._ctx) < self.n_ctx:
            raise ModelError(
                f"llama.cpp gave each sequence {lc.llama_n_ctx_seq(self._ctx)} positions, not {self.n_ctx}"
            )
        self._memory = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(self.n_batch, 0, 1)

    @property
    def cached(self) -> list[int]:
        """Sequence 0's cached tokens (`caches[0]`)."""
        return self.caches[0]

    @property
    def n_past(self) -> int:
        """Positions sequence 0 holds in the KV cache."""
        return len(self.caches[0])

    def past(self, seq: int) -> int:
        """Positions sequence `seq` holds in the KV cache."""
        return len(self._cache(seq))

    def _cache(self, seq: int) -> list[int]:
        if not 0 <= seq < self.n_seq:
            raise ValueError(
                f"sequence id {seq} is out of range: this tier holds {self.n_seq} (0..{self.n_seq - 1})"
            )
        return self.caches[seq]

    # ---- decoding --------------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._ctx is None:
            raise EdgeSpecError(f"{self.path.name}: this tier was closed")

    def decode(self, tokens: Sequence[int], n_logits: int = 1, *, seq: int = 0) -> np.ndarray:
        """Append `tokens` to sequence `seq` in as few llama_decode calls as n_batch allows.

        Returns the logits rows of the last `n_logits` tokens, shape [n_logits, n_vocab] float32: a read-only
        view into llama.cpp memory, valid until this tier decodes again or is closed (copy what must
        outlive that). A failure (or Ctrl-C) leaves the sequence as it was.
        """
        self._require_open()
        cache = self._cache(seq)
        n = len(tokens)
        if n == 0 or not 1 <= n_logits <= n:
            raise ValueError(f"decode needs 1 <= n_logits <= len(tokens), got {n_logits} for {n} tokens")
        if n_logits > self.n_batch:
            raise ValueError(f"cannot return {n_logits} logits rows with n_batch {self.n_batch}")
        start_past = len(cache)
        if start_past + n > self.n_ctx:
            raise self._overflow(start_past + n, seq)
        tail = max(n_logits, (n - 1) % self.n_batch + 1)  # the last chunk holds every row we return
        try:
            for s in range(0, n - tail, self.n_batch):
                self._decode_chunk(tokens[s : min(s + self.n_batch, n - tail)], 0, seq, cache)
            self._decode_chunk(tokens[n - tail :], n_logits, seq, cache)
        except BaseException:  # a failed chunk or Ctrl-C: leave the cache as it was before this call
            lc.llama_memory_seq_rm(self._memory, seq, start_past, -1)
            del cache[start_past:]
            raise
        self.last_decoded = [n]
        return self._rows(n_logits)

    def missing(self, sequence: list[int], *, seq: int = 0) -> int:
        """Tokens of `sequence` beyond the prefix sequence `seq`'s cache shares with it (what `score` would
        decode)."""
        return len(sequence) - _common_prefix(self._cache(seq), sequence)

    def score(self, sequence: list[int], n_logits: int = 1, *, seq: int = 0) -> np.ndarray:
        """Logits after each of the last `n_logits` tokens of `sequence`, reusing the prefix it shares with
        sequence `seq`'s cache and rolling back the rest. Returns a view as `decode` does. Sequence 0 takes
        this single-sequence path; another is `score_many` with one request."""
        if seq:
            return self.score_many([(seq, sequence, n_logits)])[0]
        keep = min(_common_prefix(self.caches[0], sequence), len(sequence) - n_logits)
        self.truncate(keep)
        return self.decode(sequence[keep:], n_logits)

    def score_many(self, requests: Sequence[tuple[int, Sequence[int], int]]) -> list[np.ndarray]:
        """`score` for several sequences at once: each request is (seq, sequence, n_logits), one per seq id.

        Each sequence keeps min(its common prefix with `sequence`, len(sequence) - n_logits) cached tokens
        and the rest of every request is decoded together, in one llama_decode call when the total fits in
        n_batch, else greedily filled calls of at most n_batch tokens, in seq id order (consecutive ids with
        equal token counts make one llama.cpp ubatch), with each request's logits rows in one call.
        Returns, per request in order, its [n_logits, n_vocab] float32 rows: read-only views as `decode`
        returns for rows of the last call, copies for rows of earlier calls.

        Every request is checked before any cache changes (ValueError, ContextOverflowError). A failed call
        (or Ctrl-C) leaves every sequence at the prefix it kept: as it was, unless the call rolled it back.
        """
        self._require_open()
        jobs = []  # (seq, cache, sequence, keep, n_logits)
        for seq, sequence, n_logits in requests:
            cache = self._cache(seq)
            n = len(sequence)
            if not 1 <= n_logits <= min(n, self.n_batch):
                raise ValueError(
                    f"score_many needs 1 <= n_logits <= min(len(sequence), n_batch {self.n_batch}), "
                    f"got {n_logits} for {n} tokens of sequence {seq}"
                )
            if n > self.n_ctx:
                raise self._overflow(n, seq)
            tokens = sequence if isinstance(sequence, list) else list(sequence)
            jobs.append((seq, cache, tokens, min(_common_prefix(cache, tokens), n - n_logits), n_logits))
        if len({job[0] for job in jobs}) < len(jobs):
            raise ValueError("score_many takes at most one request per sequence id")
        if not jobs:
            self.last_decoded = []
            return []
        order = sorted(range(len(jobs)), key=lambda r: jobs[r][0])
        calls: list[list[tuple[int, int, list[int], int, int]]] = [[]]  # (request, seq, tokens, pos0, rows)
        room = self.n_batch
        for r in order:
            seq, cache, tokens, start, n_logits = jobs[r]
            self.truncate(start, seq=seq)
            n = len(tokens)
            while start < n:
                end = min(n, start + room)
                if n - n_logits < end < n:  # the logits rows stay together, in the next call
                    end = n - n_logits
                if end == start:
                    calls.append([])
                    room = self.n_batch
                    continue
                calls[-1].append((r, seq, tokens[start:end], start, n_logits if end == n else 0))
                room -= end - start
                start = end
        out: list[np.ndarray] = [np.empty(0)] * len(jobs)
        try:
            for i, call in enumerate(calls):
                row = 0
                for _, seq, tokens, pos0, n_rows in call:
                    row = self._fill(row, seq, tokens, pos0, n_rows)
                self._run(row)
                last = i == len(calls) - 1
                rows, first = self._rows(sum(piece[4] for piece in call)), 0
                for r, *_, n_rows in call:
                    if n_rows:
                        out[r] = rows[first : first + n_rows] if last else rows[first : first + n_rows].copy()
                        first += n_rows
        except BaseException:  # a failed call or Ctrl-C: every sequence back to the prefix it kept
            for seq, cache, _, keep, _ in jobs:
                lc.llama_memory_seq_rm(self._memory, seq, keep, -1)
                del cache[keep:]
            raise
        for _, cache, tokens, keep, _ in jobs:
            cache.extend(tokens[keep:])
        self.last_decoded = [len(tokens) - keep for _, _, tokens, keep, _ in jobs]
        return out

    def _overflow(self, n_tokens: int, seq: int) -> ContextOverflowError:
        where = f" of sequence {seq}" if self.n_seq > 1 else ""
        return ContextOverflowError(
            f"{n_tokens} tokens do not fit in the {self.n_ctx}-token context{where}; "
            "shorten the prompt or raise --ctx"
        )

    def _decode_chunk(self, tokens: Sequence[int], n_logits: int, seq: int, cache: list[int]) -> None:
        self._run(self._fill(0, seq, tokens, len(cache), n_logits))
        cache.extend(tokens)

    def _fill(self, row: int, seq: int, tokens: Sequence[int], pos0: int, n_logits: int) -> int:
        """Put `tokens` of sequence `seq` (positions from pos0) in the batch from `row`, with logits on the
        last `n_logits`; returns the next free row."""
        batch = self._batch
        first_logit = row + len(tokens) - n_logits
        pos0 -= row
        for i, tok in enumerate(tokens, row):
            batch.token[i] = tok
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i >= first_logit
        return row + len(tokens)

    def _run(self, n_tokens: int) -> None:
        """One llama_decode of the batch's first `n_tokens` rows."""
        batch = self._batch
        batch.n_tokens = n_tokens
        t0 = time.perf_counter()
        rc = lc.llama_decode(self._ctx, batch)
        self.decode_seconds += time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}{_llama_error()}")

    def _rows(self, n_rows: int) -> np.ndarray:
        """The latest llama_decode's logits rows, in batch order: a read-only view."""
        rows = np.ctypeslib.as_array(lc.llama_get_logits(self._ctx), shape=(n_rows, self.n_vocab))
        rows.flags.writeable = False
        return rows

    def truncate(self, n_past: int, *, seq: int = 0) -> None:
        """Drop every position >= n_past of sequence `seq` (roll back rejected tokens)."""
        self._require_open()
        cache = self._cache(seq)
        if not 0 <= n_past <= len(cache):
            raise ValueError(f"cannot truncate to {n_past}: the cache holds {len(cache)} positions")
        if n_past < len(cache):
            if not lc.llama_memory_seq_rm(self._memory, seq, n_past, -1):
                raise RuntimeError(f"{self.path.name}: this model's cache cannot be rolled back")
            del cache[n_past:]

    def forget(self, seq: int) -> None:
        """Forget sequence `seq` (start a new generation in it), leaving the others."""
        self._require_open()
        cache = self._cache(seq)
        lc.llama_memory_seq_rm(self._memory, seq, -1, -1)
        cache.clear()

    def reset(self) -> None:
        """Forget every sequence."""
        self._require_open()
        lc.llama_memory_clear(self._memory, True)
        for cache in self.caches:
            cache.clear()

    # ---- tokens and text -------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Text to token ids. `add_bos` adds BOS when the model wants one; `special` parses control tokens
        written as text (chat template markers)."""
        self._require_open()
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConfigError(f"the text is not valid Unicode ({e.reason} at character {e.start})") from None
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of one token (possibly part of a multi-byte UTF-8 character).
        Control tokens (BOS, EOS, template markers) render as b"" unless `special`."""
        self._require_open()
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """Token ids to text (invalid UTF-8 is replaced)."""
        return b"".join(self.piece(t, special=special) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        """End of generation: EOS, EOT and the like."""
        self._require_open()
        return bool(lc.llama_vocab_is_eog(self._vocab, token))

    @property
    def bos(self) -> int:
        return lc.llama_vocab_bos(self._vocab)

    @property
    def eos(self) -> int:
        return lc.llama_vocab_eos(self._vocab)

    @property
    def adds_bos(self) -> bool:
        return bool(lc.llama_vocab_get_add_bos(self._vocab))

    def token_text(self, token: int) -> str:
        """The vocabulary's stored text of a token (as in the GGUF file, e.g. '▁the' or 'Ġthe')."""
        return lc.llama_vocab_get_text(self._vocab, token).decode("utf-8", "replace")

    # ---- metadata --------------------------------------------------------------------------------

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or None when absent."""
        self._require_open()
        size = lc.llama_model_meta_val_str(self._model, key.encode(), None, 0)
        if size < 0:
            return None
        buf = ctypes.create_string_buffer(size + 1)
        lc.llama_model_meta_val_str(self._model, key.encode(), buf, size + 1)
        return buf.value.decode("utf-8", "replace")

    @cached_property
    def chat_template(self) -> str | None:
        """The model's own chat template (Jinja) from GGUF metadata, or None."""
        raw = lc.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", "replace") if raw else None

    @cached_property
    def bos_text(self) -> str:
        """The BOS token as text, as chat templates write it."""
        return self.piece(self.bos, special=True).decode("utf-8", "replace")

    @cached_property
    def eos_text(self) -> str:
        """The EOS token as text, as chat templates write it."""
        return self.piece(self.eos, special=True).decode("utf-8", "replace")

    @cached_property
    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    @property
    def device(self) -> str:
        """Where the layers run, e.g. 'CPU' or 'GPU (29/29 layers)'."""
        if self.n_gpu_layers == 0:
            return "CPU"
        return f"GPU ({min(self.n_gpu_layers, self.n_layer)}/{self.n_layer} layers)"

    @cached_property
    def vocab_fingerprint(self) -> str:
        """SHA-256 over the vocabulary type, size, special-token handling and every token's text."""
        h = hashlib.sha256()
        v = self._vocab
        head = (lc.llama_vocab_type(v), self.n_vocab, self.adds_bos, self.bos, self.eos)
        h.update(repr(head).encode())
        for i in range(self.n_vocab):
            h.update(lc.llama_vocab_get_text(v, i) + b"\0")
        return h.hexdigest()

    def check_compatible(self, other: Tier) -> None:
        """Raise IncompatibleTiersError unless `other` can draft for (or verify) this tier, by llama.cpp's
        rules: same vocabulary type and BOS/EOS handling, sizes within 128, same token texts from id 5."""
        self._require_open()
        other._require_open()
        a, b = self._vocab, other._vocab
        names = f"{other.path.name} and {self.path.name}"
        if lc.llama_vocab_type(a) != lc.llama_vocab_type(b):
            raise IncompatibleTiersError(f"{names} use different tokenizer types")
        if self.adds_bos != other.adds_bos or (self.adds_bos and self.bos != other.bos):
            raise IncompatibleTiersError(f"{names} handle BOS differently (ids {other.bos} vs {self.bos})")
        add_eos_a, add_eos_b = lc.llama_vocab_get_add_eos(a), lc.llama_vocab_get_add_eos(b)
        if add_eos_a != add_eos_b or (add_eos_a and self.eos != other.eos):
            raise IncompatibleTiersError(f"{names} handle EOS differently (ids {other.eos} vs {self.eos})")
        if abs(self.n_vocab - other.n_vocab) > VOCAB_MAX_SIZE_DIFFERENCE:
            raise IncompatibleTiersError(
                f"{names} vocabulary sizes differ by more than {VOCAB_MAX_SIZE_DIFFERENCE}: "
                f"{other.n_vocab} vs {self.n_vocab}"
            )
        if self.vocab_fingerprint == other.vocab_fingerprint:
            return
        for i in range(VOCAB_CHECK_START_TOKEN_ID, min(self.n_vocab, other.n_vocab)):
            ta, tb = lc.llama_vocab_get_text(a, i), lc.llama_vocab_get_text(b, i)
            if ta != tb:
                raise IncompatibleTiersError(
                    f"{names} have different vocabularies: token {i} is {tb.decode('utf-8', 'replace')!r} "
                    f"in {other.path.name} but {ta.decode('utf-8', 'replace')!r} in {self.path.name}"
                )

    # ---- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the context, the batch and the model. Safe to call twice."""
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> Tier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_model", None) is not None:
            self.close()


# ---- allocation and quantization (used by memory.py and derive.py) ---------------------------------

_BUFFER_LINE = re.compile(rb"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")


@contextlib.contextmanager
def _captured_log() -> Iterator[list[tuple[int, bytes]]]:
    """Route llama.cpp's whole log into a list of (level, text) for the block, then back to _log_to_tail."""
    _init_backend()  # first, so that starting llama.cpp does not route the log back mid-block
    records: list[tuple[int, bytes]] = []

    @lc.llama_log_callback
    def capture(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        records.append((level, text))

    lc.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        yield records
    finally:
        lc.llama_log_set(_log_to_tail, ctypes.c_void_p(0))


def measure_allocation(path: str | os.PathLike[str], config: TierConfig | None = None) -> dict[str, int]:
    """Load a tier and report what llama.cpp allocated, in bytes: "weights" (llama_model_size) and the
    buffers llama.cpp logs while loading, as "<kind>:<buffer>" (e.g. "KV:CPU", "compute:CPU")."""
    with _captured_log() as records, Tier(path, config) as tier:  # Tier defers Ctrl-C itself
        sizes = {"weights": int(lc.llama_model_size(tier._model))}
    for m in _BUFFER_LINE.finditer(b"".join(text for _, text in records)):
        key = f"{m[2].decode()}:{m[1].decode()}"
        sizes[key] = sizes.get(key, 0) + round(float(m[3]) * (1 << 20))
    return sizes


GGML_TYPES = {
    "f32": lc.GGML_TYPE_F32,
    "f16": lc.GGML_TYPE_F16,
    "q8_0": lc.GGML_TYPE_Q8_0,
    "q4_0": lc.GGML_TYPE_Q4_0,
    "q2_k": lc.GGML_TYPE_Q2_K,
    "mxfp4": lc.GGML_TYPE_MXFP4,
}
"""Tensor types a derived model may ask for, by ggml's names."""

FILE_TYPES = {
    "q8_0": lc.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_0": lc.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q2_k": lc.LLAMA_FTYPE_MOSTLY_Q2_K,
    "mxfp4_moe": lc.LLAMA_FTYPE_MOSTLY_MXFP4_MOE,
}
"""llama.cpp's quantization recipes: a default tensor type plus llama.cpp's per-tensor mix (Q2_K keeps
attn_v and the output in more bits; MXFP4_MOE puts MXFP4 on expert tensors only, Q8_0 elsewhere)."""


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    file_type: str | None,
    tensor_types: Mapping[str, str],
    output_type: str | None,
    embedding_type: str | None,
    prune_layers: Sequence[int],
    threads: int,
) -> tuple[int, str, str]:
    """Run llama_model_quantize on checked arguments (names from FILE_TYPES and GGML_TYPES; see
    `edge_spec.derive.quantize`). Returns its status code and the warnings and errors it logged."""
    _init_backend()
    params = lc.llama_model_quantize_default_params()
    params.nthread = threads
    params.allow_requantize = True
    params.only_copy = file_type is None
    if file_type is not None:
        params.ftype = FILE_TYPES[file_type]
    if output_type is not None:
        params.output_tensor_type = GGML_TYPES[output_type]
    if embedding_type is not None:
        params.token_embedding_type = GGML_TYPES[embedding_type]
    # Both arrays end with a sentinel (pattern NULL / layer -1) and must outlive the call.
    overrides = (lc.llama_model_tensor_override * (len(tensor_types) + 1))()
    for slot, (pattern, type_name) in zip(overrides, tensor_types.items(), strict=False):
        slot.pattern, slot.type = pattern.encode(), GGML_TYPES[type_name]
    if tensor_types:
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(lc.llama_model_tensor_override))
    pruned = (ctypes.c_int32 * (len(prune_layers) + 1))(*sorted(prune_layers), -1)
    if prune_layers:
        params.prune_layers = ctypes.cast(pruned, ctypes.POINTER(ctypes.c_int32))

    with _captured_log() as records, _ctrl_c_deferred():  # llama.cpp cannot stop a quantization midway
        rc = lc.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))

    def logged(level: int) -> str:
        return b"".join(text for lv, text in records if lv == level).decode("utf-8", "replace")

    return rc, logged(_LOG_WARN), logged(_LOG_ERROR)
