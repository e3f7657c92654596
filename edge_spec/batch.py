"""Offline batch generation: a JSONL file of prompts in, one JSONL record per prompt out, resumable.

Input, one JSON object per line (blank lines are skipped, unknown fields ignored):
    {"id": "q1", "prompt": "Why is the sky blue?", "max_tokens": 64}
    {"id": 2, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "seed": 1}
`id` (a string or an integer, unique in the file) names the output record; `prompt` (a string) or
`messages` (a chat message list); optional per-line settings override the command's options.

Output, one record per input line, in input order:
    {"id": "q1", "text": "...", "token_ids": [...], "stats": {...}, "error": null}
A line that cannot be generated (invalid JSON, no id, a bad setting, a prompt longer than the context)
gets a record with `text`, `token_ids` and `stats` null and the reason in `error`; a line without a
usable id gets `"id": null` and its line number in `line`. Duplicate ids are a usage error: ids name the
output records, so the run stops before anything is generated.

Resuming: each record is appended with one write, then flushed to disk (fsync), so a run killed at any
moment (SIGKILL included) leaves complete records and at most one torn last line. Rerun with the same
arguments: the torn line is cut off, lines that have a record (success or error) are skipped, the rest
are generated. Delete error records from OUT to have those lines generated again; OUT is put back in input
order at the end of a run when needed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from edge_spec.api import Pyramid, Result
from edge_spec.chat import as_messages
from edge_spec.errors import ConfigError, EdgeSpecError

try:
    import fcntl
except ImportError:  # Windows: no advisory lock, so never point two runs at one output file there
    fcntl = None  # type: ignore[assignment]

_NUMBER = ((int, float), "a number")
_INTEGER = ((int,), "an integer")
SETTING_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "max_tokens": _INTEGER,
    "temperature": _NUMBER,
    "top_k": _INTEGER,
    "top_p": _NUMBER,
    "min_p": _NUMBER,
    "seed": ((int, type(None)), "an integer or null"),
    "stop": ((str, list), "a string or a list of strings"),
    "raw": ((bool,), "true or false"),
}
"""The JSON types of the per-line settings (GENERATE_OPTIONS); their values are checked by the generation."""
_RECORD_START = b'{"id": '
"""How every record this module writes begins: a last line without a newline that begins so is torn."""


@dataclass
class Job:
    """One input line: what to generate, or why it cannot be."""

    line: int  # 1-based line number in the input file
    id: str | int | None  # None when the line has no usable id
    prompt: str | list[Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def key(self) -> str:
        """The job's identity in the output file."""
        return _key(self.id, self.line)


def _key(id_: object, line: object) -> str:
    return f"line {line}" if id_ is None else json.dumps(id_)


