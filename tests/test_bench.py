"""`edge-spec bench`: mode planning and summaries as pure functions, then the whole harness end to end on
tiny generated models (table, JSON document, plot) and its peer row with a stand-in binary."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from children import one_cpu
from test_cli import EDGE_SPEC

from edge_spec import bench
from edge_spec.bench import TARGET_ALONE, BenchConfig, agreement, plan_modes, summarize
from edge_spec.errors import ConfigError
from edge_spec.report import COLUMNS, markdown

PEER_FIXTURE = Path(__file__).parent / "data" / "speculative_simple.txt"


def test_two_tier_default_modes_per_draft_and_lookahead() -> None:
    modes = plan_modes(
        ["0.5b", "ngram"], None, BenchConfig(taus=(0.3, 0.5), lookaheads=("fixed:3", "goodput"))
    )
    names = [m.name for m in modes]
    assert names[0] == TARGET_ALONE
    assert "SD ngram goodput" in names and "FSD 0.5b tau=0.3 fixed:3" in names
    # lookaheads x (SD per draft + two FSD over the model draft), and the choice among both for goodput
    assert len(modes) == 1 + 2 * (2 + 2) + 1
    choose = modes[-1]
    assert (choose.name, choose.kind, choose.candidates) == (
        "SD choose 0.5b|ngram goodput",
        "choose",
        ("0.5b", "ngram"),
    )
    assert not any(m.kind == "fsd" and m.draft == "ngram" for m in modes)  # fuzzy over one-hot = exact
    fsd = next(m for m in modes if m.name == "FSD 0.5b tau=0.5 goodput")
    assert (
        fsd.stages[0].accept == "fuzzy" and fsd.stages[0].tau == 0.5 and fsd.stages[0].lookahead == "goodput"
    )
    assert not any(m.qualifier for m in modes)


def test_three_tier_modes_use_per_stage_lookahead_and_tau_q() -> None:
    cfg = BenchConfig(taus=(0.5,), tau_q=0.3, lookaheads=("fixed:6,fixed:4",))
    modes = {m.kind: m for m in plan_modes(["0.1b"], "0.5b", cfg)}
    assert set(modes) == {"target", "sd", "hsd", "psd-a", "psd-f"}
    hsd, psd_a, psd_f = modes["hsd"], modes["psd-a"], modes["psd-f"]
    assert hsd.qualifier and [s.lookahead for s in hsd.stages] == ["fixed:6", "fixed:4"]
    assert [s.accept for s in psd_a.stages] == ["exact", "fuzzy"]
    assert [s.tau for s in psd_f.stages] == [0.3, 0.5]
    sd = [m for m in plan_modes(["0.1b"], "0.5b", cfg) if m.kind == "sd"]
    assert [m.draft for m in sd] == ["0.1b", "0.5b"]  # the qualifier is also measured as a plain draft
    assert all(m.stages[0].lookahead == "fixed:4" for m in sd)  # 2 tiers take the target stage's policy


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        ({"suites": ("poetry",)}, "suites"),
        ({"kinds": ("medusa",)}, "mode kinds"),
        ({"lookaheads": ("fixed:0:1",)}, "lookahead"),
        ({"max_tokens": 0}, "at least 1"),
        ({"max_steal": 1.5}, "steal"),
        ({"retries": -1}, "retries"),
    ],
)
def test_bad_settings_are_config_errors(cfg: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        BenchConfig(**cfg)


def test_agreement_prefix_and_positions() -> None:
    assert agreement([1, 2, 3, 4], [1, 2, 3, 4]) == (1.0, 1.0)
    assert agreement([1, 9, 3, 4], [1, 2, 3, 4]) == (0.25, 0.75)
    assert agreement([1, 2], [1, 2, 3, 4]) == (0.5, 0.5)  # shorter output: missing tokens disagree


def _row(prompt: str, mode: str, kind: str, tps: float, accepted: int, proposed: int) -> dict:
    stages = (
        [] if kind == "target" else [{"accepted": accepted, "proposed": proposed, "rounds": 4, "skipped": 0}]
    )
    return {
        "prompt": prompt,
        "suite": "code",
        "mode": mode,
        "kind": kind,
        "tokens_per_second": tps,
        "prefill_seconds": 0.5,
        "decode_seconds": 2.0,
        "tier_seconds": {"t.gguf": 1.5, "d.gguf": 0.3},
        "stages": stages or [{"accepted": 0, "proposed": 0, "rounds": 8, "skipped": 8}],
        "prefix_agreement": 1.0,
        "token_agreement": 1.0,
        "greedy_path": None if kind == "target" else 1.0,
        "passed": prompt != "b",
        "steal": 0.25 if prompt == "b" else 0.0,
        "reruns": 1 if prompt == "b" else 0,
    }


def test_summary_ratios_are_per_prompt_and_counts_are_pooled() -> None:
    rows = [
        _row("a", TARGET_ALONE, "target", 10.0, 0, 0),
        _row("a", "SD", "sd", 15.0, 6, 8),
        _row("b", TARGET_ALONE, "target", 20.0, 0, 0),
        _row("b", "SD", "sd", 20.0, 2, 8),
        _row("c", TARGET_ALONE, "target", 10.0, 0, 0),
        _row("c", "SD", "sd", 12.0, 4, 8),
    ]
    sd = next(s for s in summarize(rows) if s["mode"] == "SD")
    assert sd["ratio"] == pytest.approx(1.2) and (sd["ratio_min"], sd["ratio_max"]) == (1.0, 1.5)
    assert sd["acceptance"] == [pytest.approx(12 / 24)]
    assert sd["mean_accepted_length"] == [pytest.approx(12 / 12)]  # accepted / rounds that proposed
    assert sd["tier_share"] == {"t.gguf": 0.75, "d.gguf": pytest.approx(0.15)}
    assert sd["python_overhead_share"] == pytest.approx(0.1)
    assert sd["pass_at_1"] == pytest.approx(2 / 3)
    assert sd["steal"] == 0.0 and sd["reruns"] == 1  # median steal over prompts, reruns summed
    table = markdown(summarize(rows)).splitlines()
    assert table[0] == "| " + " | ".join(COLUMNS) + " |"
    assert len(table) == 2 + 2  # header, rule, one row per mode (a single suite: no "all" row)
    assert "1.20 (1.00-1.50)" in table[3]


@pytest.mark.parametrize(
    ("steals", "max_steal", "kept", "attempts"),
    [
        ([0.02], 0.1, 0.02, 1),  # quiet: measured once
        ([0.5, 0.3, 0.05], 0.1, 0.05, 3),  # rerun until the steal is below the limit
        ([0.5, 0.2, 0.4, 0.3], 0.1, 0.2, 4),  # retries spent: the least stolen attempt is kept
        ([0.5], 1.0, 0.5, 1),  # limit 1: never rerun
    ],
)
def test_generations_are_rerun_while_the_cpu_is_stolen(
    monkeypatch: pytest.MonkeyPatch, steals: list[float], max_steal: float, kept: float, attempts: int
) -> None:
    # /proc/stat readings around each attempt: 100 ticks pass, steal * 100 of them stolen
    readings = iter([r for s in steals for r in ((0, 0), (round(s * 100), 100))])
    monkeypatch.setattr(bench, "cpu_times", lambda: next(readings))
    runs = iter(range(len(steals)))
    out = bench._least_stolen(lambda: {"run": next(runs)}, BenchConfig(max_steal=max_steal))
    assert out["steal"] == pytest.approx(kept) and out["attempts"] == attempts
    assert out["run"] == steals.index(kept)  # the kept attempt's own measurements
    assert next(runs, None) is None  # no attempt beyond the scripted ones


# ---- end to end on tiny models -------------------------------------------------------------------------


def _bench(*args: object, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGE_SPEC, "bench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=one_cpu,
    )


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """No llama-speculative-simple on PATH (unless a test adds one) and an empty model cache."""
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "llama-speculative-simple").exists()
    )
    return {**os.environ, "PATH": path, "EDGE_SPEC_MODEL_DIR": str(tmp_path_factory.mktemp("cache"))}


EXACT = ["--no-flash-attn", "--cache-type", "f32"]


@pytest.fixture(scope="module")
def three_tier(
    tmp_path_factory: pytest.TempPathFactory, bench_env, tiny_target, tiny_noisy, tiny_same
) -> dict:
    out = tmp_path_factory.mktemp("bench") / "run"
    # a fixed block, so every mode drafts (goodput may rightly skip drafting on tiny models) and the
    # lossless checks below compare real speculation with the target alone
    proc = _bench(
        "--target", tiny_target, "--qualifier", tiny_same, "--draft", tiny_noisy, "--draft", "ngram",
        "--limit", 2, "--max-tokens", 12, "--tau-t", 0.5, "--lookahead", "fixed:3", "--out", out, *EXACT,
        env=bench_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {"proc": proc, "json": out.with_suffix(".json"), "png": out.with_suffix(".png")}


def test_bench_prints_one_table_row_per_mode_and_suite(three_tier: dict) -> None:
    lines = three_tier["proc"].stdout.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    doc = json.loads(three_tier["json"].read_text())
    n_modes = len(doc["modes"])
    assert n_modes == 1 + 3 + 2 * 2 + 1  # alone; SD x (noisy, ngram, qualifier); HSD, PSD_A x 2; PSD_F noisy
    assert len(table) == 2 + n_modes * 4  # header, rule; code, chat, rewrite and all per mode
    assert lines[0].startswith("edge-spec bench, ") and "llama-cpp-python" in lines[0]
    assert "no llama-speculative-simple" in three_tier["proc"].stderr


def test_bench_json_document(three_tier: dict, tiny_target: Path) -> None:
    doc = json.loads(three_tier["json"].read_text())
    assert {"date", "machine", "models", "settings", "modes", "summary", "rows"} <= set(doc)
    assert {"cpu", "cores", "threads", "llama_cpp_python", "system_info"} <= set(doc["machine"])
    assert doc["models"]["target"]["path"] == str(tiny_target)
    assert len(doc["models"]["target"]["sha256"]) == 64 and len(doc["models"]) == 3  # ngram is no model
    assert doc["settings"]["limit"] == 2 and doc["settings"]["max_tokens"] == 12
    assert len(doc["rows"]) == len(doc["modes"]) * 2 * 3  # modes x prompts x suites
    row = next(r for r in doc["rows"] if r["mode"].startswith("HSD"))
    assert {"prompt", "suite", "text", "token_ids", "tokens_per_second", "prefill_seconds", "stages"} <= set(
        row
    )
    assert len(row["stages"]) == 2 and row["prefill_seconds"] > 0
    code = [r for r in doc["rows"] if r["suite"] == "code"]
    assert all(r["pass_status"] in ("passed", "failed", "timeout") for r in code)
    assert all(r["passed"] is None for r in doc["rows"] if r["suite"] != "code")


def test_lossless_modes_equal_the_target_alone_and_fuzzy_ones_are_scored(three_tier: dict) -> None:
    doc = json.loads(three_tier["json"].read_text())
    for s in doc["summary"]:
        if s["kind"] in ("sd", "hsd"):
            assert s["token_agreement"] == 1.0 and s["greedy_path"] == 1.0, s["mode"]
        if s["kind"] != "target":
            assert 0.0 <= s["greedy_path"] <= 1.0 and s["acceptance"][-1] is not None
            assert s["ratio"] > 0 and s["ratio_min"] <= s["ratio"] <= s["ratio_max"]


def test_bench_plot_is_a_png(three_tier: dict) -> None:
    pytest.importorskip("matplotlib")
    assert three_tier["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peer_row_from_a_binary_on_path(tmp_path: Path, bench_env, tiny_target, tiny_same) -> None:
    fake = tmp_path / "bin" / "llama-speculative-simple"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ncat '{PEER_FIXTURE}' >&2\n")
    fake.chmod(0o755)
    env = {**bench_env, "PATH": f"{fake.parent}{os.pathsep}{bench_env['PATH']}"}
    out = tmp_path / "peer"
    proc = _bench(
        "--target", tiny_target, "--draft", tiny_same, "--suite", "chat", "--limit", 1, "--max-tokens", 8,
        "--modes", "sd", "--out", out, "--no-progress", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    peer = [
        line for line in proc.stdout.splitlines() if "llama.cpp speculative-simple same draft-max=3" in line
    ]
    assert len(peer) == 1
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["settings"]["peer"] == str(fake)
    assert next(r for r in doc["rows"] if r["kind"] == "peer")["stages"][0]["proposed"] > 0


def test_prompt_longer_than_the_context_is_one_error_before_any_generation(bench_env, tiny_target) -> None:
    proc = _bench("--target", tiny_target, "--suite", "rewrite", "--limit", 1, "--ctx", 64, env=bench_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "rewrite/01" in proc.stderr and "--ctx" in proc.stderr


def test_bench_help_lists_its_options() -> None:
    proc = subprocess.run([*EDGE_SPEC, "bench", "--help"], capture_output=True, text=True, check=True)
    for option in ("--suite", "--limit", "--lookahead", "--tau-t", "--llama-cpp-bin", "--out"):
        assert option in proc.stdout
