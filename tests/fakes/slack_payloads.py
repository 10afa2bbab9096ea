"""Slack's JSON shapes for the fake (what Slack sends; only the fields the bot reads, plus the ones bolt
needs): files, events, slash commands, button clicks and modal submissions, and small builders of each."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
from collections.abc import Iterable
from typing import Any, Literal, NotRequired, TypedDict

TEAM, APP_ID, BOT_USER, BOT_ID = "T0FAKE", "A0FAKE", "U0BOT", "B0BOT"
_ts = itertools.count(100)


def new_ts() -> str:
    return f"1700000000.{next(_ts):06d}"


# --- payloads: Slack's JSON shapes ----------------------------------------------------------



class File(TypedDict):
    id: str
    name: str
    title: str
    mimetype: str
    filetype: str
    size: int
    mode: str
    url_private: str
    url_private_download: str


class Event(TypedDict):
    type: str  # "app_mention", "message"
    user: str
    text: str
    ts: str
    channel: str
    event_ts: str
    team: str
    thread_ts: NotRequired[str]
    channel_type: NotRequired[str]  # message events: "channel", "im", ...
    subtype: NotRequired[str]  # "file_share", "message_changed", "channel_join", "bot_message"
    bot_id: NotRequired[str]
    files: NotRequired[list[File]]


class EventCallback(TypedDict):
    token: str
    team_id: str
    api_app_id: str
    event: Event
    type: Literal["event_callback"]
    event_id: str
    event_time: int
    authorizations: list[dict[str, Any]]
    is_ext_shared_channel: bool


class SlashCommand(TypedDict):
    token: str
    team_id: str
    team_domain: str
    channel_id: str
    channel_name: str
    user_id: str
    user_name: str
    command: str
    text: str
    api_app_id: str
    is_enterprise_install: str
    response_url: str
    trigger_id: str


class UserRef(TypedDict):
    id: str
    username: str
    name: str
    team_id: str


class BlockActions(TypedDict):
    type: Literal["block_actions"]
    user: UserRef
    api_app_id: str
    token: str
    container: dict[str, Any]
    trigger_id: str
    team: dict[str, str]
    enterprise: None
    is_enterprise_install: bool
    channel: dict[str, str]
    message: dict[str, Any]
    state: dict[str, Any]
    response_url: str
    actions: list[dict[str, Any]]


class ViewSubmission(TypedDict):
    type: Literal["view_submission"]
    team: dict[str, str]
    user: UserRef
    api_app_id: str
    token: str
    trigger_id: str
    view: dict[str, Any]
    response_urls: list[Any]
    is_enterprise_install: bool
    enterprise: None


# --- builders -------------------------------------------------------------------------------


def message_event(kind: str, channel: str, user: str, text: str, *, thread_ts: str | None = None,
                  files: Iterable[File] = (), **extra: Any) -> Event:
    ts = new_ts()
    event: Event = {"type": kind, "user": user, "text": text, "ts": ts, "channel": channel, "event_ts": ts,
                    "team": TEAM, **extra}
    if thread_ts:
        event["thread_ts"] = thread_ts
    if files:
        event["files"] = list(files)
    return event


def mention(channel: str, user: str, text: str, *, thread_ts: str | None = None,
            files: Iterable[File] = ()) -> Event:
    """An ``app_mention``; ``text`` should contain ``<@U0BOT>`` as Slack writes it."""
    return message_event("app_mention", channel, user, text, thread_ts=thread_ts, files=files)


def dm(channel: str, user: str, text: str, *, files: Iterable[File] = (), **extra: Any) -> Event:
    """A ``message`` in the bot's direct-message channel (``file_share`` subtype with files)."""
    if files:
        extra.setdefault("subtype", "file_share")
    return message_event("message", channel, user, text, files=files, channel_type="im", **extra)


def event_callback(event: Event, event_id: str) -> EventCallback:
    return {"token": "verification-token", "team_id": TEAM, "api_app_id": APP_ID, "event": event,
            "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": TEAM, "user_id": BOT_USER, "is_bot": True,
                                "is_enterprise_install": False}],
            "is_ext_shared_channel": False}


