"""The GPU check: every pool model, tiny and at real size (random weights), on one device in float16,
each tool once at 512 and 1024 px, through the pool's own loaders; ``name=value`` lines.

    python bench/gpu_check.py                        # CUDA: tiny, then real size (about 3-5 min on an H200)
    python bench/gpu_check.py --device cpu --tiny    # the same path on a CPU: tiny models at 64 px (3 min)
    python bench/gpu_check.py --smoke                # CPU, tiny, 64 px, six models (one per kind): seconds

What it does, independent of the bot and the pool process:

1. tiny: the tiny models in the real hub repos' layouts (build/tiny-models/hub, built here when
   missing), loaded with the loaders of ``gpu_pool/models`` (fp16 variant files, the shared base),
   then every tool once per size;
2. real size (not with ``--tiny``): random weights from the real configs (bench/memory.py), built
   on the device in float16, saved as the hub lays them out (SD1.5 with fp16 variant files) under
   ``--scratch``, loaded back through the same loaders, every tool once per size, and Text2Image
   at the largest size once more without VAE tiling.

Per run: ``<set>_<tool>_<px>_max_allocated_mib`` (torch.cuda.max_memory_allocated: every loaded
model's weights plus this job's working memory), ``..._job_mib`` (the part above what was
allocated before the job) and ``..._s``; per model ``<set>_<tool>_weights_mib`` and ``_load_s``.
Every failure prints ``error_...=`` and nothing is skipped without an ``error_`` or ``skipped_``
line; the exit status is 1 when any run failed or was skipped. SD tools run 2 steps (the peak
does not depend on the step count) at a working size equal to the run's size.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

NEEDS = ("torch", "diffusers", "transformers", "controlnet_aux", "cv2", "safetensors", "PIL", "timm", "einops")
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MIB = 2**20
# --smoke: one model of each kind (the SD base, BLIP, GroundingDINO, an annotator, the checker, the LLM)
SMOKE_MODELS = ("Text2Image", "ImageCaptioning", "Text2Box", "Image2Canny", "SafetyChecker", "LLM")
FIGURES = ("failed", "total_s", "tiny_load_all_s", "tiny_Text2Image_64_s", "tiny_ImageCaptioning_64_s",  # --smoke's
           "tiny_Text2Box_64_s", "tiny_Image2Canny_64_s", "tiny_SafetyChecker_64_s", "tiny_LLM_64_s")
failures: list[str] = []


def say(name: str, value: object) -> None:
    print(f"{name}={value}", flush=True)


def fail(name: str, e: BaseException) -> None:
    failures.append(name)
    say(f"error_{name}", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
    traceback.print_exc(file=sys.stderr)


def missing_packages() -> list[str]:
    out = []
    for name in NEEDS:
        try:
            importlib.import_module(name)
        except Exception as e:  # an import that fails for any reason is as good as missing
            out.append(f"{name} ({type(e).__name__})")
    return out


# --- measuring ------------------------------------------------------------------------------


class Meter:
    """Peak allocator figures on CUDA; on the CPU only the time (no allocator statistics there)."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device.startswith("cuda")

    @contextlib.contextmanager
    def run(self, prefix: str):
        torch = self.torch
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        started = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            say(f"{prefix}_max_allocated_mib", f"{peak / MIB:.0f}")
            say(f"{prefix}_job_mib", f"{(peak - before) / MIB:.0f}")
        say(f"{prefix}_s", f"{time.perf_counter() - started:.2f}")

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


# --- the models -----------------------------------------------------------------------------


def specs(folders: dict[str, str], base: str, device: str, dtype) -> dict:
    """LoadSpec per seed model from ``folders`` (model -> local folder; "" for none)."""
    from gpu_pool.models.base import LoadSpec

    return {name: LoadSpec(name, folder, device, dtype, base) for name, folder in folders.items()}


def load_all(label: str, all_specs: dict, meter: Meter) -> dict:
    from gpu_pool import accounting
    from gpu_pool.models import load_sd_base, loader
    from gpu_pool.models.base import SharedBases

    bases, models = SharedBases(load_sd_base), {}
    for name, spec in all_specs.items():
        started = time.perf_counter()
        try:
            models[name] = loader(name)(spec, bases)
        except Exception as e:
            fail(f"{label}_{name}_load", e)
            continue
        if meter.cuda:
            meter.torch.cuda.synchronize()
        say(f"{label}_{name}_load_s", f"{time.perf_counter() - started:.2f}")
    sizes = accounting.model_bytes({n: list(m.modules().values()) for n, m in models.items()})
    for name, (own, _) in sizes.items():
        say(f"{label}_{name}_weights_mib", f"{own / MIB:.0f}")
    return models


