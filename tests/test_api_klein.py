"""The images API on a pool that draws with FLUX.2 [klein] alone (the modern profile's drawing models), through
the real ``openai`` package against a pool process with the tiny klein: generations run Klein (a request's n
images as one batch), edits Klein, and edits with a mask KleinInpaint."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import openai
import pytest
from PIL import Image

import settings
from testkit.api import ENV_KEYS, api_config, start_api_pools
from testkit.images import house, png_bytes, square_mask
from testkit.pool import stop_pool


@pytest.fixture(scope="module")
def klein_pool(tmp_path_factory):
    """Its own pool process (the session's ``pool`` would have the seed's profile, klein unloaded)."""
    config = api_config(tmp_path_factory.mktemp("api-klein"), {"Klein": "klein", "KleinInpaint": "klein",
                                                               "SafetyChecker": "safety-flags-none"})
    [started] = start_api_pools(config)
    yield started
    stop_pool(started)


@pytest.fixture
async def client(klein_pool):
    c = openai.AsyncOpenAI(base_url=f"{settings.load(klein_pool.config, env_check=False).api.url}/v1",
                           api_key=ENV_KEYS["alice"], max_retries=0)
    yield c
    await c.close()


def picture(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


async def test_generations_draw_with_klein_and_n_images_run_as_one_batch(client, klein_pool):
    r = await client.images.generate(prompt="a red house", n=3, size="64x96", response_format="b64_json")
    drawn = [picture(d.b64_json) for d in r.data]
    assert [im.size for im in drawn] == [(64, 96)] * 3
    assert len({im.tobytes() for im in drawn}) == 3  # a seed each
    assert re.search(r"jobs \S+, \S+, \S+ run Klein as one batch of 3", klein_pool.log.read_text())
    listed = {m.id for m in (await client.models.list()).data}
    assert {"Klein", "KleinInpaint"} <= listed


async def test_edits_run_klein_and_with_a_mask_klein_inpaint(client):
    photo, mask = house(), square_mask()  # 96x64, a white square to repaint
    edited = await client.images.edit(image=("house.png", png_bytes(photo)), prompt="make it winter",
                                      response_format="b64_json")
    # klein's edit: the photo fitted to about 1 MP, under [limits] max_output_size (256), in multiples of 16
    assert picture(edited.data[0].b64_json).size == (256, 160)
    repainted = await client.images.edit(image=("house.png", png_bytes(photo)), mask=("mask.png", png_bytes(mask)),
                                         prompt="a window", response_format="b64_json")
    out = np.asarray(picture(repainted.data[0].b64_json), np.int16)
    kept = np.asarray(mask.convert("L")) == 0  # black in the mask: kept
    assert out.shape == (64, 96, 3)
    assert np.abs(out[kept] - np.asarray(photo, np.int16)[kept]).max() <= 1  # KleinInpaint pastes it back
    assert np.abs(out[~kept] - np.asarray(photo, np.int16)[~kept]).max() > 1  # and repaints the square


async def test_a_parameter_klein_does_not_take_is_a_400_that_names_it(client):
    with pytest.raises(openai.BadRequestError) as e:
        await client.images.generate(prompt="a red house", size="64x64", extra_body={"negative_prompt": "blur"})
    assert "negative_prompt" in e.value.message
