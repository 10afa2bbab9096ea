"""The ``[api]`` listener with the Ray backend (``[pool] backend = "ray"``): the Ray front starts it, and its jobs
run on the replicas, through the real ``openai`` package and the ``mcp`` SDK's client over streamable HTTP.

One ``python -m gpu_pool`` on a local Ray instance (two replicas on the CPU, tiny models), in a process group
of its own, gone whole after the module.
"""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

pytest.importorskip("ray", reason="ray[serve] is not installed: the ray extra in pyproject.toml "
                                  "(./scripts/test installs it; ./scripts/run --ray for the bot)")

import openai  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402

import settings  # noqa: E402
from testkit.api import ENV_KEYS, api_config, start_api_pool  # noqa: E402
from testkit.pool import ray_on_cpu, stop_pool  # noqa: E402
from tests.test_ray_pool import _group  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def ray_pool(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-ray")
    path = api_config(folder, {"Text2Image": "sd15", "SafetyChecker": "safety-flags-none"}, backend="ray")
    path.write_text(path.read_text() + "\n" + ray_on_cpu())
    pool = start_api_pool(path, group=True, timeout=400)
    try:
        yield pool
        pool.proc.terminate()
        pool.proc.wait(60)
        deadline = time.monotonic() + 20
        while _group(pool.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group(pool.proc.pid), f"Ray processes left after the pool stopped\n{pool.log.read_text()[-3000:]}"
    finally:
        stop_pool(pool, 0)


def url(pool) -> str:
    return settings.load(pool.config, env_check=False).api.url


async def test_the_images_api_draws_on_a_replica(ray_pool):
    client = openai.AsyncOpenAI(base_url=f"{url(ray_pool)}/v1", api_key=ENV_KEYS["alice"], max_retries=0)
    try:
        r = await client.images.generate(prompt="a red house", n=2, size="64x64", response_format="b64_json",
                                         extra_body={"steps": 2})
        listed = {m.id for m in (await client.models.list()).data}
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(base_url=f"{url(ray_pool)}/v1", api_key="sk-nobody-0123456789",
                                     max_retries=0).images.generate(prompt="a house", size="64x64")
    finally:
        await client.close()
    assert [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in r.data] == [(64, 64), (64, 64)]
    assert "Text2Image" in listed


async def test_mcp_draws_on_a_replica_with_progress(ray_pool):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {ENV_KEYS['bob']}"})
    steps = []

    async def progress(done, total, message):
        steps.append((done, total))

    async with Client(streamable_http_client(f"{url(ray_pool)}/mcp", http_client=http)) as client:
        r = await client.call_tool("generate_image", {"prompt": "a red house", "width": 64, "height": 64,
                                                      "steps": 3}, progress_callback=progress)
        models = await client.call_tool("list_models", {})
    assert not r.is_error, r.content
    block = next(c for c in r.content if c.type == "image")
    assert Image.open(io.BytesIO(base64.b64decode(block.data))).size == (64, 64)
    assert steps == [(1, 3), (2, 3), (3, 3)]  # the replica's diffusion steps, through the Ray front
    assert "Text2Image: ready on cpu of replica" in " ".join(c.text for c in models.content if c.type == "text")
