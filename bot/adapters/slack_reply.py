"""Posting to Slack within its limits: the answer, its files and buttons, the status message.

The Reply side of the Slack adapter (see ``slack_bot.py``): ``SlackReply`` answers in
the thread (or the DM). Progress is one status message per turn (Slack shows bots no
typing indicator). Its edits (``chat.update``, a rate-limited Tier 3 method) share one
budget for the workspace, and a 429's Retry-After pauses them. Before any of it, at
once, 👀 on the user's message (``Reactions``), taken off when the answer is posted.
"""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack_buttons import blocks_for, status_blocks
from core.errors import RateLimited
from core.turn import CancelButton, EditBudget, OutImage

WORKING = "Working on it…"
EDITS_PER_MINUTE, EDIT_BURST = 40, 5  # chat.update is Tier 3: about 50 a minute per workspace, for all our turns
SEEN = "eyes"  # the reaction on a message while it is answered
log = logging.getLogger(__name__)


def mrkdwn(text: str) -> str:
    """Slack reads these three as markup; the bot's text shows them as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Reactions:
    """👀 on the messages being answered (Slack shows bots no typing indicator, and the status message
    comes after a second). Best-effort, as status messages are: a failure is logged once per cause and
    never costs the answer; without the reactions:write scope the bot stops trying and tells admins."""

    def __init__(self, client: AsyncWebClient, note_for_admins=None):
        self.client, self.note = client, note_for_admins
        self.off = False
        self._logged: set[str] = set()

    async def add(self, channel: str, ts: str) -> bool:
        """True when the reaction is there (to take off later)."""
        return await self._call("reactions_add", channel, ts, fine="already_reacted")

    async def remove(self, channel: str, ts: str) -> None:
        await self._call("reactions_remove", channel, ts, fine="no_reaction")

    async def _call(self, method: str, channel: str, ts: str, fine: str) -> bool:
        if self.off:
            return False
        try:
            await getattr(self.client, method)(channel=channel, timestamp=ts, name=SEEN)
            return True
        except SlackApiError as e:
            cause = e.response.get("error") or f"HTTP {e.response.status_code}"
        except Exception as e:  # decoration only: the connection, a timeout
            cause = type(e).__name__
        if cause == fine:
            return True
        if cause == "missing_scope":
            self.off = True
            if self.note:
                self.note("Slack", "the 👀 reaction on messages being answered needs the reactions:write scope: "
                                   "add it and reinstall the app.")
        if cause not in self._logged:
            self._logged.add(cause)
            log.warning("Slack %s failed (%s); the answers go on without it%s", method.replace("_", "."), cause,
                        " (add the reactions:write scope and reinstall the app)" if cause == "missing_scope" else "")
        return False


class SlackReply:
    """The answer in the thread (or the DM), and one status message: posted, updated, deleted."""

    waiting_text = WORKING  # Slack shows bots no typing indicator: the core shows this after a second
    mention = ""  # a user mention the answer may carry as markup (the presser of a button): "<@U2>"

    def __init__(self, client: AsyncWebClient, status_client: AsyncWebClient, channel: str,
                 thread_ts: str | None, budget: EditBudget | None = None, *,
                 reactions: Reactions | None = None, message_ts: str | None = None):
        self.client, self.status_client, self.channel, self.thread_ts = client, status_client, channel, thread_ts
        self.edit_budget = budget
        self.reactions, self.message_ts = reactions, message_ts  # the user's message, to put 👀 on
        self._status_ts: str | None = None
        self._seen: asyncio.Task | None = None
        self._cancel: CancelButton | None = None

    def offer_cancel(self, button: CancelButton) -> None:
        """The status message carries this Cancel button (every update sends it again: blocks are what shows)."""
        self._cancel = button

    def _status(self, text: str) -> dict:
        """The status message's text, and its blocks with the Cancel button when there is one."""
        shown = mrkdwn(text)
        return {"text": shown, **({"blocks": status_blocks(shown, self._cancel)} if self._cancel else {})}

    async def typing(self) -> None:
        """👀 on the user's message, in a task: the turn never waits for it (see also ``waiting_text``)."""
        if self.reactions and self.message_ts and self._seen is None:
            self._seen = asyncio.create_task(self.reactions.add(self.channel, self.message_ts))

    async def _unseen(self) -> None:
        """The answer is there: the 👀 goes."""
        seen, self._seen = self._seen, None
        if seen is not None and await seen:
            await self.reactions.remove(self.channel, self.message_ts)

    async def status(self, text: str | None) -> None:
        """Raw calls; the core paces them. A 429 becomes RateLimited with Slack's Retry-After."""
        try:
            if text is None and self._status_ts:
                await self.status_client.chat_delete(channel=self.channel, ts=self._status_ts)
                self._status_ts = None
            elif text is not None and self._status_ts:
                await self.status_client.chat_update(channel=self.channel, ts=self._status_ts, **self._status(text))
            elif text is not None:
                resp = await self.status_client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts,
                                                                 **self._status(text))
                self._status_ts = resp["ts"]
        except SlackApiError as e:
            if e.response.status_code == 429:
                raise RateLimited(_retry_after(e.response.headers)) from None
            if e.response.get("error") == "message_not_found":  # someone deleted it: post anew next time
                self._status_ts = None
                if text is None:
                    return
            raise

    async def send(self, text: str, images: list[OutImage] = ()) -> None:
        try:
            await self._post(text, images)
        finally:
            await self._unseen()

    async def _post(self, text: str, images: list[OutImage]) -> None:
        if images:
            files = [{"file": str(im.path), "filename": im.filename, "title": im.image_id} for im in images]
            await self.client.files_upload_v2(channel=self.channel, thread_ts=self.thread_ts,
                                              initial_comment=self._markup(text), file_uploads=files)
        else:
            await self.client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts, text=self._markup(text))
        if blocks := blocks_for(list(images)):  # files carry no blocks: the buttons come right below them
            ids = ", ".join(im.image_id for im in images if im.actions)
            await self.client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts, blocks=blocks,
                                               text=f"Buttons for {ids}")

    def _markup(self, text: str) -> str:
        """The text shown as written, but for ``mention``, which notifies."""
        return mrkdwn(text).replace(mrkdwn(self.mention), self.mention) if self.mention else mrkdwn(text)


def _retry_after(headers) -> float:
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                break
    return 1.0
