"""What adapters hand the core (Turn) and what the core calls back on (Reply).

The core never imports discord or slack; adapters never call the LLM or the
pool. These few types are the whole contract between them.

An adapter hands a message to the core the moment its event arrives, before
downloading its files (an ``Attachment`` may carry a ``fetch`` instead of its
bytes): the core takes the message's place in its conversation at once and
fetches the files in that turn, so messages are handled in the order they were
sent however long a download takes.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

NAME_LIMIT = 80  # characters kept of a platform-supplied name (file name, display name)


def clean_name(text: str, limit: int = NAME_LIMIT) -> str:
    """A platform-supplied string made safe to show and to log: no control or format characters
    (newlines, bidi overrides), runs of white space as one space, at most ``limit`` characters."""
    kept = "".join(" " if c.isspace() else c for c in str(text)
                   if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf", "Co", "Cs"))
    kept = " ".join(kept.split())
    return kept if len(kept) <= limit else kept[:limit - 1] + "…"


def quoted(text: str) -> str:
    """A cleaned name in double quotes, quotes inside escaped: data, never read as instructions."""
    return json.dumps(clean_name(text), ensure_ascii=False)


@dataclass(frozen=True)
class Attachment:
    """A file sent with a message: its bytes, or ``fetch`` to download them in the message's turn.

    ``fetch`` raises a ``UserFacingError`` (e.g. ``BadImage``) saying why the file cannot be used.
    The file name is cleaned on the way in (it is data from the platform)."""

    filename: str
    content_type: str
    data: bytes = b""
    fetch: Callable[[], Awaitable[bytes]] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "filename", clean_name(self.filename) or "the file")

    async def read(self) -> bytes:
        return await self.fetch() if self.fetch is not None else self.data


@dataclass(frozen=True)
class Turn:
    """A message, command or button press, with where it comes from.

    ``session_key`` names the conversation and is opaque to the core: the adapter builds it, the core
    only stores and compares it. What the core needs to know about the place is in the fields below it."""

    platform: str  # "discord", "slack", "terminal"
    session_key: str  # the conversation: "discord:channel:123", "slack:C1", "slack:C1:169.2", "discord:dm:42"
    user_id: str
    user_name: str
    text: str  # the bot mention already stripped
    attachments: tuple[Attachment, ...] = ()
    is_admin: bool = False
    nsfw_channel: bool = False  # Discord: the channel (a thread: its parent) is marked age-restricted
    channel: str = ""  # the platform's id of the channel or DM it came from ("C1", "3000", "D1")
    is_dm: bool = False  # a direct message with the bot (the terminal counts as one)
    thread: str | None = None  # Slack: the thread's ts, when in a thread (a Discord thread is its own channel)
    mention: str = ""  # the user named so they are notified, in the platform's markup ("<@42>"); "": none
    roles: tuple[str, ...] = ()  # Discord: the member's role ids; Slack: the user's user group ids (core/access.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_name", clean_name(self.user_name))


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


@dataclass(frozen=True)
class CancelButton:
    """The Cancel button on a request's progress message: a press hands ``token`` and ``session`` back to
    ``Core.cancel`` (nothing else is needed, and nothing is kept in the adapter)."""

    token: str  # the request in flight (8 hex digits)
    session: str  # the conversation it runs in (a press elsewhere is refused)
    label: str = "Cancel"


class EditBudget:
    """The status edits one workspace or guild may make: a token bucket every turn there shares,
    so progress stays within the platform's rate limit however many turns run at once. A 429's
    Retry-After pauses it.

    Fair: a status that asks and must wait takes its place in line (``take(who)``), and each new
    token goes to the first in line, so a queued request's "2 job(s) ahead" is shown in its turn and
    not starved by a running job that asks again the moment each token arrives. A status that no
    longer needs an edit leaves the line (``leave``)."""

    def __init__(self, per_minute: float, burst: int):
        self.rate, self.burst = per_minute / 60.0, burst
        self._tokens, self._at, self._paused_until = float(burst), time.monotonic(), 0.0
        self._line: list[object] = []  # who waits for an edit, first come first served
        self.spent = 0  # edits granted so far (benchmarks read it)

    def take(self, who: object | None = None) -> float:
        """0.0 when an edit may go now (and counts it); else the seconds until ``who``'s turn (``who``
        keeps its place in line; None: behind everyone waiting)."""
        now = time.monotonic()
        if now < self._paused_until:
            return self._paused_until - now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if who is not None and who not in self._line:
            self._line.append(who)
        ahead = self._line.index(who) if who is not None else len(self._line)
        if self._tokens >= ahead + 1:  # the ones ahead keep a token each
            self._tokens -= 1
            self.spent += 1
            self.leave(who)
            return 0.0
        return (ahead + 1 - self._tokens) / self.rate

    def leave(self, who: object | None) -> None:
        """``who`` no longer waits for an edit (its text is shown, or its turn ended)."""
        if who in self._line:
            self._line.remove(who)

    def pause(self, seconds: float) -> None:
        """The platform said Retry-After: no edit from anyone here until then."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        self._tokens = 0.0


class Reply(Protocol):
    """Implemented per platform by the adapter.

    Optional attributes the core reads when present: ``edit_budget`` (an EditBudget shared by
    the workspace or guild) and ``waiting_text`` (a status shown after a second when the
    platform has no typing indicator, e.g. Slack's "Working on it…"). An optional method,
    ``offer_cancel(CancelButton)``, called once as the request arrives: the progress message
    carries that Cancel button from its first post on."""

    async def status(self, text: str | None) -> None:
        """Post the progress message, or edit it; None deletes it. May raise (the core logs it);
        raise ``core.errors.RateLimited`` when the platform says to wait."""

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
