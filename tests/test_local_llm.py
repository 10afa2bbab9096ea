"""The built-in LLM: the pool hosts a tiny random-weight Qwen3-VL (a real chat template with tools)
and serves it on its own socket as an OpenAI-compatible server, reached with the real openai client."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import time

import jsonschema
import openai
import pytest
from PIL import Image

import settings
from core import local_llm
from core.llm import LLM
from core.pool_client import PoolClient, PoolUnavailable
from core.tools import BY_NAME, TOOLS
from testkit.bot_process import BotProcess

IDS = ["img1", "img2"]
SCHEMAS = {t.name: t.schema(IDS) for t in TOOLS}  # every tool the core can offer, image ids as enums
SYSTEM = {"role": "system", "content": "You help people draw and edit images. Images: img1, img2."}


@pytest.fixture
async def client(pool):
    c = openai.AsyncOpenAI(api_key="unused", max_retries=0, **local_llm.connection(pool.url))
    yield c
    await c.close()


def data_url(color: str = "red", size: tuple[int, int] = (64, 48)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def assert_valid(call) -> None:
    """A call names an offered tool, and its arguments satisfy that tool's schema (ids included)."""
    assert call.function.name in SCHEMAS, call.function.name
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name]["function"]["parameters"])


# Image ids, free text, bounded integers, several arguments: the kinds of argument the tools take.
MIXED = ["caption_image", "generate_image", "edit_image", "detect_edges", "generate_from_edges", "extend_image",
         "replace_object", "remove_background"]


@pytest.mark.slow
async def test_a_random_model_makes_only_schema_valid_tool_calls(client):
    """Sampled with random weights, every call under the grammar is an offered tool with valid arguments."""
    calls, names = 0, set()
    for seed in range(8):
        r = await client.chat.completions.create(
            model="built-in", messages=[SYSTEM, {"role": "user", "content": "make it look like winter"}],
            tools=[SCHEMAS[n] for n in MIXED], tool_choice="required", max_tokens=120, temperature=1.0, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason in ("tool_calls", "length")
        for call in choice.message.tool_calls or []:
            assert_valid(call)
            calls += 1
            names.add(call.function.name)
    assert calls >= 7  # nearly every answer finished its calls within max_tokens
    assert len(names) >= 3  # the noise really wanders over the tools; only the grammar keeps it in line


async def test_text_or_calls_with_auto_and_an_image_part(client):
    """With tool_choice auto the model may answer in words; an image part goes through the vision tower."""
    texts, prompt_tokens = 0, []
    for seed, image in ((0, True), (1, True), (2, True), (3, False)):
        parts = [{"type": "text", "text": "what is in this picture?"}]
        if image:
            parts.append({"type": "image_url", "image_url": {"url": data_url()}})
        r = await client.chat.completions.create(
            model="built-in", max_tokens=24, seed=seed, tools=[SCHEMAS["caption_image"], SCHEMAS["edit_image"]],
            messages=[SYSTEM, {"role": "user", "content": parts}])
        message = r.choices[0].message
        for call in message.tool_calls or []:
            assert_valid(call)
        texts += bool(message.content) and not message.tool_calls
        prompt_tokens.append(r.usage.prompt_tokens)
    assert texts >= 1
    # 64x48 pixels -> 64x64 in 32-pixel patches after merging: 4 image tokens, plus vision start and end
    assert prompt_tokens[0] - prompt_tokens[-1] == 4 + 2


async def test_streaming_answers_as_openai_streams_them(client):
    stream = await client.chat.completions.create(
        model="built-in", messages=[{"role": "user", "content": "hello"}], max_tokens=16, seed=1, stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens <= 16

    stream = await client.chat.completions.create(
        model="built-in", messages=[SYSTEM, {"role": "user", "content": "draw a cat"}], max_tokens=90, seed=2,
        tools=[SCHEMAS["generate_image"]], tool_choice="required", stream=True)
    deltas = [c.choices[0].delta for c in [c async for c in stream] if c.choices]
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert len(calls) >= 1 and calls[0].function.name == "generate_image"
    assert "prompt" in json.loads(calls[0].function.arguments)


async def test_response_format_json_schema(client):
    schema = {"type": "object", "properties": {"reply": {"type": "string", "maxLength": 12}}, "required": ["reply"],
              "additionalProperties": False}
    r = await client.chat.completions.create(
        model="built-in", messages=[{"role": "user", "content": "hi"}], max_tokens=60, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


async def test_a_wrong_request_gets_a_400_naming_the_problem(client):
    with pytest.raises(openai.BadRequestError, match="images must be data: URLs"):
        await client.chat.completions.create(model="built-in", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        await client.chat.completions.create(
            model="built-in", messages=[{"role": "user", "content": "hi"}], tools=[SCHEMAS["caption_image"]],
            tool_choice={"type": "function", "function": {"name": "generate_image"}})


async def test_a_client_that_leaves_frees_the_device(pool, client):
    """A dropped request cancels its job, so the next one is not stuck behind a runaway answer."""
    long = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"essay": {"type": "string", "minLength": 900}}, "required": ["essay"]}}}
    stream = await client.chat.completions.create(
        model="built-in", messages=[{"role": "user", "content": "write"}], max_tokens=1024, response_format=long,
        stream=True)
    async for _ in stream:
        break
    await stream.close()
    deadline = time.monotonic() + 60
    while "chat client left; cancelled job" not in pool.log.read_text():
        assert time.monotonic() < deadline, pool.log.read_text()[-2000:]
        await asyncio.sleep(0.2)
    r = await client.chat.completions.create(model="built-in", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")


async def test_the_core_s_llm_client_reaches_the_built_in_model(pool):
    """What bot/app.py wires when [llm] base_url is empty: core.llm.LLM over the pool's socket."""
    cfg = settings.load(pool.config, env_check=False)
    assert cfg.llm.built_in
    llm = LLM(dataclasses.replace(cfg.llm, timeout_s=120), max_retries=0, **local_llm.connection(cfg.pool.url))
    try:
        answer = await llm.ask([SYSTEM, {"role": "user", "content": "what is in img1?"}],
                               [SCHEMAS["caption_image"], SCHEMAS["answer_question"]])
    finally:
        await llm.close()
    for call in answer.tool_calls:
        BY_NAME[call.name]  # an existing tool
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name]["function"]["parameters"])
    assert answer.tool_calls or answer.text


