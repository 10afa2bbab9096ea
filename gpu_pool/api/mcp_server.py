"""The pool's tools for MCP clients (Claude Desktop, agents): an ``MCPServer`` (python ``mcp`` 2.x).

Served at ``/mcp`` on the listener (streamable HTTP, ``gpu_pool/api/app.py``) and over stdio by
``vchat-mcp`` (``gpu_pool/api/mcp_stdio.py``, which relays to ``/mcp``). The tools are the
listener's (``gpu_pool/api/service.py``), so the keys, quotas and safety filter of the images API
apply here too:

- Images go in as base64 text (PNG, JPEG, WebP ...; a ``data:`` URL too) and come back as MCP
  image content, with a line of text saying what was made.
- Drawing tools report progress per diffusion step (all steps of all images, in one count).
- A cancelled call closes its pool job's stream, which cancels the job and frees the device.
- Every tool is listed whatever the pool has loaded; one whose model is not loaded answers a tool
  error naming it (so a client's tool list does not change under it while models load).
- Any failure is a tool error with a readable message: a bad image, a withheld drawing, over the
  rate or quota ("try again in N s"), a model this key may not use.

Over HTTP the key is the request's bearer key (the listener answered 401 to a wrong one already);
a client in the same process (tests; ``Client(server)``) acts as ``local_key``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image as McpImage
from mcp.types import ImageContent, TextContent
from PIL import Image
from pydantic import Field

from gpu_pool.api.keys import ApiKey
from gpu_pool.api.service import ApiFailure, Service, decode_image, png
from gpu_pool.protocol import ModelInfo

INSTRUCTIONS = ("Image tools on a GPU pool: draw, edit, vary and upscale images, caption them, answer questions "
                "about them, find and cut out objects. Images go in as base64 text and come back as images.")
ImageArg = Annotated[str, Field(description="the image: base64 of a PNG, JPEG or WebP file, or a data: URL")]


def build(service: Service, local_key: ApiKey | None = None) -> MCPServer:
    mcp = MCPServer("vchat-pool", instructions=INSTRUCTIONS)
    max_pixels = service.config.limits.max_image_pixels

    def key_of(ctx: Context) -> ApiKey:
        headers = ctx.headers
        key = local_key if headers is None else service.keys.find(headers.get("authorization"))
        if key is None:
            raise ToolError("No valid API key: send Authorization: Bearer <your key>.")
        return key

    async def images(*datas: str) -> list[Image.Image]:
        def decode() -> list[Image.Image]:
            return [decode_image(d, f"Image {i}" if len(datas) > 1 else "The image", max_pixels)
                    for i, d in enumerate(datas, 1)]

        return await asyncio.get_running_loop().run_in_executor(None, decode)

    async def results(pictures: list[Image.Image], text: str) -> list[ImageContent | TextContent]:
        encoded = await asyncio.get_running_loop().run_in_executor(None, lambda: [png(p) for p in pictures])
        return [*(McpImage(data=b, format="png").to_image_content() for b in encoded),
                TextContent(type="text", text=text)]

    async def run(ctx: Context, work: Any) -> Any:
        try:
            return await work
        except ApiFailure as e:
            raise ToolError(str(e)) from None

    def progress(ctx: Context):
        async def report(done: int, total: int, message: str) -> None:
            try:
                await ctx.report_progress(done, total, message)
            except Exception:  # best-effort: a client that cannot hear it still gets its result
                pass

        return report

    @mcp.tool(description="Draw an image from a text prompt (Stable Diffusion, or FLUX.2 [klein] on a pool that "
                          "has only it). Returns the image.")
    async def generate_image(prompt: Annotated[str, Field(description="what to draw")], ctx: Context,
                             width: Annotated[int | None, Field(description="pixels, a multiple of 8")] = None,
                             height: Annotated[int | None, Field(description="pixels, a multiple of 8")] = None,
                             negative_prompt: Annotated[str | None, Field(description="what to avoid")] = None,
                             steps: Annotated[int | None, Field(description="diffusion steps")] = None,
                             seed: Annotated[int | None, Field(description="for a reproducible image")] = None
                             ) -> list[ImageContent | TextContent]:
        key = key_of(ctx)
        size = (width or 512, height or 512) if width or height else None
        out = await run(ctx, service.generate(key, prompt, 1, size, progress(ctx), negative_prompt=negative_prompt,
                                              steps=steps, seed=seed))
        return await results(out, f"Drew {prompt!r} ({out[0].width}x{out[0].height}).")

    @mcp.tool(description="Edit one or more images as the prompt says: each image is edited (with a mask: only "
                          "its white or transparent area is repainted). Returns one image per input image.")
    async def edit_image(images: Annotated[list[str], Field(description="1 to 4 images, each base64 or a data: "
                                                                        "URL")],
                         prompt: Annotated[str, Field(description="the edit, e.g. 'make it winter'")], ctx: Context,
                         mask: Annotated[str | None, Field(description="optional mask, the images' size: white "
                                                                       "or transparent = repaint")] = None
                         ) -> list[ImageContent | TextContent]:
        key = key_of(ctx)
        pictures = await run(ctx, images_or_fail(images, mask))
        out = await run(ctx, service.edit(key, pictures[:len(images)], prompt, pictures[-1] if mask else None, 1,
                                          progress(ctx)))
        return await results(out, f"Edited {len(images)} image(s): {prompt!r}.")

    async def images_or_fail(datas: list[str], mask: str | None) -> list[Image.Image]:
        if not isinstance(datas, list) or not 1 <= len(datas) <= 4:
            raise ApiFailure(400, "Send 1 to 4 images.", "invalid_image")
        return await images(*datas, *([mask] if mask else []))

    @mcp.tool(description="Describe an image in one sentence.")
    async def caption_image(image: ImageArg, ctx: Context) -> str:
        key = key_of(ctx)
        return await run(ctx, service.caption(key, (await run(ctx, images(image)))[0]))

    @mcp.tool(description="Answer a question about an image.")
    async def answer_question(image: ImageArg, question: Annotated[str, Field(description="the question, in "
                                                                                          "English")],
                              ctx: Context) -> str:
        key = key_of(ctx)
        return await run(ctx, service.answer(key, (await run(ctx, images(image)))[0], question))

    @mcp.tool(description="Find objects named in words and box them. Returns the image with labelled boxes, "
                          "and the boxes in pixels.")
    async def detect_objects(image: ImageArg, object: Annotated[str, Field(description="what to find, e.g. "
                                                                                       "'the dog'")],
                             ctx: Context) -> list[ImageContent | TextContent]:
        key = key_of(ctx)
        boxed, found = await run(ctx, service.detect(key, (await run(ctx, images(image)))[0], object))
        boxes = found.data.get("boxes", [])
        described = "; ".join(f"{label} {score:.2f} at {box}" for box, score, label in
                              zip(boxes, found.data.get("scores", []), found.data.get("labels", [])))
        return await results([boxed], f"{len(boxes)} box(es) for {object!r}" + (f": {described}" if boxes else "."))

    @mcp.tool(description="Outline an object named in words. Returns its mask (white = the object).")
    async def segment_object(image: ImageArg, object: Annotated[str, Field(description="the object, e.g. "
                                                                                       "'the cat'")],
                             ctx: Context) -> list[ImageContent | TextContent]:
        key = key_of(ctx)
        mask, by = await run(ctx, service.segment(key, (await run(ctx, images(image)))[0], object))
        return await results([mask], f"The mask of {object!r} (white = the object), by {by}.")

    @mcp.tool(description="Cut out the main subject of an image onto a transparent background.")
    async def remove_background(image: ImageArg, ctx: Context) -> list[ImageContent | TextContent]:
        key = key_of(ctx)
        cut, subject = await run(ctx, service.remove_background(key, (await run(ctx, images(image)))[0]))
        return await results([cut], f"{subject} on a transparent background (PNG with alpha).")

    @mcp.tool(description="Upscale an image to twice its width and height, sharper.")
    async def upscale_image(image: ImageArg, ctx: Context) -> list[ImageContent | TextContent]:
        key = key_of(ctx)
        out = await run(ctx, service.upscale(key, (await run(ctx, images(image)))[0], progress(ctx)))
        return await results([out], f"Upscaled to {out.width}x{out.height}.")

    @mcp.tool(description="List the pool's models this key may use, whether each is ready, and how fast the "
                          "language model writes.")
    async def list_models(ctx: Context) -> str:
        key = key_of(ctx)
        infos = await run(ctx, service.models(key))
        return "\n".join(_line(m) for m in infos) or "No models are loaded on this pool."

    return mcp


def _line(m: ModelInfo) -> str:
    speed = f", {m.tokens_per_s} tokens/s" if m.tokens_per_s else ""  # the LLM's decoding, once it has answered
    return f"{m.name}: {m.state} on {m.device} ({m.dtype}){speed}" + (f": {m.error}" if m.error else "")
