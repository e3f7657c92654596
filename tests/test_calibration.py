"""Goodput's measurements kept between processes: state round trips, the file's key, staleness, corrupt and
concurrent files, and a second pyramid (and a second `edge-spec run`) starting where the first ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_spec import calibration, lookahead
from edge_spec.api import LoadOptions, Pyramid
from edge_spec.calibration import CalibrationFile
from edge_spec.lookahead import Goodput, Measurements, RoundReport, parse_lookahead

OPTIONS = LoadOptions(ctx=256, threads=1, cache_type="f32", flash_attn=False)
PROMPT = "the quick brown fox"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The calibration cache switched on, in a folder of this test's own."""
    monkeypatch.setenv(calibration.ENV_SWITCH, "on")
    monkeypatch.setenv(calibration.ENV_DIR, str(tmp_path / "calibration"))
    return tmp_path / "calibration"


def rounds(policy: Goodput, n: int, seed: int = 0) -> list[int]:
    """Run n scripted rounds (acceptance 0.8, a costly verifier) and return the blocks asked for."""
    rng = np.random.default_rng(seed)
    ks = []
    for _ in range(n):
        k = policy.next_block(16)
        accepted = int(np.argmin(np.append(rng.random(k) < 0.8, False)))
        confidences = tuple(rng.random(k))
        policy.observe(
            RoundReport(k, k, accepted, 0.01 * k, 0.05 + 0.02 * k + 0.002 * rng.random(), confidences)
        )
        ks.append(k)
    return ks


def test_measurements_round_trip_through_json_gives_the_same_decisions() -> None:
    measured = Goodput()
    rounds(measured, 300)
    state = json.loads(json.dumps(measured.measurements.state()))
    restored = Measurements(16)
    restored.restore(state)
    assert restored.state() == measured.measurements.state()
    a, b = Goodput(measurements=measured.measurements), Goodput(measurements=restored)
    assert rounds(a, 200, seed=3) == rounds(b, 200, seed=3)
    assert a.summary() == b.summary()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("verify", "rounds"), -1),
        (("verify", "samples"), {"2": [[10**6, 0.1]]}),  # a round after the last one counted
        (("propose", "samples"), {"1": [[0, -0.5]]}),
        (("acceptance", "hits"), [1.0] * 3),  # not one count per position
        (("acceptance", "hits"), [5.0] * 16),  # more hits than trials
        (("cannot_pay",), [1, 0]),  # a gap shorter than the first one
        (("probing",), "x"),
        (("calibration",), None),
        (("catch_up", "samples"), {"5": [[0, -1.0]]}),
        (("catch_up",), None),
        (("lengths",), [1.0]),
        (("lengths",), [1.0, float("inf")]),
        (("realized", "drafting"), [1.0, -2.0, 1.0]),
        (("realized", "plain"), "x"),
        (("realized", "trial"), "yes"),
        (("realized",), {}),
    ],
)
def test_malformed_states_are_refused_and_change_nothing(path: tuple[str, ...], value: object) -> None:
    policy = Goodput()
    rounds(policy, 40)
    state = json.loads(json.dumps(policy.measurements.state()))
    node = state
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    target = Measurements(16)
    before = target.state()
    with pytest.raises((ValueError, KeyError, TypeError)):
        target.restore(state)
    assert target.state() == before


def test_a_file_restores_every_stage_and_only_for_its_key(tmp_path: Path) -> None:
    factories = [parse_lookahead("goodput"), parse_lookahead("fixed:3"), parse_lookahead("goodput")]
    stages = [m for f in factories for m in f.measured]
    for f in (factories[0], factories[2]):
        rounds(f(), 50)
    CalibrationFile({"models": ["a", "b"]}, tmp_path).save(stages)
    fresh = [
        m
        for f in (parse_lookahead("goodput"), parse_lookahead("fixed:3"), parse_lookahead("goodput"))
        for m in f.measured
    ]
    assert not CalibrationFile({"models": ["a", "c"]}, tmp_path).load(fresh)  # another key: another file
    assert fresh[0].costs.verify.rounds == 0
    assert CalibrationFile({"models": ["a", "b"]}, tmp_path).load(fresh)
    assert fresh[0].state() == stages[0].state() and fresh[2].state() == stages[2].state()
    assert not CalibrationFile({"models": ["a", "b"]}, tmp_path).load(fresh[:2])  # other stages: ignored


