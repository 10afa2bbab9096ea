"""The pool's OpenAI images API (``[api]``, gpu_pool/api/), through the real ``openai`` package, against a pool
process with tiny models: what a client gets back (images, error bodies, statuses, Retry-After).

Two pools start side by side for the module: the main one, whose safety checker flags nothing, and one whose
checker flags every image (the withheld drawing).
"""

from __future__ import annotations

import base64
import io
import re

import aiohttp
import numpy as np
import openai
import pytest
from PIL import Image

import settings
from testkit.api import ENV_KEYS, MODELS, api_config, start_api_pools
from testkit.images import house, png_bytes, square_mask
from testkit.pool import stop_pool

KEYS_FILE = """
[keys.quota]
key = "sk-quota-0123456789"
images_per_day = 3

[keys.slow]
key = "sk-slow-0123456789"
requests_per_minute = 1

[keys.genonly]
key = "sk-genonly-0123456789"
models = ["Text2Image"]
"""
DRAWING = ("Text2Image", "InstructPix2Pix", "Inpainting", "Variations", "SafetyChecker")
MAX_UPLOAD = 200_000


@pytest.fixture(scope="module")
def pools(tiny_dir, tmp_path_factory):
    main, flags = tmp_path_factory.mktemp("api-pool"), tmp_path_factory.mktemp("api-flags-all")
    (main / "keys.toml").write_text(KEYS_FILE)
    configs = [api_config(main, {m: MODELS[m] for m in DRAWING}, keys_file="keys.toml",
                          extra=f"max_upload_bytes = {MAX_UPLOAD}"),
               api_config(flags, {"Text2Image": "sd15", "SafetyChecker": "safety-flags-all"})]
    started = start_api_pools(*configs)
    yield started
    for p in started:
        stop_pool(p)


def base_url(pool) -> str:
    return f"{settings.load(pool.config, env_check=False).api.url}/v1"


@pytest.fixture
async def client(pools):
    c = openai.AsyncOpenAI(base_url=base_url(pools[0]), api_key=ENV_KEYS["alice"], max_retries=0)
    yield c
    await c.close()


def as_key(pool, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url(pool), api_key=key, max_retries=0)


