"""The safety filter end to end: the real Discord and Slack adapters over their loopback fakes, the
real Core, the scripted LLM, and a pool whose tiny SafetyChecker flags every image it sees."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from core.safety import NO_RETRY, UNCHECKED, WITHHELD
from testkit.pool import start_pool_with, stop_pool
from tests.fakes.discord_payloads import CHANNEL_ID, option, user
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import tool_results
from tests.fakes.slack_payloads import mention as slack_mention
from tests.test_agent import RecordingReply, photo, turn
from tests.test_discord import ADMIN_ID, ANSWER, answered, bot, mention, with_files  # noqa: F401 (fixture)
from tests.test_slack import ADMIN, AT, answer, errors, jpeg, make_bot, slack, uploaded_image  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow  # a pool process of its own

NSFW, NSFW_THREAD = "3900", "3950"  # a Discord channel marked age-restricted, and a thread under it
EXEMPT = "C7"  # a Slack channel in allow_in_slack_channels
HERE = f"discord:channel:{CHANNEL_ID}"
FOR_LLM = "withheld by this server's safety filter"


@pytest.fixture(scope="module")
def pool(tiny_dir, tmp_path_factory):
    """Here instead of conftest's (its ``core`` fixture runs on this one): the models of /imagine, edits
    and the templates, and a checker that flags everything."""
    folder = tmp_path_factory.mktemp("flag-pool")
    models = {"ImageCaptioning": "blip-caption", "VisualQuestionAnswering": "blip-vqa", "Text2Image": "sd15",
              "InstructPix2Pix": "pix2pix", "Inpainting": "inpaint", "Text2Mask": "clipseg",
              "SafetyChecker": "safety-flags-all"}
    sections = "".join(f'[models.{n}]\ndevice = "cpu"\nsource = "{tiny_dir}/{f}"\n' for n, f in models.items())
    config = folder / "config.toml"
    config.write_text(f'[pool]\nsocket = "pool.sock"\nsd_base = "{tiny_dir}/sd15"\n[storage]\ndata_dir = "data"\n'
                      "[limits]\nworking_size = 64\nmax_output_size = 256\nmax_steps = 2\n"
                      f'[safety]\nallow_in_nsfw_channels = true\nallow_in_slack_channels = ["{EXEMPT}"]\n' + sections)
    pool = start_pool_with(config)
    yield pool
    stop_pool(pool)


@pytest.fixture
async def fake(monkeypatch):
    async with FakeDiscord() as server:
        server.add_channel(NSFW, nsfw=True)
        server.add_thread(NSFW_THREAD, parent_id=NSFW)
        server.patch(monkeypatch)
        yield server


@pytest.fixture
async def slack_bot(make_bot):  # noqa: F811
    return await make_bot()


def withheld(r) -> bool:
    return "withheld" in (r.content or "")


def stored_files(core) -> list[Path]:
    """Every image file in the data directory's image store."""
    return sorted(core.images.root.rglob("*.png"))


def jobs(core, session: str) -> list[tuple[str, str]]:
    return [(r["model"], r["state"]) for r in core.store.db["jobs"].rows_where("session = ?", [session], order_by="id")]


def withhold_nsfw_channels_too(core) -> None:
    core.config = dataclasses.replace(core.config, safety=dataclasses.replace(core.config.safety,
                                                                              allow_in_nsfw_channels=False))


# --- Discord -------------------------------------------------------------------------------------------


async def test_a_flagged_drawing_is_withheld_in_a_normal_channel_and_the_llm_may_not_retry(fake, bot, core,
                                                                                          llm_server, caplog):
    llm_server.on(user="draw a cat").call("generate_image", {"prompt": "a cat"})
    llm_server.on(after_tool="generate_image", result_contains=FOR_LLM).call("generate_image",
                                                                             {"prompt": "a cat, fully clothed"})
    llm_server.on(after_tool="generate_image", result_contains=NO_RETRY).reply("Sorry about that.")
    with caplog.at_level(logging.INFO):
        await fake.push("MESSAGE_CREATE", mention(fake, "draw a cat"))
        said = await fake.wait_for_request("POST", ANSWER, where=withheld, timeout=60)
    assert said.content == f"{WITHHELD} Sorry about that." and not said.files
    told, refused = (tool_results(r)[-1].content for r in llm_server.requests[1:])
    assert FOR_LLM in told and "Do not try again" in told and refused == NO_RETRY
    assert core.store.images(HERE) == [] and stored_files(core) == []  # nothing reached the data directory
    assert jobs(core, HERE) == [("Text2Image", "withheld")]  # the retry never reached the pool
    [line] = [r.getMessage() for r in caplog.records if "withheld by the safety filter" in r.getMessage()]
    assert line.startswith(f"session {HERE}: generate_image: image withheld by the safety filter (Text2Image, score +")


async def test_it_is_posted_in_age_restricted_channels_when_the_admin_allows_it(fake, bot, core, llm_server):
    for channel in (NSFW, NSFW_THREAD):  # a thread follows its parent's mark
        llm_server.on(user=f"draw a cat in {channel}").call("generate_image", {"prompt": "a cat"})
        llm_server.on(after_tool="generate_image", result_contains="Drew img1").reply("Here it is: img1")
        await fake.push("MESSAGE_CREATE", mention(fake, f"draw a cat in {channel}", channel=channel))
        said = await fake.wait_for_request("POST", rf"^/channels/{channel}/messages$", where=with_files, timeout=60)
        row = core.store.image(f"discord:channel:{channel}", "img1")
        assert said.content == "Here it is: img1" and [f.filename for f in said.files] == ["img1.png"]
        assert core.images.path(row).read_bytes() == said.files[0].data and row.operation == "generate_image"


