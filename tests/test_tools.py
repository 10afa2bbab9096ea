"""Every tool and template end to end against the pool with the tiny models: the seed's profile (the modern
profile's models unloaded: tests/conftest.py's ``profile``; tests/test_tools_modern.py runs the same tools on
those)."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

import settings
from core.images import ImageStore
from core.store import Store
from core import llm_json, toolset
from core.tools import BUTTONS, BY_NAME, TOOLS, available
from core.tools.base import Tool, ToolContext, ToolResult, call, run_job, save, text_param


def photo_bytes(w: int = 96, h: int = 64) -> bytes:
    img = Image.new("RGB", (w, h), (40, 100, 170))
    d = ImageDraw.Draw(img)
    d.rectangle([20, 16, 50, 60], fill=(230, 190, 30))
    d.ellipse([56, 4, 90, 36], fill=(200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class Statuses(list):
    """A ToolContext's ``status``: keeps what the chat would show."""

    async def __call__(self, text: str) -> None:
        self.append(text)


@pytest.fixture
async def ctx(pool, tmp_path):
    cfg = settings.load(pool.config, env_check=False)
    store = Store(tmp_path / "bot.db")
    images = ImageStore(tmp_path / "images", store, max_pixels=cfg.limits.max_image_pixels,
                        max_bytes=cfg.limits.max_upload_bytes, working_size=cfg.limits.working_size)
    client = pool.client()
    c = ToolContext("test:chan", "u1", images, client, cfg.limits, Statuses())
    # working_size is 64 in the tiny config: uploads become 64x40 (96x64 scaled, multiples of 8)
    assert images.ingest(c.session, "photo.png", photo_bytes()).image_id == "img1"
    yield c
    await client.close()


def only_row(ctx, image_id):
    row = ctx.images.store.image(ctx.session, image_id)
    assert row is not None and ctx.images.path(row).exists()
    return row


@pytest.mark.parametrize("name", ["caption_image", "answer_question"])
async def test_tools_that_answer_in_words(ctx, name):
    args = {"image": "img1"} | ({"question": "what colour is the box?"} if name == "answer_question" else {})
    result = await call(BY_NAME[name], ctx, args)
    assert result.ok, result.text
    assert result.images == [] and result.text.startswith(("img1 shows: ", "Answer about img1: ", "The "))


IMAGE_TOOLS = {
    "generate_image": ({"prompt": "a cat on a sofa", "width": 64, "height": 96}, None, (64, 96)),
    "edit_image": ({"image": "img1", "instruction": "make it winter"}, "img1", (64, 40)),
    **{name: ({"image": "img1"}, "img1", (64, 40)) for name in (
        "detect_edges", "detect_lines", "detect_soft_edges", "make_sketch", "detect_pose", "segment_image",
        "estimate_depth", "estimate_normals")},
    **{name: ({"image": "img1", "prompt": "a house"}, "img1", (64, 40)) for name in (
        "generate_from_edges", "generate_from_lines", "generate_from_soft_edges", "generate_from_sketch",
        "generate_from_pose", "generate_from_segmentation", "generate_from_depth", "generate_from_normals")},
    "extend_image": ({"image": "img1", "width": 160, "height": 96}, "img1", (160, 96)),
}


@pytest.mark.parametrize("name", list(IMAGE_TOOLS))
async def test_tools_that_make_an_image(ctx, name):
    args, parent, size = IMAGE_TOOLS[name]
    result = await call(BY_NAME[name], ctx, args)
    assert result.ok, result.text
    assert result.images == ["img2"] and ctx.made == ["img2"]
    row = only_row(ctx, "img2")
    assert (row.width, row.height) == size
    assert row.parent == parent and row.operation == name
    assert Image.open(ctx.images.path(row)).size == size
    first = (BY_NAME[name].models or BY_NAME[name].any_of[0])[0]
    if first.endswith("Text2Image") or name in ("generate_image", "edit_image"):
        assert any("step" in s for s in ctx.status)  # progress reached the chat


async def test_find_object_then_inpaint(ctx):
    found = await call(BY_NAME["find_object"], ctx, {"image": "img1", "object": "the yellow box"})
    if not found.ok:  # a random tiny model may find nothing; the message says so
        assert found.text == "Could not find the yellow box in img1."
        return
    mask = only_row(ctx, "img2")
    assert (mask.mode, mask.parent, mask.operation) == ("L", "img1", "find_object")
    painted = await call(BY_NAME["inpaint_image"], ctx, {"image": "img1", "mask": "img2", "prompt": "a red car"})
    assert painted.ok, painted.text
    row = only_row(ctx, "img3")
    assert (row.width, row.height, row.parent, row.operation) == (64, 40, "img1", "inpaint_image")
    assert row.params["mask"] == "img2"


async def test_inpaint_with_a_drawn_mask(ctx):
    m = Image.new("L", (64, 40), 0)
    ImageDraw.Draw(m).rectangle([8, 8, 30, 30], fill=255)
    mask = ctx.images.add(ctx.session, m, parent=None, operation="upload", params={})
    result = await call(BY_NAME["inpaint_image"], ctx, {"image": "img1", "mask": mask.image_id, "prompt": "a dog"})
    assert result.ok, result.text
    assert only_row(ctx, result.images[0]).operation == "inpaint_image"


