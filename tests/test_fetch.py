"""Weights from the hub, against a loopback hub (tests/fakes/hub_server.py) serving the tiny models in
the real repos' layouts: `./scripts/run --fetch`, the first start's progress in the chat, offline after.

The pool and the fetch command are real processes using the real huggingface_hub client; only
``HF_ENDPOINT`` points at the fake, and ``HF_HOME`` at a fresh cache per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants
from PIL import Image

import settings
from gpu_pool.fetch import Download, Listings, wants_of
from gpu_pool.protocol import JobRequest, RawImage
from scripts.tiny_models.hub import ROOTS
from testkit.core import close_core, make_core
from testkit.pool import ROOT, Pool, spawn_pool, stop_pool, wait_ready
from tests.fakes.hub_server import FakeHub
from tests.test_agent import RecordingReply, turn

SD15 = settings.SD15  # served by the fake hub, as every hub id here


def on_cpu(*names: str, dtype: str = "") -> str:
    """``[models.NAME]`` sections on the CPU, each with its default source (a hub id: the fake hub's)."""
    extra = f'dtype = "{dtype}"\n' if dtype else ""
    return "".join(f'\n[models.{name}]\ndevice = "cpu"\n{extra}' for name in names)


MODELS = on_cpu("Text2Image", "InstructPix2Pix", dtype="float16") + on_cpu("ImageCaptioning", "Image2Seg", "Image2Pose")


def config(folder: Path, models: str = MODELS) -> Path:
    """A config with the seed's hub ids as sources (the defaults), small limits, its own socket."""
    path = folder / "config.toml"
    # no safety checker on this fake hub: the drawings are random noise, and the filter is tested elsewhere
    path.write_text(f'[pool]\nsocket = "pool.sock"\n[storage]\ndata_dir = "data"\n[safety]\nenabled = false\n'
                    f'[limits]\nworking_size = 64\nmax_output_size = 256\nmax_steps = 2\n{models}')
    return path


def hub_env(hub: FakeHub, home: Path, offline: bool = False) -> dict[str, str]:
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("TRANSFORMERS_OFFLINE", None)
    if not offline:
        env["HF_ENDPOINT"] = hub.url
    return env


def fetch(cfg: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`./scripts/run --fetch`: python -m gpu_pool.fetch for ``cfg``."""
    return subprocess.run([sys.executable, "-m", "gpu_pool.fetch", "--config", str(cfg)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_pool(cfg: Path, env: dict[str, str]) -> Pool:
    return Pool(cfg, spawn_pool(cfg, env=env), cfg.parent / "pool.log")


async def answering(pool: Pool, timeout: float = 60) -> None:
    """Wait until the pool answers, its models still downloading or loading (not ``wait_ready``'s all loaded)."""
    client = pool.client()
    deadline = time.monotonic() + timeout
    try:
        while not await client.health():
            assert pool.proc.poll() is None and time.monotonic() < deadline, pool.log.read_text()[-3000:]
            await asyncio.sleep(0.1)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def first_start(hub_repos, tmp_path: Path, models: str, bytes_per_s: int, llm, **llm_overrides):
    """A fresh machine: a pool fetching ``models`` from a slow fake hub (``bytes_per_s``), answering while it
    downloads, and a core on it (``make_core``'s ``llm`` and overrides); yields (hub, core). On leaving, the
    core, the pool and the hub are closed, and the hub was asked for nothing it does not serve."""
    hub = FakeHub(hub_repos, bytes_per_s=bytes_per_s).start()
    pool = start_pool(config(tmp_path, models), hub_env(hub, tmp_path / "hf"))
    try:
        await answering(pool)
        core = make_core(pool, tmp_path, llm, **llm_overrides)
        try:
            yield hub, core
        finally:
            await close_core(core)
    finally:
        stop_pool(pool)
        hub.stop()
    assert not hub.unknown


@pytest.fixture(scope="module")
def hub_repos(tiny_dir) -> dict[str, Path]:
    return {repo: tiny_dir / "hub" / repo for repo in ROOTS}


@pytest.fixture(scope="module")
def fetched(hub_repos, tmp_path_factory):
    """`./scripts/run --fetch` (python -m gpu_pool.fetch) for MODELS into a fresh cache."""
    folder = tmp_path_factory.mktemp("fetch")
    hub = FakeHub(hub_repos).start()
    try:
        cfg = config(folder)
        run = fetch(cfg, hub_env(hub, folder / "hf"))
    finally:
        hub.stop()
    return cfg, folder / "hf", run, hub


def test_models_that_read_one_repo_list_it_once(hub_repos, tmp_path, monkeypatch):
    """Image2Line, Image2Hed and Image2Pose read three sets of lllyasviel/Annotators' files: one listing."""
    cfg = settings.load(config(tmp_path, on_cpu("Image2Line", "Image2Hed", "Image2Pose")), env_check=False)
    hub = FakeHub(hub_repos).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        listings = Listings()
        downloads = [Download(want, dtype, listings) for want, dtype in wants_of(cfg)]
        for d in downloads:
            d.list()
    finally:
        hub.stop()
    assert len(downloads) == 3 and all(d.files for d in downloads)
    assert [p for _, p in hub.requests if "/tree/" in p] == ["/api/models/lllyasviel/Annotators/tree/main"]


def test_fetch_downloads_only_the_files_the_loaders_read(fetched):
    cfg, home, run, hub = fetched
    assert run.returncode == 0, run.stderr
    assert not hub.unknown
    got = hub.downloaded()
    assert sorted(f for f in got if f.startswith(SD15)) == sorted(f"{SD15}/{f}" for f in [
        "model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
        "text_encoder/config.json", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
        "tokenizer/vocab.json", "tokenizer/merges.txt",
        # float16: the fp16 variants, not the 4 GB of float32 weights, the safety checker or v1-5-pruned
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model.fp16.safetensors"])
    assert sorted(hub.downloaded("timbrooks/instruct-pix2pix")) == [  # no fp16 variant there: the full UNet
        "timbrooks/instruct-pix2pix/scheduler/scheduler_config.json", "timbrooks/instruct-pix2pix/unet/config.json",
        "timbrooks/instruct-pix2pix/unet/diffusion_pytorch_model.safetensors"]
    assert "openmmlab/upernet-convnext-small/pytorch_model.bin" in got  # a .bin-only repo
    assert sorted(hub.downloaded("lllyasviel/Annotators")) == [
        "lllyasviel/Annotators/body_pose_model.pth", "lllyasviel/Annotators/facenet.pth",
        "lllyasviel/Annotators/hand_pose_model.pth"]
    assert not [f for f in got if f.endswith((".h5", ".ckpt", "ZoeD_M12_N.pt", "sk_model.pth"))]
    assert len(got) == len(set(got))  # nothing twice (the SD base serves two models)

    total = sum((hub.repos[f.split("/", 2)[0] + "/" + f.split("/", 2)[1]] / f.split("/", 2)[2]).stat().st_size
                for f in got)
    lines = run.stdout.splitlines()
    assert f"{SD15}: 12 files, 2 MB" in lines
    assert f"Total: {total / 1e6:.0f} MB in 5 repos; {total / 1e6:.0f} MB to download into {home / 'hub'}" in lines
    assert re.search(r"Fetching: 100%.*\| ?[0-9.]+M/[0-9.]+M", run.stderr)  # the progress bar, over the total

    again = fetch(cfg, hub_env(hub, home, offline=True), timeout=120)
    assert again.returncode == 0, again.stderr  # offline, from the cache: nothing left to fetch
    assert f"Total: {total / 1e6:.0f} MB in 5 repos; 0 B to download into {home / 'hub'}" in again.stdout


async def test_after_fetch_the_pool_runs_offline(fetched):
    """HF_HUB_OFFLINE=1 and the cache the fetch filled: every model loads, and a 1x1 edit comes back at 64 px."""
    cfg, home, _, hub = fetched
    pool = start_pool(cfg, hub_env(hub, home, offline=True))
    try:
        await wait_ready(pool.url, pool.proc, pool.log)
        client = pool.client()
        dot = RawImage.from_pil(Image.new("RGB", (1, 1), (90, 140, 200)))
        ev = await client.result(JobRequest("InstructPix2Pix", {"prompt": "make it winter", "steps": 2}, [dot]))
        infos = {m.name: m for m in await client.models()}
        await client.close()
    finally:
        stop_pool(pool)
    assert ev.kind == "done", ev.message
    assert (ev.images[0].width, ev.images[0].height) == (64, 64)
    assert infos["Text2Image"].dtype == "float16" and infos["InstructPix2Pix"].shares_with == ["Text2Image"]


async def test_first_start_says_how_far_the_download_got_and_the_turn_waits(hub_repos, tmp_path, llm_server):
    """A turn whose model is still downloading is answered when it is ready, though that takes longer than
    the turn's deadline; meanwhile the chat and /models show the progress."""
    models = MODELS.split("[models.InstructPix2Pix]")[0]  # at 300 kB/s the fp16 SD base (2.4 MB) takes about 8 s
    async with first_start(hub_repos, tmp_path, models, 300_000, llm_server, turn_timeout_s=6) as (hub, core):
        llm_server.on(user="draw a cat", after_tool=False).call("generate_image", {"prompt": "a cat"})
        llm_server.on(after_tool="generate_image").reply("Here it is: img1")
        reply = RecordingReply()
        started = time.monotonic()
        answer = asyncio.create_task(core.handle(turn("draw a cat", "dl"), reply))
        while not any(s and "still downloading (" in s for s in reply.statuses):
            assert not answer.done() and time.monotonic() - started < 60, reply.statuses
            await asyncio.sleep(0.05)
        listing = await core.admin(dataclasses.replace(turn("/models"), is_admin=True), "models")
        out = await asyncio.wait_for(answer, 120)
        elapsed = time.monotonic() - started
    assert re.match(r"Text2Image: downloading on cpu \(float16\), [0-9] of 2 MB", listing), listing
    waiting = [s for s in reply.statuses if s and "still" in s]
    progress = (r"Text2Image is still downloading \([0-9] of 2 MB(, about [0-9]+ (s|min) left)?\); "
                r"I'll answer when it is ready")
    assert any(re.fullmatch(progress, s) for s in waiting), waiting
    # before the first bytes arrive the size is not known yet; once the files are in, the load follows
    assert all(re.fullmatch(progress, s) or s == "Text2Image is still downloading; I'll answer when it is ready"
               or re.fullmatch(r"Text2Image is still loading( \(about [0-9]+ (s|min) left\))?; "
                               r"I'll answer when it is ready", s) for s in waiting), waiting
    assert reply.text == "Here it is: img1" and out.images == ["img1"], reply.statuses
    assert elapsed > 6  # longer than the turn's deadline, and still answered
    assert sorted(f for f in hub.downloaded() if "fp16" in f) == [
        f"{SD15}/text_encoder/model.fp16.safetensors", f"{SD15}/unet/diffusion_pytorch_model.fp16.safetensors",
        f"{SD15}/vae/diffusion_pytorch_model.fp16.safetensors"]


# --- the models added since the seed: their own repos, chat templates, shards ----------------------

LATER = on_cpu("Text2Box", "Segmenting", "SafetyChecker", "LLM")  # the LLM last: a test adds its source
QWEN2B, QWEN4B = "Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct"
QWEN_FILES = ["chat_template.json", "config.json", "generation_config.json", "merges.txt", "preprocessor_config.json",
              "tokenizer.json", "tokenizer_config.json", "video_preprocessor_config.json", "vocab.json"]


@pytest.fixture(scope="module")
def fetched_later(hub_repos, tmp_path_factory):
    """--fetch for LATER (the LLM's default, Qwen3-VL-2B), then for the LLM from Qwen3-VL-4B (sharded), one cache."""
    folder = tmp_path_factory.mktemp("fetch-later")
    (folder / "4b").mkdir()
    hub = FakeHub(hub_repos).start()
    try:
        cfg, cfg_4b = config(folder, LATER), config(folder / "4b", LATER + f'source = "{QWEN4B}"\n')
        runs = [fetch(cfg, hub_env(hub, folder / "hf")), fetch(cfg_4b, hub_env(hub, folder / "hf"))]
    finally:
        hub.stop()
    return cfg, cfg_4b, folder / "hf", runs, hub


def test_fetch_gets_the_later_models_from_their_own_repos_with_chat_templates_and_shards(fetched_later):
    cfg, cfg_4b, home, runs, hub = fetched_later
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert not hub.unknown
    got = hub.downloaded()
    assert len(got) == len(set(got))  # nothing twice (a sharded checkpoint's index is read before the fetch)
    assert sorted(hub.downloaded("IDEA-Research/grounding-dino-tiny")) == [
        f"IDEA-Research/grounding-dino-tiny/{f}" for f in (
            "added_tokens.json", "config.json", "model.safetensors", "preprocessor_config.json",
            "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")]  # not the .bin
    assert sorted(hub.downloaded("facebook/sam-vit-huge")) == [
        "facebook/sam-vit-huge/config.json", "facebook/sam-vit-huge/model.safetensors",
        "facebook/sam-vit-huge/preprocessor_config.json"]  # not the .bin, nor TensorFlow's
    assert sorted(hub.downloaded("CompVis/stable-diffusion-safety-checker")) == [  # its own repo: a .bin only
        "CompVis/stable-diffusion-safety-checker/config.json",
        "CompVis/stable-diffusion-safety-checker/preprocessor_config.json",
        "CompVis/stable-diffusion-safety-checker/pytorch_model.bin"]
    assert not [f for f in got if "safety_checker/" in f or f.startswith(SD15)]  # never the SD repo's copy
    assert sorted(hub.downloaded(QWEN2B)) == [f"{QWEN2B}/{f}" for f in sorted([*QWEN_FILES, "model.safetensors"])]
    assert sorted(hub.downloaded(QWEN4B)) == [f"{QWEN4B}/{f}" for f in sorted([
        *QWEN_FILES, "model.safetensors.index.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors"])]

    again = fetch(cfg_4b, hub_env(hub, home, offline=True))  # offline: the index and its shards from the cache
    assert again.returncode == 0, again.stderr
    assert f"{QWEN4B}: 12 files, " in again.stdout and "B to download" in again.stdout
    assert re.search(r"; 0 B to download", again.stdout), again.stdout


async def test_after_fetch_the_later_models_load_offline_and_the_llm_chats(fetched_later):
    """The pool finds every file it reads in the cache: the chat works (its template came too), boxes come back."""
    cfg, _, home, _, hub = fetched_later
    pool = start_pool(cfg, hub_env(hub, home, offline=True))
    try:
        await wait_ready(pool.url, pool.proc, pool.log)  # fails on a model that did not load
        client = pool.client()
        chat = await client.result(JobRequest("LLM", {"messages": [{"role": "user", "content": "a cat?"}],
                                                      "max_tokens": 4, "seed": 0}, []))
        cat = RawImage.from_pil(Image.new("RGB", (64, 48), (200, 120, 40)))
        boxes = await client.result(JobRequest("Text2Box", {"prompt": "the cat"}, [cat]))
        infos = {m.name: m for m in await client.models()}
        await client.close()
    finally:
        stop_pool(pool)
    assert chat.kind == "done", chat.message
    assert chat.text.startswith('{"content": ') and '"completion_tokens": ' in chat.text
    assert boxes.kind == "done" and boxes.data["boxes"], boxes.message
    assert {n: m.state for n, m in infos.items()} == {n: "ready" for n in ("Text2Box", "Segmenting", "SafetyChecker",
                                                                          "LLM")}


async def test_a_first_message_waits_for_the_built_in_llm_to_download_and_is_answered(hub_repos, tmp_path):
    """`./scripts/run` on a fresh machine: the first words typed while the LLM is still downloading are
    answered once it is ready, longer than the turn's deadline, and the chat says how far it got."""
    class BuiltIn:  # make_core's LLM is a scripted server; an empty base_url: the pool's own model
        base_url = ""

    models = '[models.LLM]\ndevice = "cpu"\n'  # at 150 kB/s the tiny Qwen3-VL (about 1 MB) takes a few seconds
    async with first_start(hub_repos, tmp_path, models, 150_000, BuiltIn, turn_timeout_s=3) as (hub, core):
        reply = RecordingReply()
        started = time.monotonic()
        out = await asyncio.wait_for(core.handle(turn("hello there", "first"), reply), 120)
        elapsed = time.monotonic() - started
    waiting = [s for s in reply.statuses if s and "The language model is still" in s]
    assert waiting and re.fullmatch(r"The language model is still (downloading|loading)( \(.*\))?; I'll answer when "
                                    r"it is ready", waiting[0]), reply.statuses
    assert not out.error and reply.text and "try again" not in reply.text.lower(), reply.text  # the model's words
    assert elapsed > 3  # longer than the turn's deadline, and still answered
    assert any(f.startswith(QWEN2B) for f in hub.downloaded())


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def retry_lines(text: str) -> list[str]:
    """huggingface_hub's retry warnings (the request that failed, then the wait)."""
    return [line for line in text.splitlines() if "thrown while requesting" in line or "[Retry " in line]


def test_fetch_without_a_reachable_hub_names_it_once_and_says_what_to_do(tmp_path):
    """No hub at HF_ENDPOINT (a closed port) and an empty cache: one short answer, not five doubled retries
    per repo ending in "run ./scripts/run --fetch where it can be reached", the command that just failed."""
    host = f"127.0.0.1:{closed_port()}"
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
               HF_ENDPOINT=f"http://{host}")
    env.pop("TRANSFORMERS_OFFLINE", None)
    started = time.monotonic()
    run = fetch(config(tmp_path, on_cpu("ImageCaptioning", "Image2Pose")), env, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    lines = retry_lines(out)
    assert len(lines) == len(set(lines)), out  # each retry at most once
    assert out.count(host) == 1, out  # the host named once
    assert "cannot be reached" in out and "proxy" in out and "HF_HOME" in out, out  # what to do
    assert str(tmp_path / "hf") in out  # where the copied cache goes
    assert "Salesforce/blip-image-captioning-base" in out and "lllyasviel/Annotators" in out  # what is missing
    assert "where it can be reached" not in out and "Traceback" not in out, out
    assert time.monotonic() - started < 20, out  # no 23 s of retries per repo


def test_a_retry_of_the_hub_is_one_log_line(hub_repos, tmp_path):
    """The hub answers a listing 503 once: huggingface_hub retries it, the log says so once, the fetch succeeds."""
    hub = FakeHub(hub_repos, failing=1).start()
    try:
        run = fetch(config(tmp_path, on_cpu("ImageCaptioning")), hub_env(hub, tmp_path / "hf"), timeout=120)
    finally:
        hub.stop()
    assert run.returncode == 0, run.stderr
    assert not hub.unknown
    tree = f"{hub.url}/api/models/Salesforce/blip-image-captioning-base/tree/main"
    assert retry_lines(run.stderr) == [
        f"WARNING huggingface_hub.utils._http: HTTP Error 503 thrown while requesting GET {tree}",
        "WARNING huggingface_hub.utils._http: Retrying in 1s [Retry 1/5]."], run.stderr
