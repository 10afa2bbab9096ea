"""The built-in LLM decodes with a static KV cache (the dynamic cache's answers, token for token), which a
residency budget counts while it answers; its decoding speed, tokens per second over its recent jobs,
reaches the admins' /models, OpenAI clients' GET /v1/models and MCP clients' list_models."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import openai
import pytest
import torch
from aiohttp import web
from aiohttp.test_utils import TestServer
from mcp import Client

import settings
from core import local_llm
from core.admin import format_models
from core.pool_client import PoolClient
from gpu_pool import accounting, openai_api
from gpu_pool.api import mcp_server
from gpu_pool.api.keys import Keys, load_keys
from gpu_pool.api.service import Service
from gpu_pool.fit import cache_bytes
from gpu_pool.models.base import LoadSpec, check_params
from gpu_pool.protocol import JobRequest, ModelInfo
from gpu_pool.registry import Entry
from gpu_pool.scheduler import Scheduler
from settings.units import memory_size
from tests.conftest import loaded_once
from tests.test_agent import turn
from tests.test_local_llm import SCHEMAS, SYSTEM
from tests.test_residency import budget_registry, linear
from tests.test_scheduler import finish

SPEED = re.compile(r", (\d+(?:\.\d+)?) tokens/s")
CHAT_TOKENS = 1024  # the chat the tests' LLM counts its KV cache for (the pool's: history_tokens + llm_max_tokens)
# a JSON answer with a long string: the grammar keeps a random model decoding for many tokens
ESSAY = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
    "type": "object", "properties": {"essay": {"type": "string", "minLength": 20}}, "required": ["essay"]}}}


async def essay(client: openai.AsyncOpenAI) -> None:
    """A real chat job on the tiny LLM through the pool, long enough to time its decoding."""
    r = await client.chat.completions.create(model="built-in", messages=[{"role": "user", "content": "write"}],
                                             max_tokens=40, temperature=0, response_format=ESSAY)
    assert r.usage.completion_tokens >= 2  # a first token and at least one decoded after it


async def test_models_shows_the_llm_s_tokens_per_second_and_no_other_model_s(pool, core):
    """A chat job, then /models as an admin reads it."""
    client = openai.AsyncOpenAI(api_key="unused", max_retries=0, **local_llm.connection(pool.url))
    try:
        await essay(client)
    finally:
        await client.close()

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


async def test_openai_and_mcp_clients_see_the_llm_s_speed_too(pool):
    """After a chat job: OpenAI's GET /v1/models, through the openai package, has it as a field of the LLM's
    model object; the MCP tool list_models, through the mcp SDK's client, on the LLM's line alone."""
    client = openai.AsyncOpenAI(api_key="unused", max_retries=0, **local_llm.connection(pool.url))
    jobs = PoolClient(pool.url)
    cfg = settings.load(pool.config, env_check=False)
    keys = Keys(load_keys(cfg.api, {cfg.api.keys_env: "alice=sk-alice-0123456789"}))
    try:
        await essay(client)
        [model] = (await client.models.list()).data
        async with Client(mcp_server.build(Service(lambda: jobs, cfg, keys), local_key=keys.keys["alice"])) as mcp:
            listed = (await mcp.call_tool("list_models", {})).content[0].text.splitlines()
        speed = {m.name: m for m in await jobs.models()}["LLM"].tokens_per_s
    finally:
        await client.close()
        await jobs.close()
    assert speed > 0 and model.tokens_per_s == speed and model.state == "ready"
    assert f"LLM: ready on cpu (float32), {speed} tokens/s" in listed
    assert [line for line in listed if "tokens/s" in line] == [f"LLM: ready on cpu (float32), {speed} tokens/s"]


async def test_the_openai_listing_has_no_speed_before_the_first_answer():
    class Pool:  # the one Backend method GET /v1/models asks
        speed = None

        async def llm_info(self) -> ModelInfo:
            return ModelInfo("LLM", "cpu", "float32", "tiny/llm", "ready", tokens_per_s=self.speed)

    backend = web.AppKey("backend", Pool)
    app = web.Application()
    app[backend] = Pool()
    openai_api.add_routes(app, backend)
    async with TestServer(app) as server:
        client = openai.AsyncOpenAI(api_key="unused", max_retries=0, base_url=str(server.make_url("/v1")))
        [before] = (await client.models.list()).data
        app[backend].speed = 41.5
        [after] = (await client.models.list()).data
        await client.close()
    assert before.id == "tiny/llm" and "tokens_per_s" not in before.model_extra
    assert after.tokens_per_s == 41.5


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
        return LoadSpec(name, str(tiny_dir / request.param), "cpu", torch.float32, sd_base="", chat_tokens=CHAT_TOKENS)

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


def test_the_counted_cache_is_the_one_transformers_allocates(llm):
    """``cache_bytes`` (what the budget and, from config.json, the start-up estimate count) against a real job's
    static cache."""
    caches = []
    hook = llm.model.register_forward_pre_hook(lambda m, a, kw: caches.append(kw.get("cache")), with_kwargs=True)
    try:
        llm.run(check_params(llm, requests(llm)[0][0], {}), [], lambda *a: None)
    finally:
        hook.remove()
    held = sum(t.numel() * t.element_size() for layer in caches[0].layers for t in (layer.keys, layer.values))
    config = llm.model.config.to_dict()  # as its config.json has it
    assert held == cache_bytes(config, caches[0].layers[0].max_cache_len, llm.dtype) > 0
    assert llm.working_bytes() == cache_bytes(config, CHAT_TOKENS, llm.dtype)


async def test_a_budget_makes_room_for_the_cache_while_the_llm_answers(llm):
    """Room for the LLM's weights and another model's, not for its KV cache besides: the other model is moved
    out while the LLM answers, as /models shows; under its weights and cache, the LLM's job fails saying why."""
    weights, cache, other = accounting.unique_bytes([llm.model]), llm.working_bytes(), [linear()]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0.0}

    async def run(budget: int) -> tuple[list, list, object]:
        registry = budget_registry({"Image2Canny": other}, str(budget))
        ready = asyncio.get_running_loop().create_future()
        ready.set_result(llm)
        registry.entries["LLM"] = Entry("LLM", "cpu", "float32", llm.source, state="ready", model=llm, ready=ready)
        sched = Scheduler(registry)
        try:
            first = await finish(sched.submit(JobRequest("Image2Canny", {})))
            answered = await finish(sched.submit(JobRequest("LLM", chat)))
        finally:
            sched.close()
        assert first[-1].kind == "done"
        return answered, format_models(registry.infos()).splitlines(), registry.manager("cpu")

    budget = weights + cache + accounting.unique_bytes(other) // 2
    assert weights + accounting.unique_bytes(other) <= budget  # weights alone would both stay
    answered, listing, mgr = await run(budget)
    assert answered[-1].kind == "done", answered[-1]
    assert listing[0].startswith("Image2Canny: ready on cpu (float32), offloaded to CPU RAM")
    assert listing[1].startswith("LLM: ready on cpu (float32), resident")
    assert mgr.peak_bytes == weights + cache and mgr.working_bytes == 0  # the cache's bytes free after the job

    answered, _, _ = await run(weights + cache // 2)
    assert answered[-1].code == "oom"
    assert answered[-1].message == (f"LLM needs {memory_size(weights + cache)} on cpu ({memory_size(weights)} of "
                                    f"weights, {memory_size(cache)} of working memory) but the budget there is "
                                    f"{memory_size(weights + cache // 2)}.")