async def test_an_empty_base_url_means_the_pool_s_own_model(tmp_path):
    from bot.app import build_llm

    llm = build_llm(settings.parse({"models": {"LLM": {"source": "./llm"}}}, tmp_path / "config.toml"))
    try:
        assert str(llm.client.base_url) == "http://pool/v1/"  # over the pool's unix socket
    finally:
        await llm.close()
    server = build_llm(settings.parse({"llm": {"base_url": "http://gpu-box:8000/v1"}}, tmp_path / "config.toml"))
    assert str(server.client.base_url) == "http://gpu-box:8000/v1/"
    await server.close()
    assert build_llm(settings.parse({}, tmp_path / "config.toml")) is None  # neither: commands only


async def test_the_pool_lists_the_llm_like_any_model(pool):
    client = pool.client()
    try:
        info = {m.name: m for m in await client.models()}["LLM"]
    finally:
        await client.close()
    assert info.state == "ready" and info.device == "cpu" and info.bytes > 0
    assert info.source.endswith("tiny-models/llm")


@pytest.mark.slow
async def test_a_fresh_config_chats_with_no_llm_server(tiny_dir, tmp_path):
    """`python -m bot` with base_url empty: the pool starts the built-in LLM and a free-text message is answered."""
    config = tmp_path / "config.toml"
    config.write_text(f'[llm]\nbase_url = ""\ntimeout_s = 120\n[storage]\ndata_dir = "data"\n'
                      f'[models.LLM]\ndevice = "cpu"\nsource = "{tiny_dir}/llm"\n')
    async with BotProcess(config, "--terminal") as bot:
        pool = PoolClient(settings.load(config, env_check=False).pool.url)
        try:
            async with asyncio.timeout(180):
                while not any(m.name == "LLM" and m.state == "ready" for m in await _models(pool)):
                    assert bot.proc.returncode is None, bot.log.read_text()[-3000:]
                    await asyncio.sleep(0.2)
                bot.proc.stdin.write(b"hello there\n")
                await bot.proc.stdin.drain()
                while (line := await bot.proc.stdout.readline()) in (b"bot: ...\n",) or not line.startswith(b"bot: "):
                    assert line, "the bot closed its output without answering"
            bot.proc.stdin.write(b"/quit\n")
            await bot.proc.stdin.drain()
            assert await asyncio.wait_for(bot.proc.wait(), 30) == 0
        finally:
            await pool.close()
    answer = line.decode()
    assert "language model" not in answer and "try again" not in answer, answer  # not an error: the model's words


async def _models(pool: PoolClient) -> list:
    try:
        return await pool.models()
    except PoolUnavailable:  # not listening yet
        return []
