"""A loopback fake of Discord's REST API and gateway; discord.py runs against it unmodified.

    async with FakeDiscord() as discord_fake:          # REST, CDN and gateway on 127.0.0.1:PORT
        discord_fake.patch(monkeypatch)                 # Route.BASE and DEFAULT_GATEWAY point here
        ...start the bot with discord_fake.token...
        msg = message(discord_fake, CHANNEL, f"<@{BOT_ID}> draw a cat", mentions=[discord_fake.bot_user])
        await discord_fake.push("MESSAGE_CREATE", msg)
        req = await discord_fake.wait_for_request("POST", rf"^/channels/{CHANNEL}/messages$")
        assert req.json["content"] == "..." and req.files[0].data.startswith(b"\\x89PNG")

Every request is recorded (``requests``): method, API path (without ``/api/v10``), JSON
body or multipart parts (``payload_json`` parsed into ``json``, file parts with their
bytes). Leaving the ``async with`` block fails the test if the bot hit a route this fake
does not implement, or logged an error (discord.py logs handler exceptions instead of
raising them); ``expect_error(text)`` allows one that a test provokes.

Payloads are built from Discord's real JSON shapes: ``tests/fakes/discord_payloads.py``.

Message edits are rate-limited per channel as on Discord (5 per 5 s): beyond that the
fake answers 429 with ``retry_after`` and ``Retry-After``, as Discord does; ``rate_limited``
keeps those requests and ``edit_limit`` changes the limit.

Buttons: every message the bot posts is answered, and recorded (the request's ``response``), with
its components, as Discord keeps them, so a test presses one as a user would, even on a restarted bot:

    posted = await discord_fake.wait_for_request("POST", ANSWER, where=with_files)
    await discord_fake.push("INTERACTION_CREATE", discord_fake.press(posted, "vc:reroll:img1:...", author=bob))
    form = await discord_fake.wait_for_request("POST", r"/interactions/.*/callback",
                                               where=lambda r: r.json["type"] == 9)
    await discord_fake.push("INTERACTION_CREATE", discord_fake.submit(form, {"instruction": "make it winter"}))

The interaction callback answers as Discord does for each response type: 4 (a message,
ephemeral with flag 64), 5 (deferred, "thinking"), 6 (deferred update: no message), 8 (autocomplete
choices, for an ``autocomplete`` interaction of type 4), 9 (a modal).
As on Discord, an interaction must get its callback within 3 s of being sent: a later one is refused
(404 Unknown interaction), and leaving the ``async with`` fails the test if a pushed interaction got
none in time (the user saw "This interaction failed"); ``answered(interaction)`` waits for it.
``notified(request)`` lists the users a posted message notifies (its mentions that allowed_mentions lets through).

The gateway keeps a session as Discord does: each IDENTIFY starts one (a new session id, its sequence from 1),
every dispatch gets the session's next ``s``. ``drop_connection(code)`` closes the socket; events pushed
while the client is away are kept in the session. A resumable close (4000, 1001, ...): the client RESUMEs
with its last ``s`` and the fake replays the events after it, then RESUMED. A non-resumable one (4007 invalid
seq, 4009 session timed out), or ``invalidate_session()`` (op 9, d=false): the session is over, a RESUME is
answered op 9 d=false, the client IDENTIFYs anew, and the events pushed in between are never delivered
(``lost``), as on Discord.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

import discord
import yarl
from aiohttp import WSMsgType, web

from tests.fakes.discord_requests import Part, Request, notified  # noqa: F401 (re-exported for tests)
from tests.fakes.loopback import LoopbackServer
from tests.fakes.discord_payloads import (API, APP_ID, BOT_ID, CHANNEL_ID, EPHEMERAL, GUILD_ID, TIMESTAMP, Attachment,
                                          Interaction, User, command_interaction, guild_create, role, snowflake, thread,
                                          user)


ANSWER_WITHIN_S = 3.0  # an interaction's first callback must come this soon
HEARTBEAT_ACK_S = 0.05  # Discord's heartbeat ACK comes a round trip later
NOT_RESUMABLE = (4007, 4009)  # close codes after which Discord refuses a RESUME: the client must IDENTIFY


# --- the recorder ---------------------------------------------------------------------


class _ErrorLog(logging.Handler):
    """Keeps ERROR records of the watched loggers (discord.py's 'Ignoring exception in ...', the bot's)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --- the server -------------------------------------------------------------------------


