"""Posting to Discord within its limits: text length, upload size, the status message.

The Reply side of the Discord adapter (see ``discord_bot.py``): ``ChannelReply``
answers a mention or DM as a reply to it, ``InteractionReply`` answers a slash
command with followups. Text over 2,000 characters is split; an image over the
upload limit is re-encoded smaller, never dropped silently.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Sequence

import discord
from PIL import Image

from bot.adapters.discord_buttons import BUTTON_ROWS, buttons_for, cancel_view
from core.turn import CancelButton, EditBudget, OutImage
from settings.units import mib

log = logging.getLogger(__name__)

TEXT_LIMIT = 2000  # characters per Discord message
FILES_PER_MESSAGE = 10
DM_UPLOAD_LIMIT = 8 * 2**20  # bytes per file in a DM (a guild says its own: Guild.filesize_limit)
TYPING_EVERY_S = 8.0  # a typing indicator lasts about 10 s
# Status edits of one guild, all turns together (the core paces each message to one a second);
# discord.py itself waits out any 429's Retry-After.
EDITS_PER_MINUTE, EDIT_BURST = 60, 5


# --- Discord's limits: text length, upload size ---------------------------------------------


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters, at a line break or space when possible."""
    pieces = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit + 1)
        if cut <= 0:
            cut = text.rfind(" ", 0, limit + 1)
        if cut <= 0:
            cut = limit
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip("\n ")
    return [p for p in (piece.rstrip() for piece in [*pieces, text]) if p]


def fit_upload(data: bytes, filename: str, limit: int) -> tuple[bytes, str] | None:
    """The image as it is when under ``limit`` bytes; else JPEG (WebP when it has transparency) at
    lower quality, then downscaled; None when even a thumbnail does not fit."""
    if len(data) <= limit:
        return data, filename
    img = Image.open(io.BytesIO(data))
    alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    fmt, ext = ("WEBP", ".webp") if alpha else ("JPEG", ".jpg")
    img = img.convert("RGBA" if alpha else "RGB")
    stem = filename.rsplit(".", 1)[0]
    frame = img
    while min(frame.size) >= 16:
        for quality in (85, 70, 50, 30):
            buf = io.BytesIO()
            frame.save(buf, fmt, quality=quality)
            if buf.tell() <= limit:
                return buf.getvalue(), stem + ext
        # bytes grow with the area: aim just under the limit, shrinking by at least a fifth
        scale = min(0.8, 0.95 * (limit / buf.tell()) ** 0.5)
        frame = img.resize((max(1, round(frame.width * scale)), max(1, round(frame.height * scale))),
                           Image.Resampling.LANCZOS)
    return None


async def prepare_images(images: Sequence[OutImage], limit: int) -> tuple[list[tuple[bytes, str]], str]:
    """Read the core's PNGs, re-encoded to fit ``limit``; plus a note for those that cannot fit."""
    def work():
        ready, too_big = [], []
        for im in images:
            fitted = fit_upload(im.path.read_bytes(), im.filename, limit)
            if fitted is None:
                too_big.append(im.image_id)
            else:
                ready.append(fitted)
        return ready, too_big

    ready, too_big = await asyncio.to_thread(work)
    note = ""
    if too_big:
        note = (f"\n({', '.join(too_big)} could not be shrunk under this place's upload limit "
                f"of {mib(limit)}, so I could not post it.)")
    return ready, note


def plan_messages(text: str, files: list[tuple[bytes, str]],
                  per_message: int = FILES_PER_MESSAGE) -> list[tuple[str | None, list[tuple[bytes, str]]]]:
    """(content, files) per message: the text in pieces, the files with the last piece, ten at most each
    (five with buttons: one row of buttons per image)."""
    pieces: list[str | None] = split_text(text) or [None]
    groups = [files[i:i + per_message] for i in range(0, len(files), per_message)] or [[]]
    plan = [(p, []) for p in pieces[:-1]] + [(pieces[-1], groups[0])] + [(None, g) for g in groups[1:]]
    return [(content, group) for content, group in plan if content or group]  # Discord refuses empty ones


def _per_message(images: Sequence[OutImage]) -> int:
    return BUTTON_ROWS if any(im.actions for im in images) else FILES_PER_MESSAGE


