"""Why a button's image is not there, as its presser is told (core level; the platforms' end-to-end tests are
tests/test_buttons_*.py): cleared with /reset since the button was posted, or never an image of this conversation."""

from __future__ import annotations

from core.actions import STALE
from tests.test_actions import HERE, by
from tests.test_agent import RecordingReply


async def test_a_cleared_image_and_one_never_here_are_told_apart(core):
    await core.direct(by("u1"), RecordingReply(), "generate_image", {"prompt": "a tree"})
    old = core.store.image(HERE, "img1")
    never = await core.press(HERE, "img7", old.tag, "variations")
    assert never.kind == "private" and never.text.startswith("img7 is not an image of this conversation")
    assert "Its images are img1." in never.text and "/reset" not in never.text

    await core.reset(HERE)
    assert (await core.press(HERE, "img1", old.tag, "variations")).text == STALE  # nothing here since
    await core.direct(by("u1"), RecordingReply(), "generate_image", {"prompt": "a dog"})  # it starts again
    assert (await core.press(HERE, "img1", old.tag, "variations")).text == STALE  # the id is another image's now
    assert (await core.press(HERE, "img7", old.tag, "variations")).text == STALE  # made before the reset
    new = core.store.image(HERE, "img1")
    assert (await core.press(HERE, "img7", new.tag, "reroll")).text.startswith("img7 is not an image of this")


async def test_a_command_on_an_image_whose_file_is_gone_says_so_without_a_traceback(core, caplog):
    """Not only buttons: /caption (or an LLM's tool call) on an image whose file left the data directory is told
    that the image is no longer stored, and the log has no traceback."""
    await core.direct(by("u1"), RecordingReply(), "generate_image", {"prompt": "a tree"})
    core.images.path(core.store.image(HERE, "img1")).unlink()
    reply = RecordingReply()
    await core.direct(by("u1"), reply, "caption_image", {"image": "img1"})
    assert reply.text.startswith("img1 is no longer stored") and "upload it again" in reply.text.lower()
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
