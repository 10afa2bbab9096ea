"""GPU memory and time of the object models, Text2Box (GroundingDINO) and Segmenting (SAM), on CUDA in fp16.

Saves random-weight models at real size (grounding-dino-tiny, sam-vit-huge and
sam-vit-base configs) laid out as on the hub, loads them through the pool's
own loaders, and runs each job the tools send once at 512 and at 1024 px:
Text2Box, Segmenting with three boxes (segment_object and the object flows),
Segmenting everything (segment_everything, 32x32 points). Random weights find
nothing worth reporting; what is measured is the memory and time of the work.
The tiny test models run through the same loaders first, in fp16 and bf16.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/objects_gpu.py [--dir /tmp/objects-gpu] [--smoke]

Needs a CUDA GPU. Prints ``<model>_<job>_<px>_peak_mib=`` (torch.cuda.max_memory_allocated
during the job, weights included) and ``..._ms=`` lines. ``--smoke`` needs none: the tiny
models in float32 on the CPU at 64 px, through the same loaders and jobs (segment_everything on
an 8x8 grid); only ``..._ms=`` lines (no GPU, no memory figure).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench.memory import GROUNDING_DINO_TINY, SAM_VIT_HUGE
from gpu_pool.accounting import unique_bytes
from gpu_pool.models import loader
from gpu_pool.models.base import LoadSpec, check_params

MIB = 2**20
SIZES = (512, 1024)
FIGURES = ("tiny_float32_text2box_64_ms", "tiny_float32_segment_boxes_64_ms",  # what --smoke prints
           "tiny_float32_segment_everything_64_ms")


def photo(size: int) -> Image.Image:
    rng = np.random.default_rng(size)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).resize((size, size))
    draw = ImageDraw.Draw(img)
    draw.rectangle((size // 5, size // 5, size // 2, size // 2), fill=(230, 190, 30))
    draw.ellipse((size // 2, size // 3, 9 * size // 10, 4 * size // 5), fill=(200, 30, 30))
    return img


def save_real_size(folder: Path) -> dict[str, Path]:
    """Random real-size checkpoints, fp16, in the hub's layout (preprocessor_config.json, tokenizer files)."""
    from transformers import (BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, SamConfig, SamImageProcessor, SamModel)

    from scripts.tiny_models.detect import bert_vocab

    out = {"grounding-dino-tiny": folder / "grounding-dino-tiny", "sam-vit-huge": folder / "sam-vit-huge",
           "sam-vit-base": folder / "sam-vit-base"}
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("cuda"):
            GroundingDinoForObjectDetection(GroundingDinoConfig(**GROUNDING_DINO_TINY)).save_pretrained(
                out["grounding-dino-tiny"])
            SamModel(SamConfig(**SAM_VIT_HUGE)).save_pretrained(out["sam-vit-huge"])
            SamModel(SamConfig()).save_pretrained(out["sam-vit-base"])  # SamConfig's defaults: sam-vit-base
    finally:
        torch.set_default_dtype(torch.float32)
    dino = out["grounding-dino-tiny"]
    (dino / "vocab.txt").write_text("\n".join(bert_vocab()) + "\n")  # BERT's layout, a small vocabulary
    BertTokenizer.from_pretrained(dino).save_pretrained(dino)
    GroundingDinoImageProcessor().save_pretrained(dino)  # the defaults are the hub's: 800 px, up to 1333
    for name in ("sam-vit-huge", "sam-vit-base"):
        SamImageProcessor().save_pretrained(out[name])  # 1024 px, as on the hub
    torch.cuda.empty_cache()
    return out


def measure(label: str, model, params: dict, img: Image.Image) -> None:
    """One job, after a warm-up: its time, and on CUDA its peak memory."""
    cuda = model.spec.device.startswith("cuda")
    params = check_params(model, params, {})
    model.run(params, [img], lambda i, n: None)  # warm-up: kernels, allocator
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    out = model.run(params, [img], lambda i, n: None)
    if cuda:
        torch.cuda.synchronize()
    ms = (time.perf_counter() - started) * 1000
    print(f"{label}: {out.text[:60]!r}")
    if cuda:
        print(f"{label}_peak_mib={torch.cuda.max_memory_allocated() / MIB:.0f}")
    print(f"{label}_ms={ms:.1f}")


def run_models(name: str, dino: Path, sam: Path, dtype: torch.dtype, sizes=SIZES, device: str = "cuda:0",
               grid: int = 32) -> None:
    """Each job at each size; ``grid``: the points per side of segment_everything (the tools send 32)."""
    box = loader("Text2Box")(LoadSpec("Text2Box", str(dino), device, dtype, ""), None)
    seg = loader("Segmenting")(LoadSpec("Segmenting", str(sam), device, dtype, ""), None)
    weights = {m: unique_bytes(x.modules().values()) / MIB for m, x in (("text2box", box), ("segmenting", seg))}
    print(f"{name}: weights on {device}: Text2Box {weights['text2box']:.0f} MiB, "
          f"Segmenting {weights['segmenting']:.0f} MiB")
    for px in sizes:
        img = photo(px)
        boxes = [[px * 0.2, px * 0.2, px * 0.5, px * 0.5], [px * 0.5, px * 0.33, px * 0.9, px * 0.8], [0, 0, px, px]]
        measure(f"{name}_text2box_{px}", box, {"prompt": "the yellow box. the red ball", "box_threshold": 0.0,
                                              "max_boxes": 3}, img)
        measure(f"{name}_segment_boxes_{px}", seg, {"boxes": boxes}, img)
        measure(f"{name}_segment_everything_{px}", seg, {"points_per_side": grid}, img)
    del box, seg
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def smoke() -> None:
    """The tiny models on the CPU in float32: the loaders and the jobs, no GPU figure."""
    from scripts.tiny_models import detect

    with tempfile.TemporaryDirectory() as tmp:
        detect.build(Path(tmp))
        run_models("tiny_float32", Path(tmp) / "grounding-dino", Path(tmp) / "sam", torch.float32, sizes=(64,),
                   device="cpu", grid=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/objects-gpu", help="where to write the random checkpoints")
    parser.add_argument("--smoke", action="store_true", help="the tiny models on the CPU, no GPU needed")
    args = parser.parse_args()
    if args.smoke:
        return smoke()
    if not torch.cuda.is_available():
        sys.exit("objects_gpu: needs a CUDA GPU; none is visible here.")
    print(f"cuda: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    folder = Path(args.dir)
    from scripts.tiny_models import detect

    detect.build(folder / "tiny")
    for dtype in (torch.float16, torch.bfloat16):
        run_models(f"tiny_{str(dtype).removeprefix('torch.')}", folder / "tiny" / "grounding-dino",
                   folder / "tiny" / "sam", dtype, sizes=(512,))
    started = time.perf_counter()
    real = save_real_size(folder)
    print(f"saved real-size random checkpoints in {time.perf_counter() - started:.1f} s")
    run_models("real_vit_h", real["grounding-dino-tiny"], real["sam-vit-huge"], torch.float16)
    run_models("real_vit_b", real["grounding-dino-tiny"], real["sam-vit-base"], torch.float16)


if __name__ == "__main__":
    main()
