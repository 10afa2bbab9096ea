"""segment_object: the precise outline of an object named in words (the seed's ObjectSegmenting):
Florence-2 boxes it and SAM 2 outlines it (the modern profile), or GroundingDINO and SAM; the result is
a coloured overlay and a mask."""

import numpy as np
from PIL import Image

from core.tools.base import Tool, ToolContext, ToolResult, image_param, save, text_param
from core.tools.objects import MODERN, PRECISE, find_boxes, not_found, outline
from core.tools.overlay import paint_masks


class SegmentObject(Tool):
    name = "segment_object"
    description = "Outline an object named in words precisely: a coloured overlay, and a mask (white = the object)."
    parameters = {"image": image_param("the image to segment"),
                  "object": text_param("the object to outline, e.g. 'the cat'")}
    any_of = (MODERN, PRECISE)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        what = args["object"]
        found = await find_boxes(ctx, img, what, args["image"])
        masks, job = await outline(ctx, img, found, what)
        union = np.maximum.reduce([np.asarray(m) for m in masks]) >= 128
        if not union.any():
            raise not_found(what, args["image"])
        params = {"object": what, "boxes": found.boxes, "labels": found.labels}
        overlay = save(ctx, paint_masks(img, masks), job, parent=args["image"], operation=self.name, params=params)
        mask = save(ctx, Image.fromarray(union.astype(np.uint8) * 255, "L"), job, parent=args["image"],
                    operation=self.name, params=dict(params, mask=True))
        return ToolResult(f"Made {overlay.image_id}: {args['image']} with {len(masks)} outline(s) of {what} "
                          f"({found.describe()}), and {mask.image_id}: their mask (white = {what}).",
                          [overlay.image_id, mask.image_id])
