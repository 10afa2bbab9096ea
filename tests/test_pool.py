"""The pool as a separate process: every seed model through the protocol, and bad requests."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image, ImageDraw

import settings
from core.pool_client import PoolClient
from gpu_pool.protocol import Event, JobRequest, RawImage


def picture(w: int = 96, h: int = 64) -> Image.Image:
    """A small image with edges and colours, so annotators have something to find."""
    img = Image.new("RGB", (w, h), (30, 90, 160))
    d = ImageDraw.Draw(img)
    d.rectangle([w // 4, h // 4, w // 2, h - 8], fill=(240, 200, 40))
    d.ellipse([w // 2, 4, w - 4, h // 2], fill=(200, 30, 30))
    d.line([0, h - 1, w - 1, 0], fill=(255, 255, 255), width=3)
    return img


def mask(w: int = 96, h: int = 64) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).rectangle([10, 10, 40, 40], fill=255)
    return m


def raw(img: Image.Image) -> RawImage:
    return RawImage.from_pil(img)


@pytest.fixture
async def client(pool):
    c = pool.client()
    yield c
    await c.close()


async def events_of(client: PoolClient, model: str, params: dict | None = None, images=()) -> list[Event]:
    return [ev async for ev in client.run(JobRequest(model, params or {}, [raw(i) for i in images]))]


IMG = picture()
CASES = {
    "ImageCaptioning": ({}, [IMG]),
    "VisualQuestionAnswering": ({"question": "what is on the roof?"}, [IMG]),
    "Text2Image": ({"prompt": "a cat on a sofa", "steps": 2, "width": 64, "height": 96}, []),
    "InstructPix2Pix": ({"prompt": "make it winter", "steps": 2}, [IMG]),
    "Inpainting": ({"prompt": "a red house", "steps": 2}, [IMG, mask()]),
    "Text2Mask": ({"prompt": "the yellow box"}, [IMG]),
    "Text2Box": ({"prompt": "the yellow box"}, [IMG]),
    "Segmenting": ({"boxes": [[24, 16, 48, 56]]}, [IMG]),
    **{name: ({}, [IMG]) for name in ("Image2Canny", "Image2Line", "Image2Hed", "Image2Scribble", "Image2Pose",
                                      "Image2Seg", "Image2Depth", "Image2Normal")},
    **{name: ({"prompt": "a house", "steps": 2}, [IMG]) for name in (
        "CannyText2Image", "LineText2Image", "HedText2Image", "ScribbleText2Image", "PoseText2Image",
        "SegText2Image", "DepthText2Image", "NormalText2Image")},
    "Variations": ({"steps": 2}, [IMG]),
    "Upscale": ({"steps": 2}, [IMG]),
    "SafetyChecker": ({}, [IMG]),  # as a job of its own it answers in words
    "LLM": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, []),  # the built-in LLM, as a job
    "Klein": ({"prompt": "put the cat on the sofa", "steps": 2, "width": 96, "height": 64}, [IMG, picture(64, 64)]),
    "KleinInpaint": ({"prompt": "a red house", "steps": 2}, [IMG, mask()]),
    "Florence2": ({"task": "grounding", "text": "the red car"}, [IMG]),
    "Sam2": ({"boxes": [[24, 16, 48, 56]]}, [IMG]),
    "DepthAnything": ({}, [IMG]),
}


def test_cases_cover_every_seed_model():
    assert set(CASES) == set(settings.MODEL_NAMES)


@pytest.mark.parametrize("name", list(CASES))
async def test_every_model_runs_through_the_pool(client, name):
    params, images = CASES[name]
    evs = await events_of(client, name, params, images)
    assert evs[0].kind == "queued" and evs[0].position is not None
    last = evs[-1]
    assert last.kind == "done", last.message
    if name in ("ImageCaptioning", "VisualQuestionAnswering", "SafetyChecker", "LLM"):
        assert isinstance(last.text, str) and not last.images
        return
    if name in ("Text2Box", "Florence2"):  # boxes come back as data, in pixels of the image sent
        assert not last.images and last.data["boxes"] and len(last.data["boxes"][0]) == 4
        return
    assert len(last.images) == 1
    out = last.images[0].to_pil()
    expected = (64, 96) if name == "Text2Image" else (2 * IMG.width, 2 * IMG.height) if name == "Upscale" else IMG.size
    assert out.size == expected
    assert out.mode == ("L" if name in ("Text2Mask", "Segmenting", "Sam2") else "RGB")


async def test_models_listing_shows_the_shared_base(client):
    infos = {m.name: m for m in await client.models()}
    assert set(infos) == set(settings.MODEL_NAMES)
    assert all(m.state == "ready" and m.device == "cpu" and m.dtype == "float32" for m in infos.values())
    t2i, canny = infos["Text2Image"], infos["CannyText2Image"]
    # Text2Image is nothing but the base: all of it is shared with the ControlNet tools
    assert t2i.shared_bytes == t2i.bytes > 0
    assert "CannyText2Image" in t2i.shares_with and "Text2Image" in canny.shares_with
    assert 0 < canny.shared_bytes < canny.bytes
    assert canny.bytes - canny.shared_bytes < t2i.bytes  # its own part is the ControlNet alone
    assert infos["Image2Canny"].bytes == 0


async def test_progress_is_reported_per_diffusion_step(client):
    evs = await events_of(client, "Text2Image", {"prompt": "a tree", "steps": 3, "width": 64, "height": 64})
    steps = [(e.step, e.total) for e in evs if e.kind == "progress"]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert evs[-1].kind == "done" and evs[-1].seconds > 0


async def test_done_says_how_the_image_was_made_and_the_seed_makes_it_again(client):
    """The pool picks a seed when the job gives none and returns it, with the prompts the model really got."""
    asked = {"prompt": "a tree", "steps": 2, "width": 64, "height": 64}
    first = (await events_of(client, "Text2Image", asked))[-1]
    made = first.provenance
    assert made["model"] == "Text2Image" and made["source"].endswith("tiny-models/sd15")
    seed = made["params"]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert made["params"] == {**asked, "negative_prompt": "", "guidance": 7.5, "seed": seed}
    assert made["prompt"] == "a tree, best quality, extremely detailed"  # the seed's quality words
    assert made["negative_prompt"].startswith("longbody, lowres, bad anatomy")  # its default negative prompt
    again = (await events_of(client, "Text2Image", {**asked, "seed": seed}))[-1]
    assert again.images[0].data == first.images[0].data and again.provenance == made
    other = (await events_of(client, "Text2Image", asked))[-1]
    assert other.provenance["params"]["seed"] != seed and other.images[0].data != first.images[0].data
    annotated = (await events_of(client, "Image2Canny", {}, [IMG]))[-1].provenance
    assert (annotated["model"], annotated["source"], annotated["params"]["low_threshold"]) == ("Image2Canny", "", 100)
    assert "seed" not in annotated["params"] and "prompt" not in annotated  # a map: nothing random, no prompt


async def test_queue_positions_on_one_device(client):
    async def first_event(prompt, steps):
        agen = client.run(JobRequest("Text2Image", {"prompt": prompt, "steps": steps, "width": 64, "height": 64}))
        evs = [ev async for ev in agen]
        return evs

    # each its own step count: never one batch (gpu_pool/batching.py), so each waits for the one before
    results = await asyncio.gather(*(first_event(f"cat {i}", 2 + i) for i in range(3)))
    first_positions = sorted(r[0].position for r in results)
    assert first_positions == [0, 1, 2]
    assert all(r[-1].kind == "done" for r in results)
    # the last in line heard its position move up as the queue advanced: 2 ahead, then 1 (running)
    waiting = max(results, key=lambda r: r[0].position)
    assert [e.position for e in waiting if e.kind == "queued"] == [2, 1]


@pytest.mark.parametrize("model, params, images, message", [
    ("Text2Imagee", {"prompt": "x"}, [], "There is no model called Text2Imagee."),
    ("Text2Image", {"prompt": "x", "steps": 0}, [], "'steps' must be between 1 and 10, got 0"),
    ("Text2Image", {"prompt": "x", "steps": 500}, [], "'steps' must be between 1 and 10, got 500"),
    ("Text2Image", {"prompt": "x", "width": 100}, [], "'width' must be a multiple of 8, got 100"),
    ("Text2Image", {"prompt": "x", "height": 4096}, [], "'height' must be between 64 and 256, got 4096"),
    ("Text2Image", {"prompt": "x", "guidance": 99.0}, [], "'guidance' must be between 0 and 30, got 99.0"),
    ("Text2Image", {}, [], "Text2Image needs 'prompt' (what to draw)"),
    ("Text2Image", {"prompt": "x", "strength": 1}, [], "Text2Image does not take 'strength'"),
    ("InstructPix2Pix", {"prompt": "x"}, [], "InstructPix2Pix takes 1 image(s); got 0 image(s)."),
    ("Inpainting", {"prompt": "x"}, [IMG], "Inpainting takes image and mask; got 1 image(s)."),
])
async def test_bad_requests_get_a_message_and_the_pool_keeps_serving(client, model, params, images, message):
    evs = await events_of(client, model, params, images)
    assert evs[-1].kind == "failed"
    assert evs[-1].message.startswith(message)
    assert evs[-1].code in ("bad_request", "unknown_model")
    assert (await events_of(client, "Image2Canny", {}, [IMG]))[-1].kind == "done"


async def test_undecodable_and_oversized_images(client):
    broken = RawImage(64, 64, "RGB", b"\x00" * 100)
    evs = [e async for e in client.run(JobRequest("Image2Canny", {}, [broken]))]
    assert evs[-1].message == "Image 1 is not a decodable image: 64x64 RGB needs 12,288 bytes, got 100."
    odd = RawImage(8, 8, "CMYK", b"\x00" * 256)
    evs = [e async for e in client.run(JobRequest("Image2Canny", {}, [odd]))]
    assert evs[-1].message == "Image 1 is not a decodable image: mode 'CMYK' is not one of L, RGB, RGBA."
    huge = RawImage(1001, 1000, "L", b"\x00" * 1_001_000)
    evs = [e async for e in client.run(JobRequest("Image2Canny", {}, [huge]))]
    assert evs[-1].message == "Image 1 is 1001x1000 = 1,001,000 pixels; the limit is 1,000,000. Send a smaller image."
    assert (await events_of(client, "Image2Canny", {}, [IMG]))[-1].kind == "done"


async def test_cancel_a_running_job(client):
    agen = client.run(JobRequest("Text2Image", {"prompt": "slow", "steps": 10, "width": 64, "height": 64}))
    seen = []
    async for ev in agen:
        seen.append(ev)
        if ev.kind == "progress" and ev.step == 1:
            assert await client.cancel(ev.job_id)
    assert seen[-1].kind == "failed" and seen[-1].code == "cancelled"
    assert seen[-1].message == "The job was cancelled."
    assert max(e.step for e in seen if e.kind == "progress") < 10


async def test_unload_then_load_a_model(client):
    reply = await client.unload("Image2Canny")
    assert reply["ok"] and reply["message"] == "Image2Canny is unloaded."
    evs = await events_of(client, "Image2Canny", {}, [IMG])
    assert evs[-1].code == "not_loaded"
    assert evs[-1].message == "Image2Canny is not loaded on this bot; an admin can load it with /load Image2Canny."
    bad = await client.load("Image2Canny", device="cuda:x")
    assert not bad["ok"] and bad["message"].startswith("'cuda:x' is not a device")
    missing = await client.load("Image2Canny", device="cuda:3")
    assert not missing["ok"] and "cuda:3 does not exist on the pool's machine" in missing["message"]
    reply = await client.load("Image2Canny", device="cpu")
    assert reply["ok"] and reply["message"] == "Image2Canny is loaded on cpu (float32)."
    assert (await events_of(client, "Image2Canny", {}, [IMG]))[-1].kind == "done"


async def test_reload_under_load(client):
    """Jobs submitted before and during a reload all finish, or fail with a message."""
    params = {"prompt": "a house", "steps": 2}

    async def job():
        return (await events_of(client, "CannyText2Image", params, [IMG]))[-1]

    before = [asyncio.create_task(job()) for _ in range(3)]
    await asyncio.sleep(0.05)
    reload = asyncio.create_task(client.reload("CannyText2Image"))
    await asyncio.sleep(0.01)
    during = [asyncio.create_task(job()) for _ in range(3)]
    reply = await reload
    results = await asyncio.gather(*before, *during)
    assert reply["ok"], reply["message"]
    assert reply["message"] == "Reloaded CannyText2Image."
    for ev in results:
        assert ev.kind == "done" or (ev.kind == "failed" and ev.message), ev
    assert sum(ev.kind == "done" for ev in results) >= 3
    infos = {m.name: m for m in await client.models()}
    assert infos["CannyText2Image"].state == "ready"
    assert "Text2Image" in infos["CannyText2Image"].shares_with  # still on the one shared base


async def test_client_leaving_cancels_its_job_and_pool_lives(pool, client):
    """A bot that disconnects mid-job leaves the pool serving."""
    agen = client.run(JobRequest("Text2Image", {"prompt": "x", "steps": 10, "width": 64, "height": 64}))
    async for ev in agen:
        if ev.kind == "progress":
            break
    await agen.aclose()
    await client.close()
    fresh = pool.client()
    try:
        assert (await events_of(fresh, "Image2Canny", {}, [IMG]))[-1].kind == "done"
    finally:
        await fresh.close()


async def test_a_pool_that_is_not_there():
    client = PoolClient("unix:/nonexistent/pool.sock")
    evs = await events_of(client, "Image2Canny", {}, [IMG])
    await client.close()
    assert evs == [Event("failed", "", message="The image engine is not reachable right now; please try again "
                                                   "in a minute.", code="unavailable")]
