"""``python -m bot --backup FOLDER`` (``./scripts/run --backup FOLDER``): copy the bot's data while it runs.

The session database is copied with SQLite's online backup API, which reads one
consistent snapshot while the bot goes on writing (it waits for a write in
progress, never blocks the bot for more than that). The image files are copied
after it: they are named by their content and never change once written, and a
file is always written before the row naming it, so every image the copied
database names is on disk by then. Files already in FOLDER are not copied again,
so a second backup into the same folder copies only the new images.

Restore: stop the bot, put FOLDER/bot.db and FOLDER/images/ back into the data
directory (``[storage] data_dir``), start the bot.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core import db_file

DATABASE = "bot.db"  # under [storage] data_dir (bot/app.py's build_core)
IMAGES = "images"


class BackupFailed(Exception):
    """The message says what went wrong and what to do."""


@dataclass(frozen=True)
class Copied:
    database: Path
    conversations: int
    images_new: int
    images_total: int

    def __str__(self) -> str:
        return (f"backed up {self.conversations} conversation(s) to {self.database} and "
                f"{self.images_total} image file(s) to {self.database.parent / IMAGES} ({self.images_new} new)")


def backup(data_dir: Path, dest: Path) -> Copied:
    """Copy ``data_dir``'s session database and image files into the folder ``dest``."""
    source = Path(data_dir) / DATABASE
    if not source.is_file():
        raise BackupFailed(f"there is no session database at {source} to back up (is [storage] data_dir right?)")
    try:
        db_file.check(source)
    except db_file.DatabaseUnusable as e:
        raise BackupFailed(str(e)) from None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / DATABASE
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{DATABASE}.", suffix=".tmp")
    os.close(fd)
    try:
        src = db_file.connect(source)
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)  # one consistent snapshot, taken while the bot may be writing
            conversations = out.execute("SELECT count(*) FROM sessions").fetchone()[0]
        finally:
            out.close()
            src.close()
        os.replace(tmp, target)  # an older backup there stays whole until the new one is
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    new, total = _copy_images(Path(data_dir) / IMAGES, dest / IMAGES)
    return Copied(target, conversations, new, total)


def _copy_images(src: Path, dest: Path) -> tuple[int, int]:
    """Every finished image file (not the temporary files of one being written); returns (copied, in all)."""
    new = total = 0
    if not src.is_dir():
        return 0, 0
    for path in src.glob("*/*.png"):
        total += 1
        to = dest / path.relative_to(src)
        if to.exists() and to.stat().st_size == path.stat().st_size:
            continue
        to.parent.mkdir(parents=True, exist_ok=True)
        part = to.with_name(f".{to.name}.tmp")
        shutil.copyfile(path, part)
        os.replace(part, to)
        new += 1
    return new, total
