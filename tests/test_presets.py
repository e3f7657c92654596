"""Presets: the shipped TOML files parse, name real roles and carried models, and bad presets fail clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import edge_spec.models as models
from edge_spec.api import Pyramid
from edge_spec.cli import main
from edge_spec.errors import EdgeSpecError, ModelError
from edge_spec.presets import get_preset, parse_preset, presets

FAMILIES = ("llama3", "qwen2.5", "qwen2.5-coder", "qwen-coder-carried")


def test_shipped_presets() -> None:
    known = presets()
    assert set(FAMILIES) <= set(known)
    for preset in known.values():
        assert "target" in preset.tiers and preset.description and preset.source
        assert preset.chat_template == "gguf"
        assert preset.recommended["accept"] in ("exact", "fuzzy")
    llama = known["llama3"]
    assert list(llama.tiers) == ["draft", "qualifier", "target"]
    assert llama.recommended == {
        "accept": "fuzzy",
        "tau_q": 0.4,
        "tau_t": 0.5,
        "lookahead": "fixed:15,fixed:25",
    }
    assert "PyramidSD" in llama.source
    assert known["qwen2.5-coder"].tiers["target"].model.startswith("hf://")


def test_carried_preset_resolves_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(models, "fetch_carried", lambda name, quiet=False: tmp_path / f"{name}.gguf")
    assert models.resolve_preset("qwen-coder-carried") == {
        "draft": tmp_path / "qwen-0.5b.gguf",
        "target": tmp_path / "qwen-1.5b.gguf",
    }
    assert models.resolve("qwen-coder-carried") == tmp_path / "qwen-1.5b.gguf"


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown preset 'nope'; known: .*llama3") as info:
        get_preset("nope")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tiers = 3 [", "invalid TOML"),
        ('[tiers.draft]\ncarried = "x"', "tiers must include target"),
        ('[tiers.target]\ncarried = "x"\n[tiers.qualifier]\ncarried = "y"', "a qualifier needs a draft"),
        ('[tiers.target]\nrepo = "a/b"', "give repo and file, or carried"),
        ('[tiers.target]\ncarried = "x"\nsize = 3', "a tier holds"),
        ('[tiers.target]\ncarried = "x"\n[recommended]\ntemperature = 1.0', "cannot recommend temperature"),
        ('[tiers.target]\ncarried = "x"\n[recommended]\ntau_q = "high"', "cannot recommend tau_q"),
        ('chat_template = "chatml"\n[tiers.target]\ncarried = "x"', "chat_template must be one of gguf"),
    ],
)
def test_bad_presets(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_preset("bad", text)


# --- the CLI: run --preset, models ----------------------------------------------------------------


@pytest.fixture
def captured_open(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Pyramid.open replaced by a recorder that stops the run with a clean error (the references reach it
    unresolved: the command resolves them first, which would download)."""
    seen: dict[str, Any] = {}

    def fake_open(target: str, **kwargs: Any) -> None:
        seen.update(kwargs, target=target)
        raise EdgeSpecError("stopped after recording")

    monkeypatch.setattr(Pyramid, "open", fake_open)
    monkeypatch.setattr(models, "resolve", lambda ref: ref)
    return seen


def test_run_preset_fills_tiers_and_settings_and_options_override(captured_open: dict[str, Any]) -> None:
    args = ["run", "hi", "--preset", "llama3", "--tau-t", "0.3", "--draft", "ngram"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "stopped after recording" in result.output
    assert captured_open["target"].endswith("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf")
    assert captured_open["draft"] == ["ngram"]  # explicit options win
    assert captured_open["qualifier"].endswith("Llama-3.2-3B-Instruct-Q4_K_M.gguf")
    opts = captured_open["options"]
    assert (opts.accept, opts.tau_q, opts.tau_t, opts.lookahead) == ("fuzzy", 0.4, 0.3, "fixed:15,fixed:25")


def test_run_unknown_preset_is_one_line(captured_open: dict[str, Any]) -> None:
    result = CliRunner().invoke(main, ["run", "hi", "--preset", "nope"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("edge-spec: error: unknown preset 'nope'; known: ")
    assert len(result.output.strip().splitlines()) == 1 and not captured_open


def test_models_lists_presets_and_carried_models() -> None:
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    for name in (*FAMILIES, *models.CARRIED_MODELS):
        assert name in result.output
