"""Discord's JSON shapes for the fake (see discord.py's ``discord/types``): ids, users, members,
messages, guilds, threads, interactions, and small builders of each."""

from __future__ import annotations

import itertools
from typing import Any, NotRequired, TypedDict

API = "/api/v10"
BOT_ID, APP_ID, GUILD_ID = "1000", "1001", "2000"
CHANNEL_ID = "3000"  # a text channel in GUILD_ID; add more with FakeDiscord.add_channel
MANAGE_GUILD, ADMINISTRATOR, ALL_PERMISSIONS = 1 << 5, 1 << 3, (1 << 50) - 1
EPHEMERAL = 1 << 6
TIMESTAMP = "2025-01-01T00:00:00.000000+00:00"
_ids = itertools.count(5_000_000)


def snowflake() -> str:
    return str(next(_ids))


# --- payloads: Discord's JSON shapes ------------------------------------------------------


class User(TypedDict):
    id: str
    username: str
    discriminator: str
    global_name: str | None
    avatar: str | None
    bot: NotRequired[bool]


class Member(TypedDict):
    user: NotRequired[User]
    roles: list[str]
    joined_at: str
    deaf: bool
    mute: bool
    flags: int
    permissions: NotRequired[str]  # interactions only: the member's computed permissions


class Attachment(TypedDict):
    id: str
    filename: str
    size: int
    url: str
    proxy_url: str
    content_type: NotRequired[str]


class Message(TypedDict):
    id: str
    type: int  # 0 default, 19 reply
    channel_id: str
    guild_id: NotRequired[str]  # absent in a DM
    author: User
    member: NotRequired[Member]
    content: str
    timestamp: str
    edited_timestamp: str | None
    tts: bool
    mention_everyone: bool
    mentions: list[User]
    mention_roles: list[str]
    attachments: list[Attachment]
    embeds: list[dict]
    pinned: bool
    flags: int
    message_reference: NotRequired[dict]


class Interaction(TypedDict):
    id: str
    application_id: str
    type: int  # 2 application command, 3 message component (a button), 4 autocomplete, 5 modal submit
    token: str
    version: int
    data: dict
    channel: dict
    channel_id: str
    guild_id: NotRequired[str]
    member: NotRequired[Member]  # in a guild
    user: NotRequired[User]  # in a DM
    app_permissions: str
    locale: str
    entitlements: list
    authorizing_integration_owners: dict
    context: int  # 0 guild, 1 bot DM
    attachment_size_limit: int
    message: NotRequired[dict]  # types 3 and 5: the message whose component was used


def user(user_id: str, name: str = "", *, bot: bool = False) -> User:
    name = name or f"user{user_id}"
    u: User = {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name.title(),
               "avatar": None}
    if bot:
        u["bot"] = True
    return u


def member(u: User, permissions: int | None = None, roles: list[str] = ()) -> Member:
    """``roles``: the ids of the guild roles the member has (Discord leaves @everyone's out)."""
    m: Member = {"user": u, "roles": list(roles), "joined_at": TIMESTAMP, "deaf": False, "mute": False, "flags": 0}
    if permissions is not None:  # Discord expands ADMINISTRATOR to every permission
        m["permissions"] = str(ALL_PERMISSIONS if permissions & ADMINISTRATOR else permissions)
    return m


def message(channel_id: str, content: str, author: User, *, guild_id: str | None = GUILD_ID,
            mentions: list[User] = (), attachments: list[Attachment] = (), roles: list[str] = ()) -> Message:
    """A MESSAGE_CREATE as a user's client would cause it; guild_id=None for a DM."""
    msg: Message = {"id": snowflake(), "type": 0, "channel_id": str(channel_id), "author": author,
                    "content": content, "timestamp": TIMESTAMP, "edited_timestamp": None, "tts": False,
                    "mention_everyone": False, "mentions": list(mentions), "mention_roles": [],
                    "attachments": list(attachments), "embeds": [], "pinned": False, "flags": 0}
    if guild_id is not None:
        msg["guild_id"] = guild_id
        msg["member"] = {k: v for k, v in member(author, roles=roles).items() if k != "user"}  # type: ignore
    return msg


