"""The tree passes ruff (its rules: pyproject.toml's [tool.ruff]); a violation fails the suite, listed by file and line.

Most fix themselves: `.venv/bin/ruff check --fix`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """ruff from the venv (the dev group), run at the root so that it reads pyproject.toml."""
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_the_tree_passes_ruff():
    found = ruff("check", "--output-format", "concise", ".")
    if found.returncode != 0:
        pytest.fail("ruff check found (`.venv/bin/ruff check --fix` fixes the [*] ones):\n"
                    + found.stdout + found.stderr, pytrace=False)


def test_ruff_reads_the_project_rules():
    """A file with an unused import and a 121-character line, as if in core/: both are reported, so a
    configuration that checks nothing cannot pass the test above."""
    source = "import os\n\nLONG = " + repr("x" * 112) + "\n"
    found = ruff("check", "--no-cache", "--output-format", "concise", "--stdin-filename", "core/example.py", "-",
                 stdin=source)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "core/example.py:1:8: F401" in found.stdout
    assert "core/example.py:3:121: E501" in found.stdout
