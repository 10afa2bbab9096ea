"""The command table (core/commands.py) keeps every platform honest: Discord's app commands, Slack's
slash commands, the terminal's commands and /help are all made from it. Offline: no pool, no core;
the real discord.py tree and the real bolt dispatch."""

from __future__ import annotations

import io

import discord
import pytest
from slack_bolt.request.async_request import AsyncBoltRequest

import settings
from bot.adapters import terminal
from bot.adapters.discord_bot import DiscordBot
from bot.adapters.discord_commands import FILE, REFERENCE
from bot.adapters.slack_bot import SlackBot
from core.commands import BY_NAME, CHOICE, COMMANDS, HELP, IMAGE, IMAGES, INT, TEXT, USER, from_words, tool_args
from tests.fakes.slack_payloads import slash_command
from tests.fakes.slack_server import FakeSlack


@pytest.fixture
def config(tmp_path):
    return settings.parse({}, tmp_path / "config.toml")


def test_every_command_has_help_and_described_arguments():
    assert len(BY_NAME) == len(COMMANDS)
    for command in COMMANDS:
        assert command.description.endswith(".") and len(command.summary) <= 100  # Discord's limit
        assert all(a.description for a in command.args), command.name
        assert f"{command.usage}: {command.description}" in HELP.splitlines()
        in_order = [a for a in command.args if not a.flag]  # a flagged one is typed --flag VALUE, anywhere
        assert all(a.kind != TEXT for a in in_order[:-1]), command.name  # free text comes last
        assert all(not a.required and a.kind != TEXT for a in command.args if a.flag), command.name
        assert sum(a.kind == IMAGE for a in command.args) <= 1  # one attachment option on Discord
    assert [a.usage for a in BY_NAME["load"].args] == ["MODEL", "[DEVICE]"]


def test_typed_words_become_arguments():
    assert from_words(BY_NAME["edit"], "img1 make it  winter") == {"image": "img1", "instruction": "make it  winter"}
    assert from_words(BY_NAME["edit"], "img1") is None
    # /edit's reference images: the ids after the image's, up to 3; the rest is the instruction
    edit = BY_NAME["edit"]
    assert from_words(edit, "img2 img1 img3 put the cat from img1 here") == {
        "image": "img2", "references": "img1 img3", "instruction": "put the cat from img1 here"}
    assert from_words(edit, "img2 img1") is None  # no instruction
    assert from_words(edit, "img5 img1 img2 img3 img4 x") == {
        "image": "img5", "references": "img1 img2 img3", "instruction": "img4 x"}
    assert edit.usage == "/edit IMAGE_ID [IMAGE_ID...] INSTRUCTION"
    typed = tool_args(edit, {"image": "img2", "references": "img1, img3", "instruction": "x"}, None)
    assert typed == {"image": "img2", "reference_images": ["img1", "img3"], "instruction": "x"}
    with pytest.raises(ValueError, match="references: at most 3 images; got 4"):
        tool_args(edit, {"image": "img2", "references": "img1 img3 img4 img5", "instruction": "x"}, None)
    assert from_words(BY_NAME["load"], "Text2Image") == {"model": "Text2Image"}
    assert from_words(BY_NAME["load"], "Text2Image cpu extra") is None
    assert from_words(BY_NAME["reload"], "") == {} and from_words(BY_NAME["models"], "now") is None
    admin = BY_NAME["admin"]  # a group: the first word picks the subcommand
    assert from_words(admin, "block <@U2|bob>") == {"subcommand": "block", "user": "<@U2|bob>"}
    assert from_words(admin, "reset-quota U2") == {"subcommand": "reset-quota", "user": "U2"}
    assert from_words(admin, "frobnicate U2") is None and from_words(admin, "block") is None
    assert admin.usage == "/admin block|unblock|reset-quota @USER"