@pytest.mark.parametrize("name", ["remove_object", "replace_object", "remove_background"])
async def test_object_templates(ctx, name):
    args = {"image": "img1"}
    if name != "remove_background":
        args["object"] = "the yellow box"
    if name == "replace_object":
        args["replacement"] = "a blue ball"
    result = await call(BY_NAME[name], ctx, args)
    if not result.ok:  # the tiny CLIPSeg may see nothing: a clear message, no image
        assert result.text.startswith("Error: I could not find ") and ctx.made == []
        return
    row = only_row(ctx, result.images[-1])
    assert (row.width, row.height, row.parent, row.operation) == (64, 40, "img1", name)
    assert row.mode == ("RGBA" if name == "remove_background" else "RGB")


# --- hostile arguments: each an error result with a message the LLM can act on


async def test_missing_required_argument(ctx):
    result = await call(BY_NAME["edit_image"], ctx, {"image": "img1"})
    assert not result.ok
    assert result.text == "Error: edit_image needs 'instruction': the change, in English"


async def test_image_id_from_another_session(ctx):
    ctx.images.ingest("test:other", "a.png", photo_bytes())
    ctx.images.ingest("test:other", "b.png", photo_bytes(80, 80))
    result = await call(BY_NAME["caption_image"], ctx, {"image": "img2"})
    assert result.text == "Error: 'img2' does not exist in this conversation; images: img1."


async def test_image_id_that_looks_like_a_path(ctx):
    result = await call(BY_NAME["edit_image"], ctx, {"image": "../../etc/passwd", "instruction": "x"})
    assert result.text == "Error: '../../etc/passwd' does not exist in this conversation; images: img1."
    assert ctx.made == []


async def test_out_of_range_extension_size(ctx):
    result = await call(BY_NAME["extend_image"], ctx, {"image": "img1", "width": 2000, "height": 96})
    assert result.text == "Error: 'width' must be between 64 (the image's width now) and 256, got 2000."
    result = await call(BY_NAME["extend_image"], ctx, {"image": "img1", "width": 64, "height": 32})
    assert result.text == "Error: 'height' must be between 40 (the image's height now) and 256, got 32."
    result = await call(BY_NAME["extend_image"], ctx, {"image": "img1", "width": 64, "height": 40})
    assert result.text == "Error: The image is already 64x40; ask for a larger size."
    result = await call(BY_NAME["extend_image"], ctx, {"image": "img1", "width": 9000, "height": 96})
    assert result.text == "Error: 'width' must be between 8 and 4096, got 9000."


async def test_unknown_argument_and_wrong_type(ctx):
    result = await call(BY_NAME["caption_image"], ctx, {"image": "img1", "path": "/etc/passwd"})
    assert result.text == "Error: caption_image has no argument 'path'; it takes image."
    result = await call(BY_NAME["generate_image"], ctx, {"prompt": "x", "width": "wide"})
    assert result.text == "Error: 'width' must be a whole number, got 'wide'."


async def test_a_model_that_is_not_loaded(ctx, pool):
    await ctx.pool.unload("Image2Depth")
    try:
        result = await call(BY_NAME["estimate_depth"], ctx, {"image": "img1"})
        assert result.text == ("Error: Image2Depth is not loaded on this bot; an admin can load it with "
                               "/load Image2Depth.")
        offered = {t.name for t in available({m.name for m in await ctx.pool.models() if m.state == "ready"})}
        assert "estimate_depth" not in offered and "detect_edges" in offered
    finally:
        await ctx.pool.load("Image2Depth", device="cpu")


# --- the registry stays honest ---------------------------------------------


def test_every_tool_has_a_description_a_valid_schema_and_known_models():
    names = [t.name for t in [*TOOLS, *BUTTONS.values()]]
    assert len(names) == len(set(names))
    assert not set(BUTTONS) & {t.name for t in available(set(settings.MODEL_NAMES))}  # never offered to the LLM
    for tool in [*TOOLS, *BUTTONS.values()]:
        assert tool.description.endswith(".") and len(tool.description) < 200, tool.name
        schema = tool.schema(["img1", "img2"])["function"]
        params = schema["parameters"]
        assert set(params["required"]) <= set(params["properties"]), tool.name
        for key, spec in params["properties"].items():
            assert spec["type"] in ("string", "integer", "array") and spec["description"], (tool.name, key)
            assert "x-image" not in spec and "x-images" not in spec
        assert set(tool.models) <= set(settings.MODEL_NAMES), tool.name
        assert tool.models or tool.any_of or tool.read_only, tool.name  # only a tool that makes nothing needs no model
        assert all(group and set(group) <= set(settings.MODEL_NAMES) for group in tool.any_of), tool.name
    covered = {m for t in [*TOOLS, *BUTTONS.values()] for m in (*t.models, *(m for g in t.any_of for m in g))}
    # every visual model, the seed's and the modern profile's, is reachable by a tool
    assert covered == set(settings.MODEL_NAMES) - {"SafetyChecker", "LLM"}


