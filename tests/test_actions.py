"""The buttons under images at the core: provenance stored, each button run after a restart (a new Core
over the same data directory), lineage, seeds, Info, stale and disabled buttons, the per-user cap.
The real Core over the tiny-model pool; platforms come in tests/test_buttons_discord.py and _slack.py."""

from __future__ import annotations

import asyncio
import dataclasses

from PIL import Image

from core.actions import EDIT_FIELD, EDIT_HINT, STALE
from core.turn import Press
from testkit.core import close_core, make_core
from testkit.pool import ROOT
from tests.test_agent import RecordingReply, photo, turn

HERE = "discord:channel:77"
ROOT_CONFIG = ROOT / "tests" / "config.tiny.toml"


def by(user: str, session: str = HERE):
    return turn("", session, user=user)


def buttons(reply: RecordingReply) -> dict[str, bool]:
    (image,) = reply.sent[-1][1]
    return {a.name: a.enabled for a in image.actions}


async def test_every_image_records_how_it_was_made(core):
    reply = RecordingReply()
    out = await core.direct(by("u1"), reply, "generate_image", {"prompt": "a cat on the sofa"})
    assert out.images == ["img1"]
    row = core.store.image(HERE, "img1")
    made = row.made
    assert (made.model, made.args, made.user) == ("Text2Image", {"prompt": "a cat on the sofa"}, "u1")
    assert made.source.endswith("tiny-models/sd15") and made.seconds > 0 and row.created
    assert made.prompt == "a cat on the sofa, best quality, extremely detailed"  # what the model really got
    assert made.negative_prompt.startswith("longbody, lowres")
    assert made.model_params == {"prompt": "a cat on the sofa", "negative_prompt": "", "steps": 10, "guidance": 7.5,
                                 "width": 64, "height": 64, "seed": made.seed}
    assert isinstance(made.seed, int)
    posted = reply.sent[-1][1][0]
    assert (posted.session, posted.tag) == (HERE, row.tag)
    assert [a.label for a in posted.actions] == ["Reroll", "Variations", "Upscale ×2", "Edit", "Info"]
    assert all(a.enabled for a in posted.actions)


async def test_buttons_after_a_restart(pool, tmp_path, llm_server):
    """Made by one bot process; pressed on the next (same data dir): reroll, variations, upscale, edit."""
    first = make_core(pool, tmp_path, llm_server)
    await first.direct(by("u1"), RecordingReply(), "generate_image", {"prompt": "a red house"})
    original = first.store.image(HERE, "img1")
    await close_core(first)

    core = make_core(pool, tmp_path, llm_server)  # the restarted bot
    tag = original.tag
    assert (await core.press(HERE, "img1", tag, "reroll")).kind == "run"
    reply = RecordingReply()
    out = await core.act(by("u2"), reply, "img1", tag, "reroll")
    assert out.images == ["img2"] and reply.text == "Rerolled img1 for @name-u2: img2."
    reroll = core.store.image(HERE, "img2")
    assert (reroll.operation, reroll.parent, reroll.made.action, reroll.made.action_of, reroll.made.user) == (
        "generate_image", None, "reroll", "img1", "u2")
    assert reroll.made.seed != original.made.seed
    assert {**reroll.made.model_params, "seed": 0} == {**original.made.model_params, "seed": 0}  # all else the same
    assert reroll.made.prompt == original.made.prompt
    assert Image.open(core.images.path(reroll)).tobytes() != Image.open(core.images.path(original)).tobytes()
    assert reply.statuses and any(s and "Drawing" in s for s in reply.statuses)  # progress, like any request
    assert buttons(reply) == dict.fromkeys(["reroll", "variations", "upscale", "edit", "info"], True)

    reply = RecordingReply()
    await core.act(by("u2"), reply, "img1", tag, "variations")
    variation = core.store.image(HERE, "img3")
    assert (variation.operation, variation.parent, variation.made.model) == ("make_variation", "img1", "Variations")
    assert variation.made.prompt == original.made.prompt  # drawn from the same words, near the same picture
    assert variation.made.model_params["strength"] == 0.6 and (variation.width, variation.height) == (64, 64)
    assert reply.text == "A variation of img1 for @name-u2: img3."

    reply = RecordingReply()
    await core.act(by("u1"), reply, "img3", variation.tag, "upscale")
    big = core.store.image(HERE, "img4")
    assert (big.operation, big.parent, big.made.model, big.width, big.height) == ("upscale_image", "img3", "Upscale",
                                                                                   128, 128)  # past working_size 64
    assert Image.open(reply.sent[-1][1][0].path).size == (128, 128)
    assert any(s and s.startswith("Upscaling: step") for s in reply.statuses)

    assert await core.press(HERE, "img4", big.tag, "edit") == Press("form", "Edit img4", EDIT_FIELD, EDIT_HINT)
    reply = RecordingReply()
    await core.act(by("u2"), reply, "img4", big.tag, "edit", "make it look like winter")
    edited = core.store.image(HERE, "img5")
    assert (edited.operation, edited.parent, edited.made.args) == (
        "edit_image", "img4", {"image": "img4", "instruction": "make it look like winter"})
    assert reply.text == "Edited img4 for @name-u2 (make it look like winter): img5."
    said = [m["content"] for m in core.store.messages(HERE) if m["role"] == "user"]
    assert said[-1] == "[pressed Edit under img4: make it look like winter]"  # the LLM reads it in the history
    await close_core(core)


