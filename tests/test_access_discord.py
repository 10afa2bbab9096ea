"""Who may use the bot, and how much, on Discord end to end (core/access.py): the real discord.py client against
the loopback fake, the real Core on the tiny-model pool counting the jobs that reach it (CountingPool), restarted
over the same data directory where a test says so. Roles are the guild's, on the member as Discord sends it."""

from __future__ import annotations

import dataclasses

import pytest

import settings
from bot.adapters.discord_bot import DiscordBot
from bot.app import build_core
from core.access import BLOCKED, COOLING, NOT_ALLOWED, QUOTA_USED
from testkit.core import close_core, core_config
from tests.fakes.counting_pool import CancellingPool
from tests.fakes.discord_payloads import APP_ID, BOT_ID, CHANNEL_ID, EPHEMERAL, message, option, subcommand, user
from tests.fakes.discord_server import FakeDiscord, Request

TOKEN_ENV = "DISCORD_TOKEN_FOR_ACCESS_TESTS"
MEMBER, PATRON = "6001", "6002"  # role ids: the allowed roles; patrons get 3 images a day and Upscale
ADMIN = user("777", "admin")  # in discord.admin_ids
ALICE, BOB, EVE = user("42", "alice"), user("43", "bob"), user("44", "eve")
ROLES = {"42": [MEMBER], "43": [MEMBER, PATRON], "44": [], "777": []}  # eve has no role
IN_CHANNEL = rf"^/channels/{CHANNEL_ID}/messages$"


@pytest.fixture
async def fake(monkeypatch):
    async with FakeDiscord() as server:
        server.add_role(MEMBER, "member")
        server.add_role(PATRON, "patron")
        server.patch(monkeypatch)
        monkeypatch.setenv(TOKEN_ENV, server.token)
        yield server


class Bots:
    """The bot and its core, (re)started over the same data directory with the given [quotas]."""

    def __init__(self, pool, tmp_path, llm_server):
        self.base = core_config(pool.config, tmp_path / "data", base_url=llm_server.base_url)
        self.core = self.bot = None

    async def start(self, **quotas) -> DiscordBot:
        await self.stop()
        discord = settings.DiscordConfig(True, TOKEN_ENV, ("777",), allowed_roles=(MEMBER, PATRON),
                                         model_roles={"Upscale": (PATRON,)})
        limits = {"images_per_day": 1, "discord_roles": {PATRON: 3}, **quotas}
        config = dataclasses.replace(self.base, discord=discord, quotas=settings.QuotasConfig(**limits))
        self.core = build_core(config, pool_client=CancellingPool, llm_retries=0, status_interval=0)
        self.bot = DiscordBot(self.core, config, guild_ready_timeout=0.05)
        await self.bot.start()
        return self.bot

    @property
    def jobs(self) -> list[str]:
        """The users of the jobs that reached the pool since this core started."""
        return self.core.pool.submitted

    async def stop(self) -> None:
        if self.bot is not None:
            await self.bot.idle()
            await self.bot.close()
            await close_core(self.core)
            self.bot = None


@pytest.fixture
async def bots(pool, tmp_path, llm_server):
    b = Bots(pool, tmp_path, llm_server)
    yield b
    await b.stop()


async def command(fake: FakeDiscord, name: str, who: dict, options: list[dict] = (), **kw) -> Request:
    """``who`` runs the slash command; its first followup (the answer)."""
    interaction = fake.interaction(name, list(options), author=who, roles=ROLES[who["id"]], **kw)
    await fake.push("INTERACTION_CREATE", interaction)
    return await fake.wait_for_request("POST", rf"^/webhooks/{APP_ID}/{interaction['token']}$", timeout=20)


async def imagine(fake: FakeDiscord, who: dict) -> Request:
    return await command(fake, "imagine", who, [option("prompt", "a red house")])


async def admin(fake: FakeDiscord, action: str, target: dict) -> str:
    answer = await command(fake, "admin", ADMIN, [subcommand(action, [option("user", target["id"], 6)])],
                           users=[target])
    assert answer.flags & EPHEMERAL
    return answer.content


