"""`edge-spec batch` on tiny generated models: end to end, resumed after SIGKILL at many moments, bad
input lines, and usage errors that stop before any model loads.

Children are pinned to one CPU (see test_cli.py) and run with exact flags (no flash attention, f32 cache),
so greedy output is the same in every process whatever lines it resumed from.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from children import one_cpu

from edge_spec.api import GENERATE_OPTIONS, LoadOptions, Pyramid
from edge_spec.batch import SETTING_TYPES, Output, read_jobs
from edge_spec.errors import ConfigError

_SCRIPT = Path(sys.executable).with_name("edge-spec")
EDGE_SPEC = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from edge_spec.cli import main; main()"]
)
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "batch_generate.py"
EXACT = ["--no-flash-attn", "--cache-type", "f32"]
N_LINES = 40


def _input_lines() -> list[dict]:
    """40 prompts: int and string ids, prompts and message lists, per-line max_tokens (~3 s of work)."""
    lines: list[dict] = []
    for i in range(N_LINES):
        text = f"the cat number {i} sat on the"
        line: dict = {"id": i if i % 3 else f"q{i}", "max_tokens": 200 + (i * 37) % 100}
        if i % 4 == 1:
            line["messages"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
        else:
            line["prompt"] = text
        lines.append(line)
    return lines


def _write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _records(path: Path) -> list[dict]:
    data = path.read_text()
    assert data == "" or data.endswith("\n"), "torn last line"
    return [json.loads(line) for line in data.splitlines()]


def _essence(records: list[dict]) -> list[tuple]:
    """What must not depend on how the run was split: ids, texts, tokens, errors (not timings)."""
    return [(r["id"], r["text"], r["token_ids"], r["error"]) for r in records]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An empty model cache, so no test can start a download."""
    return {**os.environ, "EDGE_SPEC_MODEL_DIR": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def args(tiny_target: Path) -> list[str]:
    return ["--target", str(tiny_target), *EXACT, "--ctx", "512", "--max-tokens", "150"]


def _batch(env: dict[str, str], *argv: object, script: bool = False) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(SCRIPT)] if script else [*EDGE_SPEC, "batch"]
    return subprocess.Popen(
        [*cmd, *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=one_cpu,
    )


def batch(env: dict[str, str], *argv: object, script: bool = False) -> subprocess.CompletedProcess[str]:
    proc = _batch(env, *argv, script=script)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_jsonl(tmp_path_factory.mktemp("in") / "in.jsonl", _input_lines())


@pytest.fixture(scope="module")
def clean(
    env: dict[str, str], args: list[str], inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The output of one uninterrupted run."""
    out = tmp_path_factory.mktemp("clean") / "out.jsonl"
    proc = batch(env, inputs, out, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines()[-1].startswith(f"edge-spec: {N_LINES} lines, {N_LINES} ok; ")
    return out


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-spec: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# ---- end to end ------------------------------------------------------------------------------------------


def test_one_record_per_line_in_input_order(clean: Path, tiny_target: Path) -> None:
    lines = _input_lines()
    records = _records(clean)
    assert [r["id"] for r in records] == [line["id"] for line in lines]
    for line, record in zip(lines, records, strict=True):
        assert set(record) == {"id", "text", "token_ids", "stats", "error"}
        assert record["error"] is None
        assert record["stats"]["generated_tokens"] == len(record["token_ids"]) == line["max_tokens"]
        assert record["text"]
    # The same answers as the Python API gives, with the same options and per-line settings.
    opts = LoadOptions(ctx=512, cache_type="f32", flash_attn=False, threads=1)
    with Pyramid.open(tiny_target, options=opts) as pyr:
        for i in (0, 1, 5):
            line = lines[i]
            out = pyr.generate(line.get("prompt") or line["messages"], max_tokens=line["max_tokens"])
            assert (out.text, out.token_ids) == (records[i]["text"], records[i]["token_ids"])


def test_rerun_of_a_finished_output_loads_nothing(
    env: dict[str, str], clean: Path, inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(clean.read_bytes())
    proc = batch(env, inputs, out, "--target", tmp_path / "missing.gguf")  # never loaded: nothing left to do
    assert proc.returncode == 0, proc.stderr
    assert f"{N_LINES} already done; 0 tokens generated" in proc.stderr
    assert out.read_bytes() == clean.read_bytes()


def test_script_is_the_same_command(
    env: dict[str, str], args: list[str], clean: Path, tmp_path: Path
) -> None:
    small = _write_jsonl(tmp_path / "in.jsonl", _input_lines()[:3])
    out = tmp_path / "out.jsonl"
    proc = batch(env, small, out, *args, script=True)
    assert proc.returncode == 0, proc.stderr
    assert _essence(_records(out)) == _essence(_records(clean))[:3]


def test_per_line_settings_override_the_options(
    env: dict[str, str], args: list[str], clean: Path, tmp_path: Path
) -> None:
    first = _records(clean)[0]
    stop = first["text"][10:14]
    lines = [
        {"id": "short", "prompt": "the cat number 0 sat on the", "max_tokens": 7},
        {"id": "stop", "prompt": "the cat number 0 sat on the", "stop": stop},
        {"id": "stops", "prompt": "the cat number 0 sat on the", "stop": [stop, "zzz"]},
        {
            "id": "sampled",
            "prompt": "the cat",
            "temperature": 1.5,
            "top_k": 40,
            "top_p": 0.9,
            "min_p": 0.01,
            "seed": 3,
        },
        {"id": "raw", "prompt": "the cat", "raw": True, "max_tokens": 5, "note": "extra fields are ignored"},
    ]
    out = tmp_path / "out.jsonl"
    proc = batch(env, _write_jsonl(tmp_path / "in.jsonl", lines), out, *args)
    assert proc.returncode == 0, proc.stderr
    short, stopped, stopped2, sampled, raw = _records(out)
    assert short["token_ids"] == first["token_ids"][:7]
    assert stopped["text"] == stopped2["text"] == first["text"][: first["text"].index(stop)]
    assert stopped["stats"]["finish_reason"] == "stop"
    assert sampled["stats"]["generated_tokens"] == 150  # the command's --max-tokens
    assert raw["stats"]["prompt_tokens"] == 3  # BOS "▁the" "▁cat": no chat template


# ---- resuming --------------------------------------------------------------------------------------------


KILL_POINTS: tuple[str | int, ...] = ("start-up", "model load", 1, 2, "start-up", 3, "model load", 1)
"""When each run of the SIGKILL test is killed: at once, once the model file is mapped, or once the run has
appended that many lines."""


def _lines(out: Path) -> int:
    return out.read_bytes().count(b"\n") if out.exists() else 0


def _wait_for(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    """Poll for a sign of progress (`ready`) until it shows or the process ends (60 s at most)."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("parallel", [1, 3])
def test_sigkill_at_many_moments_then_resume(
    env: dict[str, str],
    args: list[str],
    clean: Path,
    inputs: Path,
    tmp_path: Path,
    tiny_target: Path,
    parallel: int,
) -> None:
    """Killed at any moment, a run leaves complete records, each line at most once (in input order when
    decoding one line at a time; lines decoded together finish in any order); the same command then
    completes the file, in input order, equal to an uninterrupted run's."""
    out = tmp_path / "out.jsonl"
    ids = [line["id"] for line in _input_lines()]
    maps_model = tiny_target.resolve().name
    for point in KILL_POINTS:
        before = _lines(out)
        proc = _batch(env, inputs, out, *args, "--parallel", parallel)
        if point == "model load":
            _wait_for(proc, lambda maps=Path(f"/proc/{proc.pid}/maps"): maps_model in maps.read_text())
        elif isinstance(point, int):
            _wait_for(proc, lambda goal=before + point: _lines(out) >= goal)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        done = [r["id"] for r in _records(out)] if out.exists() else []
        assert len(set(map(str, done))) == len(done) and set(done) <= set(ids)  # complete, no duplicates
        if parallel == 1:
            assert done == ids[: len(done)]  # in input order
        if point == "start-up":
            assert len(done) == before
        elif isinstance(point, int):
            assert before + point <= len(done) < N_LINES  # killed in the middle of the run
    proc = _batch(env, inputs, out, *args, "--parallel", parallel)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "already done" in err
    assert _essence(_records(out)) == _essence(_records(clean))


def _resume_to_clean(
    env: dict[str, str], args: list[str], clean: Path, inputs: Path, out: Path
) -> subprocess.CompletedProcess[str]:
    """Run the batch again on a partial `out`: it succeeds and `out` then equals an uninterrupted run's."""
    proc = batch(env, inputs, out, *args)
    assert proc.returncode == 0, proc.stderr
    assert _essence(_records(out)) == _essence(_records(clean))
    return proc


def test_ctrl_c_exits_130_and_resumes(
    env: dict[str, str], args: list[str], clean: Path, inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    proc = _batch(env, inputs, out, *args)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not (out.exists() and out.stat().st_size):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "edge-spec: interrupted; run the same command again to resume"
    assert 0 < len(_records(out)) < N_LINES
    _resume_to_clean(env, args, clean, inputs, out)


def test_a_torn_last_line_is_cut_and_redone(
    env: dict[str, str], args: list[str], clean: Path, inputs: Path, tmp_path: Path
) -> None:
    data = clean.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    out = tmp_path / "out.jsonl"
    out.write_bytes(data[: cut + 25])  # the middle record, then the start of the next one
    _resume_to_clean(env, args, clean, inputs, out)


def test_deleted_records_are_redone_in_place(
    env: dict[str, str], args: list[str], clean: Path, inputs: Path, tmp_path: Path
) -> None:
    lines = clean.read_text().splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    out.write_text("".join(lines[:5] + lines[6:20] + lines[21:]))  # as when retrying failed lines
    proc = _resume_to_clean(env, args, clean, inputs, out)
    assert "38 already done" in proc.stderr


# ---- bad lines -------------------------------------------------------------------------------------------


BAD_LINES: list[tuple[object, str]] = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ({"prompt": "no id"}, "missing id"),
    ({"id": 1.5, "prompt": "x"}, "the id must be a string or an integer"),
    ({"id": True, "prompt": "x"}, "the id must be a string or an integer"),
    ({"id": "none"}, "give either 'prompt'"),
    ({"id": "both", "prompt": "x", "messages": []}, "give either 'prompt'"),
    ({"id": "prompt-type", "prompt": 5}, "'prompt' must be a string"),
    ({"id": "messages", "messages": [{"role": "user"}]}, "'role' and 'content'"),
    ({"id": "max-type", "prompt": "x", "max_tokens": "many"}, "'max_tokens' must be an integer"),
    ({"id": "raw-type", "prompt": "x", "raw": 1}, "'raw' must be true or false"),
    ({"id": "stop-type", "prompt": "x", "stop": ["a", 1]}, "'stop' must be a string or a list"),
    ({"id": "seed-type", "prompt": "x", "seed": True}, "'seed' must be an integer or null"),
    ({"id": "temperature", "prompt": "x", "temperature": -1}, "temperature (--temperature) must be"),
    ({"id": "max-0", "prompt": "x", "max_tokens": 0}, "max_tokens (--max-tokens) must be at least 1"),
    ({"id": "too-long", "prompt": "the cat " * 400}, "context holds 512"),
    ({"id": "raw-messages", "messages": [{"role": "user", "content": "x"}], "raw": True}, "raw prompt"),
]


def test_bad_lines_get_error_records_and_never_stop_the_run(
    env: dict[str, str], args: list[str], tmp_path: Path
) -> None:
    good = {"id": "good", "prompt": "the cat", "max_tokens": 4}
    lines = [good, *(line for line, _ in BAD_LINES), "", {**good, "id": "good2"}]
    src = _write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    proc = batch(env, src, out, *args)
    assert proc.returncode == 1, proc.stderr
    summary = (
        f"edge-spec: {len(BAD_LINES) + 2} lines, 2 ok, {len(BAD_LINES)} failed (see their 'error' field)"
    )
    assert proc.stderr.splitlines()[-1].startswith(summary)
    records = _records(out)
    assert len(records) == len(BAD_LINES) + 2  # the blank line is no record
    assert records[0]["error"] is None and records[-1]["error"] is None and records[-1]["id"] == "good2"
    for n, (record, (line, fragment)) in enumerate(zip(records[1:-1], BAD_LINES, strict=True), 2):
        assert fragment in record["error"], (line, record)
        assert (record["text"], record["token_ids"], record["stats"]) == (None, None, None)
        has_id = isinstance(line, dict) and isinstance(line.get("id"), (str, int)) and line["id"] is not True
        assert record["id"] == (line["id"] if has_id else None)
        assert record.get("line") == (None if has_id else n)
    before = out.read_bytes()
    again = batch(env, src, out, *args)  # failed lines are done too: nothing is retried
    assert again.returncode == 1
    assert out.read_bytes() == before


def test_duplicate_ids_stop_before_anything_runs(
    env: dict[str, str], args: list[str], tmp_path: Path
) -> None:
    lines = [
        {"id": 1, "prompt": "a"},
        {"id": "1", "prompt": "b"},
        {"id": 1, "prompt": "c"},
        {"id": "x", "prompt": "d"},
    ]
    lines.append({"id": "x", "prompt": "e"})
    out = tmp_path / "out.jsonl"
    proc = batch(env, _write_jsonl(tmp_path / "in.jsonl", lines), out, *args)
    assert_one_error_line(proc, "duplicate id 1 on lines 1 and 3", 'id "x" on lines 4 and 5', "unique")
    assert not out.exists()


# ---- usage errors: exit 2 before any model loads, nothing written is lost -----------------------------


def test_missing_input(env: dict[str, str], args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert_one_error_line(
        batch(env, tmp_path / "nope.jsonl", out, *args), "input file not found", "nope.jsonl"
    )
    assert not out.exists()


@pytest.mark.parametrize("where", ["directory", "missing-dir"])
def test_unwritable_output(env: dict[str, str], inputs: Path, tmp_path: Path, where: str) -> None:
    out = tmp_path if where == "directory" else tmp_path / "no" / "out.jsonl"
    proc = batch(env, inputs, out, "--target", tmp_path / "missing.gguf")  # the model is never looked at
    assert_one_error_line(proc, "cannot write the output file", str(out))


def test_output_is_the_input(env: dict[str, str], inputs: Path) -> None:
    before = inputs.read_bytes()
    assert_one_error_line(batch(env, inputs, inputs), "the output file is the input file")
    assert inputs.read_bytes() == before


def test_a_corrupt_output_line_is_not_overwritten(
    env: dict[str, str], args: list[str], clean: Path, inputs: Path, tmp_path: Path
) -> None:
    lines = clean.read_text().splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    out.write_text(
        "".join([*lines[:3], "garbage\n", *lines[3:6]]) + '{"id": 6, "te'
    )  # the torn tail stays too
    before = out.read_bytes()
    assert_one_error_line(batch(env, inputs, out, *args), "line 4 is not a batch output record")
    assert out.read_bytes() == before


def test_bad_options_and_models_keep_the_output(
    env: dict[str, str], args: list[str], clean: Path, inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    partial = b"".join(clean.read_bytes().splitlines(keepends=True)[:10])
    out.write_bytes(partial)
    assert_one_error_line(batch(env, inputs, out, *args, "--temperature", "-1"), "temperature")
    assert_one_error_line(batch(env, inputs, out, *args, "--accept", "exact,fuzzy"), "accept")
    assert_one_error_line(batch(env, inputs, out, "--target", tmp_path / "gone.gguf"), "model file not found")
    assert out.read_bytes() == partial


def test_one_run_per_output_file(env: dict[str, str], args: list[str], inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with open(out, "a") as held:  # as a run in progress holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        assert_one_error_line(batch(env, inputs, out, *args), "another run is writing")
    assert out.read_bytes() == b""


# ---- in process ------------------------------------------------------------------------------------------


def test_every_generation_option_is_a_line_setting() -> None:
    assert set(SETTING_TYPES) == set(GENERATE_OPTIONS)


def test_read_jobs_keys_and_blank_lines(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"id": 1, "prompt": "a"}\n\n  \r\n{"id": "1", "prompt": "b"}\r\n\xff\xfe\n')
    jobs = read_jobs(src)
    assert [(j.line, j.key, j.error is None) for j in jobs] == [
        (1, "1", True),
        (4, '"1"', True),
        (5, "line 5", False),
    ]
    assert "not valid JSON" in (jobs[2].error or "")
    src.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "a"}\n')
    with pytest.raises(ConfigError, match="duplicate id 1 on lines 1 and 2"):
        read_jobs(src)


def test_output_cuts_only_a_torn_tail(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    record = {"id": 1, "text": "a", "token_ids": [1], "stats": {}, "error": None}
    out.write_text(json.dumps(record) + "\n" + '{"id": 2, "te')
    with Output(out) as o:
        assert o.done() == {"1": False}
        o.append({**record, "id": 2, "error": "x"})
        assert o.done() == {"1": False, "2": True}
    assert _records(out) == [record, {**record, "id": 2, "error": "x"}]
