"""Print, as shell assignments for scripts/_env.sh, the package indexes pip is set up with
(pip.conf files, PIP_* variables) as uv's variables, since uv reads no pip configuration.

Nothing is printed where pip has none, or where a UV_* index variable is already set.
A local mirror of PyPI's files makes a fresh install fast; the hashes in uv.lock still hold.
"""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys

KEYS = {"index-url": "UV_INDEX_URL", "extra-index-url": "UV_EXTRA_INDEX_URL", "find-links": "UV_FIND_LINKS"}
SCOPES = (":env:", "install", "global")  # pip's precedence: a variable, then [install], then [global]


def pip_config() -> dict[str, str]:
    """pip's settings as `pip config list` prints them: {"global.find-links": "/opt/wheels", ...}."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            try:
                found[name] = ast.literal_eval(value)
            except (SyntaxError, ValueError):
                continue
    return found


def uv_variables(config: dict[str, str]) -> dict[str, str]:
    found = {}
    for key, variable in KEYS.items():
        value = next((config[f"{scope}.{key}"] for scope in SCOPES if f"{scope}.{key}" in config), "")
        items = value.split()
        if items:  # uv: extra indexes space-separated, find-links comma-separated
            found[variable] = ",".join(items) if key == "find-links" else " ".join(items)
    if found:
        # the pins and hashes decide; each file may come from the mirror or from the index
        found["UV_INDEX_STRATEGY"] = "unsafe-best-match"
    return found


def main() -> int:
    if any(os.environ.get(v) for v in (*KEYS.values(), "UV_INDEX", "UV_DEFAULT_INDEX")):
        return 0
    for variable, value in uv_variables(pip_config()).items():
        print(f"export {variable}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
