"""Finding, outlining and editing objects named in words, end to end against the pool's tiny models.

The tiny GroundingDINO sees everything but unicorns; the tiny SAM outlines the
whole image (scripts/tiny_models/detect.py). The object flows use
GroundingDINO + SAM while both are loaded and CLIPSeg once one is unloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.templates.masks import MASKERS
from core.tools import BY_NAME, available
from core.tools.base import call
from tests.test_tools import ctx, only_row  # noqa: F401  (ctx: a fixture, img1 a 64x40 photo)

NOT_FOUND = "Error: I could not find a unicorn in img1; try describing it differently."


def pixels(ctx, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(ctx.images.path(only_row(ctx, image_id))))


async def test_detect_objects_draws_and_lists_the_boxes(ctx):
    result = await call(BY_NAME["detect_objects"], ctx, {"image": "img1", "object": "the yellow box"})
    assert result.ok, result.text
    row = only_row(ctx, "img2")
    assert (row.parent, row.operation, row.width, row.height) == ("img1", "detect_objects", 64, 40)
    boxes = row.params["boxes"]
    assert boxes and row.params["labels"] == ["yellow box"] * len(boxes)
    listed = "; ".join(f"yellow box (100%) at x {b[0]:.0f}-{b[2]:.0f}, y {b[1]:.0f}-{b[3]:.0f}" for b in boxes)
    assert result.text == f"Made img2: img1 with {len(boxes)} box(es) for the yellow box: {listed}."
    assert (pixels(ctx, "img2") != pixels(ctx, "img1")).any()  # the boxes are drawn


@pytest.mark.parametrize("name, args", [
    ("detect_objects", {}), ("segment_object", {}), ("remove_object", {}),
    ("replace_object", {"replacement": "a dog"}),
])
async def test_no_such_object_says_what_was_looked_for(ctx, name, args):
    result = await call(BY_NAME[name], ctx, {"image": "img1", "object": "a unicorn", **args})
    assert (result.ok, result.text, result.images, ctx.made) == (False, NOT_FOUND, [], [])


async def test_segment_everything_colours_each_region(ctx):
    result = await call(BY_NAME["segment_everything"], ctx, {"image": "img1"})
    assert result.ok, result.text
    assert result.text == "Made img2: img1 with its 1 region(s) in colour."
    row = only_row(ctx, "img2")
    assert (row.parent, row.operation, row.params, row.mode) == ("img1", "segment_everything", {"regions": 1}, "RGB")
    assert (pixels(ctx, "img2") != pixels(ctx, "img1")).any()


async def test_segment_object_makes_an_overlay_and_a_mask(ctx):
    result = await call(BY_NAME["segment_object"], ctx, {"image": "img1", "object": "the yellow box"})
    assert result.ok, result.text
    assert result.images == ["img2", "img3"] == ctx.made
    overlay, mask = only_row(ctx, "img2"), only_row(ctx, "img3")
    assert (overlay.parent, overlay.operation, overlay.mode) == ("img1", "segment_object", "RGB")
    assert (mask.parent, mask.operation, mask.mode, mask.params["mask"]) == ("img1", "segment_object", "L", True)
    assert result.text.startswith("Made img2: img1 with ")
    assert "and img3: their mask (white = the yellow box)." in result.text
    assert set(np.unique(pixels(ctx, "img3")).tolist()) == {255}  # the tiny SAM: all of the image


@pytest.mark.parametrize("name", ["remove_object", "replace_object", "remove_background"])
async def test_object_flows_use_groundingdino_and_sam_when_loaded(ctx, name):
    result = await call(BY_NAME[name], ctx, flow_args(name))
    assert result.ok, result.text
    row = only_row(ctx, result.images[0])
    assert (row.parent, row.operation, row.width, row.height) == ("img1", name, 64, 40)
    assert row.params["mask_by"] == "GroundingDINO+SAM"
    if name == "remove_background":
        assert row.mode == "RGBA" and (pixels(ctx, row.image_id)[..., 3] == 255).all()  # SAM's whole image


async def test_object_flows_fall_back_to_clipseg(ctx):
    await ctx.pool.unload("Segmenting")
    try:
        for name in ("remove_object", "replace_object", "remove_background"):
            result = await call(BY_NAME[name], ctx, flow_args(name))
            assert result.ok, result.text
            assert only_row(ctx, result.images[0]).params["mask_by"] == "CLIPSeg"
        # the cut-out's alpha: not grown, smooth edges; find_object's inpainting mask: grown, 0/255
        alpha = pixels(ctx, ctx.made[-1])[..., 3]
        found = await call(BY_NAME["find_object"], ctx, {"image": "img1", "object": "the main object"})
        grown = pixels(ctx, found.images[0])
        assert len(np.unique(alpha)) > 2 and set(np.unique(grown).tolist()) <= {0, 255}
        assert 0 < np.count_nonzero(alpha >= 128) < np.count_nonzero(grown)
    finally:
        await ctx.pool.load("Segmenting", device="cpu")


def flow_args(name: str) -> dict:
    args = {"image": "img1"} if name == "remove_background" else {"image": "img1", "object": "the yellow box"}
    return args | ({"replacement": "a blue ball"} if name == "replace_object" else {})


def test_flows_are_offered_with_either_way_to_a_mask():
    flows = {"remove_object", "replace_object", "remove_background"}
    base = {"Inpainting", "VisualQuestionAnswering"}
    for maskers in MASKERS:
        assert flows <= {t.name for t in available(base | set(maskers))}
    offered = {t.name for t in available(base | {"Text2Box", "Text2Mask"})}  # half of the precise pair
    assert "remove_object" in offered and "segment_object" not in offered and "detect_objects" in offered
    assert not flows & {t.name for t in available(base | {"Text2Box"})}


async def test_models_lists_the_detector_and_sam(ctx):
    from core.admin import format_models

    infos = {m.name: m for m in await ctx.pool.models()}
    for name in ("Text2Box", "Segmenting"):
        assert infos[name].state == "ready" and infos[name].bytes > 0 and infos[name].shared_bytes == 0
    lines = format_models([infos["Text2Box"], infos["Segmenting"]]).splitlines()
    assert [line.split(",")[0] for line in lines] == ["Text2Box: ready on cpu (float32)",
                                                      "Segmenting: ready on cpu (float32)"]


def test_readme_tool_table_lists_every_tool_with_its_models():
    from core.tools import TOOLS
    from tests.conftest import ROOT

    section = (ROOT / "README.md").read_text().split("\n## Tools\n")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(" `"): line for line in section.splitlines() if line.startswith("| `")}
    assert set(rows) == {t.name for t in TOOLS}
    for tool in TOOLS:
        models = rows[tool.name].split("|")[3]
        assert all(m in models for m in [*tool.models, *(m for g in tool.any_of for m in g)]), tool.name