def picture(size: int):
    """A photo-like test image: a gradient sky, a box, a disc, a diagonal."""
    import numpy as np
    from PIL import Image, ImageDraw

    ramp = np.linspace(30, 220, size, dtype=np.uint8)
    img = Image.fromarray(np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                                    np.full((size, size), 120, np.uint8)], axis=2))
    d = ImageDraw.Draw(img)
    d.rectangle((size // 5, size // 3, size // 2, size - size // 8), fill=(230, 200, 40))
    d.ellipse((size // 2, size // 10, size - size // 10, size // 2), fill=(200, 30, 30))
    d.line((0, size - 1, size - 1, 0), fill=(255, 255, 255), width=max(1, size // 100))
    return img


def run_all(label: str, models: dict, sizes: list[int], meter: Meter, deadline: float) -> None:
    from PIL import Image

    from gpu_pool.models.base import check_params

    torch = meter.torch
    limits = {"max_steps": 100, "max_output_size": max(sizes), "llm_max_tokens": 64}
    for size in sizes:
        image = picture(size)
        mask = Image.new("L", (size, size), 0)
        mask.paste(255, (size // 4, size // 4, size * 3 // 4, size * 3 // 4))
        for name, model in models.items():
            prefix = f"{label}_{name}_{size}"
            if time.monotonic() > deadline:
                failures.append(prefix)
                say(f"skipped_{prefix}", "out of time (--budget-s)")
                continue
            params = {"prompt": "a red house by a lake"} if "prompt" in model.params else {}
            params.update(llm_job(size) if "messages" in model.params else {})
            params.update({"steps": 2} if "steps" in model.params else {})
            params.update({"width": size, "height": size} if name == "Text2Image" else {})
            params.update({"question": "what is in the picture?"} if name == "VisualQuestionAnswering" else {})
            params.update({"detect_resolution": size} if "detect_resolution" in model.params else {})
            params.update({"boxes": [[size // 5, size // 3, size // 2, size - size // 8]]} if name == "Sam2" else {})
            model.spec = dataclasses.replace(model.spec, working_size=size)  # SD tools work at this size
            images = [image] if model.n_images is None else [image, mask][:model.n_images]  # None: the LLM
            try:
                with meter.run(prefix), torch.inference_mode():
                    out = model.run(check_params(model, params, limits), images, lambda *_: None)
                assert out.images or out.text is not None, "no output"
            except Exception as e:
                fail(prefix, e)
            meter.free()


def untiled(label: str, models: dict, size: int, meter: Meter) -> None:
    """Text2Image once more at ``size`` with VAE tiling off: what tiling saves."""
    from gpu_pool.models import sd
    from gpu_pool.models.base import check_params

    if "Text2Image" not in models:
        return
    model, tile_over = models["Text2Image"], sd.TILE_OVER
    sd.TILE_OVER = 10**9
    try:
        params = check_params(model, {"prompt": "a red house", "steps": 2, "width": size, "height": size},
                              {"max_steps": 100, "max_output_size": size})
        with meter.run(f"{label}_Text2Image_{size}_untiled"), meter.torch.inference_mode():
            model.run(params, [], lambda *_: None)
    except Exception as e:
        fail(f"{label}_Text2Image_{size}_untiled", e)
    finally:
        sd.TILE_OVER = tile_over
        meter.free()


# --- tiny -------------------------------------------------------------------------------------


def tiny_folders(tiny: Path) -> dict[str, str]:
    import settings

    hub = tiny / "hub"
    return {name: str(hub / repo) if repo else "" for name, repo in settings.MODEL_DEFAULTS.items()}


# --- real size --------------------------------------------------------------------------------


def write_real(scratch: Path, tiny: Path, device: str) -> dict[str, str]:
    """Real-size random checkpoints, built on ``device`` in fp16 and saved as the hub lays them out."""
    from bench import memory as real  # the real configs and builders
    from bench._speed import write_sd15
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler
    from transformers import (BlipImageProcessor, BlipProcessor, CLIPImageProcessor, CLIPSegProcessor,
                              DPTImageProcessor, GroundingDinoImageProcessor, GroundingDinoProcessor,
                              SamImageProcessor, SamProcessor, SegformerImageProcessor, ViTImageProcessor)

    from scripts.tiny_models.common import clip_tokenizer
    from scripts.tiny_models.sd import SD15_SCHEDULE

    tokenizer = clip_tokenizer(scratch / "clip-tokenizer")
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)  # the small vocabulary's ids, inside CLIP's 49408
    real.SD15_TEXT.update(ids)
    real.CLIPSEG["text_config"].update(ids)

    def save(name: str, build, *extra) -> None:
        started = time.perf_counter()
        with real.fp16_on(device):
            model = build()
        folder = scratch / name
        model.save_pretrained(folder)
        for thing in extra:
            thing.save_pretrained(folder)
        del model
        say(f"real_write_{name.replace('/', '_')}_s", f"{time.perf_counter() - started:.2f}")

    started = time.perf_counter()
    write_sd15(scratch / "sd15", device, tokenizer)  # as the hub: *.fp16.safetensors
    say("real_write_sd15_s", f"{time.perf_counter() - started:.2f}")
    for name, channels, scheduler in (("pix2pix", 8, EulerAncestralDiscreteScheduler),
                                      ("inpaint", 9, DDIMScheduler)):
        save(f"{name}/unet", lambda c=channels: real.unet(c))
        scheduler(**SD15_SCHEDULE).save_pretrained(scratch / name / "scheduler")
    save("controlnet", real.controlnet)  # one real-size ControlNet: each of the eight tools loads its own copy
    save("upscaler", lambda: real.upscaler_pipeline(tokenizer))  # its own UNet, VAE and text encoder
    blip_processor = BlipProcessor(BlipImageProcessor(size={"height": 384, "width": 384}),
                                   BlipProcessor.from_pretrained(tiny / "blip-caption").tokenizer)
    save("blip-caption", lambda: real.blip("caption"), blip_processor)
    save("blip-vqa", lambda: real.blip("vqa"), blip_processor)
    clip_image = ViTImageProcessor(size={"height": 352, "width": 352}, image_mean=[0.485, 0.456, 0.406],
                                   image_std=[0.229, 0.224, 0.225])
    save("clipseg", real.clipseg, CLIPSegProcessor(image_processor=clip_image, tokenizer=tokenizer))
    save("upernet", real.upernet, SegformerImageProcessor(size={"height": 512, "width": 512}))
    dpt_processor = DPTImageProcessor(size={"height": 384, "width": 384}, keep_aspect_ratio=False)
    save("dpt-large", lambda: real.dpt(real.DPT_LARGE), dpt_processor)
    save("dpt-hybrid", lambda: real.dpt(real.DPT_HYBRID), dpt_processor)

    s = {n: str(scratch / f) for n, f in {"Text2Image": "sd15", "InstructPix2Pix": "pix2pix",
                                          "Inpainting": "inpaint", "ImageCaptioning": "blip-caption",
                                          "VisualQuestionAnswering": "blip-vqa", "Text2Mask": "clipseg",
                                          "Image2Seg": "upernet", "Image2Depth": "dpt-large",
                                          "Image2Normal": "dpt-hybrid"}.items()}
    save("safety-checker", real.safety_checker,
         CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}))
    dino_tokenizer = GroundingDinoProcessor.from_pretrained(tiny / "grounding-dino").tokenizer  # BERT's ids
    save("grounding-dino", real.grounding_dino, GroundingDinoProcessor(GroundingDinoImageProcessor(), dino_tokenizer))
    save("sam", real.sam, SamProcessor(SamImageProcessor()))
    write_real_llm(scratch / "llm", tiny / "llm", device)
    s.update({"SafetyChecker": str(scratch / "safety-checker"), "Text2Box": str(scratch / "grounding-dino"),
              "Segmenting": str(scratch / "sam"), "LLM": str(scratch / "llm")})
    s.update({"Image2Canny": "", "Variations": "", "Upscale": str(scratch / "upscaler")})  # Variations: the base
    for name in ("Image2Line", "Image2Hed", "Image2Scribble", "Image2Pose"):
        s[name] = str(tiny / "annotators")  # the tiny annotators are the real networks (compact files)
    for name in real.CONTROLNET_TOOLS:
        s[name] = str(scratch / "controlnet")
    import settings

    return {name: s[name] for name in (*settings.SEED_MODELS, "LLM")}  # the seed's (the modern: not written here)


# Qwen/Qwen3-VL-2B-Instruct's sizes (its language model is Qwen3-1.7B's shape); token ids stay the tiny
# tokenizer's, which lie inside the real vocabulary
QWEN3_VL_2B_TEXT = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                        num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
QWEN3_VL_2B_VISION = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                          num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])


def write_real_llm(folder: Path, tiny_llm: Path, device: str) -> None:
    """The built-in LLM at Qwen3-VL-2B's size, random, with the tiny model's tokenizer, template and processor."""
    import json

    from bench import memory as real
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    started = time.perf_counter()
    cfg = json.loads((tiny_llm / "config.json").read_text())
    cfg["text_config"].update(QWEN3_VL_2B_TEXT)
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [24, 20, 20]  # of head_dim 128, as the real model
    cfg["vision_config"].update(QWEN3_VL_2B_VISION)
    cfg["tie_word_embeddings"] = True
    config = Qwen3VLConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
    with real.fp16_on(device):
        model = Qwen3VLForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    del model
    for f in tiny_llm.iterdir():
        if f.name not in ("config.json", "model.safetensors") and not f.name.startswith("model-"):
            shutil.copy(f, folder / f.name)
    processor = json.loads((folder / "processor_config.json").read_text())
    for part in ("image_processor", "video_processor"):  # the real model's pixel range (the pool caps it)
        processor[part]["size"] = {"shortest_edge": 65536, "longest_edge": 16777216}
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2))
    say("real_write_llm_s", f"{time.perf_counter() - started:.2f}")


def llm_job(size: int) -> dict:
    """A chat turn with one image and one tool, as the core sends it (the image part stands for ``image``)."""
    tool = {"type": "function", "function": {
        "name": "caption_image", "description": "Describe an image in one sentence.",
        "parameters": {"type": "object", "properties": {"image": {"type": "string", "enum": ["img1"]}},
                       "required": ["image"], "additionalProperties": False}}}
    content = [{"type": "text", "text": f"[img1, uploaded, {size}x{size}]"}, {"type": "image"},
               {"type": "text", "text": "What is in this picture?"}]
    return {"messages": [{"role": "user", "content": content}], "tools": [tool], "max_tokens": 48}


def _roomy_ram_disk() -> str | None:
    """/dev/shm when it can hold the 15 GB of real-size checkpoints (containers often give it 64 MB), else /tmp."""
    try:
        st = os.statvfs("/dev/shm")
        return "/dev/shm" if st.f_bavail * st.f_frsize > 24e9 else None
    except OSError:
        return None


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="tiny models only (no real-size weights)")
    parser.add_argument("--sizes", default="", help="pixel sizes, e.g. 512,1024 (default; 64,128 on the CPU)")
    parser.add_argument("--scratch", default="", help="where the 15 GB of real-size checkpoints go (default: /dev/shm "
                                                      "when it has room, else the temp folder)")
    parser.add_argument("--budget-s", type=float, default=450, help="runs after this many seconds are skipped, loudly")
    parser.add_argument("--models", default="", help="only these models, e.g. Text2Image,Image2Canny (default: all)")
    parser.add_argument("--smoke", action="store_true", help="--device cpu --tiny --sizes 64 with one model per kind")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.tiny, args.sizes, args.models = "cpu", True, "64", ",".join(SMOKE_MODELS)
    started = time.monotonic()
    deadline = started + args.budget_s
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
    missing = missing_packages()
    if missing:
        say("missing_packages", ", ".join(missing))
        return 2
    import torch

    warnings.simplefilter("ignore")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    from scripts.build_tiny_models import ensure

    device = "cuda:0" if args.device == "cuda" else args.device
    cpu = device == "cpu"
    sizes = [int(s) for s in (args.sizes or ("64" if cpu else "512,1024")).split(",")]
    dtype = torch.float16
    meter = Meter(device)
    say("device", torch.cuda.get_device_name(device) if not cpu else "cpu")
    say("versions", f"torch {torch.__version__}, " + ", ".join(
        f"{m} {importlib.import_module(m).__version__}" for m in ("diffusers", "transformers")))
    tiny = ensure()

    t = time.perf_counter()
    folders = tiny_folders(tiny)
    if args.models:
        folders = {name: folders[name] for name in args.models.split(",")}
    models = load_all("tiny", specs(folders, str(tiny / "hub" / SD15), device, dtype), meter)
    say("tiny_load_all_s", f"{time.perf_counter() - t:.1f}")
    run_all("tiny", models, sizes, meter, deadline)
    del models
    meter.free()

    if not args.tiny:
        scratch = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.scratch or _roomy_ram_disk()))
        try:
            t = time.perf_counter()
            folders = write_real(scratch, tiny, device)
            if args.models:
                folders = {name: folders[name] for name in args.models.split(",")}
            meter.free()
            say("real_write_all_s", f"{time.perf_counter() - t:.1f}")
            t = time.perf_counter()
            models = load_all("real", specs(folders, folders["Text2Image"], device, dtype), meter)
            say("real_load_all_s", f"{time.perf_counter() - t:.1f}")
            if meter.cuda:
                say("real_all_weights_allocated_mib", f"{torch.cuda.memory_allocated() / MIB:.0f}")
            run_all("real", models, sizes, meter, deadline)
            untiled("real", models, max(sizes), meter)
        except Exception as e:
            fail("real", e)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    say("failed", len(failures))
    say("total_s", f"{time.monotonic() - started:.1f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
