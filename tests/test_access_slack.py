"""Who may use the bot, and how much, on Slack end to end (core/access.py): real slack-bolt / slack_sdk against the
loopback fake, the real Core on the tiny-model pool counting the jobs that reach it (CountingPool), restarted over
the same data directory where a test says so. User groups are read with usergroups.list, as on Slack."""

from __future__ import annotations

import dataclasses
import json

import pytest

import settings
from bot.adapters.slack_bot import SlackBot
from bot.app import build_core
from core.access import BLOCKED, COOLING, NOT_ALLOWED, QUOTA_USED
from testkit.core import close_core, core_config
from tests.fakes.counting_pool import CancellingPool
from tests.fakes.logged_errors import LoggedErrors
from tests.fakes.slack_payloads import BOT_USER, mention
from tests.fakes.slack_server import Call, FakeSlack

AT = f"<@{BOT_USER}>"
MEMBERS, PATRONS = "S0MEMBERS", "S0PATRONS"  # the allowed groups; patrons get 3 images a day and Upscale
ADMIN, ALICE, BOB, EVE = "UADMIN", "U1ALICE", "U2BOB", "U3EVE"  # alice a member, bob a patron, eve in no group


@pytest.fixture
async def slack(monkeypatch):
    async with FakeSlack() as fake:
        fake.add_usergroup(MEMBERS, "members", [ALICE, BOB])
        fake.add_usergroup(PATRONS, "patrons", [BOB])
        fake.add_usergroup("S0OLD", "old-patrons", [ALICE], disabled=True)  # listed only with include_disabled
        monkeypatch.setenv("SLACK_BOT_TOKEN", fake.bot_token)
        monkeypatch.setenv("SLACK_APP_TOKEN", fake.app_token)
        yield fake


class Bots:
    """The bot and its core, (re)started over the same data directory with the given [quotas]."""

    def __init__(self, slack: FakeSlack, pool, tmp_path, llm_server):
        self.slack = slack
        self.base = core_config(pool.config, tmp_path / "data", base_url=llm_server.base_url)
        self.core = self.bot = None

    async def start(self, **quotas) -> SlackBot:
        await self.stop()
        cfg = dataclasses.replace(self.base.slack, admin_ids=(ADMIN,), allowed_usergroups=(MEMBERS, PATRONS),
                                  model_usergroups={"Upscale": (PATRONS, "S0OLD")})
        limits = {"images_per_day": 1, "slack_usergroups": {PATRONS: 3}, **quotas}
        config = dataclasses.replace(self.base, slack=cfg, quotas=settings.QuotasConfig(**limits))
        self.core = build_core(config, pool_client=CancellingPool, llm_retries=0, status_interval=0)
        self.bot = SlackBot(self.core, config, base_url=self.slack.base_url, host="127.0.0.1")
        await self.bot.start()
        await self.slack.connected()
        return self.bot

    @property
    def jobs(self) -> list[str]:
        """The users of the jobs that reached the pool since this core started."""
        return self.core.pool.submitted

    async def stop(self) -> None:
        if self.bot is not None:
            for env in list(self.slack.envelopes.values()):  # a restart after the acks went out, as a graceful one
                await self.slack.wait_acked(env.envelope_id)
            await self.bot.idle()
            await self.bot.close()
            await close_core(self.core)
            self.bot = None


@pytest.fixture
async def bots(slack, pool, tmp_path, llm_server):
    with LoggedErrors("slack_bolt", "slack_sdk", "bot.adapters.slack_bot") as errors:
        b = Bots(slack, pool, tmp_path, llm_server)
        try:
            yield b
            await slack.check()  # every envelope acked within 3 s, nothing the fake does not serve
        finally:
            await b.stop()
    errors.assert_none()


async def command(slack: FakeSlack, name: str, text: str, user: str) -> Call:
    """``user`` types the slash command; what it answers through its response_url."""
    seen = len(slack.called("response_url"))
    await slack.push_command(f"/{name}", text, user=user)
    await slack.wait_for("response_url", count=seen + 1, timeout=20)
    return slack.called("response_url")[seen]


def top_level(c: Call) -> bool:
    """A message posted in the channel itself (a command's answer), not a status line nor buttons."""
    return (c.get("channel") == "C1" and not c.get("thread_ts") and not c.get("blocks")
            and not c["text"].startswith(("Working", "Drawing")))


async def drawn(slack: FakeSlack, user: str) -> Call:
    """``user`` types /imagine and gets an image (its upload, with the answer as its comment)."""
    seen = len(slack.called("files.completeUploadExternal"))
    await slack.push_command("/imagine", "a red house", user=user)
    await slack.wait_for("files.completeUploadExternal", count=seen + 1, timeout=20)
    return slack.called("files.completeUploadExternal")[seen]