def test_stale_files_are_ignored_and_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = list(parse_lookahead("goodput").measured)
    old = CalibrationFile({"k": 1}, tmp_path)
    old.save(m)
    week = calibration.STALE_SECONDS + 60
    doc = json.loads(old.path.read_text())
    doc["saved"] -= week
    old.path.write_text(json.dumps(doc))
    os.utime(old.path, (doc["saved"], doc["saved"]))
    assert not old.load([Measurements(16)])
    CalibrationFile({"k": 2}, tmp_path).save(m)  # any save into the folder prunes it
    assert not old.path.exists()


@pytest.mark.parametrize(
    "text", ["{not json", '{"format": 1, "key": {"k": 1}, "saved": "x"}', "\x00\x01", ""]
)
def test_a_corrupt_file_is_ignored_with_one_line(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = CalibrationFile({"k": 1}, tmp_path)
    f.path.parent.mkdir(parents=True, exist_ok=True)
    f.path.write_text(text)
    m = Measurements(16)
    assert not f.load([m])
    assert m.costs.verify.rounds == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"ignoring the calibration file {f.path}" in err
    f.save([m])  # and the next save replaces it
    assert f.load([Measurements(16)])


def test_an_unwritable_folder_is_said_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    f = CalibrationFile({"k": 1}, blocker / "calibration")  # a folder under a file cannot be made
    for _ in range(3):
        f.save([Measurements(16)])
    err = capsys.readouterr().err
    assert err.count("cannot save calibration") == 1


def test_concurrent_writers_and_readers_never_see_a_torn_file(tmp_path: Path) -> None:
    policy = Goodput()
    rounds(policy, 100)
    stages = [policy.measurements]
    files = [CalibrationFile({"k": 1}, tmp_path) for _ in range(4)]
    files[0].save(stages)
    stop = threading.Event()
    failures: list[BaseException] = []

    def write(f: CalibrationFile) -> None:
        while not stop.is_set():
            f.save(stages)

    def read() -> None:
        for _ in range(300):
            m = Measurements(16)
            try:
                assert files[0].load([m]) and m.costs.verify.rounds == 100
            except BaseException as e:  # reported below, from the main thread
                failures.append(e)
                break
        stop.set()

    threads = [threading.Thread(target=write, args=(f,)) for f in files[1:]] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert [p.name for p in tmp_path.iterdir()] == [files[0].path.name]  # no temporary file left


def test_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not calibration.enabled(False)
    for off in ("off", "0", "no", "FALSE"):
        monkeypatch.setenv(calibration.ENV_SWITCH, off)
        assert not calibration.enabled(True)
    monkeypatch.setenv(calibration.ENV_SWITCH, "on")
    assert calibration.enabled(True)
    monkeypatch.delenv(calibration.ENV_SWITCH)
    assert calibration.enabled(True)  # on by default


# ---- pyramids and commands ---------------------------------------------------------------------------


def test_a_second_pyramid_starts_where_the_first_ended(
    cache: Path, tiny_target: Path, tiny_noisy: Path
) -> None:
    """No warm-up the second time: the measured costs and acceptance come from the file (a warm-up is
    the first 2 * len(WARMUP) rounds a Measurements counts), and each generation's are saved for the next."""
    with Pyramid.open(tiny_target, draft=tiny_noisy, options=OPTIONS) as p:
        first = p.generate(PROMPT, max_tokens=40).stats.stages[0].lookahead
    files = list(cache.glob("*.json"))
    assert len(files) == 1
    assert first["verify_cost"]["rounds"] == first["rounds"] > 2 * len(lookahead.WARMUP)
    assert set(lookahead.WARMUP) <= {int(k) for k in first["k_histogram"]}
    with Pyramid.open(tiny_target, draft=tiny_noisy, options=OPTIONS) as p:
        restored = p._measured[0]
        assert restored is not None and restored.costs.verify.rounds == first["rounds"]
        assert restored.acceptance.pooled == pytest.approx(first["acceptance_estimate"])
        second = p.generate(PROMPT, max_tokens=40).stats.stages[0].lookahead
    assert second["verify_cost"]["rounds"] == first["rounds"] + second["rounds"]
    saved = json.loads(files[0].read_text())
    assert saved["stages"][0]["verify"]["rounds"] == first["rounds"] + second["rounds"]


def test_the_key_follows_models_and_settings(
    cache: Path, tiny_target: Path, tiny_noisy: Path, tiny_same: Path
) -> None:
    """Other settings that change costs (threads, the draft, the stages) are another configuration."""
    for draft, options in (
        (tiny_noisy, OPTIONS),
        (tiny_noisy, LoadOptions(ctx=256, threads=2, cache_type="f32", flash_attn=False)),
        (tiny_same, OPTIONS),
        (
            tiny_noisy,
            LoadOptions(ctx=256, threads=1, cache_type="f32", flash_attn=False, lookahead="goodput:8"),
        ),
    ):
        with Pyramid.open(tiny_target, draft=draft, options=options) as p:
            p.generate(PROMPT, max_tokens=4)
    assert len(list(cache.glob("*.json"))) == 4


def test_off_by_option_or_without_goodput(cache: Path, tiny_target: Path, tiny_noisy: Path) -> None:
    with Pyramid.open(tiny_target, draft=tiny_noisy, options=OPTIONS, calibration_cache=False) as p:
        p.generate(PROMPT, max_tokens=8)
    with Pyramid.open(tiny_target, draft=tiny_noisy, options=OPTIONS, lookahead="fixed:3") as p:
        p.generate(PROMPT, max_tokens=8)
    with Pyramid.open(tiny_target, draft="none", options=OPTIONS) as p:
        p.generate(PROMPT, max_tokens=8)
    assert not cache.exists() or not list(cache.iterdir())


def test_a_second_run_command_starts_warm(cache: Path, tiny_target: Path, tiny_noisy: Path) -> None:
    """`edge-spec run` twice: the second run's goodput counts the first run's rounds; with
    --no-calibration-cache it starts from nothing."""
    command = [
        sys.executable,
        "-m",
        "edge_spec",
        "run",
        PROMPT,
        "--raw",
        "--json",
        "-n",
        "24",
        "-m",
        str(tiny_target),
    ]
    command += ["-md", str(tiny_noisy), "--ctx", "256", "--threads", "1"]

    def verify_rounds(*extra: str) -> tuple[int, int]:
        out = subprocess.run([*command, *extra], capture_output=True, text=True, check=True).stdout
        look = json.loads(out)["stats"]["stages"][0]["lookahead"]
        return look["verify_cost"]["rounds"], look["rounds"]

    total, own = verify_rounds()
    assert total == own
    total2, own2 = verify_rounds()
    assert total2 == total + own2
    total3, own3 = verify_rounds("--no-calibration-cache")
    assert total3 == own3


def test_candidate_drafts_keep_their_measurements_each(
    cache: Path, tiny_target: Path, tiny_noisy: Path
) -> None:
    with Pyramid.open(tiny_target, draft=[tiny_noisy, "ngram"], options=OPTIONS) as p:
        first = p.generate(PROMPT, max_tokens=40).stats.stages[0].lookahead["candidates"]
    with Pyramid.open(tiny_target, draft=[tiny_noisy, "ngram"], options=OPTIONS) as p:
        restored = [m.costs.verify.rounds for m in p._measured if m is not None]
    assert restored == [c["verify_cost"]["rounds"] for c in first] and min(restored) > 0