def read_jobs(path: Path) -> list[Job]:
    """Parse and check every input line up front. Raises EdgeSpecError for a missing file or duplicate
    ids; any other problem stays with its line as `Job.error`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgeSpecError(f"input file not found: {path}") from None
    except OSError as e:
        raise EdgeSpecError(f"cannot read the input file {path}: {e.strerror}") from None
    jobs = [_parse(n, raw) for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    first: dict[str, int] = {}
    duplicates = []
    for job in jobs:
        if job.id is not None and first.setdefault(job.key, job.line) != job.line:
            duplicates.append(f"id {job.key} on lines {first[job.key]} and {job.line}")
    if duplicates:
        more = f" (and {len(duplicates) - 3} more)" if len(duplicates) > 3 else ""
        raise ConfigError(f"duplicate {'; '.join(duplicates[:3])}{more}: every id must be unique")
    return jobs


def _parse(line: int, raw: bytes) -> Job:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return Job(line, None, error=f"not valid JSON ({e})")
    if not isinstance(obj, dict):
        return Job(line, None, error=f"expected a JSON object, got {type(obj).__name__}")
    id_ = obj.get("id")
    if id_ is None or isinstance(id_, bool) or not isinstance(id_, (str, int)):
        what = "missing id" if id_ is None else f"the id must be a string or an integer, got {id_!r}"
        return Job(line, None, error=what)
    job = Job(line, id_)
    try:
        job.prompt = _prompt(obj)
        job.settings = _settings(obj)
    except ConfigError as e:
        job.error = str(e)
    return job


def _prompt(obj: Mapping[str, Any]) -> str | list[Any]:
    if ("prompt" in obj) == ("messages" in obj):
        raise ConfigError("give either 'prompt' (a string) or 'messages' (a list of messages)")
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str):
            raise ConfigError("'prompt' must be a string")
        return obj["prompt"]
    if not isinstance(obj["messages"], list):
        raise ConfigError("'messages' must be a list of {'role', 'content'} objects")
    as_messages(obj["messages"])
    return obj["messages"]


def _settings(obj: Mapping[str, Any]) -> dict[str, Any]:
    settings = {k: obj[k] for k in SETTING_TYPES if k in obj}
    for name, value in settings.items():
        types, what = SETTING_TYPES[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ConfigError(f"'{name}' must be {what}, got {value!r}")
    stop = settings.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise ConfigError(f"'stop' must be a string or a list of strings, got {stop!r}")
    return settings


class Output:
    """The output file: complete JSON records, one per line, each appended with one write + fsync.

    Opening it reads which jobs are done and takes an exclusive lock (POSIX) so that two runs cannot
    append to the same file. Nothing in the file changes until the first record is appended: only then is
    a torn last line (a run killed mid-write) cut off. A file that is not a batch output (a line that is
    no record, or a last line that is not the start of one) is refused, never truncated. A file that
    opening created is removed again when the run stops with an error before writing to it.
    """

    def __init__(self, path: Path, input_path: Path | None = None) -> None:
        self.path = path
        if input_path is not None and path.exists() and input_path.exists() and path.samefile(input_path):
            raise ConfigError(f"the output file is the input file: {path}")
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        try:
            try:
                self._fd, self._created = os.open(path, flags | os.O_EXCL, 0o644), True
            except FileExistsError:
                self._fd, self._created = os.open(path, flags, 0o644), False
        except OSError as e:
            raise EdgeSpecError(f"cannot write the output file {path}: {e.strerror}") from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise EdgeSpecError(f"another run is writing {path}") from None
            self.records, self._torn_at = self._read()
        except BaseException:
            self.close(failed=True)
            raise

    def _read(self) -> tuple[list[dict[str, Any]], int | None]:
        """The complete records already in the file, and where a torn last line begins (None: none)."""
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        records = []
        lines = data[:end].splitlines()
        for n, raw in enumerate(lines, 1):
            record = _record_in(raw)
            if record is None:
                raise EdgeSpecError(
                    f"{self.path} line {n} is not a batch output record; fix it or write to a new file"
                )
            records.append(record)
        tail = data[end:]
        if tail and not _torn(tail):
            raise EdgeSpecError(
                f"{self.path} line {len(lines) + 1} (the last, without a newline) is not a batch output "
                "record; fix it or write to a new file"
            )
        return records, end if tail else None

    def done(self) -> dict[str, bool]:
        """Key -> whether that record is an error, for every record in the file."""
        return {_key(r["id"], r.get("line")): r["error"] is not None for r in self.records}

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one complete line and flush it to disk."""
        if self._torn_at is not None:
            os.ftruncate(self._fd, self._torn_at)
            self._torn_at = None
        data = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode())
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)
        self.records.append(record)

    def put_in_order(self, keys: list[str]) -> None:
        """Rewrite the file with records in the order of `keys` (records of other keys last, as they
        were), atomically: a copy is written, flushed and renamed over the file. No-op when in order."""
        rank = {k: i for i, k in enumerate(keys)}
        order = sorted(
            range(len(self.records)),
            key=lambda i: (rank.get(_key(self.records[i]["id"], self.records[i].get("line")), len(rank)), i),
        )
        if order == sorted(order):
            return
        tmp = self.path.with_name(self.path.name + ".reorder")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(self.records[i], ensure_ascii=False) + "\n" for i in order)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.records = [self.records[i] for i in order]

    def close(self, failed: bool = False) -> None:
        """Release the file; after a `failed` run, remove it if opening created it and it is still empty."""
        if failed and self._created and os.fstat(self._fd).st_size == 0:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=exc_type is not None)


def _record_in(line: bytes) -> dict[str, Any] | None:
    """The output record `line` holds, or None when it holds none."""
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "id" in record and "error" in record else None


def _torn(tail: bytes) -> bool:
    """Whether `tail`, a last line without a newline, is a record cut short by a killed run: it begins as
    every record does and is either no complete JSON value or a whole record."""
    if not (tail.startswith(_RECORD_START) or _RECORD_START.startswith(tail)):
        return False
    try:
        json.loads(tail)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return True
    return _record_in(tail) is not None


