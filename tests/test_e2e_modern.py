"""The modern profile end to end over the chat fakes: the real discord.py client against the loopback
Discord, real slack-bolt against the loopback Slack, the real Core over the tiny-model pool (FLUX.2
[klein], Florence-2, SAM 2 loaded: each tool uses them) and the scripted LLM.

The request people make most in 2026 image chats: "edit the image I just uploaded, using this other one".
"""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from core.turn import Attachment
from tests.fakes.discord_payloads import CHANNEL_ID, option
from tests.fakes.openai_server import text_of
from tests.test_buttons_discord import buttons, callback, press
from tests.test_discord import ANSWER, answered, bot, decoded, discord_config, fake, mention  # noqa: F401
from tests.fakes.discord_payloads import user
from tests.fakes.slack_payloads import mention as slack_mention
from tests.test_slack import AT, errors, make_bot, slack, uploaded_image  # noqa: F401

HERE = f"discord:channel:{CHANNEL_ID}"
PUT = "put the cat from the first into the second"


def picture(name: str, colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> Attachment:
    img = Image.new("RGB", size, colour)
    ImageDraw.Draw(img).ellipse([20, 10, 60, 50], fill=(240, 240, 240))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return Attachment(name, "image/png", buf.getvalue())


def tool_calls(core, session: str) -> list[str]:
    return [m["content"] for m in core.store.messages(session) if m["role"] == "tool"]


async def test_two_attachments_and_put_the_cat_from_the_first_into_the_second(fake, bot, core, llm_server):
    llm_server.on(user=PUT).call("edit_image", {"image": "img2", "reference_images": ["img1"],
                                                "instruction": "put the cat from img1 on the sofa"})
    llm_server.on(after_tool="edit_image").reply("Here is the cat on the sofa: img3")
    cat, sofa = picture("cat.png", (200, 120, 40)), picture("sofa.png", (40, 60, 160))
    files = [fake.add_file(a.data, a.filename, "image/png") for a in (cat, sofa)]
    await fake.push("MESSAGE_CREATE", mention(fake, PUT, attachments=files))

    posted = await fake.wait_for_request("POST", ANSWER, where=lambda r: bool(r.files), timeout=60)
    assert posted.content == "Here is the cat on the sofa: img3"
    assert [f.filename for f in posted.files] == ["img3.png"]  # one image
    # several attachments: several ids, each with Florence-2's detailed caption (the agent's eyes)
    said = text_of(llm_server.requests[0]["messages"][-1]["content"])
    assert said.startswith(PUT)
    assert '[uploaded img1 "cat.png": 64x40, shows: red car]' in said
    assert '[uploaded img2 "sofa.png": 64x40, shows: red car]' in said
    # ONE tool call, with both ids
    assert tool_calls(core, HERE) == ["Made img3 from img2 with img1: put the cat from img1 on the sofa."]
    row = core.store.image(HERE, "img3")
    assert (row.made.model, row.parent, row.made.args["reference_images"]) == ("Klein", "img2", ["img1"])
    assert decoded(posted.files[0].data).size == (row.width, row.height) == (64, 40)

    # Info under it names both inputs, to the presser alone
    info = await callback(fake, await press(fake, posted, "Info", user("42")))
    text = info.json["data"]["content"]
    assert "Input images: img2 (the image), img1 (reference 1)" in text
    assert "Model: Klein (" in text and "Tool chain: upload (img2) → edit_image (img3)" in text
    assert len(llm_server.requests) == 2  # the call, then the answer: no second tool round
    assert "Upscale ×2" in buttons(posted) and buttons(posted)["Upscale ×2"].get("disabled") is not True


async def test_edit_command_with_two_images_on_discord(fake, bot, core):
    first, second = (picture(n, c) for n, c in (("cat.png", (200, 120, 40)), ("sofa.png", (40, 60, 160))))
    cat = fake.add_file(first.data, "cat.png", "image/png")
    sofa = fake.add_file(second.data, "sofa.png", "image/png")
    edit = fake.interaction("edit", [option("file", sofa["id"], 11), option("reference1", cat["id"], 11),
                                     option("instruction", "put the cat on the sofa")], attachments=[sofa, cat])
    _, made = await answered(fake, edit, timeout=60)
    assert made.content == "Made img3 from img1 with img2: put the cat on the sofa."  # sofa img1, cat img2
    assert [f.filename for f in made.files] == ["img3.png"]
    row = core.store.image(HERE, "img3")
    assert (row.made.model, row.parent, row.made.args["reference_images"]) == ("Klein", "img1", ["img2"])
    # or named: the image and a reference by id
    named = fake.interaction("edit", [option("image", "img3"), option("references", "img2"),
                                      option("instruction", "and another cat")])
    _, again = await answered(fake, named, timeout=60)
    assert again.content == "Made img4 from img3 with img2: and another cat."


@pytest.fixture
async def slack_bot(make_bot):  # noqa: F811
    return await make_bot()


async def test_edit_command_with_two_images_on_slack(slack_bot, slack, core):
    cat, sofa = picture("cat.png", (200, 120, 40)), picture("sofa.png", (40, 60, 160))
    files = [slack.add_file(a.filename, a.data, "image/png") for a in (cat, sofa)]
    await slack.push_event(slack_mention("C1", "U1", AT, files=files))  # two files, no words: two ids, no LLM
    got = await slack.wait_for("chat.postMessage", lambda c: c["text"].startswith("Got img1"))
    assert got["text"].startswith("Got img1 (red car), img2 (red car).")

    await slack.push_command("/edit", "img2 img1 put the cat on the sofa")  # the image, then a reference
    made = await slack.wait_for("files.completeUploadExternal", timeout=60)
    assert made["initial_comment"] == "Made img3 from img2 with img1: put the cat on the sofa."
    row = core.store.image("slack:C1", "img3")
    assert (row.made.model, row.parent, row.made.args["reference_images"]) == ("Klein", "img2", ["img1"])
    assert uploaded_image(slack, made).size == (row.width, row.height)
