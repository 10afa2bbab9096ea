"""The session store: one SQLite file under the data directory (sqlite-utils).

Sessions, their messages (user, assistant, tool calls and results), their
images and jobs. Everything the LLM sees is rebuilt from here, so a restart
loses nothing. Schema changes are ordered, named migrations.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

import sqlite_utils

from core import db_file


def m001_initial(db: sqlite_utils.Database) -> None:
    db["sessions"].create({"key": str, "platform": str, "created": float, "updated": float,
                           "image_counter": int}, pk="key")
    db["messages"].create({"id": int, "session": str, "role": str, "content": str, "tool_calls": str,
                           "tool_call_id": str, "name": str, "user": str, "created": float}, pk="id")
    db["messages"].create_index(["session", "id"])
    db["images"].create({"session": str, "image_id": str, "path": str, "sha256": str, "parent": str,
                         "operation": str, "params": str, "width": int, "height": int, "mode": str,
                         "caption": str, "created": float}, pk=("session", "image_id"))
    db["jobs"].create({"id": int, "session": str, "user": str, "model": str, "state": str, "message": str,
                       "created": float, "finished": float}, pk="id")


def m002_message_kind(db: sqlite_utils.Database) -> None:
    """``kind`` marks messages the LLM must not read as its own words: "note" is the bot's own
    failure text (shown to the user, never fed back as if the assistant had said it)."""
    db["messages"].add_column("kind", str)


def m003_threads(db: sqlite_utils.Database) -> None:
    """Threads that continue another conversation (Slack: the thread the bot answered a mention in)."""
    db["threads"].create({"key": str, "session": str, "created": float}, pk="key")


def m004_provenance(db: sqlite_utils.Database) -> None:
    """How each image was made, for the buttons under it and their Info: the tool's arguments, the pool
    job that made its pixels (model, source, parameters as run, the seed, the prompts the model was really
    sent, seconds inside the model), and the button press that asked for it (which, on which image, by whom)."""
    for column, kind in (("args", str), ("model", str), ("source", str), ("model_params", str), ("seed", int),
                         ("prompt", str), ("negative_prompt", str), ("seconds", float), ("action", str),
                         ("action_of", str), ("user", str)):
        db["images"].add_column(column, kind)


def m005_access(db: sqlite_utils.Database) -> None:
    """Who is blocked (by whom, and whether they were told), and how many images each user made per UTC day
    (core/access.py): both outlive a restart."""
    db["access_blocks"].create({"platform": str, "user": str, "by": str, "created": float, "told": int},
                               pk=("platform", "user"))
    db["access_usage"].create({"platform": str, "user": str, "day": str, "images": int},
                              pk=("platform", "user", "day"))


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [m001_initial, m002_message_kind, m003_threads,
                                                               m004_provenance, m005_access]
NOTE = "note"  # messages.kind of the bot's own failure messages


def migrate(db: sqlite_utils.Database) -> None:
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied": float}, pk="name")
    done = {r["name"] for r in db["_migrations"].rows}
    for m in MIGRATIONS:
        if m.__name__ not in done:
            with db.conn:
                m(db)
                db["_migrations"].insert({"name": m.__name__, "applied": time.time()})


@dataclass(frozen=True)
class Provenance:
    """How an image was made; None where it does not apply (an upload ran no job, a map has no seed)."""

    args: dict[str, Any] | None = None  # the tool's arguments as called: what a reroll calls it with again
    model: str | None = None  # the pool model whose job made the pixels (the last job of the tool)
    source: str | None = None  # that model's weights: a hub id or folder, "" for none
    model_params: dict[str, Any] | None = None  # every parameter as the pool ran it, defaults filled in
    seed: int | None = None
    prompt: str | None = None  # as the model really got it (quality words added)
    negative_prompt: str | None = None
    seconds: float | None = None  # inside the model
    action: str | None = None  # the button that asked for it: reroll, variations, upscale, edit
    action_of: str | None = None  # the image whose button it was
    user: str | None = None  # who asked for it (the presser, for a button)

    def columns(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in Provenance.__dataclass_fields__}
        for key in ("args", "model_params"):
            out[key] = None if out[key] is None else json.dumps(out[key])
        return out

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Provenance:
        values = {k: r.get(k) for k in cls.__dataclass_fields__}
        for key in ("args", "model_params"):
            values[key] = json.loads(values[key]) if values[key] else None
        return cls(**values)


@dataclass(frozen=True)
class ImageRow:
    session: str
    image_id: str
    path: str  # relative to the image folder
    sha256: str
    parent: str | None
    operation: str
    params: dict[str, Any]
    width: int
    height: int
    mode: str
    caption: str | None
    made: Provenance = Provenance()
    created: float | None = None  # set by the store

    @property
    def tag(self) -> str:
        """Tells this image from a later one with the same id (ids start again after /reset)."""
        return format(int((self.created or 0) * 1000) % 16**8, "08x")

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> ImageRow:
        return cls(r["session"], r["image_id"], r["path"], r["sha256"], r["parent"], r["operation"],
                   json.loads(r["params"] or "{}"), r["width"], r["height"], r["mode"], r["caption"],
                   Provenance.from_row(r), r["created"])


class Store:
    def __init__(self, path: Path | str):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            db_file.check(Path(path))  # a damaged or foreign file stops the bot, untouched (DatabaseUnusable)
            path = db_file.connect(path)  # waits for a lock another process holds (db_file.BUSY_TIMEOUT_S)
        self.db = sqlite_utils.Database(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        migrate(self.db)

    # --- sessions -----------------------------------------------------------

    def session(self, key: str, platform: str = "") -> None:
        now = time.time()
        if not self.db["sessions"].count_where("key = ?", [key]):
            self.db["sessions"].insert({"key": key, "platform": platform, "created": now, "updated": now,
                                        "image_counter": 0}, ignore=True)

    def started(self, key: str) -> float | None:
        """When the session began (again, after a /reset); None while it holds nothing."""
        rows = list(self.db["sessions"].rows_where("key = ?", [key], select="created"))
        return rows[0]["created"] if rows else None

    def sessions(self) -> list[str]:
        return [r["key"] for r in self.db["sessions"].rows]

    def link_thread(self, thread: str, session: str) -> None:
        """Messages in ``thread`` continue the conversation ``session`` (kept across restarts)."""
        self.db["threads"].insert({"key": thread, "session": session, "created": time.time()}, replace=True)

    def thread_session(self, thread: str) -> str | None:
        rows = list(self.db["threads"].rows_where("key = ?", [thread]))
        return rows[0]["session"] if rows else None

    def reset(self, key: str) -> None:
        """Forget one session's messages and images (files stay: they may be shared by content)."""
        with self.db.conn:
            for table in ("messages", "images", "jobs"):
                self.db[table].delete_where("session = ?", [key])
            self.db["sessions"].delete_where("key = ?", [key])

    # --- messages -----------------------------------------------------------

    def add_message(self, session: str, role: str, content: str | None = None, *, tool_calls: list | None = None,
                    tool_call_id: str | None = None, name: str | None = None, user: str | None = None,
                    kind: str | None = None) -> int:
        self.session(session)
        row = {"session": session, "role": role, "content": content,
               "tool_calls": json.dumps(tool_calls) if tool_calls else None,
               "tool_call_id": tool_call_id, "name": name, "user": user, "created": time.time(), "kind": kind}
        return self.db["messages"].insert(row).last_pk

    def messages(self, session: str) -> list[dict[str, Any]]:
        rows = self.db["messages"].rows_where("session = ?", [session], order_by="id")
        return [dict(r, tool_calls=json.loads(r["tool_calls"]) if r["tool_calls"] else None) for r in rows]

    # --- images -------------------------------------------------------------

    def new_image_id(self, session: str) -> str:
        self.session(session)
        with self.db.conn:
            self.db.execute("UPDATE sessions SET image_counter = image_counter + 1, updated = ? WHERE key = ?",
                            [time.time(), session])
            n = self.db.execute("SELECT image_counter FROM sessions WHERE key = ?", [session]).fetchone()[0]
        return f"img{n}"

    def add_image(self, row: ImageRow) -> ImageRow:
        """Store ``row``; returns it with its creation time (and so its tag)."""
        data = {k: getattr(row, k) for k in ImageRow.__dataclass_fields__ if k not in ("made", "created")}
        data["params"] = json.dumps(row.params)
        created = time.time()
        self.db["images"].insert(dict(data, **row.made.columns(), created=created))
        return dataclasses.replace(row, created=created)

    def set_caption(self, session: str, image_id: str, caption: str) -> None:
        self.db["images"].update((session, image_id), {"caption": caption})

    def image(self, session: str, image_id: str) -> ImageRow | None:
        rows = list(self.db["images"].rows_where("session = ? AND image_id = ?", [session, image_id]))
        return ImageRow.from_row(rows[0]) if rows else None

    def images(self, session: str) -> list[ImageRow]:
        rows = self.db["images"].rows_where("session = ?", [session], order_by="created, rowid")
        return [ImageRow.from_row(r) for r in rows]

    # --- jobs ---------------------------------------------------------------

    def start_job(self, session: str, user: str, model: str) -> int:
        return self.db["jobs"].insert({"session": session, "user": user, "model": model, "state": "running",
                                       "created": time.time()}).last_pk

    def finish_job(self, job: int, state: str, message: str | None = None) -> None:
        self.db["jobs"].update(job, {"state": state, "message": message, "finished": time.time()})
