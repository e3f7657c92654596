"""Shared pytest fixtures: tiny GGUF models written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_gguf import write_tiny_model

# Tests start goodput from nothing unless they enable its calibration cache themselves (test_calibration).
os.environ["EDGE_SPEC_CALIBRATION"] = "off"

NOISY_DRAFT_NOISE = 0.3  # ~70% greedy agreement with the target
UNRELATED_SEED = 1


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session directory holding the tiny models."""
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_target(tiny_models_dir: Path) -> Path:
    """Target model (seed 0)."""
    return write_tiny_model(tiny_models_dir / "target.gguf")


@pytest.fixture(scope="session")
def tiny_same(tiny_models_dir: Path) -> Path:
    """Draft with weights identical to the target, in a different file."""
    return write_tiny_model(tiny_models_dir / "same.gguf")


@pytest.fixture(scope="session")
def tiny_noisy(tiny_models_dir: Path) -> Path:
    """Draft = target weights plus noise: greedy agreement roughly 60-80%."""
    return write_tiny_model(tiny_models_dir / "noisy.gguf", noise=NOISY_DRAFT_NOISE)


@pytest.fixture(scope="session")
def tiny_unrelated(tiny_models_dir: Path) -> Path:
    """Draft from another seed: greedy agreement near 0."""
    return write_tiny_model(tiny_models_dir / "unrelated.gguf", seed=UNRELATED_SEED)


@pytest.fixture(scope="session")
def tiny_other_vocab(tiny_models_dir: Path) -> Path:
    """Same-size vocabulary with different token texts at ids >= 5 (incompatible draft)."""
    return write_tiny_model(tiny_models_dir / "other_vocab.gguf", vocab="other")


@pytest.fixture(scope="session")
def tiny_small_vocab(tiny_models_dir: Path) -> Path:
    """Vocabulary 200 tokens smaller than the target's (incompatible draft)."""
    return write_tiny_model(tiny_models_dir / "small_vocab.gguf", vocab="small")
