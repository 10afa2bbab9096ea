"""The pool under faults: a job that runs out of GPU memory, and a model that crashes the pool as it loads.

Both faults are real exceptions and a real SIGKILL inside the pool process, asked for by
``GPU_POOL_FAULTS`` (gpu_pool/faults.py); everything around them is the bot's own code.
"""

from __future__ import annotations

import asyncio
import re

import pytest

import settings
from bot.app import build_core
from core.turn import Turn
from gpu_pool.load_crashes import LoadCrashes
from testkit.bot_process import BotProcess, alive, small_config
from testkit.pool import Pool, child_env, spawn_pool, stop_pool
from tests.test_agent import RecordingReply, photo, turn

SESSION = "discord:channel:5"


def admin(text: str) -> Turn:
    return Turn("discord", SESSION, "a1", "name-a1", text, is_admin=True)


def model_line(models: str, name: str) -> str:
    return next(line for line in models.splitlines() if line.startswith(f"{name}:"))


@pytest.mark.slow
async def test_out_of_memory_frees_memory_retries_once_then_suggests_a_smaller_size(tiny_dir, tmp_path):
    budget = '[residency]\nbudget = "1GiB"\nreserve = "0"\ndevices = ["cpu"]\n'  # weights move in and out per job
    config = small_config(tmp_path, tiny_dir, extra=budget)
    config.write_text(config.read_text().replace("working_size = 64", "working_size = 128"))
    pool = Pool(config, spawn_pool(config, env=child_env(GPU_POOL_FAULTS="Text2Image:oom=3")), tmp_path / "pool.log")
    core = None
    try:
        await pool.ready()
        core = build_core(settings.load(config, env_check=False), llm_retries=0, status_interval=0)
        captioned = RecordingReply()
        await core.direct(turn("/caption", SESSION, photo()), captioned, "caption_image", {})
        assert "resident" in model_line(await core.command(admin("/models"), "models"), "ImageCaptioning")

        reply = RecordingReply()  # out of memory, freed, out of memory again
        out = await core.direct(turn("/imagine", SESSION), reply, "generate_image", {"prompt": "a cat"})
        assert out.error and reply.sent[-1][1] == []  # no image posted
        assert reply.text == ("The image was too large for the GPU right now: it ran out of memory, even after "
                              "freeing what it could. Try a smaller size, like 96x96 instead of 128x128, or try "
                              "again later.")
        models = await core.command(admin("/models"), "models")
        assert "offloaded to CPU RAM" in model_line(models, "ImageCaptioning"), models  # evicted to make room

        reply = RecordingReply()  # out of memory once: freed, and the retry draws it
        out = await core.direct(turn("/imagine", SESSION), reply, "generate_image", {"prompt": "a dog"})
        assert not out.error and reply.image_ids == ["img2"], reply.text
        assert reply.text.startswith("Drew img2 (128x128)")

        reply = RecordingReply()  # other jobs go on; the pool is alive
        await core.direct(turn("/caption", SESSION), reply, "caption_image", {"image": "img2"})
        assert not reply.text.startswith("Sorry") and "img2" in reply.text, reply.text
        assert pool.proc.poll() is None
        log = pool.log.read_text()
        assert len(re.findall(r"out of memory running Text2Image on cpu \(.*\); freed .*, trying once more", log)) == 2
        assert "out of memory again running Text2Image on cpu" in log and "Traceback" not in log
    finally:
        if core is not None:
            await core.pool.close()
        stop_pool(pool)


async def ask(bot: BotProcess, line: str) -> str:
    """The terminal's answer to ``line`` (a usage line typed after it marks where the answer ends)."""
    bot.proc.stdin.write(f"{line}\n/load\n".encode())
    await bot.proc.stdin.drain()
    out = await bot.read_until("bot: Usage: /load MODEL [DEVICE]\n", timeout=120)
    return out[out.rindex("bot: ", 0, out.rindex("bot: Usage")):]


@pytest.mark.slow
async def test_a_model_that_crashes_the_pool_at_load_is_left_out_after_3_crashes_and_the_rest_works(tiny_dir, tmp_path):
    config = small_config(tmp_path, tiny_dir)  # Image2Canny first, so it loads first
    config.write_text(config.read_text().replace(
        "[models.ImageCaptioning]", '[models.Image2Canny]\ndevice = "cpu"\n\n[models.ImageCaptioning]', 1))
    async with BotProcess(config, "--terminal", env={"GPU_POOL_FAULTS": "Image2Canny:crash_on_load"}) as bot:
        await bot.read_until("Type /help", timeout=180)
        for _ in range(150):  # the bot restarts the pool by itself until it stays up
            models = await ask(bot, "/models")
            if all(f"{name}: ready" in models for name in ("ImageCaptioning", "Text2Image", "SafetyChecker")):
                break
            await asyncio.sleep(1)
        assert model_line(models.removeprefix("bot: "), "Image2Canny") == (
            "Image2Canny: failed on cpu (float32), no weights - crashed the pool 3 times in a row while loading, "
            "so it is left out until an admin loads it again")

        drawn = await ask(bot, "/imagine a cat")  # the rest works
        assert "bot: Drew img1" in drawn and "image img1 written to" in drawn
        pool = bot.pool_pid()
        assert pool and alive(pool)
    log = (tmp_path / "data" / "bot.log").read_text()
    assert re.findall(r"starting it again in ([\d.]+) s", log) == ["0.5", "1", "2"], log[-3000:]  # backoff
    pool_log = (tmp_path / "data" / "pool.log").read_text()
    assert "the last pool died while loading Image2Canny, the 3rd time in a row: starting without it" in pool_log


def test_only_a_death_during_a_load_counts_and_a_good_load_or_an_admin_forgives(tmp_path):
    journal = tmp_path / "pool-loads.json"
    dead = []  # kept: a load cut short by the process dying never leaves its context

    def died_loading(name: str) -> None:
        crashes = LoadCrashes(journal)
        dead.append((crashes, crashes.loading_of(name)))
        dead[-1][1].__enter__()

    with LoadCrashes(journal).loading_of("A"):
        pass  # loaded
    stopped = LoadCrashes(journal)
    dead.append((stopped, stopped.loading_of("A")))
    dead[-1][1].__enter__()
    stopped.close()  # SIGTERM mid-load: a clean stop
    for _ in range(2):
        died_loading("B")
    pool = LoadCrashes(journal)
    pool.recover()
    assert pool.crashes == {"B": 1}  # each start counts what the last one died in, once
    died_loading("B")
    for _ in range(2):
        (pool := LoadCrashes(journal)).recover()
    assert pool.crashes == {"B": 2}
    died_loading("B")
    (pool := LoadCrashes(journal)).recover()
    assert pool.given_up("A") is None and pool.given_up("B").startswith("crashed the pool 3 times in a row")
    pool.forget("B")  # an admin's /load B
    assert LoadCrashes(journal).given_up("B") is None
    died_loading("B")
    (pool := LoadCrashes(journal)).recover()
    with pool.loading_of("B"):
        pass  # it loaded this time: its count starts over
    assert LoadCrashes(journal).crashes == {}
    for crashes, _ in dead:
        crashes.close()  # the dead never write again: their contexts are only collected
