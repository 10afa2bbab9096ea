"""``reactions.add`` and ``reactions.remove`` for the fake Slack (``slack_server.py``), as strict as Slack:
both take ``channel``, ``timestamp`` (the message's ts) and ``name`` (the emoji's name, without colons);
the message must exist; adding a reaction already there answers ``already_reacted``, removing one that
is not there ``no_reaction``; ``missing_scope = True`` answers every call as a token without
``reactions:write`` would be answered."""

from __future__ import annotations

import re
from typing import Any

SCOPE = "reactions:write"
EMOJI = re.compile(r"[a-z0-9_+'-]+(::skin-tone-[2-6])?")


class Reactions:
    """The bot's reactions on messages: (channel, ts) -> emoji names, in the order added."""

    def __init__(self, messages: dict[str, dict[str, str | None]]):
        self.messages = messages  # the fake's channel -> ts -> parent ts (the messages that exist)
        self.on: dict[tuple[str, str], list[str]] = {}
        self.missing_scope = False

    def of(self, channel: str, ts: str) -> list[str]:
        """The reactions the bot has on a message now."""
        return list(self.on.get((channel, ts), []))

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        if refused := self._refused(body):
            return refused
        names = self.on.setdefault((body["channel"], body["timestamp"]), [])
        if body["name"] in names:
            return {"ok": False, "error": "already_reacted"}
        names.append(body["name"])
        return {"ok": True}

    def remove(self, body: dict[str, Any]) -> dict[str, Any]:
        if refused := self._refused(body):
            return refused
        names = self.on.get((body["channel"], body["timestamp"]), [])
        if body["name"] not in names:
            return {"ok": False, "error": "no_reaction"}
        names.remove(body["name"])
        return {"ok": True}

    def _refused(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if self.missing_scope:
            return {"ok": False, "error": "missing_scope", "needed": SCOPE, "provided": "chat:write,files:read"}
        if not body.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not body.get("timestamp"):
            return {"ok": False, "error": "bad_timestamp"}
        if not EMOJI.fullmatch(body.get("name") or ""):  # ":eyes:" with its colons is refused too
            return {"ok": False, "error": "invalid_name"}
        if body["timestamp"] not in self.messages.get(body["channel"], {}):
            return {"ok": False, "error": "message_not_found"}
        return None
