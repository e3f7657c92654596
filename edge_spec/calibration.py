"""Goodput's measurements kept between processes: a command starts where the last one with the same
models and settings on this machine ended (measured costs, acceptance evidence, probe schedules) instead
of measuring from nothing again.

One JSON file per configuration in `cache_dir()`, named by a hash of its key: everything the measurements
depend on (each model file's path, size and modification time; how each tier is loaded; the stage
settings; the llama.cpp build; the machine). A file whose key differs is another file; a file saved more
than STALE_SECONDS ago is ignored, and removed by the next save into its folder. Files are written whole
under a temporary name and renamed, so a reader sees the old file or the new one, never a mix; a file
that cannot be read back (corrupt, truncated, of another format) is ignored with one line on stderr, as
is a folder that cannot be written. Concurrent processes with one key each save their own measurements;
the last save wins.

Off for a pyramid with `LoadOptions(calibration_cache=False)` (`--no-calibration-cache`), or for every
pyramid with EDGE_SPEC_CALIBRATION=off (tests and `bench` run without it unless told otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge_spec.backend import Tier, build_info
from edge_spec.host import cpu_name, usable_cores
from edge_spec.lookahead import Measurements
from edge_spec.pyramid import Draft, StageConfig

ENV_SWITCH = "EDGE_SPEC_CALIBRATION"  # "off" (or 0, no, false) turns the cache off everywhere
ENV_DIR = "EDGE_SPEC_CALIBRATION_DIR"  # where the files go (default ~/.cache/edge-spec/calibration)
FORMAT = 1  # the file layout's version: a file of another version is ignored
STALE_SECONDS = 7 * 24 * 3600  # files older than this are ignored and pruned


def enabled(requested: bool) -> bool:
    """Whether to use the cache: asked for, and not switched off by EDGE_SPEC_CALIBRATION."""
    return requested and os.environ.get(ENV_SWITCH, "").strip().lower() not in ("0", "off", "no", "false")


def cache_dir() -> Path:
    """$EDGE_SPEC_CALIBRATION_DIR, or ~/.cache/edge-spec/calibration."""
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "edge-spec" / "calibration")


def machine() -> dict[str, object]:
    """What identifies this machine's speed: host name, architecture, CPU model, the cores this process
    may use."""
    return {"host": platform.node(), "arch": platform.machine(), "cpu": cpu_name(), "cores": usable_cores()}


def file_identity(path: Path) -> dict[str, object]:
    """A model file as the key knows it: its resolved path, size and modification time."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def pyramid_key(tiers: Mapping[str, Draft], stages: Sequence[StageConfig]) -> dict[str, object]:
    """The key of a pyramid's measurements: its tiers by role (model files and how they are loaded;
    "ngram" or None as they are; candidate drafts as a list), its stage settings, the llama.cpp build and
    the machine."""

    def tier(t: Draft) -> object:
        if isinstance(t, list):
            return [tier(c) for c in t]
        if not isinstance(t, Tier):
            return t
        return {**file_identity(t.path), "config": dataclasses.asdict(t.config), "gpu_layers": t.n_gpu_layers}

    return {
        "tiers": {role: tier(t) for role, t in tiers.items()},
        "stages": [dataclasses.asdict(s) for s in stages],
        "llama_cpp": build_info(),
        "machine": machine(),
    }


def _say(message: str) -> None:
    print(f"edge-spec: {message}", file=sys.stderr)


class CalibrationFile:
    """The measurements file of one configuration (`key`: plain JSON values)."""

    def __init__(self, key: Mapping[str, object], directory: Path | None = None) -> None:
        self.key = json.loads(json.dumps(key))  # as it reads back from a file
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:24]
        self.path = (directory or cache_dir()) / f"{digest}.json"
        self._save_failed = False  # said once that saving fails; not said again for this file

    def load(self, stages: Sequence[Measurements | None]) -> bool:
        """Restore every stage's measurements (None: a stage without goodput) from the file, all or none.
        False, with nothing changed, when there is no usable file."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as e:
            _say(f"ignoring the calibration file {self.path}: {e}")
            return False
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != self.key:
            return False  # another layout, or another configuration's file under a colliding name
        try:
            if not time.time() - float(doc["saved"]) < STALE_SECONDS:
                return False
            states = doc["stages"]
            if not isinstance(states, list) or len(states) != len(stages):
                raise ValueError("its stages differ from this pyramid's")
            pairs = list(zip(stages, states, strict=True))
            if any((m is None) != (s is None) for m, s in pairs):
                raise ValueError("its stages differ from this pyramid's")
            for m, s in pairs:  # check every stage before changing any
                if m is not None:
                    Measurements(m.max_block).restore(s)
        except (ValueError, KeyError, TypeError) as e:
            _say(f"ignoring the calibration file {self.path}: {e}")
            return False
        for m, s in pairs:
            if m is not None:
                m.restore(s)
        return True

    def save(self, stages: Sequence[Measurements | None]) -> None:
        """Write the measurements (atomically); prune stale files of the folder. A failure is said once
        on stderr and otherwise ignored."""
        doc = {
            "format": FORMAT,
            "saved": time.time(),
            "key": self.key,
            "stages": [None if m is None else m.state() for m in stages],
        }
        folder = self.path.parent
        tmp: str | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.path)
            tmp = None
            _prune(folder)
        except OSError as e:
            if not self._save_failed:
                _say(f"cannot save calibration to {folder}: {e.strerror or e}")
            self._save_failed = True
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _prune(folder: Path) -> None:
    """Remove calibration files older than STALE_SECONDS (temporary files of dead writers too)."""
    cutoff = time.time() - STALE_SECONDS
    for path in [*folder.glob("*.json"), *folder.glob(".*.tmp")]:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