def _files(group: list[tuple[bytes, str]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for data, name in group]


# --- Reply: status line, typing, answer -------------------------------------------------------


class ChannelReply:
    """Answers a mention or a DM in its channel: typing, a status message, the reply.
    The core paces the status calls; these are the raw REST calls."""

    def __init__(self, message: discord.Message, upload_limit: int, budget: EditBudget | None = None):
        self.message, self.channel, self.upload_limit = message, message.channel, upload_limit
        self.edit_budget = budget
        self._reference = message.to_reference(fail_if_not_exists=False)  # the question may be deleted meanwhile
        self._typing: asyncio.Task | None = None
        self._typing_started = self._done = False
        self._status_message: discord.Message | None = None
        self.allowed_mentions: discord.AllowedMentions | None = None  # None: the client's (nobody is pinged)
        self._cancel: CancelButton | None = None

    def offer_cancel(self, button: CancelButton) -> None:
        """The status message carries this Cancel button (edits keep it)."""
        self._cancel = button

    async def typing(self) -> None:
        if self._typing_started:
            return
        self._typing_started = True
        try:
            await self.channel.typing()
        except discord.HTTPException as e:
            log.warning("typing in %s failed: %s", self.channel.id, e)
            return
        if not self._done:
            self._typing = asyncio.create_task(self._keep_typing())

    async def _keep_typing(self) -> None:
        try:
            while True:
                await asyncio.sleep(TYPING_EVERY_S)
                await self.channel.typing()
        except discord.HTTPException as e:
            log.warning("typing in %s failed: %s", self.channel.id, e)

    async def status(self, text: str | None) -> None:
        message = self._status_message
        if text is None:
            self._status_message = None
            if message is not None:
                await _gone_is_fine(message.delete())
        elif message is None:
            view = cancel_view(self._cancel)
            self._status_message = await self.channel.send(text, reference=self._reference, mention_author=False,
                                                            **({"view": view} if view else {}))
        else:
            try:
                await message.edit(content=text)
            except discord.NotFound:  # someone deleted it: post anew next time
                self._status_message = None
                raise

    async def send(self, text: str, images: Sequence[OutImage] = ()) -> None:
        self.stop_typing()
        files, note = await prepare_images(images, self.upload_limit)
        for i, (content, group) in enumerate(plan_messages(text + note, files, _per_message(images))):
            reference = self._reference if i == 0 else None
            await self.channel.send(content, files=_files(group), reference=reference, **buttons_for(group, images),
                                    allowed_mentions=self.allowed_mentions)

    def stop_typing(self) -> None:
        self._done = True
        if self._typing is not None:
            self._typing.cancel()

    async def close(self) -> None:
        self.stop_typing()


class InteractionReply:
    """Answers a deferred slash command: status edits the "thinking…" response, answers are followups."""

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool = False, budget: EditBudget | None = None):
        self.interaction, self.ephemeral, self.edit_budget = interaction, ephemeral, budget
        self.upload_limit = interaction.filesize_limit
        self._edited = False
        self._cancel: CancelButton | None = None

    def offer_cancel(self, button: CancelButton) -> None:
        """The "thinking…" response, once it shows progress, carries this Cancel button."""
        self._cancel = button

    async def typing(self) -> None:
        """The deferred response already shows "thinking…"."""

    async def status(self, text: str | None) -> None:
        if text is not None:
            view = cancel_view(self._cancel) if not self._edited else None  # the first edit adds it; later ones keep it
            await self.interaction.edit_original_response(content=text, **({"view": view} if view else {}))
            self._edited = True
        elif self._edited:  # the answer came as a followup: the progress line goes
            self._edited = False
            await _gone_is_fine(self.interaction.delete_original_response())

    async def send(self, text: str, images: Sequence[OutImage] = ()) -> None:
        files, note = await prepare_images(images, self.upload_limit)
        for content, group in plan_messages(text + note, files, _per_message(images)):
            kwargs = {"content": content} if content else {}
            await self.interaction.followup.send(**kwargs, files=_files(group), ephemeral=self.ephemeral,
                                                 **buttons_for(group, images))

    async def close(self) -> None:
        """Nothing left: the core removed the status line."""


async def _gone_is_fine(deleting) -> None:
    try:
        await deleting
    except discord.NotFound:  # already deleted by someone
        pass
