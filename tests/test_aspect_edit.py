"""Issue 26: an odd-shaped upload is edited in its own shape, end to end (store -> tool -> pool, tiny models)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from core.tools import BY_NAME
from core.tools.base import call
from tests.test_tools import ctx, only_row  # noqa: F401  (ctx: a fixture; working_size 64)


@pytest.mark.parametrize("size, stored, made", [((7, 3), (19, 8), (64, 24)), ((200, 25), (64, 8), (64, 8))])
async def test_an_odd_shaped_upload_is_edited_in_its_shape(ctx, size, stored, made):  # noqa: F811
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    row = ctx.images.ingest(ctx.session, "odd.png", buf.getvalue())
    assert (row.width, row.height) == stored  # 7x3 was stored 8x8
    result = await call(BY_NAME["edit_image"], ctx, {"image": row.image_id, "instruction": "make it winter"})
    assert result.ok, result.text
    edited = only_row(ctx, result.images[0])
    assert (edited.width, edited.height) == made  # 8x8 was edited square (64x64); a 64x8 banner came back 64x16
