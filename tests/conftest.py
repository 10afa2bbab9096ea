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
