"""The buttons under images on Discord, end to end: the real discord.py client against the loopback fake,
the real Core over the tiny-model pool. An image is posted, the bot restarts (a new DiscordBot and Core over the
same data directory and the same fake Discord, which keeps the posted messages), then people press buttons."""

from __future__ import annotations

import copy
import dataclasses
import io
import logging

import pytest
from PIL import Image

import settings
from bot.adapters.discord_bot import DiscordBot
from core.actions import STALE
from core.turn import Turn
from tests.conftest import RestartingBots
from tests.fakes.discord_payloads import APP_ID, CHANNEL_ID, EPHEMERAL, option, user
from tests.fakes.discord_server import FakeDiscord, Request, notified

TOKEN_ENV = "DISCORD_TOKEN_FOR_BUTTON_TESTS"
SESSION = f"discord:channel:{CHANNEL_ID}"
IN_CHANNEL = rf"^/channels/{CHANNEL_ID}/messages$"
ALICE, BOB = user("42", "alice"), user("43", "bob")


@pytest.fixture
async def fake(monkeypatch):
    async with FakeDiscord() as server:
        server.patch(monkeypatch)
        monkeypatch.setenv(TOKEN_ENV, server.token)
        yield server


class Bots(RestartingBots):
    """The Discord bot, restarted at will over the same data directory and the same fake Discord."""

    def make_bot(self, core) -> DiscordBot:
        config = dataclasses.replace(core.config, discord=settings.DiscordConfig(True, TOKEN_ENV, ()))
        return DiscordBot(core, config, guild_ready_timeout=0.05)


@pytest.fixture
async def bots(pool, tmp_path, llm_server):
    b = Bots(pool, tmp_path, llm_server)
    yield b
    await b.stop()


def buttons(posted: Request | dict) -> dict[str, dict]:
    """label -> button, of the one row of buttons under a posted image."""
    msg = posted.response if isinstance(posted, Request) else posted
    (row,) = msg["components"]
    return {b["label"]: b for b in row["components"]}


def image_of(posted: Request) -> Image.Image:
    return Image.open(io.BytesIO(posted.files[0].data))


async def press(fake: FakeDiscord, posted: Request | dict, label: str, who: dict) -> dict:
    interaction = fake.press(posted, buttons(posted)[label]["custom_id"], author=who)
    await fake.push("INTERACTION_CREATE", interaction)
    return interaction


async def callback(fake: FakeDiscord, interaction: dict) -> Request:
    return await fake.wait_for_request("POST", rf"^/interactions/{interaction['id']}/{interaction['token']}/callback$",
                                       timeout=20)


async def answer(fake: FakeDiscord, n: int) -> Request:
    """The n-th message with an image posted in the channel (button results are new messages there)."""
    return await fake.wait_for_request("POST", IN_CHANNEL, where=lambda r: bool(r.files), n=n, timeout=30)


async def test_every_button_after_a_restart(fake, bots, pool):
    await bots.start()
    imagine = fake.interaction("imagine", [option("prompt", "a red house")], author=ALICE)
    await fake.push("INTERACTION_CREATE", imagine)
    posted = await fake.wait_for_request("POST", rf"^/webhooks/{APP_ID}/{imagine['token']}$", timeout=20)
    assert list(buttons(posted)) == ["Reroll", "Variations", "Upscale ×2", "Edit", "Info"]
    first = bots.core.store.image(SESSION, "img1")
    assert buttons(posted)["Reroll"]["custom_id"] == f"vc:reroll:img1:{first.tag}:{SESSION}"
    assert not any(b.get("disabled") for b in buttons(posted).values())

    await bots.start()  # a restart: nothing of the first bot's memory is left
    core = bots.core

    # Reroll, pressed by someone else: acknowledged without a message (6), the result a new reply
    pressed = await press(fake, posted, "Reroll", BOB)
    assert (await callback(fake, pressed)).json == {"type": 6}
    rerolled = await answer(fake, 1)
    assert rerolled.content == f"Rerolled img1 for <@{BOB['id']}>: img2."
    assert notified(rerolled) == [BOB["id"]]  # the presser gets a notification, nobody else
    assert str(rerolled.json["message_reference"]["message_id"]) == posted.response["id"]
    row = core.store.image(SESSION, "img2")
    assert (row.operation, row.made.action, row.made.action_of, row.made.user) == ("generate_image", "reroll",
                                                                                  "img1", BOB["id"])
    assert row.made.seed != first.made.seed and row.made.prompt == first.made.prompt
    assert image_of(rerolled).tobytes() != image_of(posted).tobytes()
    assert buttons(rerolled)["Reroll"]["custom_id"].startswith("vc:reroll:img2:")

    # Info: only to the presser (type 4, ephemeral), read from the store
    pressed = await press(fake, rerolled, "Info", ALICE)
    info = await callback(fake, pressed)
    assert info.json["type"] == 4 and info.json["data"]["flags"] & EPHEMERAL
    text = info.json["data"]["content"]
    assert "Tool chain: generate_image (img2)" in text and "Reroll button under img1" in text
    assert f"Seed {row.made.seed} · 10 steps · guidance 7.5" in text
    assert "Prompt sent: a red house, best quality, extremely detailed" in text

    # Variations and Upscale
    await callback(fake, await press(fake, posted, "Variations", ALICE))
    varied = await answer(fake, 2)
    assert varied.content == f"A variation of img1 for <@{ALICE['id']}>: img3." and image_of(varied).size == (64, 64)
    assert notified(varied) == [ALICE["id"]]
    assert core.store.image(SESSION, "img3").parent == "img1"
    await callback(fake, await press(fake, varied, "Upscale ×2", BOB))
    upscaled = await answer(fake, 3)
    assert upscaled.content == f"img3 upscaled ×2 for <@{BOB['id']}>: img4." and image_of(upscaled).size == (128, 128)
    status = fake.matching("POST", IN_CHANNEL, where=lambda r: (r.content or "").startswith("Upscaling"))
    assert status  # progress like any request

    # Edit: a form (type 9); the bot restarts while it is open; the submission still works
    pressed = await press(fake, posted, "Edit", BOB)
    form = await callback(fake, pressed)
    assert form.json["type"] == 9 and form.json["data"]["title"] == "Edit img1"
    await bots.start()
    await fake.push("INTERACTION_CREATE", fake.submit(form, {"instruction": "make it look like winter"}, author=BOB))
    edited = await answer(fake, 4)
    assert edited.content == f"Edited img1 for <@{BOB['id']}> (make it look like winter): img5."
    assert notified(edited) == [BOB["id"]]
    assert bots.core.store.image(SESSION, "img5").made.args == {"image": "img1",
                                                                "instruction": "make it look like winter"}


