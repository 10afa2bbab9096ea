"""What adapters hand the core (Turn) and what the core calls back on (Reply).

The core never imports discord or slack; adapters never call the LLM or the
pool. These few types are the whole contract between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Turn:
    platform: str  # "discord", "slack", "terminal"
    session_key: str  # where the reply goes: "discord:channel:123", "slack:C1:thread:169.2", "discord:dm:42"
    user_id: str
    user_name: str
    text: str  # the bot mention already stripped
    attachments: tuple[Attachment, ...] = ()
    is_admin: bool = False
    nsfw_channel: bool = False  # Discord: the channel (a thread: its parent) is marked age-restricted


@dataclass(frozen=True)
class ImageAction:
    """A button under a posted image (core/actions.py decides which); the adapter renders it and hands
    a press back to ``Core.press`` with the image's session, id and tag."""

    name: str  # "reroll", "variations", "upscale", "edit", "info"
    label: str  # e.g. "Upscale ×2"
    enabled: bool = True  # False: its model is not loaded now (shown disabled where the platform can)


@dataclass(frozen=True)
class OutImage:
    image_id: str
    path: Path  # a PNG on disk, read by the adapter to upload
    filename: str  # e.g. "img3.png"
    actions: tuple[ImageAction, ...] = ()  # the buttons to show under it
    session: str = ""  # the conversation it belongs to (a button press names it)
    tag: str = ""  # tells it from a later image with the same id (ids start again after /reset)


class Reply(Protocol):
    """Implemented per platform by the adapter."""

    async def status(self, text: str | None) -> None:
        """Show or edit one progress message; None removes it."""

    async def send(self, text: str, images: list[OutImage] = ()) -> None:
        """Post the answer, images as attachments."""

    async def typing(self) -> None:
        """A first sign of life."""


@dataclass
class Outcome:
    """What a turn produced (also returned, for tests and the terminal)."""

    text: str
    images: list[str] = field(default_factory=list)
    error: bool = False


@dataclass(frozen=True)
class Press:
    """What the core decided a button press does (``Core.press``); the adapter carries it out:
    "private": answer only the presser with ``text``; "form": open a form titled ``text`` with one
    text field ``field`` (``hint`` as its placeholder), and hand what is typed to ``Core.act``; "run": acknowledge, then
    ``Core.act`` answers in the conversation like any request."""

    kind: Literal["private", "form", "run"]
    text: str = ""
    field: str = ""  # form: the field's label (short: Discord allows 45 characters)
    hint: str = ""  # form: an example shown in the empty field