class FakeDiscord(LoopbackServer):
    """Discord's REST API, CDN and gateway on one loopback port (an async context manager)."""

    def __init__(self, *, token: str = "fake-bot-token", watch: tuple[str, ...] = ("discord", "bot.adapters")):
        self.token = token
        self.bot_user = user(BOT_ID, "imagebot", bot=True)
        self.guilds: dict[str, dict] = {}
        self.requests: list[Request] = []
        self.unimplemented: list[str] = []
        self.gateway_received: list[dict] = []  # every frame the client sent (op, d)
        self.gateway_paths: list[str] = []  # /gateway, then /resume after a reconnect
        self.identified = asyncio.Event()
        self.base = ""
        self._files: dict[str, tuple[bytes, str, float]] = {}  # CDN path -> (bytes, content type, delay)
        self._interactions: dict[str, dict] = {}  # id -> the interactions built here (their callbacks echo them)
        self._channel_of: dict[str, str] = {}  # interaction token -> its channel (where its webhook messages are)
        self._pushed: dict[str, float] = {}  # interaction id -> when it was sent to the bot
        self._answered: dict[str, float] = {}  # interaction id -> when its (first) callback arrived
        self._arrived = asyncio.Condition()
        self._ws: web.WebSocketResponse | None = None
        self._ws_lock = asyncio.Lock()
        self._seq = self._sent_live = 0  # the session's last s, and the last one sent to the client
        self.session_id: str | None = None
        self._sessions = 0
        self._resumable = False
        self._events: list[dict] = []  # the dispatches of the current session, for a RESUME to replay
        self._live: web.WebSocketResponse | None = None  # the socket identified or resumed: dispatches go there
        self.lost: list[dict] = []  # dispatches of a session that ended before the client got them
        self.replayed: list[int] = []  # the s of every dispatch sent again on a RESUME
        self._errors, self._watch, self._expected = _ErrorLog(), watch, []
        self.edit_limit = (5, 5.0)  # message edits per channel: (count, seconds)
        self.rate_limited: list[Request] = []
        self._edits: dict[str, list[float]] = {}
        self.add_guild(GUILD_ID, "Test server", [CHANNEL_ID])

    # -- setup

    def add_guild(self, guild_id: str, name: str, channel_ids: list[str]) -> None:
        self.guilds[guild_id] = guild_create(guild_id, name, channel_ids, self.bot_user)

    def add_channel(self, channel_id: str, guild_id: str = GUILD_ID, *, nsfw: bool = False) -> None:
        """A text channel; ``nsfw``: marked age-restricted."""
        channels = self.guilds[guild_id]["channels"]
        channels.append({**channels[0], "id": channel_id, "name": f"chan-{channel_id}", "position": len(channels),
                         "nsfw": nsfw})

    def add_role(self, role_id: str, name: str, guild_id: str = GUILD_ID) -> None:
        """A role of the guild (a member's ``roles`` name it; discord.py knows only the guild's roles)."""
        roles = self.guilds[guild_id]["roles"]
        roles.append(role(role_id, name, len(roles)))

    def add_thread(self, thread_id: str, parent_id: str = CHANNEL_ID, guild_id: str = GUILD_ID) -> None:
        """A public thread under ``parent_id`` (threads are channels with their own id)."""
        self.guilds[guild_id]["threads"].append(thread(thread_id, parent_id, guild_id))

    def add_file(self, data: bytes, filename: str, content_type: str | None = None, *,
                 channel_id: str = CHANNEL_ID, size: int | None = None, delay_s: float = 0.0) -> Attachment:
        """Serve ``data`` on the fake CDN (``delay_s``: that slowly); returns the attachment payload
        (``size`` may lie, for limit tests)."""
        att_id = snowflake()
        path = f"/attachments/{channel_id}/{att_id}/{filename}"
        self._files[path] = (data, content_type or "application/octet-stream", delay_s)
        att: Attachment = {"id": att_id, "filename": filename, "size": len(data) if size is None else size,
                           "url": f"{self.base}{path}?ex=signed", "proxy_url": f"{self.base}{path}?ex=proxy"}
        if content_type:
            att["content_type"] = content_type
        return att

    def interaction(self, name: str, options: list[dict] = (), *, author: User | None = None,
                    channel_id: str = CHANNEL_ID, guild_id: str | None = GUILD_ID, permissions: int = 0,
                    attachments: list[Attachment] = (), size_limit: int = 10 * 2**20, roles: list[str] = (),
                    users: list[User] = ()) -> Interaction:
        """An INTERACTION_CREATE for the slash command ``name`` (guild_id=None: in a DM)."""
        payload = command_interaction(name, options, author=author or user("4000"), channel_id=channel_id,
                                      guild_id=guild_id, permissions=permissions, attachments=attachments,
                                      size_limit=size_limit, roles=roles, users=users)
        self._channel_of[payload["token"]] = channel_id
        return payload

    def autocomplete(self, name: str, options: list[dict], focused: str, *, author: User | None = None) -> Interaction:
        """An APPLICATION_COMMAND_AUTOCOMPLETE (type 4): ``author`` is typing the option ``focused`` of the slash
        command ``name`` (its value so far in ``options``); the bot answers with type 8 and its choices."""
        typed = [{**o, "focused": True} if o["name"] == focused else o for o in options]
        payload = self.interaction(name, typed, author=author)
        payload["type"] = 4
        self._interactions[payload["id"]] = payload
        return payload

    def press(self, posted: Request | dict, custom_id: str, *, author: User | None = None,
              guild_id: str | None = GUILD_ID, permissions: int = 0, roles: list[str] = ()) -> Interaction:
        """A MESSAGE_COMPONENT interaction (type 3): ``author`` clicks the button ``custom_id`` on a message the
        bot posted (a recorded request, or the message object); Discord sends the whole message along."""
        message = posted.response if isinstance(posted, Request) else posted
        buttons = [c for row in message["components"] for c in row["components"]]
        assert any(b.get("custom_id") == custom_id for b in buttons), f"no button {custom_id} on {message['id']}"
        payload = self.interaction("", author=author, channel_id=message["channel_id"], guild_id=guild_id,
                                   permissions=permissions, roles=roles)
        payload.update(type=3, message=message, data={"custom_id": custom_id, "component_type": 2})
        self._interactions[payload["id"]] = payload
        return payload

    def submit(self, form: Request, values: dict[str, str], *, author: User | None = None) -> Interaction:
        """A MODAL_SUBMIT interaction (type 5) for the modal the bot opened with callback ``form`` (type 9),
        with ``values`` typed into its text inputs (by custom_id); the message of the button comes along."""
        opened = self._interactions[form.path.split("/")[2]]
        modal = form.json["data"]
        rows = [{"type": 1, "components": [{"type": 4, "custom_id": c["custom_id"], "value": values[c["custom_id"]]}
                                           for c in row["components"] if c["custom_id"] in values]}
                for row in modal["components"]]
        payload = self.interaction("", author=author or (opened.get("member") or {}).get("user") or opened["user"],
                                   channel_id=opened["channel_id"], guild_id=opened.get("guild_id"))
        payload.update(type=5, message=opened["message"], data={"custom_id": modal["custom_id"], "components": rows})
        self._interactions[payload["id"]] = payload
        return payload

    def patch(self, monkeypatch) -> None:
        """Point discord.py at this fake for one test."""
        monkeypatch.setattr(discord.http.Route, "BASE", f"{self.base}{API}")
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(f"{self.ws_base}/gateway"))

    @property
    def ws_base(self) -> str:
        return self.base.replace("http://", "ws://")

    # -- lifecycle

    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 2**20)
        for method, path, handler in (
            ("GET", "/gateway", self._gateway),
            ("GET", "/resume", self._gateway),
            ("GET", "/attachments/{tail:.+}", self._cdn),
            ("GET", f"{API}/users/@me", self._me),
            ("GET", f"{API}/oauth2/applications/@me", self._application),
            ("PUT", f"{API}/applications/{{app}}/commands", self._sync),
            ("PUT", f"{API}/applications/{{app}}/guilds/{{guild}}/commands", self._sync),
            ("POST", f"{API}/channels/{{channel}}/typing", self._no_content),
            ("POST", f"{API}/channels/{{channel}}/messages", self._create_message),
            ("PATCH", f"{API}/channels/{{channel}}/messages/{{message}}", self._edit_message),
            ("DELETE", f"{API}/channels/{{channel}}/messages/{{message}}", self._no_content),
            ("POST", f"{API}/interactions/{{id}}/{{token}}/callback", self._callback),
            ("POST", f"{API}/webhooks/{{app}}/{{token}}", self._followup),
            ("PATCH", f"{API}/webhooks/{{app}}/{{token}}/messages/{{message}}", self._edit_original),
            ("DELETE", f"{API}/webhooks/{{app}}/{{token}}/messages/{{message}}", self._no_content),
            ("*", "/{tail:.*}", self._unimplemented),  # last: anything else is recorded as unimplemented
        ):
            app.router.add_route(method, path, handler)
        self.base = await self._serve(app)
        for name in self._watch:
            logging.getLogger(name).addHandler(self._errors)
        return self

    async def stop(self) -> None:
        for name in self._watch:
            logging.getLogger(name).removeHandler(self._errors)
        if self._ws is not None:
            await self._ws.close()
        await self._close()

    async def _before_stop(self) -> None:
        for iid in self._pushed:  # each got its callback in time, or the user saw "This interaction failed"
            await self.answered({"id": iid})

    def _after_stop(self) -> None:
        self.check()

    async def answered(self, interaction: dict) -> Request:
        """The callback of a pushed interaction, which must come within 3 s of its sending, as on Discord."""
        iid, sent = interaction["id"], self._pushed[interaction["id"]]
        left = ANSWER_WITHIN_S - (time.monotonic() - sent)
        try:
            return await self.wait_for_request("POST", rf"^/interactions/{iid}/[^/]+/callback$", where=_in_time,
                                               timeout=max(left, 0.01))
        except AssertionError:
            raise AssertionError(f"interaction {iid} ({interaction.get('data', {}).get('custom_id') or 'a command'}) "
                                 f"got no callback within {ANSWER_WITHIN_S:g} s: the user sees "
                                 f"\"This interaction failed\"") from None

    def expect_error(self, text: str) -> None:
        """Allow logged errors containing ``text`` (a test that provokes one)."""
        self._expected.append(text)

    @property
    def logged_errors(self) -> list[logging.LogRecord]:
        """ERROR records of the watched loggers, less those allowed by expect_error."""
        return [r for r in self._errors.records if not any(t in r.getMessage() for t in self._expected)]

    def check(self) -> None:
        """Fail on unimplemented routes and on errors the bot logged."""
        assert not self.unimplemented, f"the bot called routes the fake does not implement: {self.unimplemented}"
        unexpected = self.logged_errors
        assert not unexpected, "the bot logged errors:\n" + "\n".join(
            f"{r.name}: {r.getMessage()}\n{logging.Formatter().formatException(r.exc_info) if r.exc_info else ''}"
            for r in unexpected)

    # -- the gateway

    async def push(self, event: str, data: dict) -> float:
        """Send a dispatch (op 0) to the connected client; returns time.monotonic() at sending. While the client
        is away (a dropped connection) it is kept in the session, for a RESUME to replay."""
        if self.session_id is None:
            await asyncio.wait_for(self.identified.wait(), 10)
        sent = await self._send({"op": 0, "t": event, "d": data})
        if event == "INTERACTION_CREATE":
            self._pushed[data["id"]] = sent
        return sent

    async def drop_connection(self, code: int = 4000) -> None:
        """Close the gateway socket as Discord does when it restarts: after a resumable code the client
        RESUMEs; after 4007 or 4009 the session is over and the client must IDENTIFY again."""
        async with self._ws_lock:
            self.identified.clear()
            self._live = None
            if code in NOT_RESUMABLE:
                self._end_session()
        await self._ws.close(code=code, message=b"fake: reconnect")

    async def invalidate_session(self) -> None:
        """Op 9 (Invalid Session) with d=false on the open socket: the session is over, the client IDENTIFYs."""
        async with self._ws_lock:
            self.identified.clear()
            self._live = None
            self._end_session()
            await self._ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))

    def _end_session(self) -> None:
        """No RESUME of it any more: what the client never got of it is lost (counted at the next IDENTIFY)."""
        self._resumable = False

    async def _send(self, frame: dict) -> float:
        async with self._ws_lock:
            sent = time.monotonic()
            if frame["op"] == 0:
                self._seq += 1
                frame["s"] = self._seq
                self._events.append(frame)
                if self._live is None or self._live.closed:
                    return sent  # the client is away: kept for a RESUME
                self._sent_live = self._seq
            await self._ws.send_str(json.dumps(frame))
            return sent

    async def _send_now(self, ws: web.WebSocketResponse, frame: dict) -> None:
        """A frame outside the session's sequence (hello, heartbeat ack, invalid session) on ``ws``."""
        async with self._ws_lock:
            await ws.send_str(json.dumps(frame))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        self.gateway_paths.append(request.path)
        await self._send_now(ws, {"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.gateway_received.append(frame)
            op = frame.get("op")
            if op == 1:  # acked after a network's round trip: discord.py times the beat only once it is sent,
                await asyncio.sleep(HEARTBEAT_ACK_S)  # so an instant ack reads as "Can't keep up, 41.3s behind"
                await self._send_now(ws, {"op": 11, "d": None, "s": None, "t": None})
            elif op == 2:
                assert frame["d"]["token"] == self.token, "IDENTIFY with the wrong token"
                await self._ready(ws)
            elif op == 6:
                await self._resume(ws, frame["d"])
        return ws

    async def _resume(self, ws: web.WebSocketResponse, d: dict) -> None:
        """Replay the session's dispatches after the client's ``seq``, then RESUMED; a session that is over
        (or another one) is refused with op 9 d=false, as Discord does."""
        assert d["token"] == self.token, "RESUME with the wrong token"
        async with self._ws_lock:
            if not self._resumable or d.get("session_id") != self.session_id:
                await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
                return
            for frame in self._events:
                if frame["s"] > (d.get("seq") or 0):
                    self.replayed.append(frame["s"])
                    await ws.send_str(json.dumps(frame))
            self._live, self._sent_live = ws, self._seq
        await self._send({"op": 0, "t": "RESUMED", "d": {}})
        self.identified.set()

    async def _ready(self, ws: web.WebSocketResponse) -> None:
        async with self._ws_lock:
            # the previous session is over (an IDENTIFY ends one that could still resume): Discord never
            # sends what its client did not get
            self.lost += [f for f in self._events if f["s"] > self._sent_live]
            self._sessions += 1
            self.session_id = f"fake-session-{self._sessions}"
            self._seq, self._sent_live, self._events, self._resumable, self._live = 0, 0, [], True, ws
        await self._send({"op": 0, "t": "READY", "d": {
            "v": 10, "user": self.bot_user, "session_id": self.session_id, "private_channels": [],
            "guilds": [{"id": g, "unavailable": True} for g in self.guilds],
            "resume_gateway_url": f"{self.ws_base}/resume", "application": {"id": APP_ID, "flags": 0}}})
        for guild in self.guilds.values():
            await self._send({"op": 0, "t": "GUILD_CREATE", "d": guild})
        self.identified.set()

    # -- waiting

    async def wait_for_request(self, method: str, path: str, *, timeout: float = 10.0,
                               where=None, n: int = 1) -> Request:
        """The n-th recorded request with this method whose path matches the regex ``path``."""
        return (await self.wait_for_requests(method, path, n, timeout=timeout, where=where))[n - 1]

    async def wait_for_requests(self, method: str, path: str, n: int, *, timeout: float = 10.0,
                                where=None) -> list[Request]:
        """The first n matching requests, waiting (event-driven) until they have arrived."""

        def found() -> list[Request]:
            return self.matching(method, path, where)

        async with self._arrived:
            try:
                await asyncio.wait_for(self._arrived.wait_for(lambda: len(found()) >= n), timeout)
            except TimeoutError:
                raise AssertionError(f"{len(found())} of {n} {method} {path} in {timeout} s; "
                                     f"requests: {self.requests}") from None
        return found()[:n]

    def matching(self, method: str, path: str, where=None) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(path, r.path)
                and (where is None or where(r))]

    # -- recording

    async def _record(self, request: web.Request) -> Request:
        path = request.path.removeprefix(API)
        rec = Request(request.method, path, dict(request.query), dict(request.headers), at=time.monotonic())
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                data = bytes(await part.read())
                rec.parts.append(Part(part.name or "", part.filename, part.headers.get("Content-Type"), data))
                if part.name == "payload_json":
                    rec.json = json.loads(data)
        elif request.content_type == "application/x-www-form-urlencoded":
            rec.json = dict(await request.post())
        elif request.can_read_body:
            raw = await request.read()
            rec.json = json.loads(raw) if raw and request.content_type == "application/json" else None
        async with self._arrived:
            self.requests.append(rec)
            self._arrived.notify_all()
        return rec

    # -- REST routes

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _me(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        return _json({**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0})

    async def _application(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _json({"id": APP_ID, "name": "imagebot", "icon": None, "description": "", "bot_public": True,
                      "bot_require_code_grant": False, "verify_key": "00", "flags": 0, "team": None,
                      "owner": user("1", "owner"), "summary": "", "rpc_origins": []})

    async def _sync(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        return _json([{**c, "id": snowflake(), "application_id": APP_ID, "version": "1"} for c in rec.json])

    async def _no_content(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=204)

    def _message_out(self, rec: Request, channel_id: str, message_id: str | None = None) -> dict:
        """The message object Discord answers with (the bot as author, attachments from the file parts)."""
        body = rec.json or {}
        atts = [{"id": snowflake(), "filename": p.filename, "size": len(p.data), "url": f"{self.base}/x",
                 "proxy_url": f"{self.base}/x"} for p in rec.files]
        out = {"id": message_id or snowflake(), "type": 19 if body.get("message_reference") else 0,
               "channel_id": channel_id, "author": self.bot_user, "content": body.get("content") or "",
               "timestamp": TIMESTAMP, "edited_timestamp": None, "tts": False, "mention_everyone": False,
               "mentions": [], "mention_roles": [], "attachments": atts, "embeds": [], "pinned": False,
               "flags": int(body.get("flags") or 0), "components": body.get("components") or []}
        if body.get("message_reference"):
            out["message_reference"] = body["message_reference"]
        return out

    async def _create_message(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        rec.response = self._message_out(rec, request.match_info["channel"])
        return _json(rec.response)

    async def _edit_message(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        count, per_s = self.edit_limit
        now, channel = time.monotonic(), request.match_info["channel"]
        recent = [t for t in self._edits.get(channel, []) if now - t < per_s]
        if len(recent) >= count:
            self._edits[channel] = recent
            self.rate_limited.append(rec)
            wait = round(recent[0] + per_s - now, 3)
            return _json({"message": "You are being rate limited.", "retry_after": wait, "global": False}, 429,
                         {"Retry-After": str(max(1, int(wait + 0.999))), "Via": "1.1 google",
                          "X-RateLimit-Scope": "user"})
        self._edits[channel] = [*recent, now]
        return _json(self._message_out(rec, request.match_info["channel"], request.match_info["message"]))

    async def _callback(self, request: web.Request) -> web.Response:
        iid, now = request.match_info["id"], time.monotonic()
        if iid in self._answered or now - self._pushed.get(iid, now) > ANSWER_WITHIN_S:
            rec = await self._record(request)  # only one callback, only within 3 s (the user saw the failure)
            rec.response = {"message": "Unknown interaction", "code": 10062}
            return _json(rec.response, 404)
        self._answered[iid] = now
        rec = await self._record(request)
        kind, data = rec.json["type"], rec.json.get("data") or {}
        interaction = {"id": request.match_info["id"],
                       "type": self._interactions.get(request.match_info["id"], {}).get("type", 2)}
        if kind in (6, 8, 9):  # deferred update (no message of its own), autocomplete choices, or a modal
            return _json({"interaction": interaction, "resource": {"type": kind}})
        message_id = snowflake()
        message = {**self._message_out(rec, CHANNEL_ID, message_id), "content": data.get("content") or "",
                   "flags": int(data.get("flags") or 0) | (128 if kind == 5 else 0)}  # 128: loading
        return _json({"interaction": {**interaction, "response_message_id": message_id,
                                      "response_message_loading": kind == 5,
                                      "response_message_ephemeral": bool(message["flags"] & EPHEMERAL)},
                      "resource": {"type": kind, "message": message}})

    async def _followup(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        channel = self._channel_of.get(request.match_info["token"], CHANNEL_ID)
        rec.response = {**self._message_out(rec, channel), "webhook_id": APP_ID}
        return _json(rec.response)

    async def _edit_original(self, request: web.Request) -> web.Response:
        """The interaction's response message, edited (answered as it is now: its content and components)."""
        rec = await self._record(request)
        channel = self._channel_of.get(request.match_info["token"], CHANNEL_ID)
        rec.response = {**self._message_out(rec, channel, snowflake()), "webhook_id": APP_ID}
        return _json(rec.response)

    async def _cdn(self, request: web.Request) -> web.Response:
        await self._record(request)
        found = self._files.get(request.path)
        if found is None:
            return web.Response(status=404, text="not found")
        await asyncio.sleep(found[2])
        return web.Response(body=found[0], headers={"Content-Type": found[1]})

    async def _unimplemented(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.unimplemented.append(f"{request.method} {request.path}")
        return _json({"message": "404: Not Found (not implemented by the fake)", "code": 0}, 404)


def _in_time(callback: Request) -> bool:
    return (callback.response or {}).get("code") != 10062


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """discord.py only parses bodies whose Content-Type is exactly application/json (no charset)."""
    return web.Response(body=json.dumps(body).encode(), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})