async def test_disabled_and_stale_buttons(fake, bots):
    bot = await bots.start()
    admin = Turn("discord", SESSION, "1", "admin", "", is_admin=True)
    await bots.core.admin(admin, "unload", "Upscale")
    try:
        imagine = fake.interaction("imagine", [option("prompt", "a tree")], author=ALICE)
        await fake.push("INTERACTION_CREATE", imagine)
        posted = await fake.wait_for_request("POST", rf"^/webhooks/{APP_ID}/{imagine['token']}$", timeout=20)
        shown = buttons(posted)
        assert shown["Upscale ×2"]["disabled"] is True and not shown["Reroll"].get("disabled")
    finally:
        await bots.core.admin(admin, "load", "Upscale", "cpu")

    reset = fake.interaction("reset", author=ALICE)
    await fake.push("INTERACTION_CREATE", reset)
    await fake.wait_for_request("POST", rf"^/webhooks/{APP_ID}/{reset['token']}$")
    pressed = await press(fake, posted, "Variations", BOB)
    stale = await callback(fake, pressed)
    assert stale.json["type"] == 4 and stale.json["data"]["flags"] & EPHEMERAL
    assert stale.json["data"]["content"] == STALE
    await bot.idle()
    assert not bots.core.store.images(SESSION)  # nothing was made


def with_button(posted: Request, custom_id: str) -> dict:
    """The posted message as another version of the bot would have left it: one button, ``custom_id``."""
    button = {"type": 2, "style": 2, "label": "Reroll", "custom_id": custom_id}
    return {**copy.deepcopy(posted.response), "components": [{"type": 1, "components": [button]}]}


async def test_every_press_is_answered_to_the_presser_alone(fake, bots, caplog):
    """Presses the bot cannot run are answered within 3 s, only to the presser, saying why and what to do."""
    await bots.start()
    imagine = fake.interaction("imagine", [option("prompt", "a red house")], author=ALICE)
    await fake.push("INTERACTION_CREATE", imagine)
    posted = await fake.wait_for_request("POST", rf"^/webhooks/{APP_ID}/{imagine['token']}$", timeout=20)
    row = bots.core.store.image(SESSION, "img1")

    async def private(message: dict, custom_id: str) -> str:
        pressed = fake.press(message, custom_id, author=BOB)
        await fake.push("INTERACTION_CREATE", pressed)
        said = await fake.answered(pressed)  # within 3 s, or the user sees "This interaction failed"
        assert said.json["type"] == 4 and said.json["data"]["flags"] & EPHEMERAL, said
        return said.json["data"]["content"]

    old = await private(with_button(posted, "reroll-img1"), "reroll-img1")  # an older version's button
    assert old.startswith("This button is from an older version of the bot") and "ask me" in old.lower()
    never = f"vc:reroll:img9:{row.tag}:{SESSION}"  # an image id this conversation never had
    said = await private(with_button(posted, never), never)
    assert said.startswith("img9 is not an image of this conversation") and "/reset" not in said
    assert "img1" in said  # the images it has

    bots.core.images.path(row).unlink()  # the file is gone from the data directory
    caplog.clear()
    said = await private(posted.response, buttons(posted)["Upscale ×2"]["custom_id"])
    assert said.startswith("img1 is no longer stored") and "upload it again" in said.lower()
    await bots.bot.idle()
    assert not fake.matching("POST", IN_CHANNEL)  # nothing for the whole channel
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]  # no traceback
    (warned,) = [r for r in caplog.records if r.levelno == logging.WARNING and "img1" in r.getMessage()]
    assert "\n" not in warned.getMessage()
