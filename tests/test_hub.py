"""Hub references against a huggingface-hub cache built in tmp_path: offline mode, an unreachable endpoint
(a closed loopback port), quant selection and malformed references. No network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge_spec.errors import ModelError
from edge_spec.hub import pick_quant
from edge_spec.models import resolve

REPO = "SomeOrg/Some-Model-GGUF"
FILES = ["README.md", "some-model-Q4_K_M.gguf", "some-model-Q4_K.gguf", "some-model-Q8_0.gguf"]
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A huggingface-hub cache holding REPO's snapshot (refs/main -> snapshots/REVISION/FILES)."""
    cache = tmp_path / "hub"
    folder = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for name in FILES:
        (snapshot / name).write_bytes(b"GGUF" + name.encode())
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return snapshot


@pytest.fixture
def offline(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


@pytest.fixture
def unreachable(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """HF_ENDPOINT at a loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


@pytest.mark.parametrize("ref", [f"hf://{REPO}/some-model-Q8_0.gguf", f"{REPO}:q8_0", f"hf://{REPO}:Q8_0"])
def test_offline_returns_the_cached_file(offline: Path, ref: str) -> None:
    assert resolve(ref) == offline / "some-model-Q8_0.gguf"


def test_quant_prefers_the_exact_delimited_match(offline: Path) -> None:
    assert resolve(f"{REPO}:Q4_K").name == "some-model-Q4_K.gguf"
    assert resolve(f"{REPO}:Q4_K_M").name == "some-model-Q4_K_M.gguf"


def test_offline_missing_file_says_what_to_do(offline: Path) -> None:
    with pytest.raises(ModelError, match=r"not in the Hugging Face cache .* HF_HUB_OFFLINE is set: unset"):
        resolve(f"hf://{REPO}/other.gguf")
    with pytest.raises(ModelError, match="file list of Other/Repo is not in the Hugging Face cache"):
        resolve("Other/Repo:Q4_0")


def test_unreachable_hub_uses_the_cache(unreachable: str, hub_cache: Path) -> None:
    assert resolve(f"{REPO}:Q8_0") == hub_cache / "some-model-Q8_0.gguf"


@pytest.mark.parametrize("ref", [f"hf://{REPO}/missing.gguf", "Other/Repo:Q4_0"])
def test_unreachable_hub_fails_fast_with_one_clear_error(
    unreachable: str, ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed connect decides: huggingface-hub, which retries an unreachable endpoint for ~25 s, is
    never called."""
    import huggingface_hub

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("huggingface-hub was asked to reach an unreachable Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", never)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", never)
    with pytest.raises(ModelError, match=f"cannot reach the Hugging Face Hub at {unreachable}") as info:
        resolve(ref)
    assert "pass its local .gguf path" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "ref", ["hf://", "hf://OnlyOrg", "hf://Org/Repo", "hf://Org/Repo/file.bin", "hf://a b/c"]
)
def test_malformed_hub_reference(ref: str, offline: Path) -> None:
    with pytest.raises(ModelError, match=r"malformed model reference .* hf://ORG/REPO/FILE\.gguf"):
        resolve(ref)


@pytest.mark.parametrize(
    ("quant", "message"), [("IQ1_S", "no .gguf file matching 'IQ1_S'"), ("Q", "matches several files")]
)
def test_pick_quant_errors(quant: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        pick_quant(REPO, quant, FILES)


def test_local_path_wins_over_a_hub_looking_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Org").mkdir()
    (tmp_path / "Org" / "Repo:Q4").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert resolve("Org/Repo:Q4") == Path("Org/Repo:Q4")
