"""Errors whose message is written for the chat user.

Anything else that goes wrong is logged with its traceback and the user gets
a short, honest generic reply (see ``GENERIC``).
"""

from __future__ import annotations

import errno
import sqlite3

GENERIC = "Sorry, something went wrong on my side. The bot's admins can find the details in its log."
# a press the bot cannot read (a button of an older version): the adapters answer it with this, to the presser only
OLD_BUTTON = ("This button is from an older version of the bot and does nothing now. Ask me again for what you "
              "need, or use the buttons under a newer image.")
# a press whose button was posted in another conversation than the one it is pressed in (a forwarded message)
ELSEWHERE = "This button belongs to another conversation: press it there, or ask me here for what you need."


class UserFacingError(Exception):
    """The message is shown in the chat as it is."""


class BadImage(UserFacingError):
    """An upload that is not a usable image (not an image, damaged, too large)."""


class UnknownImage(UserFacingError):
    """An image id that does not exist in this conversation."""


class ImageGone(UnknownImage):
    """An image of the conversation whose file is no longer in the data directory."""


class BadArguments(UserFacingError):
    """A tool was called with arguments it cannot use."""


class PoolFailed(UserFacingError):
    """The image engine refused or failed a job; the message comes from the pool."""

    def __init__(self, message: str, code: str = "internal"):
        super().__init__(message)
        self.code = code


class Withheld(UserFacingError):
    """The safety policy keeps a drawn image out of this conversation; ``why`` is for the log."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


class DiskFull(UserFacingError):
    """The data directory's disk had no room for a file or a row; nothing already stored was lost."""


DISK_FULL = ("I could not store that: the disk the bot keeps its data on is full. Nothing already in this "
             "conversation was lost; ask again once the bot's admins have freed some space.")
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # disk full, quota used up, over a file size limit


def no_room(e: BaseException) -> bool:
    """An OSError or an SQLite error that says the disk (or the quota) is full."""
    if isinstance(e, OSError):
        return e.errno in NO_ROOM
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e)  # "database or disk is full"


# a job that ran out of GPU memory twice, memory freed in between (pool code "too_large"): a smaller size may fit
TOO_LARGE = "The image was too large for the GPU right now: it ran out of memory, even after freeing what it could."
SHRINK = 0.75  # each side of the suggested size, against the size that ran out of memory
MIN_SIDE = 64  # the smallest size the drawing models take


def too_large(width: int | None, height: int | None, drawn: bool) -> str:
    """What the user hears when a job ran out of GPU memory twice; ``width``x``height`` the size asked for
    (``drawn``) or of the image given, if known: a smaller one is suggested."""
    if width and height:
        smaller = _smaller(width), _smaller(height)
        if smaller != (width, height):
            what = "a smaller size" if drawn else "a smaller image"
            return (f"{TOO_LARGE} Try {what}, like {smaller[0]}x{smaller[1]} instead of {width}x{height}, "
                    "or try again later.")
    return f"{TOO_LARGE} Try again in a moment, when the bot is less busy."


def _smaller(side: int) -> int:
    return max(MIN_SIDE, int(side * SHRINK) // 8 * 8) if side > MIN_SIDE else side


class RateLimited(Exception):
    """A platform refused a call for now (HTTP 429); adapters raise it with the Retry-After seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"rate limited; retry after {retry_after:g} s")
        self.retry_after = retry_after
