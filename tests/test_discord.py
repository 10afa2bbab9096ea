"""The Discord adapter end to end: the real discord.py client against the loopback fake Discord,
the real Core over the tiny-model pool, and the scripted LLM."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging

import pytest
from PIL import Image

import settings
from bot.adapters import discord_bot
from bot.adapters.discord_bot import DiscordBot, DiscordRejected
from bot.adapters.discord_reply import split_text
from core.commands import COMMANDS, IMAGE, IMAGES, INT, USER
from core.engine import HELP
from tests.fakes.discord_payloads import (ADMINISTRATOR, APP_ID, BOT_ID, CHANNEL_ID, EPHEMERAL, MANAGE_GUILD,
                                          message, option, user)
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import text_of
from tests.test_agent import RecordingReply, image_enum, photo, turn

ADMIN_ID = "777"  # in discord.admin_ids
TOKEN_ENV = "DISCORD_TOKEN_FOR_TESTS"
CHANNELS = [str(3100 + i) for i in range(20)]  # more text channels in the guild
THREAD = "3500"  # a thread under CHANNEL_ID
ANSWER = rf"^/channels/{CHANNEL_ID}/messages$"


@pytest.fixture
async def fake(monkeypatch):
    async with FakeDiscord() as server:
        for channel in CHANNELS:
            server.add_channel(channel)
        server.add_thread(THREAD)
        server.patch(monkeypatch)
        yield server


def discord_config(core, token_env: str = TOKEN_ENV) -> settings.Config:
    return dataclasses.replace(core.config, discord=settings.DiscordConfig(True, token_env, (ADMIN_ID,)))


@pytest.fixture
async def bot(core, fake, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, fake.token)
    b = DiscordBot(core, discord_config(core), guild_ready_timeout=0.05)
    await b.start()
    yield b
    await b.close()


def mention(fake: FakeDiscord, text: str, channel: str = CHANNEL_ID, author: dict | None = None, **kw) -> dict:
    return message(channel, f"<@{BOT_ID}> {text}", author or user("42"), mentions=[fake.bot_user], **kw)


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format in ("PNG", "JPEG", "WEBP")
    return img


def with_files(r) -> bool:
    return bool(r.files)


# --- mentions and DMs -------------------------------------------------------------------------


async def test_mention_with_an_image_is_answered_with_an_image_in_that_channel(fake, bot, core, llm_server):
    llm_server.on(user="make it winter").call("edit_image", {"image": "img1", "instruction": "make it winter"})
    llm_server.on(after_tool="edit_image").reply("Here it is, snowy: img2")
    att = fake.add_file(photo().data, "house.jpg", "image/jpeg")
    asked = mention(fake, "make it winter", attachments=[att])
    pushed = await fake.push("MESSAGE_CREATE", asked)

    answer = await fake.wait_for_request("POST", ANSWER, where=with_files, timeout=20)
    assert answer.content == "Here it is, snowy: img2"
    assert str(answer.json["message_reference"]["message_id"]) == asked["id"]
    assert [f.filename for f in answer.files] == ["img2.png"]
    row = core.store.image(f"discord:channel:{CHANNEL_ID}", "img2")
    assert decoded(answer.files[0].data).size == (row.width, row.height)
    typing = fake.matching("POST", rf"^/channels/{CHANNEL_ID}/typing$")
    assert typing and typing[0].at - pushed < 1.0 and typing[0].at < answer.at
    assert fake.matching("GET", rf"^/attachments/{CHANNEL_ID}/{att['id']}/house.jpg$")  # fetched at once
    said = text_of(llm_server.requests[0]["messages"][1]["content"])  # the text beside the image parts
    assert said.startswith('make it winter\n[uploaded img1 "house.jpg"') and "<@" not in said


async def test_a_dm_is_a_private_session_a_channel_cannot_see(fake, bot, core, llm_server):
    friend = user("42")
    llm_server.on(user="my secret plan").reply("Noted, only between us.")
    secrets = [fake.add_file(photo(sky=(200, 10, 10 * i)).data, f"secret{i}.jpg", "image/jpeg", channel_id="9000")
               for i in (1, 2)]
    await fake.push("MESSAGE_CREATE", message("9000", "my secret plan, see the pictures", friend, guild_id=None,
                                              attachments=secrets))
    dm = await fake.wait_for_request("POST", r"^/channels/9000/messages$", where=lambda r: "Noted" in (r.content or ""))
    assert dm.content == "Noted, only between us."
    assert [r.image_id for r in core.store.images("discord:dm:42")] == ["img1", "img2"]

    shared = fake.add_file(photo().data, "team.jpg", "image/jpeg")
    await fake.push("MESSAGE_CREATE", mention(fake, "", author=friend, attachments=[shared]))
    await fake.wait_for_request("POST", ANSWER, where=lambda r: (r.content or "").startswith("Got img1"))
    llm_server.on(user="what images").reply("Only img1.")
    await fake.push("MESSAGE_CREATE", mention(fake, "what images do we have?", author=friend))
    await fake.wait_for_request("POST", ANSWER, where=lambda r: r.content == "Only img1.")
    in_channel = llm_server.requests[-1]
    assert "secret" not in json.dumps(in_channel["messages"])
    assert image_enum(in_channel, "edit_image") == ["img1"]  # the channel's own img1; not the DM's img2


async def test_a_thread_is_its_own_session(fake, bot, core, llm_server):
    llm_server.on(user="in the thread").reply("Answered in the thread.")
    await fake.push("MESSAGE_CREATE", mention(fake, "hello in the thread", channel=THREAD))
    answer = await fake.wait_for_request("POST", rf"^/channels/{THREAD}/messages$")
    assert answer.content == "Answered in the thread."
    assert core.store.messages(f"discord:channel:{THREAD}") and not core.store.messages(f"discord:channel:{CHANNEL_ID}")


async def test_a_guild_message_without_a_mention_is_ignored(fake, bot, llm_server):
    ignored = message(CHANNEL_ID, "talking among ourselves, no bot here", user("42"))
    llm_server.on(user="hello").reply("Hi!")
    await fake.push("MESSAGE_CREATE", ignored)
    await fake.push("MESSAGE_CREATE", mention(fake, "hello"))  # gateway events arrive in order
    await fake.wait_for_request("POST", ANSWER, where=lambda r: r.content == "Hi!")
    assert len(fake.matching("POST", "/typing$")) == 1 and len(llm_server.requests) == 1
    assert not [r for r in fake.requests if ignored["id"] in json.dumps(r.json)]


async def test_a_non_image_attachment_gets_the_core_s_friendly_message(fake, bot):
    att = fake.add_file(b"shopping list: eggs, milk\n", "notes.txt", "text/plain; charset=utf-8")
    await fake.push("MESSAGE_CREATE", mention(fake, "", attachments=[att]))
    answer = await fake.wait_for_request("POST", ANSWER, where=lambda r: "notes.txt" in (r.content or ""))
    assert answer.content == "notes.txt is not an image: it looks like a text file."


async def test_a_too_large_upload_is_refused_before_downloading_it(fake, bot):
    att = fake.add_file(photo().data, "huge.png", "image/png", size=30 * 2**20)  # Discord says 30 MiB
    await fake.push("MESSAGE_CREATE", mention(fake, "", attachments=[att]))
    answer = await fake.wait_for_request("POST", ANSWER)
    assert answer.content == "I could not use huge.png: it is larger than the 25.0 MiB limit."
    assert not fake.matching("GET", "^/attachments/")


async def test_a_long_answer_is_split_into_messages_of_at_most_2000_characters(fake, bot, llm_server):
    long = "\n".join(f"Line {i}: " + "lorem ipsum " * 15 for i in range(40))
    assert len(long) > 6000
    llm_server.on(user="tell me everything").reply(long)
    asked = mention(fake, "tell me everything")
    await fake.push("MESSAGE_CREATE", asked)
    parts = await fake.wait_for_requests("POST", ANSWER, 4)
    assert all(len(p.content) <= 2000 for p in parts)
    assert " ".join(p.content for p in parts).split() == long.split()
    assert str(parts[0].json["message_reference"]["message_id"]) == asked["id"]
    assert all("message_reference" not in p.json for p in parts[1:])


async def test_progress_is_one_status_message_posted_edited_then_deleted(fake, bot, core, llm_server):
    core.status_interval = 0.05  # the tiny model draws in well under 1 s
    llm_server.on(user="draw a cat").call("generate_image", {"prompt": "a cat"})
    llm_server.on(after_tool="generate_image").reply("Here is your cat: img1")
    await fake.push("MESSAGE_CREATE", mention(fake, "draw a cat"))
    answer = await fake.wait_for_request("POST", ANSWER, where=with_files, timeout=20)
    status = await fake.wait_for_request("POST", ANSWER, where=lambda r: not r.files)
    status_id = status.response["id"]
    edits = fake.matching("PATCH", rf"^/channels/{CHANNEL_ID}/messages/{status_id}$")
    deleted = await fake.wait_for_request("DELETE", rf"^/channels/{CHANNEL_ID}/messages/{status_id}$")
    assert status.content.startswith("Drawing") and edits and edits[-1].content.startswith("Drawing: step")
    assert status.at < edits[0].at and edits[-1].at < deleted.at and status.at < answer.at
    assert all(b.at - a.at >= 0.04 for a, b in zip([status, *edits], edits))


async def test_a_slow_download_is_not_overtaken_by_the_next_message(fake, bot, core, llm_server):
    llm_server.on(user="make it winter", tools_include="edit_image").call(
        "edit_image", {"image": "img1", "instruction": "make it winter"})
    llm_server.on(after_tool="edit_image").reply("Snowy: img2")
    slow = fake.add_file(photo().data, "house.jpg", "image/jpeg", delay_s=1.5)
    await fake.push("MESSAGE_CREATE", mention(fake, "", attachments=[slow]))
    await fake.push("MESSAGE_CREATE", mention(fake, "make it winter"))  # sent right after, no file to fetch
    winter = await fake.wait_for_request("POST", ANSWER, where=with_files, timeout=20)
    got = fake.matching("POST", ANSWER, where=lambda r: (r.content or "").startswith("Got img1"))
    assert winter.content == "Snowy: img2" and got and got[0].at < winter.at  # answered in the order sent
    assert image_enum(llm_server.requests[0], "edit_image") == ["img1"]  # the photo existed for the LLM


async def test_a_rate_limited_status_edit_never_affects_the_drawing(fake, bot, core, llm_server):
    fake.edit_limit = (1, 5.0)  # one edit per 5 s in this channel: the second one gets a 429
    core.status_interval = 0.0
    llm_server.on(user="draw a cat").call("generate_image", {"prompt": "a cat"})
    llm_server.on(after_tool="generate_image").reply("Here is your cat: img1")
    await fake.push("MESSAGE_CREATE", mention(fake, "draw a cat"))
    answer = await fake.wait_for_request("POST", ANSWER, where=with_files, timeout=20)
    assert answer.content == "Here is your cat: img1" and [f.filename for f in answer.files] == ["img1.png"]
    status = fake.matching("POST", ANSWER, where=lambda r: not r.files)[0]
    await fake.wait_for_request("DELETE", rf"^/channels/{CHANNEL_ID}/messages/{status.response['id']}$")
    assert fake.rate_limited  # Discord said wait; the work went on


def test_split_text_prefers_line_breaks_then_spaces():
    assert split_text("a" * 1990 + "\n" + "b" * 30) == ["a" * 1990, "b" * 30]
    assert split_text("word " * 500) == ["word " * 399 + "word", "word " * 99 + "word"]
    assert [len(p) for p in split_text("x" * 4500)] == [2000, 2000, 500]


# --- slash commands -------------------------------------------------------------------------------


async def answered(fake: FakeDiscord, interaction: dict, timeout: float = 20.0):
    """Push a slash command; returns (the defer callback, the first followup)."""
    await fake.push("INTERACTION_CREATE", interaction)
    followup = await fake.wait_for_request("POST", rf"^/webhooks/{APP_ID}/{interaction['token']}$", timeout=timeout)
    defer = fake.matching("POST", rf"^/interactions/{interaction['id']}/{interaction['token']}/callback$")[0]
    assert defer.json["type"] == 5 and fake.requests.index(defer) < fake.requests.index(followup)
    return defer, followup


async def test_imagine_posts_the_image_as_a_followup(fake, bot):
    _, followup = await answered(fake, fake.interaction("imagine", [option("prompt", "a red house")]))
    assert followup.content.startswith('Drew img1 (64x64) from "a red house"')
    assert [f.filename for f in followup.files] == ["img1.png"]
    assert decoded(followup.files[0].data).size == (64, 64)
    assert not followup.flags & EPHEMERAL


async def test_caption_and_edit_take_an_image_id_or_an_uploaded_image(fake, bot, core):
    """The same arguments as on Slack and in the terminal (core/commands.py): an image id, or here an
    attached file in its place."""
    att = fake.add_file(photo().data, "house.jpg", "image/jpeg")
    _, said = await answered(fake, fake.interaction("caption", [option("file", att["id"], 11)], attachments=[att]))
    assert said.content.startswith(("img1 shows: ", "The captioning model found nothing to say about img1"))

    att = fake.add_file(photo(sky=(30, 30, 90)).data, "night.jpg", "image/jpeg")
    edit = fake.interaction("edit", [option("file", att["id"], 11), option("instruction", "make it winter")],
                            attachments=[att])
    _, made = await answered(fake, edit)
    assert made.content == "Made img3 from img2: make it winter."
    row = core.store.image(f"discord:channel:{CHANNEL_ID}", "img3")
    assert decoded(made.files[0].data).size == (row.width, row.height) and row.parent == "img2"

    edit = fake.interaction("edit", [option("image", "img1"), option("instruction", "make it night")])
    _, made = await answered(fake, edit)
    assert made.content == "Made img4 from img1: make it night."

    # a reference image (attached, or named) needs FLUX.2 klein, which this (the seed's) pool has not loaded
    ref = fake.add_file(photo(sky=(90, 30, 30)).data, "cat.jpg", "image/jpeg")
    edit = fake.interaction("edit", [option("image", "img1"), option("reference1", ref["id"], 11),
                                     option("instruction", "put the cat from the reference here")], attachments=[ref])
    _, refused = await answered(fake, edit)
    assert refused.content.startswith("Editing with reference images needs FLUX.2 [klein] (the Klein model), which "
                                      "is not loaded on this bot; an admin can load it with /load Klein.")
    assert not refused.files and core.store.image(f"discord:channel:{CHANNEL_ID}", "img5").operation == "upload"


async def test_reset_clears_only_this_channel(fake, bot, core):
    here, there = f"discord:channel:{CHANNEL_ID}", f"discord:channel:{CHANNELS[0]}"
    await core.handle(turn("", here, photo()), RecordingReply())
    await core.handle(turn("", there, photo()), RecordingReply())
    _, followup = await answered(fake, fake.interaction("reset"))
    assert followup.content == "This conversation is cleared: I have forgotten its messages and images."
    assert core.store.images(here) == [] and [r.image_id for r in core.store.images(there)] == ["img1"]


async def test_help_answers_only_the_asker(fake, bot):
    defer, followup = await answered(fake, fake.interaction("help"))
    assert followup.content == HELP and followup.flags & EPHEMERAL and defer.flags & EPHEMERAL


@pytest.mark.parametrize("name, options, who, permissions, expected", [
    ("models", [], "4000", MANAGE_GUILD, "Text2Image: ready on cpu (float32)"),
    ("models", [], "4000", ADMINISTRATOR, "Text2Image: ready on cpu (float32)"),
    ("load", [option("model", "Text2Image"), option("device", "quantum")], ADMIN_ID, 0,
     "'quantum' is not a device; use auto, cpu, cuda or cuda:N."),
    ("unload", [option("model", "Text2Image")], "4000", 0, "Sorry, /unload is for the bot's admins only."),
    ("reload", [], "4000", 0, "Sorry, /reload is for the bot's admins only."),
])
async def test_admin_commands_are_ephemeral_and_need_an_admin(fake, bot, name, options, who, permissions, expected):
    interaction = fake.interaction(name, options, author=user(who), permissions=permissions)
    defer, followup = await answered(fake, interaction)
    assert defer.flags & EPHEMERAL and followup.flags & EPHEMERAL
    assert expected in followup.content


async def test_an_image_over_the_upload_limit_is_reencoded_under_it(fake, bot, core):
    limit = 3000
    _, followup = await answered(fake, fake.interaction("imagine", [option("prompt", "a cat")], size_limit=limit))
    png = core.images.path(core.store.image(f"discord:channel:{CHANNEL_ID}", "img1")).read_bytes()
    assert len(png) > limit  # so the upload had to shrink
    [part] = followup.files
    assert len(part.data) <= limit and part.filename in ("img1.jpg", "img1.webp")
    assert decoded(part.data).format in ("JPEG", "WEBP")

    _, followup = await answered(fake, fake.interaction("imagine", [option("prompt", "a dog")], size_limit=200))
    assert not followup.files and "img2 could not be shrunk under this place's upload limit" in followup.content


async def test_every_command_is_registered_with_descriptions(fake, bot):
    """Discord's commands are core/commands.py's, each argument an option (an image's id beside a file), a row
    with subcommands (/admin block @USER) a group of them (options of type 1), each with its arguments."""
    [synced] = fake.matching("PUT", rf"^/applications/{APP_ID}/commands$")
    assert [c["name"] for c in synced.json] == [c.name for c in COMMANDS]

    def check(command: dict, row) -> None:
        assert command["description"] == row.summary
        assert all(o["description"] and o["description"] != "…" for o in command.get("options", [])), command
        if row.subcommands:
            subs = command.get("options", [])
            assert [(o["name"], o["type"]) for o in subs] == [(s.name, 1) for s in row.subcommands]
            for sub, sub_row in zip(subs, row.subcommands):
                check(sub, sub_row)
            return
        names = [a.name for a in row.args] + (["file"] if any(a.kind == IMAGE for a in row.args) else [])
        names += [f"reference{n}" for a in row.args if a.kind == IMAGES for n in range(1, a.high + 1)]
        assert sorted(o["name"] for o in command.get("options", [])) == sorted(names)
        assert {o["name"] for o in command.get("options", []) if o.get("required")} == {
            a.name for a in row.args if a.required and a.kind not in (IMAGE, IMAGES)}
        files = {"file", *(f"reference{n}" for n in range(1, 4))}  # attachments: type 11
        assert all(o["type"] == 11 for o in command.get("options", []) if o["name"] in files)
        assert all(o["type"] == {USER: 6, INT: 4}.get(a.kind, 3) for o in command.get("options", [])
                   for a in row.args if a.name == o["name"]), command  # 6: a user, 4: an integer, 3: a string

    for command, row in zip(synced.json, COMMANDS):
        check(command, row)


# --- load, connection ---------------------------------------------------------------------------------


async def test_twenty_channels_at_the_same_moment_are_all_answered_in_their_own_channel(fake, bot, core, llm_server):
    llm_server.on(user="draw a cat", after_tool=False, times=None).call("generate_image", {"prompt": "a cat"})
    llm_server.on(after_tool="generate_image", times=None).reply("Here is your cat: img1")
    asks = [mention(fake, f"draw a cat for channel {c}", channel=c, author=user(str(5000 + i)))
            for i, c in enumerate(CHANNELS)]
    pushed = await asyncio.gather(*(fake.push("MESSAGE_CREATE", m) for m in asks))

    answers = await fake.wait_for_requests("POST", r"^/channels/31\d\d/messages$", 20, where=with_files, timeout=40)
    by_channel = {a.path.split("/")[2]: a for a in answers}
    assert sorted(by_channel) == CHANNELS
    for ask, at in zip(asks, pushed):
        channel = ask["channel_id"]
        answer = by_channel[channel]
        assert str(answer.json["message_reference"]["message_id"]) == ask["id"]
        own = core.images.path(core.store.image(f"discord:channel:{channel}", "img1")).read_bytes()
        assert answer.files[0].data == own
        first = fake.matching("POST", rf"^/channels/{channel}/typing$")[0]
        assert first.at - at < 1.0


async def test_a_rejected_token_is_one_clear_error_not_a_retry_loop(fake, core, monkeypatch, caplog):
    monkeypatch.setenv("DISCORD_TOKEN", "not-the-token")
    fake.expect_error("rejected the bot token")
    with caplog.at_level(logging.ERROR), pytest.raises(DiscordRejected, match=r"token in \$DISCORD_TOKEN"):
        await asyncio.wait_for(discord_bot.run(core, discord_config(core, "DISCORD_TOKEN")), 10)
    assert [r.path for r in fake.requests] == ["/users/@me"]
    [logged] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged.getMessage().startswith("Discord rejected the bot token in $DISCORD_TOKEN")
    assert logged.exc_info is None  # no traceback


async def test_a_lost_gateway_connection_is_resumed(fake, bot, llm_server):
    await fake.drop_connection(4000)
    await asyncio.wait_for(fake.identified.wait(), 10)
    ops = [f["op"] for f in fake.gateway_received]
    assert ops.count(2) == 1 and 6 in ops  # identified once, then resumed the same session
    assert fake.gateway_paths == ["/gateway", "/resume"]  # at READY's resume_gateway_url
    llm_server.on(user="still there").reply("Yes!")
    await fake.push("MESSAGE_CREATE", mention(fake, "still there?"))
    await fake.wait_for_request("POST", ANSWER, where=lambda r: r.content == "Yes!")
