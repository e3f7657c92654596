"""The benchmark prompt suites shipped as package data."""

from __future__ import annotations

import pytest

from edge_spec.errors import ConfigError
from edge_spec.suites import SUITES, load_suite


@pytest.mark.parametrize("name", SUITES)
def test_suite_loads_with_unique_ids(name: str) -> None:
    prompts = load_suite(name)
    assert len(prompts) >= 20
    assert len({p.id for p in prompts}) == len(prompts)
    assert all(p.suite == name and p.text.strip() for p in prompts)


def test_code_suite_is_all_of_humaneval() -> None:
    prompts = load_suite("code")
    assert len(prompts) == 164
    assert [p.id for p in prompts[:2]] == ["HumanEval/0", "HumanEval/1"]
    for p in prompts:
        assert p.raw and "\ndef " in p.stop
        assert p.entry_point and f"def {p.entry_point}(" in p.text
        assert p.test and "def check(candidate)" in p.test


def test_chat_suite_is_mtbench_first_turns() -> None:
    prompts = load_suite("chat")
    assert len(prompts) == 80
    assert prompts[0].id == "mtbench/81" and prompts[-1].id == "mtbench/160"
    assert not any(p.raw or p.stop or p.test for p in prompts)


def test_rewrite_prompts_are_chat_messages_of_moderate_length() -> None:
    prompts = load_suite("rewrite")
    assert len(prompts) >= 24
    assert [p.id for p in prompts[:2]] == ["rewrite/01", "rewrite/02"]
    for p in prompts:
        assert not p.raw and p.entry_point is None
        assert 300 <= len(p.text) <= 1200, p.id


def test_limit_takes_the_first_prompts() -> None:
    assert load_suite("chat", limit=3) == load_suite("chat")[:3]
    assert load_suite("code", limit=0) == []
    with pytest.raises(ConfigError, match=">= 0"):
        load_suite("code", limit=-1)


def test_unknown_suite_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="code, chat, rewrite"):
        load_suite("math")
