"""The Slack adapter: slack-bolt events and slash commands become Turns; Reply becomes Web API calls.

Socket Mode by default (no public URL), HTTP events on ``slack.http_port`` as an
option. Bolt acknowledges every event at once (slash commands call ``ack`` first,
or answer a usage error inside it); the work then runs in a task, so Slack never
waits and never retries for lack of an ack. A retried delivery is dropped by its
``event_id`` (the last ``REMEMBERED_EVENTS`` are remembered).

Conversations: a channel ``slack:C1``; the bot answers a top-level mention in a thread
under it, and that thread continues the channel's conversation (the link is kept in the
session store); a thread people started without the bot is its own ``slack:C1:<thread_ts>``;
a DM is ``slack:dm:U1``. Slash commands carry no thread (Slack sends none): they act on
the channel's conversation, and say so. A message is handed to the core as its event
arrives, its files fetched in its turn, so a conversation keeps the order messages were sent.

Progress is one status message per turn, and answers are posted in the thread (or the DM)
by ``SlackReply`` (``slack_reply.py``); answers are retried after a 429's Retry-After.

The buttons under posted images (``slack_buttons.py``) are block actions and an
Edit modal, acknowledged at once (``_on_button``, ``_on_form``); the core decides
what a press does, and its result is posted as new messages in the thread. Every
button is acked and answered, an older version's too.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack_buttons import EDIT_VIEW, cancel_of, edit_view, meta_of, parse, submitted
from bot.adapters.slack_users import UserGroups, user_ids
from bot.adapters.slack_reply import EDIT_BURST, EDITS_PER_MINUTE, Reactions, SlackReply, mrkdwn
from core.commands import BY_NAME, COMMANDS, HELP, Command, from_words
from core.engine import Core
from core.errors import ELSEWHERE, GENERIC, OLD_BUTTON, BadImage
from core.turn import Attachment, EditBudget, Turn, clean_name
from settings.units import mib

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 8.0  # connect_async() alone retries a refused connection forever
THREADS_NOTE = ("Slash commands act on the channel's conversation, also when typed in a thread: Slack does not tell "
                "me the thread. In a thread, mention me instead; mention me there with \"reset\" to start it over.")
ANSWERED = {None, "file_share", "thread_broadcast"}  # message subtypes that are someone talking to us
# event ids remembered to drop Slack's retries (three at most, within minutes); an older one's retry is answered
REMEMBERED_EVENTS = 5000


class SlackRejected(RuntimeError):
    """Slack refused a token or the connection; the message says which and where to look."""


def _is_dm(channel: str) -> bool:
    """Slack's DM channel ids start with D."""
    return channel.startswith("D")


def _place(channel: str, thread: str | None) -> dict[str, Any]:
    """Where a Turn comes from, for the core (which never reads the session key)."""
    return {"channel": channel, "is_dm": _is_dm(channel), "thread": thread}


