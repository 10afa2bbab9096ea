"""FLUX.2 [klein] and the Qwen3-4B LLM from the hub's layouts (a loopback hub serving the tiny repos): the
fetch takes only what the loaders read, and the pool, offline from that cache, holds one Qwen3 for both."""

from __future__ import annotations

import pytest
from PIL import Image

from gpu_pool.protocol import JobRequest, RawImage
from testkit.pool import stop_pool, wait_ready
from tests.fakes.hub_server import FakeHub
from tests.test_fetch import config, fetch, hub_env, start_pool

KLEIN, QWEN = "black-forest-labs/FLUX.2-klein-4B", "Qwen/Qwen3-4B"
MODELS = "".join(f'\n[models.{name}]\ndevice = "cpu"\ndtype = "bfloat16"\n'
                 for name in ("Klein", "KleinInpaint", "LLM")) + f'source = "{QWEN}"\n'  # the LLM last: its source


@pytest.fixture(scope="module")
def fetched(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fetch-klein")
    hub = FakeHub({repo: tiny_dir / "hub" / repo for repo in (KLEIN, QWEN)}).start()
    try:
        cfg = config(folder, MODELS)
        run = fetch(cfg, hub_env(hub, folder / "hf"))
    finally:
        hub.stop()
    return cfg, folder / "hf", run, hub


def test_fetch_takes_the_pipeline_and_the_llm_and_nothing_else(fetched):
    _, _, run, hub = fetched
    assert run.returncode == 0, run.stderr
    assert not hub.unknown
    assert sorted(hub.downloaded(KLEIN)) == sorted(f"{KLEIN}/{f}" for f in [
        "model_index.json", "scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json",
        "text_encoder/config.json", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
        "tokenizer/added_tokens.json", "tokenizer/tokenizer.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "tokenizer/chat_template.jinja", "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors"])
    # not the root's single-file checkpoint (the transformer again) nor the sample pictures
    assert sorted(hub.downloaded(QWEN)) == sorted(f"{QWEN}/{f}" for f in [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
        "merges.txt", "model.safetensors.index.json", "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"])
    got = hub.downloaded()
    assert len(got) == len(set(got))  # klein's repo once, though two models read it


async def test_offline_the_pool_holds_one_qwen3_and_draws_and_chats(fetched):
    cfg, home, _, hub = fetched
    pool = start_pool(cfg, hub_env(hub, home, offline=True))
    try:
        await wait_ready(pool.url, pool.proc, pool.log)
        client = pool.client()
        infos = {m.name: m for m in await client.models()}
        ref = RawImage.from_pil(Image.new("RGB", (64, 64), (200, 120, 40)))
        first = RawImage.from_pil(Image.new("RGB", (96, 64), (30, 90, 160)))
        drawn = await client.result(JobRequest("Klein", {"prompt": "put the cat on the sofa", "steps": 2, "width": 96,
                                                         "height": 64}, [first, ref]))
        chat = await client.result(JobRequest("LLM", {"messages": [{"role": "user", "content": "a cat?"}],
                                                      "max_tokens": 4, "seed": 0}, []))
        await client.close()
    finally:
        stop_pool(pool)
    log = pool.log.read_text()
    assert drawn.kind == "done" and (drawn.images[0].width, drawn.images[0].height) == (96, 64), drawn.message
    assert chat.kind == "done" and '"completion_tokens": ' in chat.text, chat.message
    llm = infos["LLM"]
    assert llm.shares_with == ["Klein", "KleinInpaint"] and llm.shared_bytes == llm.bytes > 0
    assert infos["KleinInpaint"].shared_bytes == infos["KleinInpaint"].bytes  # nothing of its own
    assert "shares the Qwen3 that" in log and "loads its own Qwen3" not in log
