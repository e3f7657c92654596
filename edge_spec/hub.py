"""Hugging Face Hub references: `hf://ORG/REPO/FILE.gguf` and `ORG/REPO:QUANT`, through huggingface-hub and
its normal cache (HF_HUB_CACHE / HF_HOME, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured).

The Hub is probed with one short TCP connect before the library is called: huggingface-hub retries an
unreachable endpoint for ~25 s, so without the probe an offline machine would hang before failing.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from edge_spec.errors import ModelError

HUB_CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection to the Hub before treating it as unreachable."""
HUB_ETAG_TIMEOUT = 10.0
"""Seconds huggingface-hub waits for a file's metadata once the Hub answered (HF_HUB_ETAG_TIMEOUT wins)."""
DEFAULT_ENDPOINT = "https://huggingface.co"

HF_PREFIX = "hf://"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO = rf"{_NAME}/{_NAME}"
_FILE_REF = re.compile(rf"^(?P<repo>{_REPO})/(?P<file>(?:{_NAME}/)*{_NAME}\.gguf)$")
_QUANT_REF = re.compile(rf"^(?P<repo>{_REPO}):(?P<quant>{_NAME})$")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
REF_FORMS = "hf://ORG/REPO/FILE.gguf or ORG/REPO:QUANT"


def looks_like_hub_ref(text: str) -> bool:
    """Whether `text` is meant as a Hub reference (it may still be malformed)."""
    return text.startswith(HF_PREFIX) or bool(_QUANT_REF.match(text))


def resolve_hub(text: str) -> Path:
    """The local path of a Hub reference, downloaded into (or found in) the huggingface-hub cache."""
    body = text.removeprefix(HF_PREFIX)
    if m := _FILE_REF.match(body):
        return hub_file(m["repo"], m["file"])
    if m := _QUANT_REF.match(body):
        return hub_file(m["repo"], pick_quant(m["repo"], m["quant"], list_files(m["repo"])))
    raise ModelError(f"malformed model reference {text!r}: use {REF_FORMS}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """huggingface-hub's cache folder, read from the environment at call time."""
    from huggingface_hub import constants

    if hub_cache := os.environ.get("HF_HUB_CACHE"):
        return Path(hub_cache).expanduser()
    if hf_home := os.environ.get("HF_HOME"):
        return Path(hf_home).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _reachable(endpoint: str) -> bool:
    """A TCP connect to the endpoint within HUB_CONNECT_TIMEOUT (assumed fine behind a proxy)."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=HUB_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _unavailable(what: str, endpoint: str) -> ModelError:
    if _offline():
        return ModelError(
            f"{what} is not in the Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE is set: "
            "unset HF_HUB_OFFLINE to download it, or pass a local .gguf path"
        )
    return ModelError(
        f"cannot reach the Hugging Face Hub at {endpoint} and {what} is not cached: check the network "
        "(or HF_ENDPOINT / HTTPS_PROXY), or download the file elsewhere and pass its local .gguf path"
    )


def hub_file(repo: str, file: str) -> Path:
    """A repository file from the cache, else downloaded (one clear error when neither is possible)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, file, cache_dir=cache_dir())
    endpoint = _endpoint()
    if _offline() or not _reachable(endpoint):
        if isinstance(cached, str):
            return Path(cached)
        raise _unavailable(f"{repo}/{file}", endpoint)
    try:
        path = hf_hub_download(
            repo, file, cache_dir=cache_dir(), endpoint=endpoint, etag_timeout=HUB_ETAG_TIMEOUT
        )
    except Exception as e:  # the library raises HTTP, network and cache errors of many classes
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"could not download {repo}/{file} from {endpoint}: {first}") from e
    return Path(path)


def _cached_files(repo: str) -> list[str]:
    """Files of the cached snapshot that refs/main points at (empty when the repository is not cached)."""
    folder = cache_dir() / f"models--{repo.replace('/', '--')}"
    try:
        revision = (folder / "refs" / "main").read_text().strip()
    except OSError:
        return []
    snapshot = folder / "snapshots" / revision
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def list_files(repo: str) -> list[str]:
    """A repository's files: from the Hub when it answers, else from the cache."""
    endpoint = _endpoint()
    if _offline() or not _reachable(endpoint):
        files = _cached_files(repo)
        if not files:
            raise _unavailable(f"the file list of {repo}", endpoint)
        return files
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint).list_repo_files(repo)
    except Exception as e:  # as in hub_file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"could not list the files of {repo} on {endpoint}: {first}") from e


def pick_quant(repo: str, quant: str, files: list[str]) -> str:
    """The one .gguf file whose name holds `quant` (case-insensitive), preferring an exact delimited match
    (Q4_K picks ...-Q4_K.gguf over ...-Q4_K_M.gguf)."""
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    matches = [f for f in ggufs if quant.lower() in Path(f).name.lower()]
    exact = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(quant)}(?![A-Za-z0-9_])", re.IGNORECASE)
    matches = [f for f in matches if exact.search(Path(f).name)] or matches
    if len(matches) == 1:
        return matches[0]
    if not matches:
        listed = ", ".join(Path(f).name for f in ggufs) or "none"
        raise ModelError(f"{repo} has no .gguf file matching {quant!r}; its .gguf files: {listed}")
    raise ModelError(
        f"{quant!r} matches several files in {repo} ({', '.join(matches)}): "
        f"name one as {HF_PREFIX}{repo}/FILE.gguf"
    )
