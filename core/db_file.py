"""The session database file itself: is it ours, can it be read, how long to wait for it.

``check`` runs before the store opens the file, reading it only (SQLite's read-only
mode, no journal-mode change, no migration): a damaged file, or a database some
other program made, stops the bot with a message that names the file. The bot
never writes to a file it did not make, nor replaces it; an admin moves it away or
restores a backup (``python -m bot --backup``, see core/backup.py).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Another process may hold the database (a backup, an admin's sqlite3 shell, a second bot by mistake):
# writes wait up to this long for it, instead of failing the turn after SQLite's default 5 s.
BUSY_TIMEOUT_S = 30.0
OURS = "_migrations"  # the table every database this bot made has (core/store.py's migrate)
FIRST_MIGRATION = "m001_initial"


class DatabaseUnusable(Exception):
    """The session database cannot be used as it is; the message names the file and what to do."""


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection for the store: waits ``BUSY_TIMEOUT_S`` for a lock another process holds."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def check(path: Path) -> None:
    """Raise DatabaseUnusable unless ``path`` is missing, empty, or a session database this bot made."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return  # a new database: the store creates it
    if path.is_dir():
        raise DatabaseUnusable(f"{path} is a folder, not the session database file. Move it away, or set "
                               "[storage] data_dir to another folder.")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            done = {r[0] for r in conn.execute(f"SELECT name FROM {OURS}")} if OURS in tables else set()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
        raise DatabaseUnusable(
            f"{path} cannot be read as the bot's session database ({e}). The bot has not changed it. Restore it "
            "from a backup (README: Backups), or move it away to start with no conversations.") from None
    if FIRST_MIGRATION not in done and tables - {OURS}:  # only a _migrations table: our first start, cut short
        held = ", ".join(sorted(tables)[:8]) or "no tables"
        raise DatabaseUnusable(
            f"{path} is an SQLite database, but not this bot's session database (it holds: {held}). The bot has "
            "not changed it. Move it away, or set [storage] data_dir to another folder.")