def test_flags_become_options_of_imagine(config):
    imagine = BY_NAME["imagine"]
    typed = from_words(imagine, "a wide forest --ar 16:9 --seed 42  --steps 3 --model Text2Image")
    assert typed == {"prompt": "a wide forest", "aspect": "16:9", "seed": "42", "steps": "3", "model": "Text2Image"}
    assert from_words(imagine, "--ar 9:16 a tall tower") == {"prompt": "a tall tower", "aspect": "9:16"}
    assert from_words(imagine, "a forest --size 3") is None  # not an option of /imagine
    assert from_words(imagine, "a forest --seed") is None  # an option without its value
    assert from_words(imagine, "--ar 16:9") is None  # no prompt
    assert tool_args(imagine, typed, config.limits) == {"prompt": "a wide forest", "aspect_ratio": "16:9",
                                                        "seed": 42, "steps": 3, "model": "Text2Image"}
    for bad, said in (({"seed": "forty"}, "seed must be a whole number"), ({"aspect": "4:3"}, "aspect must be one of"),
                      ({"steps": str(config.limits.max_steps + 1)}, f"between 1 and {config.limits.max_steps}")):
        with pytest.raises(ValueError, match=said):
            tool_args(imagine, {"prompt": "x", **bad}, config.limits)


async def test_discord_registers_the_table(config):
    bot = DiscordBot(None, config)
    tree = {c.name: c for c in bot.client.tree.get_commands()}
    assert list(tree) == [c.name for c in COMMANDS]
    for command in COMMANDS:
        registered = tree[command.name]
        assert registered.description == command.summary
        if command.subcommands:  # a group (/admin block @user): each subcommand an app command of its own
            subs = {c.name: c for c in registered.commands}
            assert list(subs) == [s.name for s in command.subcommands]
            for sub in command.subcommands:
                assert subs[sub.name].description == sub.description
                assert_options(subs[sub.name], sub, config)
            continue
        assert_options(registered, command, config)


def assert_options(registered, command, config) -> None:
    options = {p.name: p for p in registered.parameters}
    files = [FILE] if any(a.kind == IMAGE for a in command.args) else []
    files += [REFERENCE.format(n) for a in command.args if a.kind == IMAGES for n in range(1, a.high + 1)]
    assert sorted(options) == sorted([a.name for a in command.args] + files)
    for name in files:  # an attached image, optional
        assert (options[name].type, options[name].required) == (discord.AppCommandOptionType.attachment, False)
    for arg in command.args:  # an image's id may be left out when a file is attached instead
        assert options[arg.name].required == (arg.required and arg.kind not in (IMAGE, IMAGES))
        assert options[arg.name].description == arg.description
        assert [c.value for c in options[arg.name].choices] == list(arg.choices if arg.kind == CHOICE else [])
        assert options[arg.name].autocomplete == arg.autocomplete
        if arg.kind == INT:  # steps: at most [limits] max_steps
            assert (options[arg.name].min_value, options[arg.name].max_value) == (arg.low, arg.highest(config.limits))
        kind = {USER: discord.AppCommandOptionType.user,
                INT: discord.AppCommandOptionType.integer}.get(arg.kind, discord.AppCommandOptionType.string)
        assert options[arg.name].type == kind


@pytest.fixture
async def slack(monkeypatch):
    async with FakeSlack() as fake:  # bolt checks the token (auth.test) before dispatching
        monkeypatch.setenv("SLACK_BOT_TOKEN", fake.bot_token)
        yield fake


async def test_slack_answers_every_command_of_the_table_and_no_other(config, slack):
    bot = SlackBot(None, config, base_url=slack.base_url)

    async def ack_text(name: str, text: str) -> str | None:
        payload = slash_command(f"/{name}", text, user="U1", channel="C1", channel_name="general",
                                response_url="http://127.0.0.1:9/hook", trigger_id="t1")
        response = await bot.app.async_dispatch(AsyncBoltRequest(body=dict(payload), mode="socket_mode"))
        return response.body if response.status == 200 else None  # an ack with text only: the text

    for command in COMMANDS:  # words that do not fit: answered with the usage inside the ack, the core untouched
        words = "" if any(a.required for a in command.args) else " ".join(["x"] * (len(command.args) + 1))
        expected = HELP if command.name == "help" else f"Usage: {command.usage}"
        assert (await ack_text(command.name, words)).startswith(expected), command.name
    assert await ack_text("frobnicate", "") is None


async def test_the_terminal_knows_every_command_of_the_table():
    out = io.StringIO()
    reply = terminal.TerminalReply(None, out)
    for command in COMMANDS:
        if any(a.required for a in command.args):
            await terminal.handle_line(None, f"/{command.name}", reply)
            assert out.getvalue().splitlines()[-1] == f"bot: Usage: {command.usage}"