async def test_imagine_is_withheld_and_safety_tells_admins_where_and_why(fake, bot, core):
    _, said = await answered(fake, fake.interaction("imagine", [option("prompt", "a red house")]), timeout=60)
    assert said.content == WITHHELD and not said.files

    _, said = await answered(fake, fake.interaction("safety", author=user(ADMIN_ID)))
    assert said.content.startswith("Safety filter: on.")
    assert "Checker: SafetyChecker ready on cpu (float32)" in said.content
    assert f"Here ({HERE}): flagged images are withheld; a channel not marked age-restricted." in said.content
    _, said = await answered(fake, fake.interaction("safety", author=user(ADMIN_ID), channel_id=NSFW))
    assert (f"Here (discord:channel:{NSFW}): flagged images are posted; a channel marked age-restricted "
            "(allow_in_nsfw_channels = true).") in said.content
    _, said = await answered(fake, fake.interaction("safety"))
    assert said.content == "Sorry, /safety is for the bot's admins only."

    withhold_nsfw_channels_too(core)
    _, said = await answered(fake, fake.interaction("imagine", [option("prompt", "a cat")], channel_id=NSFW), 60)
    assert said.content == WITHHELD and not said.files
    assert core.store.images(HERE) == core.store.images(f"discord:channel:{NSFW}") == [] and stored_files(core) == []


async def test_an_extended_upload_is_withheld_and_the_upload_is_kept(fake, bot, core, llm_server):
    llm_server.on(user="make it wider").call("extend_image", {"image": "img1", "width": 128, "height": 40})
    llm_server.on(after_tool="extend_image", result_contains=FOR_LLM).reply("The safety filter withheld it.")
    att = fake.add_file(photo().data, "house.jpg", "image/jpeg")
    await fake.push("MESSAGE_CREATE", mention(fake, "make it wider", attachments=[att]))
    said = await fake.wait_for_request("POST", ANSWER, where=withheld, timeout=60)
    assert said.content == "The safety filter withheld it." and not said.files
    [upload] = core.store.images(HERE)  # uploads are not blocked; what is drawn from them is
    assert upload.operation == "upload" and stored_files(core) == [core.images.path(upload)]
    assert jobs(core, HERE)[-1] == ("Inpainting", "withheld")


# --- Slack -----------------------------------------------------------------------------------------------


async def test_slack_remove_object_on_an_upload_is_withheld(slack_bot, slack, core, llm_server):
    llm_server.on(user="remove the car").call("remove_object", {"image": "img1", "object": "the car"})
    llm_server.on(after_tool="remove_object", result_contains=FOR_LLM).reply("Sorry about that.")
    event = slack_mention("C1", "U1", f"{AT} remove the car", files=[slack.add_file("car.jpg", jpeg(), "image/jpeg")])
    await slack.push_event(event)
    said = await slack.wait_for("chat.postMessage", answer("C1", event["ts"]), timeout=60)
    assert said["text"] == f"{WITHHELD} Sorry about that."
    await slack_bot.idle()
    assert slack.called("files.completeUploadExternal") == []
    [upload] = core.store.images("slack:C1")
    assert stored_files(core) == [core.images.path(upload)]
    assert jobs(core, "slack:C1")[-2:] == [("Text2Mask", "done"), ("Inpainting", "withheld")]


async def test_slack_imagine_is_withheld_except_in_an_exempt_channel(slack_bot, slack, core):
    await slack.push_command("/imagine", "a red boat", channel="C1")
    said = await slack.wait_for("chat.postMessage", answer("C1", None), timeout=60)
    assert said["text"] == WITHHELD

    await slack.push_command("/imagine", "a red boat", channel=EXEMPT)
    drawn = await slack.wait_for("files.completeUploadExternal", timeout=60)
    assert drawn["channel_id"] == EXEMPT and drawn["initial_comment"] == 'Drew img1 (64x64) from "a red boat".'
    assert uploaded_image(slack, drawn).size == (64, 64)

    await slack.push_command("/safety", "", user=ADMIN, channel=EXEMPT)
    shown = await slack.wait_for("response_url", timeout=60)
    assert shown["response_type"] == "ephemeral"
    assert f"Here (slack:{EXEMPT}): flagged images are posted; Slack channel {EXEMPT} is in " in shown["text"]
    await slack_bot.idle()
    assert core.store.images("slack:C1") == [] and len(stored_files(core)) == 1


# --- no checker: nothing unchecked goes out -------------------------------------------------------------


async def test_without_the_checker_drawn_images_are_withheld_and_admins_see_why(core):
    admin = dataclasses.replace(turn("/unload SafetyChecker", HERE), is_admin=True)
    assert await core.admin(admin, "unload", "SafetyChecker") == "SafetyChecker is unloaded."
    try:
        reply = RecordingReply()
        out = await core.direct(turn("/imagine a cat", HERE), reply, "generate_image", {"prompt": "a cat"})
        assert reply.text == UNCHECKED and reply.image_ids == [] and out.error
        assert core.store.images(HERE) == [] and stored_files(core) == []
        shown = await core.admin(admin, "safety")
        assert ("Checker: SafetyChecker is not loaded, so drawn images are withheld wherever the filter applies. "
                "Add [models.SafetyChecker] to config.toml, or /load SafetyChecker.") in shown
        listed = await core.admin(admin, "models")
        assert listed.endswith("Safety filter: on, but SafetyChecker is not loaded, so drawn images are withheld "
                               "wherever it applies. /safety says more.")
    finally:
        await core.admin(admin, "load", "SafetyChecker", "cpu")
