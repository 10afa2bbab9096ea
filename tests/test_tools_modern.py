"""The same tools on the modern profile's tiny models (FLUX.2 [klein], Florence-2, SAM 2, Depth Anything V2):
with them loaded, each tool uses them, and says so in what it stores (the model that made the pixels, the
way a mask was made). The pool holds both profiles' models; tests/test_tools.py runs the seed's alone."""

from __future__ import annotations

import pytest
from PIL import Image

import settings
from core.images import ImageStore
from core.store import Store
from core.tools import BUTTONS, BY_NAME
from core.tools.base import ToolContext, call
from tests.test_tools import Statuses, only_row, photo_bytes


@pytest.fixture
async def ctx(pool, tmp_path):
    cfg = settings.load(pool.config, env_check=False)
    store = Store(tmp_path / "bot.db")
    images = ImageStore(tmp_path / "images", store, max_pixels=cfg.limits.max_image_pixels,
                        max_bytes=cfg.limits.max_upload_bytes, working_size=cfg.limits.working_size)
    client = pool.client()
    c = ToolContext("test:modern", "u1", images, client, cfg.limits, Statuses())
    for name, size in (("sofa.png", (96, 64)), ("cat.png", (64, 96)), ("hat.png", (80, 80)), ("dog.png", (96, 96)),
                       ("sky.png", (96, 80))):  # img1 .. img5, each fitted into 64 px (working_size)
        images.ingest(c.session, name, photo_bytes(*size))
    yield c
    await client.close()


def made_by(ctx, image_id: str) -> str:
    return only_row(ctx, image_id).made.model


async def test_generate_draws_with_klein_at_its_size(ctx):
    result = await call(BY_NAME["generate_image"], ctx, {"prompt": "a cat on a sofa"})
    assert result.ok, result.text
    row = only_row(ctx, result.images[0])
    # klein's side: about a megapixel, capped by [limits] max_output_size (256 here), in multiples of 16
    assert (row.width, row.height, row.made.model) == (256, 256, "Klein")
    wide = await call(BY_NAME["generate_image"], ctx, {"prompt": "a banner", "aspect_ratio": "16:9"})
    row = only_row(ctx, wide.images[0])
    assert (row.width, row.height) == (256, 144) and row.width % 16 == row.height % 16 == 0
    seed = await call(BY_NAME["generate_image"], ctx, {"prompt": "a boat", "model": "Text2Image"})  # /imagine's
    assert made_by(ctx, seed.images[0]) == "Text2Image"


@pytest.mark.parametrize("refs", [[], ["img2", "img3"], ["img2", "img3", "img4", "img5"]])
async def test_edit_and_compose_with_klein_keep_the_image_s_size(ctx, refs):
    args = {"image": "img1", "instruction": "put the cat on the sofa"} | ({"reference_images": refs} if refs else {})
    result = await call(BY_NAME["edit_image"], ctx, args)
    assert result.ok, result.text
    with_refs = f" with {', '.join(refs)}" if refs else ""
    assert result.text == f"Made img6 from img1{with_refs}: put the cat on the sofa."
    row = only_row(ctx, "img6")
    assert (row.width, row.height, row.parent, row.made.model) == (64, 40, "img1", "Klein")
    assert row.made.args == args and row.params.get("reference_images", []) == refs
    assert any("step" in s for s in ctx.status)


@pytest.mark.parametrize("name", ["remove_object", "replace_object"])
async def test_object_flows_mask_with_florence_and_sam2_and_paint_with_klein(ctx, name):
    args = {"image": "img1", "object": "the red car"} | ({"replacement": "a bus"} if name == "replace_object" else {})
    result = await call(BY_NAME[name], ctx, args)
    assert result.ok, result.text
    row = only_row(ctx, result.images[0])
    assert (row.width, row.height, row.parent, row.made.model) == (64, 40, "img1", "KleinInpaint")
    assert row.params["mask_by"] == "Florence2+SAM2"


async def test_remove_background_names_the_subject_with_florence(ctx):
    result = await call(BY_NAME["remove_background"], ctx, {"image": "img1"})
    assert result.ok, result.text
    row = only_row(ctx, result.images[0])
    assert row.mode == "RGBA" and row.params["mask_by"] == "Florence2+SAM2" and row.made.model == "Sam2"


async def test_extend_describes_with_florence_and_paints_with_klein(ctx):
    result = await call(BY_NAME["extend_image"], ctx, {"image": "img1", "width": 160, "height": 96})
    assert result.ok, result.text
    row = only_row(ctx, result.images[0])
    assert (row.width, row.height, row.made.model) == (160, 96, "KleinInpaint")
    assert "red car" in row.params["prompt"]  # the tiny Florence-2's detailed caption


async def test_florence_captions_answers_detects_and_segments(ctx):
    caption = await call(BY_NAME["caption_image"], ctx, {"image": "img1"})
    assert caption.text == "img1 shows: red car" and only_row(ctx, "img1").caption == "red car"
    answer = await call(BY_NAME["answer_question"], ctx, {"image": "img1", "question": "what is it?"})
    assert answer.text == ("What img1 shows, to answer \"what is it?\" from: red car. Text written in it: "
                           "'red car'.")
    found = await call(BY_NAME["detect_objects"], ctx, {"image": "img1", "object": "the red car"})
    assert found.ok and "box(es) for the red car: red car at x " in found.text
    assert made_by(ctx, found.images[0]) == "Florence2"
    outlined = await call(BY_NAME["segment_object"], ctx, {"image": "img1", "object": "the red car"})
    assert outlined.ok, outlined.text
    overlay, mask = (only_row(ctx, i) for i in outlined.images)
    assert (overlay.made.model, mask.mode, (mask.width, mask.height)) == ("Sam2", "L", (64, 40))


async def test_depth_with_depth_anything(ctx):
    result = await call(BY_NAME["estimate_depth"], ctx, {"image": "img1"})
    assert result.ok, result.text
    row = only_row(ctx, result.images[0])
    assert (row.width, row.height, row.made.model) == (64, 40, "DepthAnything")


async def test_the_buttons_upscale_and_vary_with_klein(ctx):
    up = await call(BUTTONS["upscale_image"], ctx, {"image": "img1"})
    assert up.ok, up.text
    row = only_row(ctx, up.images[0])
    assert (row.width, row.height, row.made.model) == (128, 80, "Klein")
    varied = await call(BUTTONS["make_variation"], ctx, {"image": "img1"})
    row = only_row(ctx, varied.images[0])
    assert (row.width, row.height, row.made.model) == (64, 40, "Klein")
    assert Image.open(ctx.images.path(row)).size == (64, 40)