def signed_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack sends with an HTTP-mode request: ``v0=HMAC_SHA256(secret, "v0:ts:body")``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/json"}


def hosted_file(file_id: str, name: str, size: int, mimetype: str, url: str) -> File:
    """A file as Slack describes it in an event; ``url`` is where url_private serves it."""
    return {"id": file_id, "name": name, "title": name, "mimetype": mimetype, "filetype": name.rsplit(".")[-1],
            "size": size, "mode": "hosted", "url_private": url, "url_private_download": f"{url}?download=1"}


def user_info(user_id: str, *, is_admin: bool = False, is_owner: bool = False) -> dict[str, Any]:
    """A workspace member as users.info answers it."""
    return {"id": user_id, "team_id": TEAM, "name": user_id.lower(), "deleted": False,
            "is_admin": is_admin, "is_owner": is_owner, "is_bot": False,
            "profile": {"display_name": user_id.lower()}}


def usergroup(group_id: str, handle: str, users: list[str], *, disabled: bool = False) -> dict[str, Any]:
    """A user group as usergroups.list describes it (``users`` kept apart: sent only with include_users)."""
    return {"id": group_id, "team_id": TEAM, "is_usergroup": True, "is_subteam": True, "name": handle.title(),
            "description": "", "handle": handle, "is_external": False, "date_create": 1700000000,
            "date_update": 1700000000, "date_delete": 1700000500 if disabled else 0, "auto_type": None,
            "created_by": "U0OWNER", "updated_by": "U0OWNER", "deleted_by": "U0OWNER" if disabled else None,
            "prefs": {"channels": [], "groups": []}, "users": list(users), "user_count": len(users)}


def user_ref(user: str, name: str) -> UserRef:
    """Who clicked or submitted, as an interaction payload names them."""
    return {"id": user, "username": name, "name": name, "team_id": TEAM}


def slash_command(command: str, text: str, *, user: str, channel: str, channel_name: str, response_url: str,
                  trigger_id: str) -> SlashCommand:
    return {"token": "verification-token", "team_id": TEAM, "team_domain": "fake", "channel_id": channel,
            "channel_name": channel_name, "user_id": user, "user_name": user.lower(), "command": command,
            "text": text, "api_app_id": APP_ID, "is_enterprise_install": "false",
            "response_url": response_url, "trigger_id": trigger_id}


def block_actions(user: UserRef, channel: str, message: dict[str, Any], button: dict[str, Any], block_id: str, *,
                  thread_ts: str | None, trigger_id: str, response_url: str) -> BlockActions:
    """A click on ``button`` (in block ``block_id``) of ``message``, a message the bot posted in ``channel``."""
    container = {"type": "message", "message_ts": message["ts"], "channel_id": channel, "is_ephemeral": False}
    if thread_ts:
        container["thread_ts"] = thread_ts
    return {"type": "block_actions", "user": user, "api_app_id": APP_ID,
            "token": "verification-token", "container": container, "trigger_id": trigger_id,
            "team": {"id": TEAM, "domain": "fake"}, "enterprise": None, "is_enterprise_install": False,
            "channel": {"id": channel, "name": "directmessage" if channel.startswith("D") else "general"},
            "message": message, "state": {"values": {}}, "response_url": response_url,
            "actions": [{**button, "block_id": block_id, "action_ts": new_ts()}]}


def view_submission(user: UserRef, view: dict[str, Any], values: dict[str, dict[str, str]], *,
                    trigger_id: str) -> ViewSubmission:
    """The modal ``view`` submitted with ``values`` ({block_id: {action_id: text}}) in its text inputs."""
    state = {block: {action: {"type": "plain_text_input", "value": text} for action, text in inputs.items()}
             for block, inputs in values.items()}
    return {"type": "view_submission", "team": {"id": TEAM, "domain": "fake"}, "user": user,
            "api_app_id": APP_ID, "token": "verification-token", "trigger_id": trigger_id,
            "view": {**view, "state": {"values": state}}, "response_urls": [],
            "is_enterprise_install": False, "enterprise": None}