def picture(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_generate_gives_n_pngs_as_b64_or_url(client, pools):
    r = await client.images.generate(prompt="a red house", n=2, size="64x64", response_format="b64_json")
    assert [picture(d.b64_json).size for d in r.data] == [(64, 64), (64, 64)]
    assert picture(r.data[0].b64_json).format == "PNG"

    r = await client.images.generate(prompt="a red house", size="128x64", response_format="url")
    assert r.data[0].url.startswith(base_url(pools[0]).removesuffix("/v1") + "/v1/images/files/")
    async with aiohttp.ClientSession() as http, http.get(r.data[0].url) as got:  # no key needed: unguessable
        assert got.status == 200 and got.content_type == "image/png"
        assert Image.open(io.BytesIO(await got.read())).size == (128, 64)


async def test_n_images_are_queued_together_and_drawn_as_one_batch(client, pools):
    """n = 4: the four jobs reach the pool at once, which draws them as one batch ([pool] max_batch = 4), each
    with its own seed: four different pictures."""
    r = await client.images.generate(prompt="a blue house", n=4, size="72x72", response_format="b64_json")
    pictures = [np.asarray(picture(d.b64_json)) for d in r.data]
    assert [p.shape for p in pictures] == [(72, 72, 3)] * 4
    assert len({p.tobytes() for p in pictures}) == 4
    assert re.search(r"jobs j\d+, j\d+, j\d+, j\d+ run Text2Image as one batch of 4", pools[0].log.read_text())


async def test_edit_two_images_with_a_mask_edits_each(client):
    a, b = house(), house(sky=(250, 200, 120))
    r = await client.images.edit(image=[("a.png", png_bytes(a), "image/png"), ("b.png", png_bytes(b), "image/png")],
                                 mask=("m.png", png_bytes(square_mask()), "image/png"), prompt="a blue door",
                                 response_format="b64_json")
    out = [picture(d.b64_json).convert("RGB") for d in r.data]
    assert [im.size for im in out] == [a.size, b.size]  # one result per input image, at its size
    # Inpainting pastes nothing back: the area outside the mask changed too (a random tiny model), but the
    # two results differ as their inputs do
    assert out[0].tobytes() != out[1].tobytes()

    r = await client.images.edit(image=("a.png", png_bytes(a), "image/png"), prompt="make it winter", n=2,
                                 size="64x64")  # InstructPix2Pix, no mask; size: the results resized
    assert [picture(d.b64_json).size for d in r.data] == [(64, 64), (64, 64)]


async def test_edit_with_a_mask_of_another_size_is_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        await client.images.edit(image=("a.png", png_bytes(house()), "image/png"), prompt="a door",
                                 mask=("m.png", png_bytes(square_mask((64, 64))), "image/png"))
    assert "The mask is 64x64 but image 1 is 96x64" in e.value.message


async def test_variations(client):
    r = await client.images.create_variation(image=("a.png", png_bytes(house()), "image/png"), n=2)
    assert [picture(d.b64_json).size for d in r.data] == [(96, 64), (96, 64)]


async def test_models_lists_the_image_models_a_key_may_use(client, pools):
    assert {m.id for m in (await client.models.list()).data} == {"Text2Image", "InstructPix2Pix", "Inpainting",
                                                                  "Variations"}
    async with as_key(pools[0], "sk-genonly-0123456789") as limited:
        assert [m.id for m in (await limited.models.list()).data] == ["Text2Image"]
        with pytest.raises(openai.PermissionDeniedError) as e:
            await limited.images.create_variation(image=("a.png", png_bytes(house()), "image/png"))
        assert e.value.status_code == 403 and "may not use Variations" in e.value.message


async def test_a_bad_key_gets_401(pools):
    async with as_key(pools[0], "sk-wrong-0123456789") as wrong:
        with pytest.raises(openai.AuthenticationError) as e:
            await wrong.images.generate(prompt="a house")
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    async with aiohttp.ClientSession() as http, http.post(base_url(pools[0]) + "/images/generations",
                                                          json={"prompt": "a house"}) as got:
        assert got.status == 401 and "Bearer" in (await got.json())["error"]["message"]


async def test_over_the_daily_quota_gets_429_with_retry_after(pools):
    async with as_key(pools[0], "sk-quota-0123456789") as quota:
        await quota.images.generate(prompt="a house", n=2, size="64x64")
        with pytest.raises(openai.RateLimitError) as e:
            await quota.images.generate(prompt="a house", n=2, size="64x64")  # 2 more: 4 > 3
        assert "has 1 left" in e.value.message
        assert 0 < int(e.value.response.headers["retry-after"]) <= 86400
        await quota.images.generate(prompt="a house", n=1, size="64x64")  # the one left
        with pytest.raises(openai.RateLimitError):
            await quota.images.generate(prompt="a house", size="64x64")


async def test_over_the_rate_gets_429_with_retry_after(pools):
    async with as_key(pools[0], "sk-slow-0123456789") as slow:
        await slow.images.generate(prompt="a house", size="64x64")
        with pytest.raises(openai.RateLimitError) as e:
            await slow.images.generate(prompt="a house", size="64x64")
    assert "1 request(s) a minute" in e.value.message
    assert 0 < int(e.value.response.headers["retry-after"]) <= 60


async def test_an_oversized_upload_gets_413_with_a_message(client):
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    big = png_bytes(Image.fromarray(noise))  # noise does not compress: about 270 kB
    assert len(big) > MAX_UPLOAD
    with pytest.raises(openai.APIStatusError) as e:
        await client.images.edit(image=("big.png", big, "image/png"), prompt="a door")
    assert e.value.status_code == 413 and "larger than this server accepts" in e.value.message


async def test_a_file_that_is_not_an_image_gets_400_with_the_reason(client):
    with pytest.raises(openai.BadRequestError) as e:
        await client.images.edit(image=[("a.png", png_bytes(house()), "image/png"),
                                        ("b.png", b"these are words, not pixels", "image/png")], prompt="a door")
    assert "Image 2 is not an image this server can read" in e.value.message
    assert e.value.body["code"] == "invalid_image"


async def test_a_withheld_drawing_is_an_error_with_the_reason_and_no_image(pools):
    async with as_key(pools[1], ENV_KEYS["bob"]) as bob:
        with pytest.raises(openai.BadRequestError) as e:
            await bob.images.generate(prompt="a house", size="64x64")
    assert e.value.body["code"] == "content_policy_violation"
    assert "withheld by this server's safety filter" in e.value.message
    assert "data" not in e.value.response.json()