def guild_create(guild_id: str, name: str, channel_ids: list[str], bot: User) -> dict:
    """A GUILD_CREATE's guild: text channels ``channel_ids``, the @everyone role, ``bot`` as its one member."""
    channels = [{"id": c, "type": 0, "name": f"chan-{c}", "position": i, "guild_id": guild_id,
                 "permission_overwrites": [], "nsfw": False, "parent_id": None}
                for i, c in enumerate(channel_ids)]
    return {
        "id": guild_id, "name": name, "icon": None, "owner_id": "1", "member_count": 2, "large": False,
        "premium_tier": 0, "features": [], "emojis": [], "stickers": [], "threads": [],
        "roles": [{"id": guild_id, "name": "@everyone", "permissions": "0", "position": 0, "color": 0,
                   "hoist": False, "managed": False, "mentionable": False, "flags": 0}],
        "channels": channels, "members": [member(bot)], "voice_states": [], "presences": [],
    }


def role(role_id: str, name: str, position: int) -> dict:
    """A guild role, as GUILD_CREATE lists it."""
    return {"id": role_id, "name": name, "permissions": "0", "position": position, "color": 0, "hoist": False,
            "managed": False, "mentionable": True, "flags": 0}


def thread(thread_id: str, parent_id: str, guild_id: str) -> dict:
    """A public thread under ``parent_id``, as a guild lists it."""
    return {
        "id": thread_id, "type": 11, "guild_id": guild_id, "parent_id": parent_id, "name": f"thread-{thread_id}",
        "owner_id": "42", "member_count": 2, "message_count": 1, "rate_limit_per_user": 0, "flags": 0,
        "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": TIMESTAMP,
                            "locked": False}}


def command_interaction(name: str, options: list[dict] = (), *, author: User, channel_id: str = CHANNEL_ID,
                        guild_id: str | None = GUILD_ID, permissions: int = 0, attachments: list[Attachment] = (),
                        size_limit: int = 10 * 2**20, roles: list[str] = (),
                        users: list[User] = ()) -> Interaction:
    """An INTERACTION_CREATE for the slash command ``name`` (guild_id=None: in a DM); ``users``: those its
    user options name (value: the id), which Discord sends resolved."""
    iid = snowflake()
    data: dict[str, Any] = {"id": snowflake(), "name": name, "type": 1, "options": list(options)}
    if attachments:
        data["resolved"] = {"attachments": {a["id"]: a for a in attachments}}
    if users:
        data.setdefault("resolved", {})["users"] = {u["id"]: u for u in users}
    channel = {"id": channel_id, "type": 0 if guild_id else 1, "name": f"chan-{channel_id}"}
    payload: Interaction = {
        "id": iid, "application_id": APP_ID, "type": 2, "token": f"itoken-{iid}", "version": 1, "data": data,
        "channel": channel, "channel_id": channel_id, "app_permissions": str(ALL_PERMISSIONS), "locale": "en-US",
        "entitlements": [], "authorizing_integration_owners": {"0": guild_id} if guild_id else {"1": author["id"]},
        "context": 0 if guild_id else 1, "attachment_size_limit": size_limit}
    if guild_id:
        channel["guild_id"] = data["guild_id"] = payload["guild_id"] = guild_id
        payload["member"] = member(author, permissions, roles)
    else:
        payload["user"] = author
    return payload


def option(name: str, value: Any, kind: int = 3) -> dict:
    """An application-command option: 3 string, 4 integer, 6 user (value = user id), 11 attachment (value =
    attachment id)."""
    return {"name": name, "type": kind, "value": value}


def subcommand(name: str, options: list[dict] = ()) -> dict:
    """A subcommand's option (type 1): ``/admin block user:42`` is ``admin`` with ``subcommand("block", ...)``."""
    return {"name": name, "type": 1, "options": list(options)}
