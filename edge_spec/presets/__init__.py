"""Presets: TOML files in this package naming a model family's tiers (a Hub repo + file, or a carried model),
their quantization, the chat template source and recommended acceptance settings with where they came from.

They ship as package data, so they are found after a normal or an editable install alike.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from edge_spec.errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TIER_ROLES = ("draft", "qualifier", "target")
"""Tier names, bottom-up."""
RECOMMENDABLE = {"accept": str, "lookahead": str, "tau_q": float, "tau_t": float, "divergence": str}
"""`edge-spec run` options a preset may recommend, with their types."""
CHAT_TEMPLATE_SOURCES = ("gguf",)
"""Where the chat template comes from: "gguf" = the target file's own."""


@dataclass(frozen=True)
class PresetTier:
    """One tier: a Hub file (`repo` + `file`) or a carried model (`carried`)."""

    model: str  # a model reference: hf://REPO/FILE.gguf or a carried model's name
    quant: str


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    tiers: dict[str, PresetTier]  # role -> tier, bottom-up; always holds "target"
    chat_template: str = "gguf"
    recommended: dict[str, Any] = field(default_factory=dict)  # run option -> value
    source: str = ""  # where the recommendations come from


def _tier(where: str, raw: Any) -> PresetTier:
    if not isinstance(raw, dict) or set(raw) - {"repo", "file", "quant", "carried"}:
        raise ModelError(f"{where}: a tier holds repo + file + quant, or carried + quant")
    if "carried" in raw:
        model = str(raw["carried"])
    elif "repo" in raw and "file" in raw:
        model = f"hf://{raw['repo']}/{raw['file']}"
    else:
        raise ModelError(f"{where}: give repo and file, or carried")
    return PresetTier(model, str(raw.get("quant", "")))


def parse_preset(name: str, text: str) -> Preset:
    """A preset from TOML text; ModelError names what is wrong."""
    where = f"preset {name!r}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ModelError(f"{where}: invalid TOML: {e}") from e
    tiers_raw = data.get("tiers", {})
    unknown = set(tiers_raw) - set(TIER_ROLES)
    if unknown or "target" not in tiers_raw:
        raise ModelError(f"{where}: tiers must include target and may include {', '.join(TIER_ROLES[:2])}")
    if "qualifier" in tiers_raw and "draft" not in tiers_raw:
        raise ModelError(f"{where}: a qualifier needs a draft")
    tiers = {role: _tier(f"{where}, {role}", tiers_raw[role]) for role in TIER_ROLES if role in tiers_raw}
    rec = dict(data.get("recommended", {}))
    source = str(rec.pop("source", ""))
    for key, value in rec.items():
        kind = RECOMMENDABLE.get(key)
        if kind is None or not isinstance(value, (int, float) if kind is float else kind):
            known = ", ".join(RECOMMENDABLE)
            raise ModelError(f"{where}: cannot recommend {key} = {value!r}; known: {known}")
    template = data.get("chat_template", "gguf")
    if template not in CHAT_TEMPLATE_SOURCES:
        raise ModelError(f"{where}: chat_template must be one of {', '.join(CHAT_TEMPLATE_SOURCES)}")
    return Preset(name, str(data.get("description", "")), tiers, template, rec, source)


@cache
def presets() -> dict[str, Preset]:
    """Every shipped preset by name (the TOML file's stem)."""
    files = sorted(resources.files(__name__).iterdir(), key=lambda f: f.name)
    return {
        f.name.removesuffix(".toml"): parse_preset(f.name.removesuffix(".toml"), f.read_text("utf-8"))
        for f in files
        if f.name.endswith(".toml")
    }


def get_preset(name: str) -> Preset:
    """The preset `name`, or a ModelError listing the known ones."""
    known = presets()
    if name not in known:
        raise ModelError(f"unknown preset {name!r}; known: {', '.join(known)}")
    return known[name]
