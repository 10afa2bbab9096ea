"""What adapters hand the core (Turn) and what the core calls back on (Reply).

The core never imports discord or slack; adapters never call the LLM or the
pool. These few types are the whole contract between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


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
class OutImage:
    image_id: str
    path: Path  # a PNG on disk, read by the adapter to upload
    filename: str  # e.g. "img3.png"


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
