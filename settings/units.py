"""Byte sizes in words, and read from config.toml: the one home of every size the bot shows.

Two families, each said as such so a reader never has to guess the unit:

- ``hub_size``, ``hub_pair``: decimal units (GB, MB, kB), as the Hugging Face hub shows
  file sizes: downloads, weights on disk.
- ``memory_size``, ``mib``: binary units (GiB, MiB, KiB), as memory is counted: device and
  RAM budgets, upload limits.
"""

from __future__ import annotations

import re

_DECIMAL = (("GB", 1e9, 1), ("MB", 1e6, 0), ("kB", 1e3, 0))
_BINARY = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
_PARSED = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
           "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.I)


def _decimal_unit(n: float) -> tuple[str, float, int]:
    return next((u for u in _DECIMAL if n >= u[1]), ("B", 1, 0))


def hub_size(n: float) -> str:
    """2.1 GB, 340 MB, 12 kB, 0 B: one decimal in GB, none below."""
    unit, scale, digits = _decimal_unit(n)
    return f"{n / scale:.{digits}f} {unit}"


def hub_pair(done: float, total: float) -> str:
    """1.2 of 2.1 GB, 12 of 340 MB: both in the total's unit."""
    unit, scale, digits = _decimal_unit(total)
    return f"{done / scale:.{digits}f} of {total / scale:.{digits}f} {unit}"


def memory_size(n: float) -> str:
    """2254857830 -> '2.1 GiB', 1073741824 -> '1 GiB'; smaller sizes in MiB or KiB."""
    unit, scale = next((u for u in _BINARY if n >= u[1]), _BINARY[-1])
    return f"{n / scale:.1f}".removesuffix(".0") + " " + unit


def mib(n: float, digits: int = 1) -> str:
    """Always in MiB, so sizes side by side compare at a glance: '25.0 MiB'; digits=0: '2,048 MiB'."""
    return f"{n / 2**20:,.{digits}f} MiB"


def parse_size(v: str) -> int | None:
    """Bytes in a size like "8GiB", "512MiB", "1.5GB" or "0" ("" is 0); None when it is not a size."""
    if not v.strip():
        return 0
    m = _SIZE.match(v)
    return None if m is None else int(float(m[1]) * _PARSED[(m[2] or "").lower()])