def test_image_parameters_are_enums_of_the_session_ids():
    spec = BY_NAME["edit_image"].schema(["img1", "img4"])["function"]["parameters"]["properties"]["image"]
    assert spec["enum"] == ["img1", "img4"]


def test_reference_images_are_offered_only_while_klein_is_loaded():
    def edit_props(loaded):
        (edit,) = [t for t in available(loaded) if t.name == "edit_image"]
        return toolset.schema(edit, ["img1", "img2", "img3"])["function"]["parameters"]["properties"]

    assert set(edit_props({"InstructPix2Pix"})) == {"image", "instruction"}
    refs = edit_props({"Klein"})["reference_images"]
    assert refs == {"type": "array", "items": {"enum": ["img1", "img2", "img3"]}}  # compact: the tool checks the rest
    full = BY_NAME["edit_image"].schema(["img1"])["function"]["parameters"]["properties"]["reference_images"]
    assert full["maxItems"] == 4 and "take things from" in full["description"]
    assert llm_json.signature(toolset.schema(BY_NAME["edit_image"], ["img1", "img2"])) == (  # the JSON format's
        "- edit_image(image, instruction: the change, in English, reference_images?: [image ids]): Change an image "
        "by an instruction, e.g. 'make it winter'.")
    many = toolset.schema(BY_NAME["edit_image"], [f"img{n}" for n in range(1, 8)])  # past the enum: a pattern
    assert many["function"]["parameters"]["properties"]["reference_images"]["items"] == {
        "type": "string", "pattern": toolset.ID_PATTERN}


def test_each_capability_has_one_tool_name_for_both_profiles():
    seed = {"Text2Image", "InstructPix2Pix", "Inpainting", "Text2Mask", "Text2Box", "Segmenting", "ImageCaptioning",
            "VisualQuestionAnswering", "Image2Depth", "Upscale"}
    modern = {"Klein", "KleinInpaint", "Florence2", "Sam2", "DepthAnything"}
    both = ["generate_image", "edit_image", "remove_object", "replace_object", "remove_background", "extend_image",
            "caption_image", "answer_question", "detect_objects", "segment_object", "estimate_depth"]
    assert {t.name for t in available(modern)} >= set(both)
    assert {t.name for t in available(seed)} >= set(both)
    assert BUTTONS["upscale_image"].usable(modern) and BUTTONS["make_variation"].usable(modern)


async def test_reference_images_are_checked_like_image_ids(ctx):
    edit = BY_NAME["edit_image"]
    ctx.images.ingest(ctx.session, "sofa.png", photo_bytes(80, 80))
    result = await call(edit, ctx, {"image": "img1", "instruction": "x", "reference_images": "img2"})
    assert result.text == ("Error: 'reference_images' must be a list of image ids, like [\"img1\", \"img3\"]; "
                           "got 'img2'.")
    result = await call(edit, ctx, {"image": "img1", "instruction": "x", "reference_images": ["img9"]})
    assert result.text == "Error: 'img9' does not exist in this conversation; images: img1, img2."
    result = await call(edit, ctx, {"image": "img1", "instruction": "x", "reference_images": ["img2"] * 5})
    assert result.text == "Error: 'reference_images' takes at most 4 images, got 5."
    result = await call(edit, ctx, {"image": "img1", "instruction": "x", "reference_images": ["img2", "img2"]})
    assert result.text == "Error: 'reference_images' names an image twice: img2, img2; name each image once."
    # the seed's pool has no klein: references are refused with what to do, and nothing is made
    result = await call(edit, ctx, {"image": "img1", "instruction": "put the cat here", "reference_images": ["img2"]})
    assert not result.ok and ctx.made == []
    assert result.text.startswith("Error: Editing with reference images needs FLUX.2 [klein] (the Klein model), "
                                  "which is not loaded on this bot; an admin can load it with /load Klein.")


class DrawThenCaption(Tool):
    """Draws, then captions what it drew: the captioning job runs last, the drawing job made the pixels."""

    name = "draw_then_caption"
    parameters = {"prompt": text_param("what to draw")}

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        drawn = await run_job(ctx, "Text2Image", {"prompt": args["prompt"], "width": 64, "height": 64})
        await run_job(ctx, "ImageCaptioning", {}, drawn.images)
        row = save(ctx, drawn.images[0], drawn, parent=None, operation=self.name, params={})
        return ToolResult(f"Made {row.image_id}.", [row.image_id])


async def test_a_saved_image_records_the_job_that_made_its_pixels_not_the_last_one(ctx):
    result = await call(DrawThenCaption(), ctx, {"prompt": "a red boat"})
    made = only_row(ctx, result.images[0]).made
    assert (made.model, made.model_params["prompt"]) == ("Text2Image", "a red boat")
    assert made.args == {"prompt": "a red boat"}
    assert made.seed is not None and made.seconds is not None
