"""`edge-spec doctor`: goodput's rule read from measured costs, and the command on tiny generated models."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from children import one_cpu
from test_cli import EDGE_SPEC, assert_one_error_line

from edge_spec import doctor
from edge_spec.backend import TierConfig
from edge_spec.lookahead import PRIOR_ACCEPTANCE, CostModel

ONE_THREAD = TierConfig(n_ctx=512, n_threads=1)  # no spinning thread barrier on a busy machine


def _costs(verify: dict[int, float], per_token: float = 0.0) -> CostModel:
    return doctor._costs({n: [s, s] for n, s in verify.items()}, per_token)


def _brute_force(verify: dict[int, float], per_token: float, a: float) -> tuple[int, float]:
    """The best k over the measured lengths and its speed-up, by the formula itself."""
    alone = 1.0 / verify[1]
    rates = {
        n - 1: sum(a**i for i in range(n)) / ((n - 1) * per_token + verify[n])
        for n in verify
        if n - 1 <= doctor.MAX_BLOCK
    }
    k = max(rates, key=rates.__getitem__)
    return k, rates[k] / alone


def test_flat_verification_lets_a_free_perfect_draft_reach_its_longest_block() -> None:
    flat = {n: 0.01 for n in doctor.LENGTHS}
    k, speedup, can_pay = doctor.expectation(_costs(flat), 1.0)
    assert (k, can_pay) == (doctor.MAX_BLOCK, True)
    assert speedup == pytest.approx(doctor.MAX_BLOCK + 1)


def test_verification_dearer_than_decoding_alone_cannot_pay() -> None:
    dearer = {n: 0.01 * n**1.1 for n in doctor.LENGTHS}  # each token costs more in a batch than alone
    assert doctor.expectation(_costs(dearer), 1.0) == (0, 1.0, False)


def test_the_choice_is_the_best_measured_block_by_the_rate_formula() -> None:
    """This machine's curve shape (bench/README.md): 2 tokens 1.34x one, 4 tokens 1.92x, 8 tokens 5.4x."""
    curve = {1: 0.084, 2: 0.113, 3: 0.14, 4: 0.161, 5: 0.2, 8: 0.45, 16: 0.95, 32: 1.9}
    for per_token, a in [(0.0, 1.0), (0.0, 0.8), (0.01, 0.9), (0.03, 0.6)]:
        k, speedup, _ = doctor.expectation(_costs(curve, per_token), a)
        want_k, want_speedup = _brute_force(curve, per_token, a)
        assert (k, speedup) == (want_k, pytest.approx(want_speedup)), (per_token, a)
    assert doctor.expectation(_costs(curve, 0.08), 0.6)[0] == 0  # a draft as dear as the target never pays


@pytest.fixture(scope="module")
def diagnosis(tiny_target: Path, tiny_same: Path) -> doctor.Diagnosis:
    return doctor.diagnose(tiny_target, [("draft", tiny_same), ("qualifier", "ngram")], ONE_THREAD, repeats=2)


def test_diagnose_measures_every_length_and_tier(diagnosis: doctor.Diagnosis) -> None:
    assert list(diagnosis.verify_seconds) == [str(n) for n in doctor.LENGTHS]
    assert all(s > 0 for s in diagnosis.verify_seconds.values())
    assert diagnosis.context_tokens == doctor.PROMPT_TOKENS
    assert diagnosis.target["device"] == "CPU" or diagnosis.target["device"].startswith("GPU")
    assert any(d["kind"] == "cpu" for d in diagnosis.devices)
    same, ngram = diagnosis.outlooks
    assert (same.role, same.acceptance, same.acceptance_measured) == ("draft", 1.0, True)  # same weights
    assert same.seconds_per_token > 0 and same.cost_ratio > 0
    assert (ngram.name, ngram.seconds_per_token) == ("ngram", 0.0)
    assert ngram.acceptance_measured or ngram.acceptance == PRIOR_ACCEPTANCE


def test_the_verdict_states_goodputs_own_conclusions(diagnosis: doctor.Diagnosis) -> None:
    verify = {int(n): s for n, s in diagnosis.verify_seconds.items()}
    k, speedup, can_pay = doctor.expectation(_costs(verify), 1.0)
    assert (diagnosis.ceiling_k, diagnosis.ceiling_speedup) == (
        (k, pytest.approx(speedup)) if can_pay else (0, 1)
    )
    lines = diagnosis.verdict()
    assert len(lines) == 1 + len(diagnosis.outlooks)
    if diagnosis.ceiling_k:
        assert f"at most {diagnosis.ceiling_speedup:.2f}x" in lines[0]
    else:
        assert lines[0].startswith("no draft can pay on this machine")
    for outlook, line in zip(diagnosis.outlooks, lines[1:], strict=True):
        k, speedup, can_pay = doctor.expectation(
            _costs(verify, outlook.seconds_per_token), outlook.acceptance
        )
        assert (outlook.best_k, outlook.can_pay) == (k, can_pay)
        assert outlook.expected_speedup == pytest.approx(speedup)
        assert line.startswith(f"with {outlook.name} ")
        assert f"k={k} expecting" in line if k else "would not draft" in line
    text = doctor.report(diagnosis)
    assert "verification cost" in text and text.count("verdict: ") == len(lines)


def _doctor(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_SPEC_MODEL_DIR": "/nonexistent/edge-spec-models"}  # no download, ever
    return subprocess.run(
        [*EDGE_SPEC, "doctor", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        preexec_fn=one_cpu,
    )


def test_doctor_json(tiny_target: Path, tiny_noisy: Path) -> None:
    proc = _doctor("-m", tiny_target, "-md", tiny_noisy, "-c", 256, "--repeats", 2, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {
        "build",
        "devices",
        "target",
        "context_tokens",
        "verify_seconds",
        "ceiling_k",
        "ceiling_speedup",
        "ceiling_cost",
        "outlooks",
        "verdict",
    }
    assert out["build"]["llama_cpp_python"] and isinstance(out["build"]["gpu_offload"], bool)
    (noisy,) = out["outlooks"]
    assert noisy["acceptance_measured"] and 0.2 < noisy["acceptance"] < 0.95
    assert len(out["verdict"]) == 2


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-m", "/nonexistent/model.gguf"], ["model file not found"]),
        (["--repeats", "1"], ["--repeats"]),
        (["--ctx", "8"], ["--ctx"]),
        (["--cache-type", "q3"], ["--cache-type"]),
    ],
)
def test_bad_input_is_one_error_line(args: list[str], fragments: list[str]) -> None:
    assert_one_error_line(_doctor(*args), *fragments)


def test_an_incompatible_draft_is_one_error_line(tiny_target: Path, tiny_other_vocab: Path) -> None:
    assert_one_error_line(_doctor("-m", tiny_target, "-md", tiny_other_vocab), "different vocabularies")


def test_a_context_too_short_for_the_measurement_is_one_error_line(tiny_target: Path) -> None:
    assert_one_error_line(_doctor("-m", tiny_target, "-c", 40), "doctor needs a context")
