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


def start_api_pool(config: Path, group: bool = False, timeout: float = 180) -> Pool:
    """The pool for ``config`` with the ENV_KEYS in its environment, once every model is ready."""
    env = child_env(VCHAT_API_KEYS=",".join(f"{n}={k}" for n, k in ENV_KEYS.items()))
    pool = Pool(config, spawn_pool(config, env=env, group=group), config.parent / "pool.log", group)
    try:
        asyncio.run(pool.ready(timeout))
    except BaseException:
        stop_pool(pool, 0)
        raise
    return pool


__all__ = ["ENV_KEYS", "MODELS", "ROOT", "api_config", "free_port", "start_api_pool"]
