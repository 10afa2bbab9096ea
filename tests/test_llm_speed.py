"""The built-in LLM decodes with a static KV cache (the dynamic cache's answers, token for token) and its
decoding speed, tokens per second over its recent jobs, reaches the admins' /models."""

from __future__ import annotations

import dataclasses
import re

import openai
import pytest
import torch

from core import local_llm
from gpu_pool.models.base import LoadSpec, check_params
from gpu_pool.protocol import ModelInfo
from tests.conftest import loaded_once
from tests.test_agent import turn
from tests.test_local_llm import SCHEMAS, SYSTEM

SPEED = re.compile(r", (\d+(?:\.\d+)?) tokens/s")
# a JSON answer with a long string: the grammar keeps a random model decoding for many tokens
ESSAY = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
    "type": "object", "properties": {"essay": {"type": "string", "minLength": 20}}, "required": ["essay"]}}}


async def test_models_shows_the_llm_s_tokens_per_second_and_no_other_model_s(pool, core):
    """A real chat job on the tiny LLM through the pool, then /models as an admin reads it."""
    client = openai.AsyncOpenAI(api_key="unused", max_retries=0, **local_llm.connection(pool.url))
    try:
        r = await client.chat.completions.create(model="built-in", messages=[{"role": "user", "content": "write"}],
                                                 max_tokens=40, temperature=0, response_format=ESSAY)
    finally:
        await client.close()
    assert r.usage.completion_tokens >= 2  # a first token and at least one decoded after it

    listing = await core.command(dataclasses.replace(turn("/models"), is_admin=True), "models")
    lines = {line.split(":")[0]: line for line in listing.splitlines() if ": " in line}
    speed = SPEED.search(lines["LLM"])
    assert speed and float(speed.group(1)) > 0, lines["LLM"]
    others = [line for name, line in lines.items() if name != "LLM" and "tokens/s" in line]
    assert not others, others
    assert sum("tokens/s" in line for line in listing.splitlines()) == 1

    infos = {m.name: m for m in await core.pool.models()}  # the figure as it travels over the pool's protocol
    assert infos["LLM"].tokens_per_s > 0
    assert infos["Text2Image"].tokens_per_s is None


def test_a_listing_from_a_newer_or_older_peer_still_reads():
    listed = ModelInfo("LLM", "cpu", "float32", "llm", "ready", tokens_per_s=41.5).to_json()
    assert ModelInfo.from_json(listed).tokens_per_s == 41.5
    assert ModelInfo.from_json({**listed, "a_later_field": 1}) == ModelInfo.from_json(listed)  # a newer pool
    older = {k: v for k, v in listed.items() if k != "tokens_per_s"}
    assert ModelInfo.from_json(older).tokens_per_s is None


@pytest.fixture(scope="module", params=["llm", "qwen3"])
def llm(request, tiny_dir, bases):
    """The tiny Qwen3-VL (the built-in LLM of the tests' pool), and the tiny text-only Qwen3 (klein's kind)."""
    def spec(name: str) -> LoadSpec:
        return LoadSpec(name, str(tiny_dir / request.param), "cpu", torch.float32, sd_base="")

    return loaded_once(spec, bases)("LLM")


def answer(llm, cache: str, params: dict, images=()) -> tuple[str, list[type]]:
    """The model's answer with ``cache`` ("static" or "dynamic"), and the classes of the caches its forwards got."""
    seen: list[type] = []

    def spy(module, args, kwargs):
        if kwargs.get("cache") is not None:
            seen.append(type(kwargs["cache"]))

    hook = llm.model.register_forward_pre_hook(spy, with_kwargs=True)
    llm.cache = cache
    try:
        out = llm.run(check_params(llm, params, {}), list(images), lambda *a: None)
    finally:
        llm.cache = "static"
        hook.remove()
    return out.text, seen


def requests(llm) -> list[tuple[dict, list]]:
    """Greedy requests: plain text, a required tool call under the grammar, and (the vision LLM) an image."""
    plain = {"messages": [SYSTEM, {"role": "user", "content": "hello there"}], "max_tokens": 8, "temperature": 0.0}
    tools = {"messages": [SYSTEM, {"role": "user", "content": "draw a cat"}], "max_tokens": 16, "temperature": 0.0,
             "tools": [SCHEMAS["generate_image"], SCHEMAS["caption_image"]], "tool_choice": "required"}
    out = [(plain, []), (tools, [])]
    if llm.vision:
        from PIL import Image

        seeing = {"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image"}]}
        out.append(({"messages": [seeing], "max_tokens": 12, "temperature": 0.0}, [Image.new("RGB", (64, 48), "red")]))
    return out


def test_the_static_cache_answers_as_the_dynamic_cache_does(llm):
    from transformers import DynamicCache, StaticCache

    assert not llm._compiles()  # on the CPU generate() never compiles
    for params, images in requests(llm):
        static, caches = answer(llm, "static", params, images)
        assert caches and set(caches) == {StaticCache}
        dynamic, caches = answer(llm, "dynamic", params, images)
        assert caches and set(caches) == {DynamicCache}
        assert static == dynamic
    assert llm.tokens_per_s() > 0  # every job counted, whichever cache


def test_the_speed_is_a_rolling_figure_over_recent_jobs():
    from gpu_pool.models.llm import SPEED_JOBS, DecodeSpeed, _cache_len

    speed = DecodeSpeed()
    assert speed.rate() is None
    speed.add(0, 0.0)  # a one-token answer: nothing decoded after the prompt
    assert speed.rate() is None
    speed.add(30, 1.0)
    speed.add(10, 1.0)
    assert speed.rate() == 20.0
    for _ in range(SPEED_JOBS):
        speed.add(50, 1.0)
    assert speed.rate() == 50.0  # the older jobs have left the window
    assert [_cache_len(n) for n in (1, 1024, 1025, 3000)] == [1024, 1024, 2048, 4096]
