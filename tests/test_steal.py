"""CPU steal from /proc/stat: parsing, the share between readings, and where it is unknown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge_spec import steal


def test_reads_steal_and_total_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 20 800 3 0 2 70 0 0\ncpu0 50 2 10 400 1 0 1 35 0 0\n")
    monkeypatch.setattr(steal, "PROC_STAT", stat)
    assert steal.cpu_times() == (70, 1000)


@pytest.mark.parametrize("text", ["", "intr 1 2 3\n", "cpu 1 2 3\n"])
def test_unknown_without_a_steal_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    stat = tmp_path / "stat"
    stat.write_text(text)
    monkeypatch.setattr(steal, "PROC_STAT", stat)
    assert steal.cpu_times() is None
    monkeypatch.setattr(steal, "PROC_STAT", tmp_path / "missing")
    assert steal.cpu_times() is None


def test_share_between_readings() -> None:
    assert steal.steal_share((10, 1000), (40, 1100)) == pytest.approx(0.3)
    assert steal.steal_share(None, (40, 1100)) is None
    assert steal.steal_share((10, 1000), (10, 1000)) is None  # no time passed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_this_machine_reports_a_share() -> None:
    before = steal.cpu_times()
    sum(range(2_000_000))  # let some ticks pass
    share = steal.steal_share(before, steal.cpu_times())
    assert share is None or 0.0 <= share <= 1.0
