"""What bench/gpu_speed.py measures with: random-weight checkpoints in the hub's layout, pool configs, a clock.

The SD1.5 folder is bench/gpu_check.py's (its configs are bench/memory.py's), written alone here because
gpu_check writes every seed model at once (15 GB). Qwen3 and FLUX.2 klein take bench/_modern.py's configs
(Qwen3-4B, klein 4B) or, for ``--smoke``, a small shape of the same architecture; their tokenizers,
scheduler and chat template are the tiny models' (token ids lie inside the real vocabulary).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

# small shapes of the same architectures for --smoke: klein's text encoder must have 28+ layers (the
# pipeline reads layers 9, 18, 27) and the transformer's joint attention dim is 3x its hidden size
SMALL_QWEN3 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=28, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16)
SMALL_KLEIN = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                   joint_attention_dim=3 * 64, axes_dims_rope=(4, 4, 4, 4), in_channels=4)  # 1 latent x 2x2
SMALL_KLEIN_VAE = dict(block_out_channels=(8, 8, 8, 8), latent_channels=1, norm_num_groups=2, layers_per_block=1)


@contextlib.contextmanager
def built_on(device: str, dtype: torch.dtype):
    """Create modules on ``device`` in ``dtype`` (random init, no gradients)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.no_grad():
            yield
    finally:
        torch.set_default_dtype(old)


def write_sd15(folder: Path, device: str, tokenizer: Any = None) -> Path:
    """Real-size SD1.5 (random, fp16) as the hub has it, with fp16 variant files (bench/gpu_check.py's too);
    ``tokenizer``: the small CLIP tokenizer it gets (one made beside ``folder`` when None)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from bench import memory as real
    from scripts.tiny_models.common import clip_tokenizer
    from scripts.tiny_models.sd import SD15_SCHEDULE

    tokenizer = tokenizer or clip_tokenizer(folder.parent / "clip-tokenizer")
    real.SD15_TEXT.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)  # the small vocabulary's ids, inside CLIP's
    with real.fp16_on(device):
        parts = dict(unet=real.unet(), vae=real.vae(), text_encoder=real.text_encoder())
    pipe = StableDiffusionPipeline(**parts, tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULE, skip_prk_steps=True),
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, variant="fp16")
    return folder


def write_qwen3(folder: Path, tiny_qwen3: Path, device: str, dtype: torch.dtype, shape: dict) -> Path:
    """A random Qwen3ForCausalLM of ``shape`` (over Qwen3-4B's config) with the tiny model's tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from bench._modern import QWEN3_4B

    cfg = json.loads((tiny_qwen3 / "config.json").read_text())
    for key in ("architectures", "transformers_version", "dtype", "layer_types", "max_window_layers"):
        cfg.pop(key, None)  # layer_types follows the layer count
    cfg.update(QWEN3_4B, **shape)
    with built_on(device, dtype):
        model = Qwen3ForCausalLM(Qwen3Config(**cfg)).eval()
    model.save_pretrained(folder)
    del model
    for f in tiny_qwen3.iterdir():  # the tokenizer, its chat template, generation_config.json; not its weights
        if f.name != "config.json" and not f.name.startswith("model"):  # (Qwen3-4B's are shards: model-0000N-...)
            shutil.copy(f, folder / f.name)
    return folder


def write_klein(folder: Path, tiny_klein: Path, qwen3: Path, device: str, dtype: torch.dtype, shape: dict,
                vae_shape: dict) -> Path:
    """A random FLUX.2 klein of ``shape`` and ``vae_shape`` (over klein 4B's configs) with ``qwen3`` as its text
    encoder (hard links: no second copy on disk), the tiny klein's tokenizer and scheduler."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    from bench._modern import KLEIN_TRANSFORMER, KLEIN_VAE

    folder.mkdir(parents=True)
    for part in ("model_index.json", "scheduler", "tokenizer"):
        src = tiny_klein / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / part)
    (folder / "text_encoder").mkdir()
    for f in qwen3.iterdir():  # hard links: the pool's fetcher reads a folder's own files, not links
        (folder / "text_encoder" / f.name).hardlink_to(f)
    with built_on(device, dtype):
        Flux2Transformer2DModel(**{**KLEIN_TRANSFORMER, **shape}).save_pretrained(folder / "transformer")
        AutoencoderKLFlux2(**{**KLEIN_VAE, **vae_shape}).save_pretrained(folder / "vae")
    return folder


def pool_config(path: Path, data: Path, models: dict[str, tuple[str, str, str]], *, fast: str,
                warmup_sizes: list[int], max_batch: int = 1, size: int = 512, steps: int = 50) -> Path:
    """A pool config at ``path``: ``models`` name -> (device, dtype, source); the speed keys as given."""
    sections = "".join(f'[models.{name}]\ndevice = "{device}"\ndtype = "{dtype}"\nsource = "{source}"\n\n'
                       for name, (device, dtype, source) in models.items())
    sd = models.get("Text2Image", ("", "", ""))[2]
    path.write_text(f'[pool]\n{f"sd_base = {json.dumps(sd)}" if sd else ""}\nfast = "{fast}"\n'
                    f'warmup_sizes = {json.dumps(warmup_sizes)}\nmax_batch = {max_batch}\n\n'
                    f'[storage]\ndata_dir = "{data}"\n\n[limits]\nworking_size = {max(size, 64)}\n'
                    f'max_output_size = {max(size, 1024)}\nmax_steps = {max(steps, 50)}\n\n{sections}')
    return path


class Clock:
    """Wall time of GPU work: synchronized before and after on CUDA, run on a thread of its own as the pool
    runs its jobs (on a busy CPU the same pipeline ran 3x slower on the main thread than on another)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bench")

    def call(self, fn):
        return self._thread.submit(fn).result()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn, runs: int = 1) -> float:
        """The median seconds of ``runs`` calls of ``fn`` (after whatever warm-up the caller did)."""
        times = []
        for _ in range(runs):
            self.sync()
            started = time.perf_counter()
            self.call(fn)
            self.sync()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def free(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