PARALLEL_CPU = 4
"""Sequences a batch decodes together on a CPU by default: on 2-4 cores a decode of 4 tokens costs
about 2.3x one (bench/README.md), 8 tokens more than 6x."""
PARALLEL_GPU = 16
"""Sequences a batch decodes together on a GPU by default (a decode of 16 tokens costs little more than
one there)."""


def default_parallel(jobs: int, gpu: bool) -> int:
    """batch's --parallel when not given: PARALLEL_GPU or PARALLEL_CPU, at most one per line."""
    return max(1, min(PARALLEL_GPU if gpu else PARALLEL_CPU, jobs))


@dataclass
class Report:
    """What a batch run did."""

    total: int  # input lines (blank ones aside)
    resumed: int  # lines that already had a record in the output file
    failed: int  # error records in the output for the input's lines, resumed ones included
    tokens: int = 0  # tokens generated by this run
    seconds: float = 0.0  # wall time of this run's generations

    def line(self) -> str:
        rate = f", {self.tokens / self.seconds:.1f} tok/s" if self.seconds > 0 else ""
        parts = [f"{self.total} lines", f"{self.total - self.failed} ok"]
        if self.failed:
            parts.append(f"{self.failed} failed (see their 'error' field)")
        if self.resumed:
            parts.append(f"{self.resumed} already done")
        return ", ".join(parts) + f"; {self.tokens} tokens generated{rate}"


def run(
    jobs: list[Job],
    out: Output,
    load: Callable[[], Pyramid],
    defaults: Mapping[str, Any],
    progress: bool = True,
) -> Report:
    """Generate every job that has no record in `out` yet, `Pyramid.parallel` at a time, appending one
    record each as it finishes (in input order when one at a time); the file is put back in input order
    at the end. `load` is called once, and only when something is left to generate; `defaults` are the
    options of `Pyramid.generate` that a line's own settings override. A failing line never stops the
    run."""
    done = out.done()
    todo = [job for job in jobs if job.key not in done]
    report = Report(len(jobs), len(jobs) - len(todo), sum(done.get(job.key, False) for job in jobs))
    pyr = load() if any(job.error is None for job in todo) else None
    bar = tqdm(
        total=len(jobs),
        initial=report.resumed,
        unit="line",
        file=sys.stderr,
        disable=not progress or not todo,
        mininterval=0.5,
    )
    t0 = time.perf_counter()

    def write(job: Job, outcome: Result | Exception | None) -> None:
        record = _record(job, outcome)
        out.append(record)
        report.failed += record["error"] is not None
        report.tokens += len(record["token_ids"] or ())
        report.seconds = time.perf_counter() - t0
        failed = f", {report.failed} failed" if report.failed else ""
        bar.set_postfix_str(f"{report.tokens / max(report.seconds, 1e-9):.1f} tok/s{failed}", refresh=False)
        bar.update()

    def work() -> Iterator[tuple[Job, Any, dict[str, Any]]]:
        """The jobs to generate, in input order; a job that cannot be generated gets its record when it is
        reached (so a run decoding one line at a time writes every record in input order)."""
        for job in todo:
            if job.error is not None:
                write(job, None)
            else:
                yield job, job.prompt, {**defaults, **job.settings}

    try:
        if pyr is None:
            for _ in work():
                pass
        else:
            for job, outcome in pyr.generate_each(work()):
                write(job, outcome)
    finally:
        bar.close()
        if pyr is not None:
            pyr.close()
    out.put_in_order([job.key for job in jobs])
    return report


def _record(job: Job, outcome: Result | Exception | None) -> dict[str, Any]:
    """The output record of one job: its Result, or the error of the job or of its generation."""
    if isinstance(outcome, Result):
        record = {"id": job.id, "text": outcome.text, "token_ids": outcome.token_ids}
        return {**record, "stats": outcome.stats.summary(), "error": None}
    if isinstance(outcome, EdgeSpecError):
        error = str(outcome)
    elif outcome is not None:  # one failing line never stops the run: its record says what went wrong
        error = f"{type(outcome).__name__}: {outcome}"
    else:
        error = job.error
    record = {"id": job.id, "text": None, "token_ids": None, "stats": None, "error": error}
    return record if job.id is not None else {**record, "line": job.line}