async def test_reroll_of_a_variation_is_another_variation_of_the_same_image(core):
    await core.handle(turn("", HERE, photo()), RecordingReply())  # img1, an upload: no Reroll under it
    up = core.store.image(HERE, "img1")
    press = await core.press(HERE, "img1", up.tag, "reroll")
    assert press.kind == "private" and press.text == "Reroll does not apply to img1."
    await core.act(by("u1"), RecordingReply(), "img1", up.tag, "variations")
    variation = core.store.image(HERE, "img2")
    reply = RecordingReply()
    await core.act(by("u1"), reply, "img2", variation.tag, "reroll")
    again = core.store.image(HERE, "img3")
    assert (again.operation, again.parent, again.made.action_of) == ("make_variation", "img1", "img2")
    assert again.made.seed != variation.made.seed


async def test_info_tells_the_chain_prompts_and_settings(core):
    await core.direct(turn("", HERE, photo()), RecordingReply(), "edit_image", {"instruction": "make it winter"})
    await core.direct(by("u1"), RecordingReply(), "detect_edges", {"image": "img2"})
    await core.direct(by("u1"), RecordingReply(), "generate_from_edges", {"image": "img3", "prompt": "a house"})
    row = core.store.image(HERE, "img4")
    press = await core.press(HERE, "img4", row.tag, "info")
    assert press.kind == "private"
    lines = press.text.splitlines()
    assert lines[0].startswith(f"img4: {row.width}x{row.height}, made 20")
    assert lines[1] == ("Tool chain: upload (img1) → edit_image (img2) → detect_edges (img3) → "
                        "generate_from_edges (img4)")
    assert lines[2] == "Input images: img3 (the image)"
    assert lines[3].startswith("Model: CannyText2Image (") and "tiny-models/controlnet-canny), " in lines[3]
    assert lines[4] == "Prompt sent: a house, best quality, extremely detailed"
    assert lines[5].startswith("Negative prompt: longbody, lowres, bad anatomy")
    assert lines[6] == f"Seed {row.made.seed} · 10 steps · guidance 9"
    upload = core.store.image(HERE, "img1")
    text = (await core.press(HERE, "img1", upload.tag, "info")).text
    assert "Uploaded as house.jpg: no model made it, so it has no prompt or seed." in text


async def test_stale_and_disabled_buttons(core):
    await core.direct(by("u1"), RecordingReply(), "generate_image", {"prompt": "a tree"})
    old = core.store.image(HERE, "img1")
    await core.reset(HERE)
    assert await core.press(HERE, "img1", old.tag, "info") == (await core.press(HERE, "img1", old.tag, "reroll"))
    assert (await core.press(HERE, "img1", old.tag, "info")).text == STALE
    await core.direct(by("u1"), RecordingReply(), "generate_image", {"prompt": "a dog"})  # a new img1
    new = core.store.image(HERE, "img1")
    assert new.tag != old.tag and (await core.press(HERE, "img1", old.tag, "variations")).text == STALE
    reply = RecordingReply()
    out = await core.act(by("u1"), reply, "img1", old.tag, "reroll")  # a form submitted after the reset
    assert out.error and reply.text == STALE and len(core.store.images(HERE)) == 1

    admin = dataclasses.replace(by("admin"), is_admin=True)
    await core.admin(admin, "unload", "Upscale")
    try:
        reply = RecordingReply()
        await core.act(by("u1"), reply, "img1", new.tag, "variations")
        assert buttons(reply) == {"reroll": True, "variations": True, "upscale": False, "edit": True, "info": True}
        press = await core.press(HERE, "img1", new.tag, "upscale")
        assert press.kind == "private" and press.text.startswith("Upscale ×2 is not available right now")
    finally:
        await core.admin(admin, "load", "Upscale", "cpu")


async def test_a_press_counts_against_the_pressers_job_cap(pool, tmp_path, llm_server):
    """Presses in two conversations at once by one user with a cap of one job: the second waits its turn."""
    core = make_core(pool, tmp_path, llm_server)
    core.jobs.limit = 1
    there = "discord:channel:78"
    for session in (HERE, there):
        await core.direct(by("u9", session), RecordingReply(), "generate_image", {"prompt": "a tree"})
    first, second = RecordingReply(), RecordingReply()
    await asyncio.gather(core.act(by("u1"), first, "img1", core.store.image(HERE, "img1").tag, "variations"),
                         core.act(by("u1", there), second, "img1", core.store.image(there, "img1").tag, "reroll"))
    assert first.text == "A variation of img1 for @name-u1: img2."
    assert second.text == "Rerolled img1 for @name-u1: img2."
    assert any(s and "waiting, 1 job(s) ahead" in s for s in first.statuses + second.statuses)
    await close_core(core)


def test_images_stored_before_the_upgrade_get_buttons_too(tmp_path):
    """A database made before m003: its rows read with an empty record; Reroll needs a seed, the rest work."""
    import sqlite_utils

    import settings
    from core import actions
    from core.store import Provenance, Store, m001_initial, m002_message_kind

    db = sqlite_utils.Database(tmp_path / "bot.db")
    db["_migrations"].create({"name": str, "applied": float}, pk="name")
    for m in (m001_initial, m002_message_kind):
        m(db)
        db["_migrations"].insert({"name": m.__name__, "applied": 0.0})
    db["images"].insert({"session": HERE, "image_id": "img1", "path": "ab/x.png", "sha256": "x", "parent": None,
                         "operation": "generate_image", "params": '{"prompt": "a cat"}', "width": 64, "height": 64,
                         "mode": "RGB", "caption": None, "created": 1.5})
    db.conn.close()
    row = Store(tmp_path / "bot.db").image(HERE, "img1")
    assert row.made == Provenance() and row.tag == format(1500, "08x")
    limits = settings.load(ROOT_CONFIG, env_check=False).limits
    offered = actions.offered(row, {"Text2Image", "Variations", "Upscale", "InstructPix2Pix"}, limits)
    assert [a.name for a in offered] == ["variations", "upscale", "edit", "info"]
