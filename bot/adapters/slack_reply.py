"""Posting to Slack within its limits: the answer, its files and buttons, the status message.

The Reply side of the Slack adapter (see ``slack_bot.py``): ``SlackReply`` answers in
the thread (or the DM). Progress is one status message per turn (Slack shows bots no
typing indicator). Its edits (``chat.update``, a rate-limited Tier 3 method) share one
budget for the workspace, and a 429's Retry-After pauses them.
"""

from __future__ import annotations

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack_buttons import blocks_for
from core.errors import RateLimited
from core.turn import EditBudget, OutImage

WORKING = "Working on it…"
EDITS_PER_MINUTE, EDIT_BURST = 40, 5  # chat.update is Tier 3: about 50 a minute per workspace, for all our turns


def mrkdwn(text: str) -> str:
    """Slack reads these three as markup; the bot's text shows them as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackReply:
    """The answer in the thread (or the DM), and one status message: posted, updated, deleted."""

    waiting_text = WORKING  # Slack shows bots no typing indicator: the core shows this after a second
    mention = ""  # a user mention the answer may carry as markup (the presser of a button): "<@U2>"

    def __init__(self, client: AsyncWebClient, status_client: AsyncWebClient, channel: str,
                 thread_ts: str | None, budget: EditBudget | None = None):
        self.client, self.status_client, self.channel, self.thread_ts = client, status_client, channel, thread_ts
        self.edit_budget = budget
        self._status_ts: str | None = None

    async def typing(self) -> None:
        """Nothing to call: see ``waiting_text``."""

    async def status(self, text: str | None) -> None:
        """Raw calls; the core paces them. A 429 becomes RateLimited with Slack's Retry-After."""
        try:
            if text is None and self._status_ts:
                await self.status_client.chat_delete(channel=self.channel, ts=self._status_ts)
                self._status_ts = None
            elif text is not None and self._status_ts:
                await self.status_client.chat_update(channel=self.channel, ts=self._status_ts, text=mrkdwn(text))
            elif text is not None:
                resp = await self.status_client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts,
                                                                 text=mrkdwn(text))
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
