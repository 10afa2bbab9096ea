"""Build tiny random-weight versions of every seed model, offline.

    python scripts/build_tiny_models.py [OUT_DIR]     (default: build/tiny-models)

Each folder is saved the way the hub serves the real checkpoint, so the pool
loads it with the same ``from_pretrained`` code; ``hub/<org>/<name>`` holds them
again in the real repos' older layouts (see scripts/tiny_models/hub.py). Rebuilds only when a builder
changed (a stamp file holds the hash of the builder sources).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "tiny-models"
log = logging.getLogger("build_tiny_models")


def _sources_hash() -> str:
    h = hashlib.sha256()
    for p in sorted((ROOT / "scripts" / "tiny_models").glob("*.py")) + [Path(__file__)]:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def ensure(out: Path = DEFAULT_OUT) -> Path:
    """Build into ``out`` unless an up-to-date build is already there."""
    stamp = out / ".stamp"
    digest = _sources_hash()
    if stamp.exists() and stamp.read_text() == digest:
        return out
    from scripts.tiny_models import detect, eyes, flux2, hub, llm, qwen3, safety, sd, upscale, vision

    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))  # per process: builds may race
    sd.build(tmp)
    vision.build(tmp)
    detect.build(tmp)
    safety.build(tmp)
    upscale.build(tmp)
    llm.build(tmp)
    qwen3.build(tmp)  # the modern profile's LLM, and klein's text encoder:
    flux2.build(tmp)  # built from it
    eyes.build(tmp)  # Florence-2, SAM 2.1, Depth Anything V2, with their hub layouts
    hub.build(tmp)  # from the folders above, laid out as the real hub repos
    (tmp / ".stamp").write_text(digest)
    old = out.with_name(f"{out.name}.old.{os.getpid()}")
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: its build is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    log.info("built tiny models in %s (%.1f s)", out, time.perf_counter() - started)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
