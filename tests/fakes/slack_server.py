"""A loopback fake of Slack's Web API and Socket Mode, for the real slack-bolt / slack_sdk clients.

    async with FakeSlack() as slack:                  # http://127.0.0.1:PORT, ws://127.0.0.1:PORT/link/
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.base_url)
        ...                                           # start the bot, then
        f = slack.add_file("house.jpg", jpeg_bytes, "image/jpeg")
        await slack.push_event(mention("C1", "U1", "<@UBOT> look", files=[f]))
        call = await slack.wait_for("files.completeUploadExternal")

Every Web API call is recorded in ``slack.calls`` (JSON and form bodies both parsed);
``response_url`` posts appear as method "response_url". Envelopes pushed over the
websocket and the client's acks are kept by envelope id.

Payloads are built from Slack's real JSON shapes: ``tests/fakes/slack_payloads.py``; a test's
``LoggedErrors`` (``tests/fakes/logged_errors.py``) fails it on the bot's logged errors.

Buttons: ``press`` clicks a button of a message the bot posted (a block_actions payload
in an "interactive" envelope, as Socket Mode delivers it); ``views.open`` opens a
modal (its trigger_id must come from an interaction of the last 3 seconds, as on
Slack) and ``submit`` sends its view_submission with what the user typed. Leaving the ``async with``
block fails the test if the client hit a method or route the fake does not serve,
broke Slack's thread rules, or an envelope was not acknowledged within 3 seconds.

As strict as Slack where the bot could go wrong:
- threads: a reply carries ``thread_ts`` = its parent's ``ts``, and the parent is a
  top-level message of that channel (pushed events are checked too; ``human_message``
  adds one people wrote without mentioning the bot); ``chat.update``/``chat.delete`` of
  an unknown message answer ``message_not_found``;
- rate limits: ``chat.update`` and ``chat.delete`` are Tier 3 (50 a minute per
  workspace), ``chat.postMessage`` about one a second per channel with bursts; beyond
  them, HTTP 429 with ``Retry-After`` (``rate_limit`` changes a limit);
- slash commands carry no ``thread_ts``, even when typed in a thread;
- reactions (``slack_reactions.py``): ``reactions.add``/``remove`` on a message that exists, with Slack's errors;
- user groups (``add_usergroup``): ``usergroups.list`` lists members only with ``include_users``, disabled
  groups only with ``include_disabled``, and answers ``missing_scope`` while ``usergroups_scope`` is off.

Connections, as Socket Mode behaves: ``drop_socket()`` closes the newest websocket without warning (acks
still on their way are lost with it, even sent on the next one); ``disconnect(reason)`` sends the
``disconnect`` envelope Slack sends before it moves a connection (``refresh_requested``, ``warning``),
then closes that socket ``linger_s`` later. Envelopes
pushed while no socket is open wait for the next one. Slack retries an ``events_api`` envelope the client did
not ack, on the next connection: a new envelope id, the same event_id, ``retry_attempt`` one more and
``retry_reason`` "timeout" (``retries`` keeps them); interactive envelopes are not retried.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

from tests.fakes.loopback import LoopbackServer
from tests.fakes.slack_payloads import (APP_ID, BOT_ID, BOT_USER, TEAM, Event, File, UserRef, block_actions,
                                        event_callback, hosted_file, new_ts, slash_command, user_info, user_ref,
                                        usergroup, view_submission)
from tests.fakes.slack_reactions import Reactions

ACK_LIMIT_S = 3.0
LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"


# --- records --------------------------------------------------------------------------


@dataclass
class Call:
    method: str  # "chat.postMessage", ..., or "response_url"
    body: dict[str, Any]
    token: str | None = None
    at: float = field(default_factory=time.monotonic)
    response: dict[str, Any] = field(default_factory=dict)  # what the fake answered

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


@dataclass
class Envelope:
    envelope_id: str
    type: str
    payload: dict[str, Any]
    sent_at: float
    acked_at: float | None = None
    ack_payload: dict[str, Any] | None = None
    socket: int = 0  # which connection (index in FakeSlack._sockets) carried it
    retry_attempt: int = 0
    retried: bool = False  # never acked, so Slack sent it again (the retry is checked in its place)

    @property
    def ack_delay(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.sent_at


@dataclass
class StoredFile:
    data: bytes
    serve: Literal["file", "login_page"]
    delay_s: float = 0.0  # a slow download


# method -> (calls, per seconds, counted per "team" or per "channel"): Slack's published tiers
RATE_LIMITS: dict[str, tuple[int, float, str]] = {
    "chat.update": (50, 60.0, "team"),  # Tier 3
    "chat.delete": (50, 60.0, "team"),  # Tier 3
    "chat.postMessage": (20, 20.0, "channel"),  # "1 per second per channel, short bursts allowed"
    "reactions.add": (50, 60.0, "team"),  # Tier 3
    "reactions.remove": (50, 60.0, "team"),  # Tier 3
}


# --- the server -----------------------------------------------------------------------


class FakeSlack(LoopbackServer):
    """Slack's Web API, file hosting and Socket Mode on 127.0.0.1 (an async context manager)."""

    def __init__(self, *, bot_token: str = "xoxb-fake-bot", app_token: str = "xapp-fake-app"):
        self.bot_token, self.app_token = bot_token, app_token
        self.calls: list[Call] = []
        self.downloads: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.uploads: dict[str, bytes] = {}  # file id -> bytes the client uploaded
        self.envelopes: dict[str, Envelope] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.usergroups: list[dict[str, Any]] = []  # as usergroups.list describes them, members included
        self.usergroups_scope = True  # the bot token has usergroups:read
        self.views: list[dict[str, Any]] = []  # modals the client opened, as views.open answered them
        self._triggers: dict[str, float] = {}  # trigger_id -> when its interaction was sent
        self.unimplemented: list[str] = []
        self.base_url = self.origin = ""
        self._files: dict[str, StoredFile] = {}
        self._ids = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._dropped: set[int] = set()  # indexes of sockets this fake dropped: acks arriving on them are lost
        self.lost_acks: list[str] = []  # envelope ids whose ack arrived on a dropped socket
        self.retries: list[Envelope] = []  # envelopes Slack sent again because they were not acked
        self.disconnects: list[str] = []  # reasons of the disconnect envelopes sent
        self._changed = asyncio.Condition()
        self._background: list[asyncio.Task] = []  # retries waiting for their time, sockets closing later
        self.rate_limits = dict(RATE_LIMITS)
        self.rate_limited: list[Call] = []  # calls answered 429
        self._recent: dict[tuple[str, str], list[float]] = {}
        self.violations: list[str] = []  # broken thread rules
        self.messages: dict[str, dict[str, str | None]] = {}  # channel -> ts -> parent ts (None: top level)
        self.reactions = Reactions(self.messages)  # the bot's reactions on messages
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.postEphemeral": lambda b: {"ok": True, "message_ts": new_ts()},
            "views.open": self._views_open,
            "users.info": self._users_info,
            "usergroups.list": self._usergroups_list,
            "reactions.add": self.reactions.add,
            "reactions.remove": self.reactions.remove,
            "files.getUploadURLExternal": self._upload_url,
            "files.completeUploadExternal": self._complete_upload,
        }

    # -- set up by tests

    def add_user(self, user_id: str, *, is_admin: bool = False, is_owner: bool = False) -> None:
        self.users[user_id] = user_info(user_id, is_admin=is_admin, is_owner=is_owner)

    def add_usergroup(self, group_id: str, handle: str, users: list[str], *, disabled: bool = False) -> None:
        self.usergroups.append(usergroup(group_id, handle, users, disabled=disabled))

    def add_file(self, name: str, data: bytes, mimetype: str, *,
                 serve: Literal["file", "login_page"] = "file", delay_s: float = 0.0) -> File:
        """Host a file at url_private; ``login_page`` answers with Slack's HTML sign-in page instead;
        ``delay_s`` makes its download that slow."""
        file_id = f"F{next(self._ids):06d}"
        self._files[file_id] = StoredFile(data, serve, delay_s)
        return hosted_file(file_id, name, len(data), mimetype, f"{self.origin}/files-pri/{TEAM}-{file_id}/{name}")

    async def push(self, kind: str, payload: dict[str, Any], *, envelope_id: str | None = None,
                   retry_attempt: int = 0, retry_reason: str = "") -> str:
        """Send an envelope over the newest Socket Mode connection; returns its id."""
        ws = await self.connected()
        envelope_id = envelope_id or f"env-{next(self._ids)}"
        body = {"envelope_id": envelope_id, "type": kind, "payload": payload,
                "accepts_response_payload": kind != "events_api", "retry_attempt": retry_attempt,
                "retry_reason": retry_reason}
        self.envelopes[envelope_id] = Envelope(envelope_id, kind, payload, time.monotonic(),
                                               socket=self._sockets.index(ws), retry_attempt=retry_attempt)
        await ws.send_str(json.dumps(body))
        return envelope_id

    async def drop_socket(self) -> None:
        """The newest Socket Mode connection drops without warning (a network blip, a Slack host going away)."""
        ws = await self.connected()
        self._dropped.add(self._sockets.index(ws))
        await ws.close(code=1006, message=b"fake: connection lost")

    async def disconnect(self, reason: str = "refresh_requested", linger_s: float = 1.0) -> None:
        """Slack's ``disconnect`` envelope on the newest connection; the socket is closed ``linger_s`` later
        (an ack sent on it until then still counts)."""
        ws = await self.connected()
        self.disconnects.append(reason)
        await ws.send_str(json.dumps({"type": "disconnect", "reason": reason,
                                      "debug_info": {"host": "fake-host", "approximate_connection_time": 18060}}))

        async def close_later() -> None:
            await asyncio.sleep(linger_s)
            self._dropped.add(self._sockets.index(ws))
            await ws.close(code=1001, message=b"fake: disconnected")

        self._background.append(asyncio.create_task(close_later()))

    async def _retry_unacked(self) -> None:
        """Once a new connection is open: each events_api envelope of a closed socket still un-acked when its
        3 s are over is sent again on the newest connection (its retry is then the one that must be acked)."""
        waiting = [e for e in self.envelopes.values() if e.type == "events_api" and e.acked_at is None
                   and not e.retried and self._sockets[e.socket].closed]
        for env in sorted(waiting, key=lambda e: e.sent_at):
            await asyncio.sleep(max(0.0, env.sent_at + ACK_LIMIT_S - time.monotonic()))
            if env.acked_at is None and not env.retried:
                env.retried = True
                retry = await self.push("events_api", env.payload, retry_attempt=env.retry_attempt + 1,
                                        retry_reason="timeout")
                self.retries.append(self.envelopes[retry])

    def rate_limit(self, method: str, calls: int, per_s: float, scope: str = "team") -> None:
        self.rate_limits[method] = (calls, per_s, scope)

    def human_message(self, channel: str, user: str, text: str) -> str:
        """A top-level message people wrote without mentioning the bot (no event); returns its ts."""
        ts = new_ts()
        self.messages.setdefault(channel, {})[ts] = None
        return ts

    def _place(self, channel: str, ts: str, thread_ts: str | None, what: str) -> None:
        """Record a message at ``ts``; a reply must name a top-level message of the channel as its parent."""
        known = self.messages.setdefault(channel, {})
        if thread_ts and thread_ts != ts and known.get(thread_ts, "missing") is not None:
            self.violations.append(f"{what} in {channel} has thread_ts {thread_ts}, which is not a top-level "
                                   "message there (a reply's thread_ts is its parent's ts)")
        known[ts] = thread_ts if thread_ts and thread_ts != ts else None

    async def push_event(self, event: Event, *, event_id: str | None = None, envelope_id: str | None = None,
                         retry_attempt: int = 0) -> str:
        if not retry_attempt and event["ts"] not in self.messages.get(event["channel"], {}):
            self._place(event["channel"], event["ts"], event.get("thread_ts"), f"pushed event {event['type']}")
        assert not self.violations, self.violations  # the test built an event Slack would never send
        body = event_callback(event, event_id or f"Ev{next(self._ids):08d}")
        reason = "timeout" if retry_attempt else ""
        return await self.push("events_api", dict(body), envelope_id=envelope_id, retry_attempt=retry_attempt,
                               retry_reason=reason)

    async def push_command(self, command: str, text: str, *, user: str = "U1", channel: str = "C1",
                           channel_name: str = "general") -> str:
        n = next(self._ids)
        payload = slash_command(command, text, user=user, channel=channel, channel_name=channel_name,
                                response_url=f"{self.origin}/commands/{TEAM}/{n}/hook", trigger_id=self._trigger())
        return await self.push("slash_commands", dict(payload))

    async def press(self, posted: Call, action_id: str, *, user: str = "U1") -> str:
        """``user`` clicks the button ``action_id`` on the message the bot posted with ``posted`` (a recorded
        chat.postMessage): a block_actions payload in an "interactive" envelope; returns its id."""
        blocks = posted.get("blocks") or []
        blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
        found = [(b, e) for b in blocks if b.get("type") == "actions" for e in b["elements"]
                 if e.get("action_id") == action_id]
        assert found, f"no button {action_id} in {blocks}"
        block, button = found[0]
        message = {**posted.response["message"], "blocks": blocks}
        n = next(self._ids)
        payload = block_actions(self._user(user), posted["channel"], message, button, block.get("block_id", ""),
                                thread_ts=posted.get("thread_ts"), trigger_id=self._trigger(),
                                response_url=f"{self.origin}/actions/{TEAM}/{n}/hook")
        return await self.push("interactive", payload)

    async def submit(self, view: dict[str, Any], values: dict[str, dict[str, str]], *, user: str = "U1") -> str:
        """``user`` submits the modal ``view`` (as views.open answered it) with ``values``
        ({block_id: {action_id: text}}): a view_submission in an "interactive" envelope; returns its id."""
        payload = view_submission(self._user(user), view, values, trigger_id=self._trigger())
        return await self.push("interactive", payload)

    def _trigger(self) -> str:
        trigger = f"{next(self._ids)}.{TEAM}.trigger"
        self._triggers[trigger] = time.monotonic()
        return trigger

    def _user(self, user: str) -> UserRef:
        return user_ref(user, (self.users.get(user) or {}).get("name") or user.lower())

    # -- looking at what happened

    def called(self, method: str, where: Callable[[Call], bool] | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and (where is None or where(c))]

    async def wait_for(self, method: str, where: Callable[[Call], bool] | None = None,
                       timeout: float = 10.0, count: int = 1) -> Call:
        """The first call to ``method`` matching ``where`` (waits for ``count`` of them)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self.called(method, where)) >= count),
                                       timeout)
            except TimeoutError:
                seen = sorted({c.method for c in self.calls})
                raise AssertionError(f"no {count} x {method} in {timeout} s; methods called: {seen}") from None
        return self.called(method, where)[0]

    async def wait_acked(self, envelope_id: str, timeout: float = ACK_LIMIT_S) -> Envelope:
        env = self.envelopes[envelope_id]
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: env.acked_at is not None), timeout)
            except TimeoutError:
                raise AssertionError(f"envelope {envelope_id} ({env.type}) not acked in {timeout} s") from None
        return env

    @property
    def sockets(self) -> list[web.WebSocketResponse]:
        """Every Socket Mode connection the client opened, oldest first."""
        return list(self._sockets)

    async def connected(self, timeout: float = 10.0) -> web.WebSocketResponse:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: any(not w.closed for w in self._sockets)), timeout)
        return [w for w in self._sockets if not w.closed][-1]

    async def check(self) -> None:
        """What teardown asserts: nothing unimplemented was hit, every envelope acked in time."""
        await asyncio.gather(*(t for t in self._background if not t.done()))  # retries due, sockets closing
        assert not self.unimplemented, f"the client called what the fake does not serve: {self.unimplemented}"
        assert not self.violations, f"the client broke Slack's thread rules: {self.violations}"
        for env in list(self.envelopes.values()):
            if env.retried:
                continue
            if env.acked_at is None:
                left = ACK_LIMIT_S - (time.monotonic() - env.sent_at)
                if left > 0:
                    await self.wait_acked(env.envelope_id, left)
            assert env.ack_delay is not None, f"envelope {env.envelope_id} ({env.type}) was never acked"
            assert env.ack_delay < ACK_LIMIT_S, f"envelope {env.envelope_id} acked after {env.ack_delay:.2f} s"

    # -- lifecycle

    async def start(self) -> FakeSlack:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link/", self._socket)
        app.router.add_get("/files-pri/{team_file}/{name}", self._download)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_post("/commands/{team}/{n}/hook", self._response_url)
        app.router.add_post("/actions/{team}/{n}/hook", self._response_url)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self.origin = await self._serve(app)
        self.base_url = f"{self.origin}/api/"
        return self

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for ws in self._sockets:
            await ws.close()
        await self._close()

    async def _before_stop(self) -> None:
        await self.check()

    async def _record(self, call: Call) -> None:
        self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()

    # -- Web API

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.content_type == "application/json":
            body = await request.json()
        else:
            body = dict(await request.post())
        body = {**request.query, **body}
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else body.pop("token", None)
        call = Call(method, body, token)
        handler = self._methods.get(method)
        if method == "apps.connections.open":
            handler = self._connections_open
            wanted = self.app_token
        else:
            wanted = self.bot_token
        if handler is None:
            self.unimplemented.append(method)
            call.response = {"ok": False, "error": "unknown_method"}
        elif token != wanted:
            call.response = {"ok": False, "error": "invalid_auth"}
        elif (wait := self._over_limit(method, body)) is not None:
            call.response = {"ok": False, "error": "ratelimited"}
            self.rate_limited.append(call)
            await self._record(call)
            return web.json_response(call.response, status=429, headers={"Retry-After": str(wait)})
        else:
            call.response = handler(body)
        await self._record(call)
        return web.json_response(call.response)

    def _over_limit(self, method: str, body: dict) -> int | None:
        """None when the call may go (and counts it); else Slack's Retry-After in whole seconds."""
        if method not in self.rate_limits:
            return None
        calls, per_s, scope = self.rate_limits[method]
        key = (method, body.get("channel", "") if scope == "channel" else TEAM)
        now = time.monotonic()
        recent = [t for t in self._recent.get(key, []) if now - t < per_s]
        if len(recent) >= calls:
            self._recent[key] = recent
            return max(1, math.ceil(recent[0] + per_s - now))
        self._recent[key] = [*recent, now]
        return None

    def _auth_test(self, body: dict) -> dict:
        return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "bot", "team_id": TEAM,
                "user_id": BOT_USER, "bot_id": BOT_ID, "is_enterprise_install": False}

    def _connections_open(self, body: dict) -> dict:
        return {"ok": True, "url": f"ws{self.origin.removeprefix('http')}/link/?ticket=t{next(self._ids)}"}

    def _post_message(self, body: dict) -> dict:
        ts = new_ts()
        self._place(body["channel"], ts, body.get("thread_ts"), "chat.postMessage")
        message = {"type": "message", "text": body.get("text", ""), "user": BOT_USER, "bot_id": BOT_ID, "ts": ts}
        if body.get("blocks"):
            message["blocks"] = json.loads(body["blocks"]) if isinstance(body["blocks"], str) else body["blocks"]
        if body.get("thread_ts"):
            message["thread_ts"] = body["thread_ts"]
        return {"ok": True, "channel": body["channel"], "ts": ts, "message": message}

    def _views_open(self, body: dict) -> dict:
        issued = self._triggers.get(body.get("trigger_id", ""))
        if issued is None:
            return {"ok": False, "error": "invalid_trigger_id"}
        if time.monotonic() - issued > ACK_LIMIT_S:
            return {"ok": False, "error": "expired_trigger_id"}
        view = json.loads(body["view"]) if isinstance(body["view"], str) else body["view"]
        opened = {**view, "id": f"V{next(self._ids):08d}", "team_id": TEAM, "state": {"values": {}}, "hash": "h1",
                  "app_id": APP_ID, "bot_id": BOT_ID, "private_metadata": view.get("private_metadata", "")}
        self.views.append(opened)
        return {"ok": True, "view": opened}

    def _update(self, body: dict) -> dict:
        if body.get("ts") not in self.messages.get(body.get("channel", ""), {}):
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": body["channel"], "ts": body["ts"], "text": body.get("text")}

    def _delete(self, body: dict) -> dict:
        if self.messages.get(body.get("channel", ""), {}).pop(body.get("ts"), "missing") == "missing":
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": body["channel"], "ts": body["ts"]}

    def _users_info(self, body: dict) -> dict:
        user = self.users.get(body.get("user", ""))
        return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}

    def _usergroups_list(self, body: dict) -> dict:
        if not self.usergroups_scope:
            return {"ok": False, "error": "missing_scope", "needed": "usergroups:read", "provided": "chat:write"}
        on = {"1", "true", True}
        groups = [g for g in self.usergroups if body.get("include_disabled") in on or not g["date_delete"]]
        if body.get("include_users") not in on:
            groups = [{k: v for k, v in g.items() if k != "users"} for g in groups]
        return {"ok": True, "usergroups": groups}

    def _upload_url(self, body: dict) -> dict:
        file_id = f"F{next(self._ids):06d}"
        return {"ok": True, "upload_url": f"{self.origin}/upload/{file_id}", "file_id": file_id}

    def _complete_upload(self, body: dict) -> dict:
        files = json.loads(body["files"]) if isinstance(body.get("files"), str) else body.get("files", [])
        missing = [f["id"] for f in files if f["id"] not in self.uploads]
        if missing:
            return {"ok": False, "error": "file_not_found", "files": missing}
        if body.get("channel_id"):
            self._place(body["channel_id"], new_ts(), body.get("thread_ts"), "files.completeUploadExternal")
        return {"ok": True, "files": [{"id": f["id"], "title": f.get("title"), "name": f.get("title")}
                                      for f in files]}

    # -- files, response_url, websocket

    async def _download(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        self.downloads.append((request.path, auth))
        stored = self._files.get(request.match_info["team_file"].split("-", 1)[-1])
        if stored is None:
            return web.Response(status=404, text="file_not_found")
        if stored.delay_s:
            await asyncio.sleep(stored.delay_s)
        if stored.serve == "login_page" or auth != f"Bearer {self.bot_token}":
            return web.Response(body=LOGIN_PAGE, content_type="text/html")  # what Slack really does
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def _upload(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.uploads[request.match_info["file_id"]] = data
        return web.Response(text=f"OK - {len(data)}")

    async def _response_url(self, request: web.Request) -> web.Response:
        await self._record(Call("response_url", await request.json()))
        return web.Response(text="ok")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        index = len(self._sockets) - 1
        await ws.send_str(json.dumps({"type": "hello", "num_connections": len(self._sockets),
                                      "debug_info": {"host": "fake"}, "connection_info": {"app_id": APP_ID}}))
        async with self._changed:
            self._changed.notify_all()
        self._background.append(asyncio.create_task(self._retry_unacked()))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            env = self.envelopes.get(data.get("envelope_id", ""))
            if index in self._dropped or (env is not None and env.acked_at is None and env.socket in self._dropped):
                self.lost_acks.append(data.get("envelope_id", ""))  # its connection died: Slack retries it
                continue
            if env is None:
                self.unimplemented.append(f"websocket message {msg.data[:200]}")
                continue
            env.acked_at, env.ack_payload = time.monotonic(), data.get("payload")
            async with self._changed:
                self._changed.notify_all()
        return ws

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unimplemented.append(f"{request.method} {request.path}")
        return web.Response(status=404, text="not served by FakeSlack")