async def refused(slack: FakeSlack, user: str) -> str:
    """``user`` types /imagine and gets a message instead: its text."""
    seen = len(slack.called("chat.postMessage", top_level))
    await slack.push_command("/imagine", "a red house", user=user)
    await slack.wait_for("chat.postMessage", top_level, count=seen + 1, timeout=20)
    return slack.called("chat.postMessage", top_level)[seen]["text"]


async def said(slack: FakeSlack, user: str, text: str) -> dict:
    event = mention("C1", user, f"{AT} {text}")
    await slack.push_event(event)
    return event


def replies_to(slack: FakeSlack, event: dict) -> list[str]:
    """What the bot posted in the thread of a mention (its answer thread), status lines left out."""
    return [c["text"] for c in slack.called("chat.postMessage", lambda c: c.get("thread_ts") == event["ts"])
            if not c["text"].startswith(("Working", "Drawing"))]


async def settled(slack: FakeSlack, bots: Bots, llm_server) -> None:
    """Every event pushed so far was handled: an admin's mention after them is answered, and the work is idle."""
    llm_server.on(user="ping").reply("pong")
    ping = await said(slack, ADMIN, "ping")
    await slack.wait_for("chat.postMessage", lambda c: c.get("thread_ts") == ping["ts"] and c["text"] == "pong",
                         timeout=20)
    await bots.bot.idle()


# --- quotas ---------------------------------------------------------------------------------------------


async def test_a_quota_hit_is_answered_with_when_and_sends_no_job(slack, bots, llm_server):
    await bots.start()
    assert (await drawn(slack, ALICE))["initial_comment"].startswith("Drew img1") and bots.jobs == [ALICE]
    refusal = await refused(slack, ALICE)  # one image a day for a member
    assert refusal.startswith(QUOTA_USED.split("{")[0] + "1 image for today. The count starts again at 00:00 UTC, in ")
    assert bots.jobs == [ALICE]  # nothing more reached the pool
    asked = [await said(slack, ALICE, "draw a dog"), await said(slack, ALICE, "draw a dog, please")]
    await settled(slack, bots, llm_server)
    assert replies_to(slack, asked[0]) == [refusal] and replies_to(slack, asked[1]) == []  # told once, not again
    assert not [r for r in llm_server.requests if "draw a dog" in str(r["messages"])]
    assert (await command(slack, "quota", "", ALICE))["text"].startswith("You have 0 of 1 image left today.")


async def test_a_cancelled_job_does_not_count(slack, bots):
    await bots.start()
    bots.core.pool.cancel_next = True
    seen = len(slack.called("chat.postMessage", top_level))
    await slack.push_command("/imagine", "a red house", user=ALICE)
    await slack.wait_for("chat.postMessage", top_level, count=seen + 1, timeout=20)
    await bots.bot.idle()
    assert bots.core.pool.failed == ["cancelled"] and bots.jobs == [ALICE]
    assert not slack.called("files.completeUploadExternal")
    assert (await command(slack, "quota", "", ALICE))["text"].startswith("You have 1 of 1 image left today.")
    await drawn(slack, ALICE)  # the one image of the day
    assert bots.jobs == [ALICE, ALICE]
    assert (await command(slack, "quota", "", ALICE))["text"].startswith("You have 0 of 1 image left today.")


async def test_a_user_group_overrides_the_quota_and_admins_are_exempt(slack, bots):
    await bots.start()
    for _ in range(2):  # a patron has 3 a day, an admin none: both draw past the default of 1
        await drawn(slack, BOB)
        await drawn(slack, ADMIN)
    assert bots.jobs.count(BOB) == 2 and bots.jobs.count(ADMIN) == 2
    assert (await command(slack, "quota", "", BOB))["text"].startswith("You have 1 of 3 images left today.")
    assert (await command(slack, "quota", "", ADMIN))["text"].startswith("You are one of the bot's admins")
    await drawn(slack, BOB)
    assert (await refused(slack, BOB)).startswith("You have used your 3 images for today.")
    assert bots.jobs.count(BOB) == 3
    (listed,) = {c.get("include_users") for c in slack.called("usergroups.list")}
    assert listed in ("1", "true", True)  # members are listed only when asked for


async def test_a_cooldown_is_answered_once_per_cooldown(slack, bots, llm_server):
    await bots.start(images_per_day=0, cooldown_s=60)
    llm_server.on(user="hello").reply("Hi!")
    first = await said(slack, ALICE, "hello")
    await slack.wait_for("chat.postMessage", lambda c: c["text"] == "Hi!", timeout=20)
    again = [await said(slack, ALICE, "hello again"), await said(slack, ALICE, "hello?")]
    await settled(slack, bots, llm_server)
    assert replies_to(slack, again[0]) == [COOLING.format(left="60 s", every="60 s")]
    assert replies_to(slack, again[1]) == [] and replies_to(slack, first) == ["Hi!"]
    assert len(llm_server.requests) == 2  # hello, and the admin's ping
    assert (await refused(slack, ALICE)).startswith("Please wait ") and bots.jobs == []  # a command: answered


