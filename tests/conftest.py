"""Shared fixtures: tiny models, test configs, no network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub access fails fast
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """Folder with tiny random-weight versions of every seed model (built once)."""
    from scripts.build_tiny_models import ensure

    return ensure()


def write_tiny_config(folder: Path, extra: str = "") -> Path:
    """A copy of tests/config.tiny.toml in ``folder`` (its own socket and data dir) plus ``extra`` TOML."""
    text = (ROOT / "tests" / "config.tiny.toml").read_text()
    text = text.replace('"../build/tiny-models', f'"{ROOT}/build/tiny-models')
    text = text.replace('data_dir = "../data/tiny"', 'data_dir = "data"')
    path = folder / "config.toml"
    path.write_text(text + "\n" + extra)
    return path
