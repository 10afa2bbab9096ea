"""Will the configured models fit their devices? Said once at start-up, before an out-of-memory can.

The pool adds up the weights each device will hold (each file once: the shared
SD base counts once however many tools use it), at the dtype they load in,
and compares that with the device's free memory. Weights only: a job's
activations (about 1-3 GB for SD1.5 at 512-1024 px) and the CUDA context come
on top, so a device whose weights take most of its memory warns too.
"""

from __future__ import annotations

import logging
import os

from settings.units import hub_size

log = logging.getLogger(__name__)
HEADROOM = 0.85  # weights may take this share of free memory; the rest is for activations


def free_memory(device: str) -> int | None:
    """Free bytes on ``device`` now; None where that cannot be asked (mps)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(int(device.split(":")[1]) if ":" in device else 0)[0]
    if device == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def report(device: str, models: dict[str, int], total: int, free: int | None,
           budget: int = 0) -> tuple[int, str]:
    """A log level and line: ``models`` (name -> its weight bytes, shared ones included) need ``total``
    bytes of weights on ``device``, which has ``free`` bytes free, or a residency ``budget``."""
    parts = ", ".join(f"{n} {hub_size(b)}" for n, b in models.items() if b)
    need = f"{device}: the configured models need about {hub_size(total)} of weights ({parts or 'none'})"
    if budget and free is not None and budget > free:
        return logging.WARNING, (f"{need}; they take turns under a {hub_size(budget)} residency budget, but only "
                                 f"{hub_size(free)} is free there: lower [residency] budget in config.toml.")
    if budget:
        return logging.INFO, f"{need}; they take turns under the {hub_size(budget)} residency budget"
    if free is None:
        return logging.INFO, need
    if total <= free * HEADROOM:
        return logging.INFO, f"{need}; {hub_size(free)} is free"
    suggest = max(1, int(free * 0.7 / 2**30))
    return logging.WARNING, (f"{need} but only {hub_size(free)} is free, and jobs need working memory on top: "
                             f"they will not all fit. Set [residency] budget = \"{suggest}GiB\" in config.toml so "
                             "they take turns on the device, or move some models to another device.")
