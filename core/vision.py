"""What the LLM sees of the images: small thumbnails next to their ids.

With ``[llm] vision`` on, the newest images of the conversation (uploads and
what the tools made, at most ``vision_images``) go with the user's message as
image parts, each labelled with its id, so the model can answer about a
picture itself and look at what its tools made. Thumbnails are at most 512 px
on their long side, JPEG (PNG when they have transparency), as data: URLs.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
from typing import Any

from PIL import Image

from core.images import ImageStore
from core.store import ImageRow

THUMB = 512


@functools.lru_cache(maxsize=64)
def data_url(path: str) -> str:
    """A thumbnail of the image file at ``path`` (content-addressed: the path names the content)."""
    with Image.open(path) as im:
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im.convert("RGBA").save(buf, "PNG")
            kind = "png"
        else:
            im.convert("RGB").save(buf, "JPEG", quality=85)
            kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode()}"


async def parts(images: ImageStore, rows: list[ImageRow], made: list[str], limit: int) -> list[dict[str, Any]]:
    """Image parts for the newest ``limit`` of ``rows``, each after a text part naming its id."""
    out: list[dict[str, Any]] = []
    for r in rows[-limit:] if limit > 0 else []:
        url = await asyncio.to_thread(data_url, str(images.path(r)))
        label = f"{r.image_id}, just made by {r.operation}" if r.image_id in made else r.image_id
        out += [{"type": "text", "text": f"[{label}]"}, {"type": "image_url", "image_url": {"url": url}}]
    return out


def attach(messages: list[dict[str, Any]], image_parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with ``image_parts`` added to the last user message (the store is not touched)."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not image_parts or not users:
        return messages
    i = users[-1]
    content = messages[i]["content"]
    text = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    return [*messages[:i], dict(messages[i], content=[*text, *image_parts]), *messages[i + 1:]]


def has_images(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in messages)


def without_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same messages as plain text: image parts dropped, text parts joined."""
    out = []
    for m in messages:
        if isinstance(m.get("content"), list):
            m = dict(m, content="\n".join(p["text"] for p in m["content"] if p.get("type") == "text"))
        out.append(m)
    return out