async def mention(fake: FakeDiscord, who: dict, text: str) -> dict:
    said = message(CHANNEL_ID, f"<@{BOT_ID}> {text}", who, mentions=[fake.bot_user], roles=ROLES[who["id"]])
    await fake.push("MESSAGE_CREATE", said)
    return said


def replies_to(fake: FakeDiscord, said: dict) -> list[Request]:
    return fake.matching("POST", IN_CHANNEL, where=lambda r: str(((r.json or {}).get("message_reference") or {})
                                                                 .get("message_id")) == said["id"])


async def settled(fake: FakeDiscord, bots: Bots, llm_server) -> None:
    """Every message pushed so far was handled: an admin's message after them is answered, and the work is idle."""
    llm_server.on(user="ping").reply("pong")
    await mention(fake, ADMIN, "ping")
    await fake.wait_for_request("POST", IN_CHANNEL, where=lambda r: r.content == "pong", timeout=20)
    await bots.bot.idle()


# --- quotas ---------------------------------------------------------------------------------------------


async def test_a_quota_hit_is_answered_with_when_and_sends_no_job(fake, bots, llm_server):
    await bots.start()
    drawn = await imagine(fake, ALICE)
    assert drawn.files and bots.jobs.count("42") == 1
    refused = await imagine(fake, ALICE)  # one image a day for a member
    assert refused.content.startswith(QUOTA_USED.split("{")[0] + "1 image for today. The count starts again at "
                                                                  "00:00 UTC, in ")
    assert not refused.files and bots.jobs.count("42") == 1  # nothing reached the pool
    asked = [await mention(fake, ALICE, "draw a dog"), await mention(fake, ALICE, "draw a dog, please")]
    await settled(fake, bots, llm_server)
    assert [r.content for r in replies_to(fake, asked[0])] == [refused.content]  # told once ...
    assert replies_to(fake, asked[1]) == []  # ... not again for a repeat
    assert not [r for r in llm_server.requests if "draw a dog" in str(r["messages"])]
    quota = await command(fake, "quota", ALICE)
    assert quota.flags & EPHEMERAL and quota.content.startswith("You have 0 of 1 image left today.")


async def test_a_cancelled_job_does_not_count(fake, bots):
    await bots.start()
    bots.core.pool.cancel_next = True
    cancelled = await imagine(fake, ALICE)
    assert not cancelled.files and bots.core.pool.failed == ["cancelled"] and bots.jobs == ["42"]
    assert (await command(fake, "quota", ALICE)).content.startswith("You have 1 of 1 image left today.")
    assert (await imagine(fake, ALICE)).files and bots.jobs == ["42", "42"]  # the one image of the day
    assert (await command(fake, "quota", ALICE)).content.startswith("You have 0 of 1 image left today.")


async def test_a_role_overrides_the_quota_and_admins_are_exempt(fake, bots):
    await bots.start()
    for _ in range(2):  # a patron has 3 a day, an admin none: both draw past the default of 1
        assert (await imagine(fake, BOB)).files and (await imagine(fake, ADMIN)).files
    assert bots.jobs.count("43") == 2 and bots.jobs.count("777") == 2
    assert (await command(fake, "quota", BOB)).content.startswith("You have 1 of 3 images left today.")
    assert (await command(fake, "quota", ADMIN)).content.startswith("You are one of the bot's admins")
    assert (await imagine(fake, BOB)).files
    assert not (await imagine(fake, BOB)).files and bots.jobs.count("43") == 3


async def test_a_cooldown_is_answered_once_per_cooldown(fake, bots, llm_server):
    await bots.start(images_per_day=0, cooldown_s=60)
    llm_server.on(user="hello").reply("Hi!")
    first = await mention(fake, ALICE, "hello")
    await fake.wait_for_request("POST", IN_CHANNEL, where=lambda r: r.content == "Hi!", timeout=20)
    again = [await mention(fake, ALICE, "hello again"), await mention(fake, ALICE, "hello?")]
    await settled(fake, bots, llm_server)
    (told,) = replies_to(fake, again[0])
    assert told.content == COOLING.format(left="60 s", every="60 s") and replies_to(fake, again[1]) == []
    assert replies_to(fake, first)[0].content == "Hi!" and len(llm_server.requests) == 2  # hello, the admin's ping
    refused = await imagine(fake, ALICE)  # a command is answered every time
    assert refused.content.startswith("Please wait ") and bots.jobs.count("42") == 0


