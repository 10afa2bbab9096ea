"""A pool process with its ``[api]`` listener on, over a few tiny models, as the API tests and bench start it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from testkit.pool import ROOT, Pool, child_env, spawn_pool, stop_pool, tiny_models

# name -> key: the keys the environment gives (each with [api]'s limits)
ENV_KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789"}
MODELS = {  # model -> its tiny folder under build/tiny-models ("" for none)
    "Text2Image": "sd15", "InstructPix2Pix": "pix2pix", "Inpainting": "inpaint", "Variations": "",
    "Upscale": "upscaler", "ImageCaptioning": "blip-caption", "VisualQuestionAnswering": "blip-vqa",
    "Text2Mask": "clipseg", "Text2Box": "grounding-dino", "Segmenting": "sam", "SafetyChecker": "safety-flags-none",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_config(folder: Path, models: dict[str, str] = MODELS, extra: str = "", backend: str = "",
               keys_file: str = "", port: int = 0, max_steps: int = 10) -> Path:
    """A config with ``models`` (name -> tiny folder) on the CPU and the listener on 127.0.0.1:``port``
    (0: a free one); ``extra``: more keys of [api]."""
    tiny = tiny_models()
    sections = "".join(f'\n[models.{name}]\ndevice = "cpu"\n' + (f'source = "{tiny}/{src}"\n' if src else "")
                       for name, src in models.items())
    pool = '[pool]\nsocket = "pool.sock"\n' + f'sd_base = "{tiny}/sd15"\n' + (f'backend = "{backend}"\n' if backend
                                                                            else "")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(f"""{pool}
[storage]
data_dir = "data"

[limits]
working_size = 64
max_output_size = 256
max_steps = {max_steps}

[api]
enabled = true
host = "127.0.0.1"
port = {port or free_port()}
keys_file = "{keys_file}"
{extra}
{sections}""")
    return path


def start_api_pools(*configs: Path, group: bool = False, timeout: float = 180) -> list[Pool]:
    """A pool for each config, with the ENV_KEYS in its environment, started side by side; once every
    model of each is ready."""
    env = child_env(VCHAT_API_KEYS=",".join(f"{n}={k}" for n, k in ENV_KEYS.items()))
    pools = [Pool(c, spawn_pool(c, env=dict(env), group=group), c.parent / "pool.log", group) for c in configs]

    async def ready() -> None:
        await asyncio.gather(*(p.ready(timeout) for p in pools))

    try:
        asyncio.run(ready())
    except BaseException:
        for p in pools:
            stop_pool(p, 0)
        raise
    return pools


def start_api_pool(config: Path, group: bool = False, timeout: float = 180) -> Pool:
    return start_api_pools(config, group=group, timeout=timeout)[0]


__all__ = ["ENV_KEYS", "MODELS", "ROOT", "api_config", "free_port", "start_api_pool", "start_api_pools"]
