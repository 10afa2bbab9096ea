"""What the fake Discord records of each request the bot sends (``FakeDiscord.requests``), and what a
posted message would do for its readers (``notified``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Request:
    method: str
    path: str  # the API path without /api/v10, e.g. /channels/3000/messages, or /attachments/... (CDN)
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None  # the JSON body, the multipart payload_json, or the form fields
    parts: list[Part] = field(default_factory=list)
    at: float = 0.0  # time.monotonic() on arrival
    response: Any = None  # the JSON the fake answered with (a message object: its id)

    @property
    def files(self) -> list[Part]:
        return [p for p in self.parts if p.filename is not None]

    @property
    def content(self) -> str | None:
        return (self.json or {}).get("content") if isinstance(self.json, dict) else None

    @property
    def flags(self) -> int:
        body = self.json or {}
        return int(body.get("flags") or (body.get("data") or {}).get("flags") or 0)

    def __repr__(self) -> str:
        extra = f" files={[p.filename for p in self.files]}" if self.files else ""
        return f"<{self.method} {self.path} {json.dumps(self.json)[:160] if self.json is not None else ''}{extra}>"


def notified(posted: Request) -> list[str]:
    """The users a message posted with ``posted`` notifies: its ``<@id>`` mentions that allowed_mentions lets
    through (the bot's client allows none by default)."""
    body, mentioned = posted.json or {}, re.findall(r"<@!?([0-9]+)>", posted.content or "")
    allowed = body.get("allowed_mentions")
    if allowed is None:
        return mentioned
    users = {str(u) for u in allowed.get("users", [])}  # snowflakes, as strings or numbers
    return [u for u in mentioned if "users" in allowed.get("parse", []) or u in users]