# --- admins: block, unblock, reset-quota ----------------------------------------------------------------


async def test_block_unblock_and_reset_quota_outlive_restarts(fake, bots, llm_server):
    await bots.start()
    assert (await admin(fake, "block", ALICE)).startswith("Blocked <@42>.")
    await bots.start()  # restart
    asked = [await mention(fake, ALICE, "hello"), await mention(fake, ALICE, "hello??")]
    await settled(fake, bots, llm_server)
    assert [r.content for r in replies_to(fake, asked[0])] == [BLOCKED] and replies_to(fake, asked[1]) == []
    await bots.start()
    later = await mention(fake, ALICE, "are you there?")
    await settled(fake, bots, llm_server)
    assert replies_to(fake, later) == []  # exactly one reply, across a restart too
    assert (await imagine(fake, ALICE)).content == BLOCKED and bots.jobs == []
    assert not [r for r in llm_server.requests if "hello" in str(r["messages"])]

    assert (await admin(fake, "unblock", ALICE)).startswith("Unblocked <@42>")
    await bots.start()
    assert (await imagine(fake, ALICE)).files and bots.jobs == ["42"]
    await bots.start()
    assert not (await imagine(fake, ALICE)).files and bots.jobs == []  # the count outlived the restart
    assert (await admin(fake, "reset-quota", ALICE)).startswith("Reset today's image count of <@42> (they had made 1)")
    await bots.start()
    assert (await imagine(fake, ALICE)).files and bots.jobs == ["42"]


async def test_admin_commands_need_an_admin(fake, bots):
    await bots.start()
    answer = await command(fake, "admin", ALICE, [subcommand("block", [option("user", "43", 6)])], users=[BOB])
    assert answer.content == "Sorry, /admin is for the bot's admins only." and answer.flags & EPHEMERAL
    assert bots.core.access.blocked("discord", "43") is None


# --- gates: allowed roles, models by role -----------------------------------------------------------------


async def test_only_the_allowed_roles_may_use_the_bot(fake, bots, llm_server):
    await bots.start()
    asked = await mention(fake, EVE, "hello")
    await settled(fake, bots, llm_server)
    assert [r.content for r in replies_to(fake, asked)] == [NOT_ALLOWED.format(groups="roles")]
    assert (await imagine(fake, EVE)).content == NOT_ALLOWED.format(groups="roles") and bots.jobs == []
    assert len(llm_server.requests) == 1  # the admin's ping only


async def test_upscale_is_only_for_patrons(fake, bots):
    await bots.start(images_per_day=0)
    posted = await imagine(fake, ALICE)
    (row,) = posted.response["components"]
    upscale = next(b["custom_id"] for b in row["components"] if b["label"] == "Upscale ×2")
    jobs = len(bots.jobs)

    pressed = fake.press(posted, upscale, author=ALICE, roles=ROLES["42"])
    await fake.push("INTERACTION_CREATE", pressed)
    refused = await fake.answered(pressed)
    assert refused.json["type"] == 4 and refused.json["data"]["flags"] & EPHEMERAL  # to the presser alone
    assert refused.json["data"]["content"] == ("Sorry, Upscale ×2 is only for members of certain roles here; the "
                                               "bot's admins decide who.")
    await bots.bot.idle()
    assert len(bots.jobs) == jobs

    pressed = fake.press(posted, upscale, author=BOB, roles=ROLES["43"])
    await fake.push("INTERACTION_CREATE", pressed)
    assert (await fake.answered(pressed)).json["type"] == 6  # acknowledged, and run
    done = await fake.wait_for_request("POST", IN_CHANNEL, where=lambda r: bool(r.files), timeout=30)
    assert done.content.startswith("img1 upscaled ×2 for <@43>") and bots.jobs[jobs:] == ["43"]