def _plain(text: str) -> str:
    """Slack escapes these three in what users type; the core wants the words."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


class SlackBot:
    """The bolt app, its connection (Socket Mode or HTTP) and the tasks doing the work."""

    def __init__(self, core: Core, config, *, base_url: str | None = None, host: str = "0.0.0.0"):
        self.core, self.cfg, self.limits, self.host = core, config.slack, config.limits, host
        self.bot_token = self.cfg.env(self.cfg.bot_token_env) or ""
        http = self.cfg.mode == "http"
        self.app = AsyncApp(name="visual-chatgpt", token=self.bot_token, request_verification_enabled=http,
                            signing_secret=self.cfg.env(self.cfg.signing_secret_env) if http else "")
        self.app.client.base_url = base_url or self.cfg.api_url  # tests: the loopback fake
        # answers wait out a 429's Retry-After (twice at most); status updates never do (the core skips them)
        self.app.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
        self.status_client = AsyncWebClient(token=self.bot_token, base_url=self.app.client.base_url)
        self.edit_budget = EditBudget(EDITS_PER_MINUTE, EDIT_BURST)  # one workspace per bot token
        self.reactions = Reactions(self.status_client, lambda *note: self.core.note_for_admins(*note))  # 👀
        self._admins: dict[str, bool] = {}  # workspace admins seen through users.info
        named = self.cfg.allowed_usergroups or self.cfg.model_usergroups or config.quotas.slack_usergroups
        self.groups = UserGroups(self.app.client, lambda *note: self.core.note_for_admins(*note), bool(named))
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.app.middleware(self._once)
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        for command in COMMANDS:
            self.app.command(f"/{command.name}")(self._on_command)
        self.app.action(re.compile(r".*"))(self._on_button)  # any button: an older version's is answered too
        self.app.view(EDIT_VIEW)(self._on_form)
        self.app.error(self._on_error)

    # --- connection -----------------------------------------------------------

    async def start(self) -> None:
        """Check the tokens, then connect; raises SlackRejected in bounded time."""
        self._http = aiohttp.ClientSession()
        self.status_client.session = self._http  # status and 👀 calls reuse connections: one fewer handshake each
        await self._call(self.app.client.auth_test(), f"the bot token in ${self.cfg.bot_token_env}")
        await self.groups.start()
        if self.cfg.mode == "http":
            self._runner = web.AppRunner(self.app.web_app(path="/slack/events", port=self.cfg.http_port))
            await self._runner.setup()
            try:
                await web.TCPSite(self._runner, self.host, self.cfg.http_port).start()
            except OSError as e:
                raise SlackRejected(f"cannot listen for Slack events on port {self.cfg.http_port}: {e}") from None
            log.info("Slack events over HTTP on port %d at /slack/events", self.cfg.http_port)
            return
        token, where = self.cfg.env(self.cfg.app_token_env) or "", f"the app token in ${self.cfg.app_token_env}"
        self._socket = AsyncSocketModeHandler(self.app, token)
        opened = await self._call(self.app.client.apps_connections_open(app_token=token), where)
        self._socket.client.wss_uri = opened["url"]  # checked above, so connect() cannot loop on a bad token
        try:
            await asyncio.wait_for(self._socket.connect_async(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise SlackRejected(f"could not open the Socket Mode connection in {CONNECT_TIMEOUT_S:.0f} s "
                                f"(check {where} and the network)") from None
        log.info("connected to Slack over Socket Mode")

    async def _call(self, request, what: str) -> Any:
        try:
            return await asyncio.wait_for(request, CONNECT_TIMEOUT_S)
        except SlackApiError as e:
            raise SlackRejected(f"Slack rejected {what} ({e.response.get('error')})") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise SlackRejected(f"could not reach Slack to check {what}: {e or type(e).__name__}") from None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.groups.close()
        if self._socket:
            await self._socket.close_async()
        if self._runner:
            await self._runner.cleanup()
        if self._http:
            await self._http.close()

    async def idle(self) -> None:
        """Wait until the work in flight is answered (tests; a graceful stop)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception():  # the last resort: telling the user failed too
            log.error("Slack work failed", exc_info=task.exception())

    # --- bolt listeners: translate, ack, hand over ----------------------------

    async def _once(self, body: dict, request, next):
        """Drop a retried delivery (same event_id) before any listener sees it; bolt still acks it."""
        event_id = body.get("event_id")
        if event_id in self._seen:
            retry = request.headers.get("x-slack-retry-num", ["?"])[0]
            log.info("dropped retry %s of event %s", retry, event_id)
            return BoltResponse(status=200, body="")
        if event_id:
            self._seen[event_id] = None
            while len(self._seen) > REMEMBERED_EVENTS:
                self._seen.popitem(last=False)
        return await next()

    async def _on_mention(self, event: dict, context) -> None:
        if event.get("bot_id") or _is_dm(event["channel"]):  # a DM arrives as a message event too
            return
        bot = context.get("bot_user_id") or ""
        text = _plain(re.sub(rf"<@{re.escape(bot)}(\|[^>]*)?>", "", event.get("text", "")))
        channel, ts, thread = event["channel"], event["ts"], event.get("thread_ts")
        if thread and thread != ts:  # in a thread: the bot's answer thread continues the channel's conversation
            where = f"slack:{channel}:{thread}"
            session = self.core.thread_session(where) or where
        else:  # top level: answered in a thread under it, which continues this conversation
            session, thread = f"slack:{channel}", ts
            self.core.link_thread(f"slack:{channel}:{ts}", session)
        self._spawn(self._converse(event, session, thread, text))

    async def _on_message(self, event: dict) -> None:
        if event.get("channel_type") != "im" or event.get("bot_id") or event.get("subtype") not in ANSWERED:
            return
        session = f"slack:dm:{event['user']}"
        self._spawn(self._converse(event, session, event.get("thread_ts"), _plain(event.get("text", ""))))

    async def _on_command(self, ack, command: dict, respond) -> None:
        """/help and a usage error are answered inside the ack; the rest after it (core/commands.py)."""
        found, text = BY_NAME[command["command"].removeprefix("/")], _plain(command.get("text") or "")
        if found.name == "help":
            return await ack(HELP + ("" if _is_dm(command["channel_id"]) else "\n" + THREADS_NOTE))
        args = user_ids(found, from_words(found, text))
        if args is None:
            return await ack(f"Usage: {found.usage}")
        await ack()
        if found.tool:
            return self._spawn(self._direct(command, found.tool, args))
        answer = self._answer(command, found, args)
        self._spawn(self._respond(respond, answer, "ephemeral" if found.private else "in_channel"))

    async def _on_error(self, error: Exception, body: dict, respond) -> None:
        log.error("Slack listener failed on %s", body.get("type") or body.get("command"), exc_info=error)
        if body.get("response_url"):
            await respond(GENERIC, response_type="ephemeral")

    # --- the work, after the ack -------------------------------------------------

    async def _converse(self, event: dict, session: str, thread_ts: str | None, text: str) -> None:
        """Hand the message to the core at once (its files are fetched in its turn)."""
        reply = self._reply(event["channel"], thread_ts, event.get("ts"))
        user = event.get("user", "")
        files = tuple(Attachment(f.get("name") or f.get("id", "the file"), f.get("mimetype") or "",
                                 fetch=lambda f=f: self._fetch(f)) for f in event.get("files", []))
        # is_admin from the config and earlier lookups only: no await may come before handle()
        turn = Turn("slack", session, user, user, text, files, is_admin=self._admin_now(user),
                    roles=self.groups.of(user), **_place(event["channel"], thread_ts))
        try:
            await self.core.handle(turn, reply)
        except Exception:
            await self._failed(reply, session)

    def _reply(self, channel: str, thread_ts: str | None, message_ts: str | None = None) -> SlackReply:
        return SlackReply(self.app.client, self.status_client, channel, thread_ts, self.edit_budget,
                          reactions=self.reactions, message_ts=message_ts)

    async def _fetch(self, file: dict) -> bytes:
        """Download an uploaded file with the bot token; raises BadImage saying what the user can do."""
        name, limit = clean_name(file.get("name") or file.get("id", "the file")), self.limits.max_upload_bytes
        too_big = BadImage(f"I could not use {name}: it is larger than the {mib(limit)} limit.")
        if file.get("size", 0) > limit:
            raise too_big
        url = file.get("url_private_download") or file.get("url_private")
        if not url:
            raise BadImage(f"I could not download {name}: Slack sent no link to it. Please send it again.")
        headers, data = {"Authorization": f"Bearer {self.bot_token}"}, bytearray()
        try:
            async with self._http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as resp:
                if resp.status != 200:
                    log.warning("downloading file %s from Slack: HTTP %d", file.get("id"), resp.status)
                    raise BadImage(f"I could not download {name} from Slack; please send it again.")
                if resp.content_type == "text/html":  # Slack's sign-in page: the token may not read files
                    hint = "is the files:read scope missing? Add it and reinstall the app"
                    log.warning("Slack answered the download of file %s with a web page, not the file (%s)",
                                file.get("id"), hint)
                    self.core.note_for_admins("Slack", f"file downloads return a web page: {hint}.")
                    raise BadImage(f"I could not read {name} as an image. Please send it again; if it keeps "
                                   "failing, tell the bot's admins.")
                async for chunk in resp.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > limit:
                        raise too_big
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("downloading %s failed: %r", url, e)
            raise BadImage(f"I could not download {name}: the connection to Slack failed. Please send it "
                           "again.") from None
        return bytes(data)

    async def _direct(self, command: dict, tool: str, args: dict) -> None:
        reply = self._reply(command["channel_id"], None)
        try:
            await self.core.direct(await self._command_turn(command), reply, tool, args)
        except Exception:
            await self._failed(reply, command["channel_id"])

    async def _answer(self, command: dict, found: Command, args: dict) -> str:
        said = await self.core.command(await self._command_turn(command), found.name, args)
        if found.name != "reset" or _is_dm(command["channel_id"]):
            return said
        return f"Cleared the conversation of <#{command['channel_id']}>: I have forgotten its messages and images. " \
               f"({THREADS_NOTE})"

    async def _respond(self, respond, work, response_type: str) -> None:
        """Answer a command through its response_url."""
        try:
            text = await work
        except Exception:
            log.exception("Slack command failed")
            text = GENERIC
        await respond(text, response_type=response_type)

    async def _failed(self, reply: SlackReply, where: str) -> None:
        """The last resort: something outside the core failed."""
        log.exception("Slack reply in %s failed", where)
        try:
            await reply.send(GENERIC)
        except Exception:
            log.warning("could not tell the user in %s either", where)

    # --- buttons under images (slack_buttons.py) --------------------------------------

    async def _on_button(self, ack, body: dict, action: dict) -> None:
        await ack()  # within Slack's 3 s; the trigger_id for a form stays valid 3 s too, so the press goes on now
        self._spawn(self._button(body, action))

    async def _button(self, body: dict, action: dict) -> None:
        """A press: answered only to the presser (Info, a stale or disabled button, ephemeral), with the
        Edit form, or run, the result new messages in the thread of the buttons."""
        pressed = parse(action)
        channel, user = body["channel"]["id"], body["user"]
        thread = (body.get("container") or {}).get("thread_ts") or (body.get("message") or {}).get("thread_ts")
        if (cancel := cancel_of(action)) is not None:
            return await self._cancel(cancel, channel, user, thread)
        if pressed is None:
            log.info("answered a press of a button this version does not know (%.100s)", action.get("action_id"))
            return await self._private(channel, user["id"], thread, OLD_BUTTON)
        name, image, tag, session = pressed
        if session != self._session_at(channel, user["id"], thread):
            return await self._private(channel, user["id"], thread, ELSEWHERE)
        meta = meta_of(session, image, tag, name, channel, thread)
        press = await self.core.press(session, image, tag, name, self._presser(meta, user))
        if press.kind == "private":
            await self._private(channel, user["id"], thread, press.text)
        elif press.kind == "form":
            await self.app.client.views_open(trigger_id=body["trigger_id"], view=edit_view(press, meta))
        else:
            await self._act(meta, user)

    async def _cancel(self, pressed: tuple[str, str], channel: str, user: dict, thread: str | None) -> None:
        """Cancel on a progress message: the request stops and its thread says so; a press that cannot cancel
        (over already, not the presser's, a second one) is answered to the presser alone."""
        token, session = pressed
        name = user.get("username") or user.get("name") or user["id"]
        turn = Turn("slack", session, user["id"], name, "", is_admin=await self._is_admin(user["id"]),
                    mention=f"<@{user['id']}>", **_place(channel, thread))
        refused = await self.core.cancel(token, session, turn)
        if refused is not None:
            await self._private(channel, user["id"], thread, refused)

    async def _on_form(self, ack, body: dict, view: dict) -> None:
        """The Edit form submitted: refused inside the form when the image is gone, else closed and run."""
        meta, instruction = submitted(view)
        press = await self.core.press(meta["session"], meta["image"], meta["tag"], meta["action"],
                                      self._presser(meta, body["user"]))
        if press.kind == "private":
            return await ack(response_action="errors", errors={"instruction": press.text})
        await ack()
        self._spawn(self._act(meta, body["user"], instruction))

    async def _act(self, meta: dict, user: dict, instruction: str | None = None) -> None:
        reply = self._reply(meta["channel"], meta["thread"])
        turn = self._presser(meta, user)
        reply.mention = turn.mention  # the answer notifies the presser
        try:
            await self.core.act(turn, reply, meta["image"], meta["tag"], meta["action"], instruction)
        except Exception:
            await self._failed(reply, meta["session"])

    def _presser(self, meta: dict, user: dict) -> Turn:
        """Who pressed: is_admin from the config and earlier lookups only, no await before act() (the order)."""
        name = user.get("username") or user.get("name") or user["id"]
        return Turn("slack", meta["session"], user["id"], name, "", is_admin=self._admin_now(user["id"]),
                    mention=f"<@{user['id']}>", roles=self.groups.of(user["id"]),
                    **_place(meta["channel"], meta["thread"]))

    async def _private(self, channel: str, user: str, thread: str | None, text: str) -> None:
        await self.app.client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread, text=mrkdwn(text))

    # --- who and where -----------------------------------------------------------

    def _session_at(self, channel: str, user: str, thread: str | None) -> str:
        """The conversation of a place: a DM, a thread (its own, or the one its link continues), a channel."""
        if _is_dm(channel):
            return f"slack:dm:{user}"
        if thread is None:
            return f"slack:{channel}"
        where = f"slack:{channel}:{thread}"
        return self.core.thread_session(where) or where

    async def _command_turn(self, command: dict) -> Turn:
        user = command["user_id"]
        text = f"{command['command']} {command.get('text') or ''}".strip()
        session = self._session_at(command["channel_id"], user, None)
        return Turn("slack", session, user, command.get("user_name") or user, text,
                    is_admin=await self._is_admin(user), roles=self.groups.of(user),
                    **_place(command["channel_id"], None))

    def _admin_now(self, user: str) -> bool:
        return user in self.cfg.admin_ids or self._admins.get(user, False)

    async def _is_admin(self, user: str) -> bool:
        if user in self.cfg.admin_ids:
            return True
        if not self.cfg.workspace_admins or not user:
            return False
        try:
            info = (await self.app.client.users_info(user=user))["user"]
        except SlackApiError as e:  # not fatal: the user is simply not an admin
            log.warning("users.info for %s failed (%s); treating them as a non-admin", user, e.response.get("error"))
            return False
        self._admins[user] = bool(info.get("is_admin") or info.get("is_owner"))
        return self._admins[user]


async def run(core: Core, config, *, base_url: str | None = None) -> None:
    """Serve Slack until cancelled; a refused token is logged as an error and ends the run."""
    bot = SlackBot(core, config, base_url=base_url)
    try:
        try:
            await bot.start()
        except SlackRejected as e:
            log.error("%s", e)
            return
        await asyncio.Event().wait()
    finally:
        await bot.close()