# --- admins: block, unblock, reset-quota ----------------------------------------------------------------


async def test_block_unblock_and_reset_quota_outlive_restarts(slack, bots, llm_server):
    await bots.start()
    env = await slack.wait_acked(await slack.push_command("/admin", "block @alice", user=ADMIN))  # a name, no id
    assert env.ack_payload["text"].startswith("Usage: /admin block|unblock|reset-quota @USER")  # inside the ack
    answer = await command(slack, "admin", f"block <@{ALICE}|alice>", ADMIN)
    assert answer["text"].startswith(f"Blocked <@{ALICE}>.") and answer["response_type"] == "ephemeral"
    await bots.start()  # restart
    asked = [await said(slack, ALICE, "hello"), await said(slack, ALICE, "hello??")]
    await settled(slack, bots, llm_server)
    assert replies_to(slack, asked[0]) == [BLOCKED] and replies_to(slack, asked[1]) == []
    await bots.start()
    later = await said(slack, ALICE, "are you there?")
    await settled(slack, bots, llm_server)
    assert replies_to(slack, later) == []  # exactly one reply, across a restart too
    assert await refused(slack, ALICE) == BLOCKED and bots.jobs == []
    assert not [r for r in llm_server.requests if "hello" in str(r["messages"])]

    assert (await command(slack, "admin", f"unblock <@{ALICE}>", ADMIN))["text"].startswith(f"Unblocked <@{ALICE}>")
    await bots.start()
    await drawn(slack, ALICE)
    assert bots.jobs == [ALICE]
    await bots.start()
    assert (await refused(slack, ALICE)).startswith("You have used your 1 image") and bots.jobs == []  # kept
    reset = await command(slack, "admin", f"reset-quota {ALICE}", ADMIN)
    assert reset["text"].startswith(f"Reset today's image count of <@{ALICE}> (they had made 1)")
    await bots.start()
    await drawn(slack, ALICE)
    assert bots.jobs == [ALICE]


async def test_admin_commands_need_an_admin(slack, bots):
    await bots.start()
    answer = await command(slack, "admin", f"block <@{BOB}>", ALICE)
    assert answer["text"] == "Sorry, /admin is for the bot's admins only."
    assert bots.core.access.blocked("slack", BOB) is None


# --- gates: allowed user groups, models by group, a token without the scope --------------------------------


async def test_only_the_allowed_user_groups_may_use_the_bot(slack, bots, llm_server):
    await bots.start()
    asked = await said(slack, EVE, "hello")
    await settled(slack, bots, llm_server)
    assert replies_to(slack, asked) == [NOT_ALLOWED.format(groups="user groups")]
    assert await refused(slack, EVE) == NOT_ALLOWED.format(groups="user groups") and bots.jobs == []
    assert len(llm_server.requests) == 1  # the admin's ping only


async def test_upscale_is_only_for_patrons(slack, bots):
    await bots.start(images_per_day=0)
    await drawn(slack, ALICE)
    posted = await slack.wait_for("chat.postMessage", lambda c: "vc:upscale:img1" in json.dumps(c.get("blocks")))
    jobs = len(bots.jobs)
    await slack.press(posted, "vc:upscale:img1", user=ALICE)  # a disabled group does not count (S0OLD)
    private = await slack.wait_for("chat.postEphemeral")
    assert (private["user"], private["text"]) == (ALICE, "Sorry, Upscale ×2 is only for members of certain user "
                                                         "groups here; the bot's admins decide who.")
    await bots.bot.idle()
    assert len(bots.jobs) == jobs
    await slack.press(posted, "vc:upscale:img1", user=BOB)
    await slack.wait_for("files.completeUploadExternal",
                         lambda c: c.get("initial_comment") == f"img1 upscaled ×2 for <@{BOB}>: img2.", timeout=30)
    assert bots.jobs[jobs:] == [BOB]


async def test_without_the_usergroups_scope_the_admins_are_told(slack, bots, llm_server):
    slack.usergroups_scope = False
    await bots.start()
    assert "usergroups:read" in bots.core.admin_notes["Slack"]  # shown with /models
    asked = await said(slack, BOB, "hello")  # his groups could not be read: the gate cannot let him in
    await settled(slack, bots, llm_server)
    assert replies_to(slack, asked) == [NOT_ALLOWED.format(groups="user groups")]
