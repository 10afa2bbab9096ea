"""The bot as a user runs it: `python -m bot` in a terminal, and a pool that dies under it."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

import settings
from bot.app import build_core
from core.pool_client import UNAVAILABLE, PoolClient
from core.pool_process import PoolProcess
from testkit.bot_process import BotProcess, alive, gone, small_config
from testkit.pool import ROOT
from tests.fakes.openai_server import FakeLLM, text_of
from tests.test_agent import RecordingReply, photo, turn

pytestmark = pytest.mark.slow


async def test_terminal_chat_through_a_pipe(tiny_dir, tmp_path):
    async with FakeLLM() as llm:
        llm.on(user="draw a cat", tools_include="generate_image").call("generate_image", {"prompt": "a cat"})
        llm.on(after_tool="generate_image").reply("Here is your cat: img2")
        llm.on(user="what's in this picture?").reply("A house with a red roof.")
        config = small_config(tmp_path, tiny_dir, llm.base_url)
        (tmp_path / "my photo.jpg").write_bytes(photo().data)
        script = (f"/attach {tmp_path / 'my photo.jpg'}\ndraw a cat\n/attach {config}\n"
                  f"/attach {tmp_path / 'my photo.jpg'} what's in this picture?\n/quit\n")
        async with BotProcess(config, "--terminal") as bot:
            out, _ = await asyncio.wait_for(bot.proc.communicate(script.encode()), 180)
    out, err = out.decode(), bot.log.read_text()
    assert bot.proc.returncode == 0, err[-3000:]
    assert "bot: Got img1 (" in out
    written = tmp_path / "data" / "terminal" / "img2.png"
    assert f"bot: Here is your cat: img2\n  image img2 written to {written}" in out
    assert Image.open(written).size == (64, 64)
    assert "bot: config.toml is not an image: it looks like a text file." in out  # the bad input
    assert "bot: A house with a red roof." in out  # the words after the path are the message
    said = text_of(llm.requests[-1]["messages"][-1]["content"])  # the text beside the image parts
    assert said.startswith('what\'s in this picture?\n[uploaded img3 "my photo.jpg"')
    assert "Traceback" not in out
    # the terminal shows the conversation only: the bot's and the pool's log lines are in files
    log_line = re.compile(r"\d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) ")
    assert not log_line.search(out) and err == "", err[-2000:]
    assert log_line.search((tmp_path / "data" / "bot.log").read_text())
    assert "Text2Image" in (tmp_path / "data" / "pool.log").read_text()


async def test_sigterm_answers_the_turn_in_flight_clears_its_status_stops_the_pool_and_exits_0(tiny_dir, tmp_path):
    from tests.fakes.slack_payloads import BOT_USER, mention
    from tests.fakes.slack_server import FakeSlack

    async with FakeLLM() as llm, FakeSlack() as slack:
        llm.on(user="think it over").hang()  # the turn is in flight when the signal comes
        config = small_config(tmp_path, tiny_dir, llm.base_url,
                              f'[bot]\nshutdown_grace_s = 1\n[slack]\napi_url = "{slack.base_url}"\n')
        env = {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token}
        async with BotProcess(config, env=env) as bot:
            await slack.connected(timeout=180)
            pool = bot.pool_pid()
            event = mention("C1", "U1", f"<@{BOT_USER}> think it over")
            await slack.push_event(event)
            status = await slack.wait_for("chat.postMessage", lambda c: c["text"] == "Working on it…", timeout=30)
            signalled = time.monotonic()
            bot.proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(bot.proc.wait(), 60)
            stop_s = time.monotonic() - signalled
            assert code == 0, bot.log.read_text()[-3000:]
            assert await gone(pool, 15), "the pool outlived the bot"
        said = slack.called("chat.postMessage", lambda c: c.get("thread_ts") == event["ts"] and c.at > signalled)
        assert [c["text"] for c in said] == ["I'm restarting; please ask again."]
        assert slack.called("chat.delete", lambda c: c["ts"] == status.response["ts"])  # no "Working on it…" left
        assert stop_s < 1 + 10, stop_s  # the grace period, then the answer and the pool's stop
        assert "Traceback" not in bot.log.read_text()


async def test_the_pool_exits_by_itself_when_the_bot_is_killed(tiny_dir, tmp_path):
    config = small_config(tmp_path, tiny_dir)
    async with BotProcess(config, "--terminal") as bot:
        await bot.read_until("Type /help", timeout=180)  # the pool is up, the chat is open
        pool = bot.pool_pid()
        assert pool and alive(pool)
        bot.proc.kill()  # SIGKILL: no chance to stop the pool
        await bot.proc.wait()
        assert await gone(pool, 15), "the pool was orphaned"


async def test_pool_killed_mid_job_is_restarted_and_nothing_is_lost(tiny_dir, tmp_path):
    config_path = small_config(tmp_path, tiny_dir)
    cfg = settings.load(config_path, env_check=False)
    supervisor = PoolProcess(config_path, cfg.pool.url, startup_timeout=120)
    await supervisor.start()
    core = build_core(cfg, llm_retries=0, status_interval=0)
    store = core.store
    try:
        await _wait_ready(core.pool)
        await core.handle(turn("", "discord:channel:9", photo()), RecordingReply())

        class KillOnFirstStep(RecordingReply):
            async def status(self, text):
                await super().status(text)
                if text and "step" in text and supervisor.proc.returncode is None:
                    supervisor.proc.kill()

        reply = KillOnFirstStep()
        out = await core.direct(turn("/imagine", "discord:channel:9"), reply, "generate_image", {"prompt": "a cat"})
        assert reply.text == UNAVAILABLE and out.error and out.images == []
        assert supervisor.restarts == 0 or supervisor.restarts == 1

        for _ in range(600):  # the supervisor brings the pool back by itself
            if supervisor.restarts == 1 and await core.pool.health():
                break
            await asyncio.sleep(0.1)
        assert supervisor.restarts == 1
        await _wait_ready(core.pool)
        reply = RecordingReply()
        out = await core.direct(turn("/imagine", "discord:channel:9"), reply, "generate_image", {"prompt": "a dog"})
        assert out.images == ["img2"] and reply.image_ids == ["img2"]
        kept = [m["content"] for m in store.messages("discord:channel:9")]
        assert kept[1].startswith("Got img1") and kept[3] == UNAVAILABLE  # nothing lost
        assert [r.image_id for r in store.images("discord:channel:9")] == ["img1", "img2"]
    finally:
        await supervisor.stop()
        await core.pool.close()
        await core.llm.close()


async def _wait_ready(client: PoolClient) -> None:
    for _ in range(600):
        if await client.health():
            states = {m.state for m in await client.models()}
            if states == {"ready"}:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError("pool models not ready")


def test_check_config_on_the_tiny_config_lists_every_model():
    out = subprocess.run([sys.executable, "-m", "bot", "--config", "tests/config.tiny.toml", "--check-config"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in settings.MODEL_NAMES:
        assert f"  {name} " in out.stdout


def test_core_builds_without_platforms(tmp_path):
    cfg = settings.load(small_config(tmp_path, tmp_path), env_check=False)
    core = build_core(dataclasses.replace(cfg))
    assert (tmp_path / "data" / "bot.db").exists() and core.llm is not None


async def test_pool_over_tcp_and_reload_rereads_the_config(tmp_path):
    """A pool on another machine is reached over TCP; /reload picks up an edited config.toml."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "config.toml"
    head = f'[pool]\nhost = "127.0.0.1"\nport = {port}\n[storage]\ndata_dir = "data"\n'
    path.write_text(head + '[models.Image2Canny]\ndevice = "cpu"\n[models.Image2Depth]\ndevice = "cpu"\n'
                    f'source = "{ROOT}/build/tiny-models/dpt"\n')
    cfg = settings.load(path, env_check=False)
    assert cfg.pool.url == f"http://127.0.0.1:{port}"
    supervisor = PoolProcess(path, cfg.pool.url, startup_timeout=120)
    await supervisor.start()
    client = PoolClient(cfg.pool.url)
    try:
        await _wait_ready(client)
        assert {m.name for m in await client.models()} == {"Image2Canny", "Image2Depth"}
        path.write_text(head + '[models.Image2Canny]\ndevice = "cpu"\n')  # an admin removes a model
        reply = await client.reload()
        assert reply["ok"] and reply["message"] == "Reloaded Image2Canny."
        assert {m.name for m in await client.models()} == {"Image2Canny"}
        from gpu_pool.protocol import JobRequest, RawImage

        img = RawImage.from_pil(Image.new("RGB", (64, 64), (9, 9, 9)))
        assert (await client.result(JobRequest("Image2Canny", {}, [img]))).kind == "done"
        gone = await client.result(JobRequest("Image2Depth", {}, [img]))
        assert gone.message == "Image2Depth is not loaded on this bot; an admin can load it with /load Image2Depth."
        path.write_text(head + "[models.Image2Canny]\ndevice = 'cuda:x'\n")  # a broken edit
        reply = await client.reload()
        assert not reply["ok"] and reply["message"].startswith("models.Image2Canny.device: 'cuda:x' is not valid")
        assert (await client.result(JobRequest("Image2Canny", {}, [img]))).kind == "done"  # still serving
    finally:
        await client.close()
        await supervisor.stop()
