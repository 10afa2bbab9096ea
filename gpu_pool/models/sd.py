"""The Stable Diffusion 1.5 family: Text2Image, InstructPix2Pix, Inpainting and the ControlNet generators.

Everything sits on one shared SD1.5 base per (source, device, dtype), held by
``SharedBases``:

    base (StableDiffusionPipeline) ── unet, vae, text_encoder, tokenizer
      ├─ Text2Image          the base's modules as they are
      ├─ *Text2Image (x8)    the base's modules + its own ControlNet
      ├─ InstructPix2Pix     the base's vae, text_encoder, tokenizer + its own 8-channel UNet
      └─ Inpainting          the base's vae, text_encoder, tokenizer + its own 9-channel UNet

Each pipeline has its own scheduler object: schedulers keep per-run state.
Defaults (steps, guidance, prompts) are the seed's (TaskMatrix visual_chatgpt.py).

Sizes. SD1.5 was trained at 512 px and makes poor images far from it (a 1x1 or
a 64-px input gives a 1-latent-pixel mush). The seed scaled every upload up or
down to 512 px on its long side; here the models that take an image do the
same at ``[limits] working_size`` (512 by default), in the pool rather than the
core, because the pipeline decides the output size and the model knows the
size it was trained for, while the core keeps the user's image as it came.
The aspect ratio is kept: a sliver too thin for SD (a 4000x100 banner) is padded
with its own edge pixels to a short side of a quarter of the working size and the
result cropped back, not squashed. Results come back at that working size, or at
the input's size when the input was larger, as the seed's inpainting resized its 512-px result back.
Outputs over 768 px decode the VAE in tiles, which keeps 1024-px images
within the working memory a 512-px one needs.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any
from collections.abc import Iterator

import numpy as np
import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, EulerAncestralDiscreteScheduler,
                       StableDiffusionControlNetPipeline, StableDiffusionInpaintPipeline,
                       StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline, UNet2DConditionModel,
                       UniPCMultistepScheduler)
from PIL import Image
from transformers import CLIPTextModel

from gpu_pool import weights as w

from .base import (NEGATIVE, PROMPT, SEED, BadRequest, LoadSpec, Output, Param, PoolModel, Progress, SharedBases,
                   check_params, embed_once, guidance, no_progress, size, steps, warm_up_batch,
                   warm_up_inputs)
from .loading import checked

# The seed appended this to every generation prompt and used this negative prompt.
QUALITY = ", best quality, extremely detailed"
SEED_NEGATIVE = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
                 "cropped, worst quality, low quality")
TILE_OVER = 768  # outputs with a side over this many pixels decode the VAE in tiles


def load_base(source: str, device: str, dtype: torch.dtype) -> StableDiffusionPipeline:
    """The shared SD1.5 base on ``device`` (its home under a budget); only ever built through ``SharedBases``.

    Each network is loaded on its own, so each picks its fp16 variant file and
    fails loudly on a checkpoint that does not match; the pipeline adds the
    tokenizer and scheduler. The repo's safety checker and its feature
    extractor are never read (``model_index.json`` lists them).
    """
    unet = checked(UNet2DConditionModel, source, dtype, w.diffusers("unet"), "unet")
    vae = checked(AutoencoderKL, source, dtype, w.diffusers("vae"), "vae")
    text_encoder = checked(CLIPTextModel, source, dtype, w.transformers("text_encoder"), "text_encoder")
    pipe = StableDiffusionPipeline.from_pretrained(source, unet=unet, vae=vae, text_encoder=text_encoder,
                                                   safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    embed_once(unet.time_embedding)
    # A batch's latents decode one image at a time: its peak memory stays one image's (the VAE decode is
    # the peak at 1024 px), and each image is byte-identical on the CPU to its job's alone (see embed_once).
    vae.enable_slicing()
    return pipe.to(device)


def fit_size(width: int, height: int, working: int) -> tuple[int, int]:
    """Scale so the long side is ``working`` (up or down), both sides multiples of 8 (at least 8),
    the aspect ratio kept (a 7x3 upload is drawn at 512x216, a 1x1 at 512x512)."""
    scale = working / max(width, height)
    return tuple(max(8, round(side * scale / 8) * 8) for side in (width, height))


def canvas_size(size: tuple[int, int], working: int) -> tuple[int, int]:
    """What the pipeline draws on: ``size`` with a short side of at least a quarter of ``working``
    (SD makes mush on a thinner canvas); a sliver is padded to it, not squashed (see ``_Diffusion._fit``)."""
    least = max(8, working // 4 // 8 * 8)
    return max(least, size[0]), max(least, size[1])


def _is_binary(image: Image.Image) -> bool:
    """Only black and white: an edge, line or scribble map, to be resized without grey edges."""
    histogram = image.convert("L").histogram()
    return sum(histogram[1:255]) == 0


@contextmanager
def _vae_tiling(vae: Any, on: bool) -> Iterator[None]:
    """Tiled VAE decoding for this run only: the VAE is shared by every pipeline on the device,
    whose jobs run one at a time on the device's thread."""
    if not on:
        yield
        return
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()


class _Diffusion(PoolModel):
    """What the SD models share: a diffusers pipeline, its modules, and a run with progress."""

    draws = True  # the pool's SafetyChecker checks every image (the pipelines' own checker is off)
    sized = True  # the pipeline takes width and height

    def __init__(self, spec: LoadSpec, pipe: Any):
        super().__init__(spec)
        self.name = spec.name
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)  # progress goes to the job, not to stderr

    def modules(self) -> dict[str, torch.nn.Module]:
        return {k: m for k, m in self.pipe.components.items() if isinstance(m, torch.nn.Module)}

    def fast_modules(self) -> dict[str, torch.nn.Module]:
        """The UNet (the base's, or its own) and the shared VAE; a ControlNet runs as diffusers made it."""
        return {"unet": self.pipe.unet, "vae": self.pipe.vae}

    def warm_up(self, sizes: tuple[int, ...]) -> list[int]:
        """Text2Image draws at each size; the models that take an image draw it at the working size whatever
        its size (``_fit``), so they warm up at that one."""
        drawn = list(sizes) if self.n_images == 0 else [self.spec.working_size]
        for side in drawn:
            params = {"prompt": "a warm-up", "steps": 2, "seed": 0}
            if self.n_images == 0:
                params |= {"width": side, "height": side}
            self.run(check_params(self, params, {}), warm_up_inputs(side)[:self.n_images], no_progress)
        if drawn:
            warm_up_batch(self, drawn[0])  # Text2Image (gpu_pool/batching.py)
        return drawn

    def _run_pipe(self, params: dict[str, Any], progress: Progress, width: int, height: int,
                  seeds: list[int | None] | None = None, **kwargs: Any) -> list[Image.Image]:
        """Call the pipeline at ``width`` x ``height`` with the job's seed, reporting each denoising step;
        ``seeds``: a batch's, one generator each (its prompts a list each in ``kwargs``), an image per seed."""

        def on_step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict) -> dict:
            # PNDM (SD1.5's scheduler, kept by Text2Image) runs one warm-up pass more than the steps
            # asked for; count the steps the user asked for, so the job shows 1..steps of steps.
            warmup = max(0, pipe.num_timesteps - params["steps"])
            if i >= warmup:
                progress(i + 1 - warmup, pipe.num_timesteps - warmup)  # raises JobCancelled to stop the loop
            return callback_kwargs

        seeds = [params.get("seed")] if seeds is None else seeds
        generators = [None if seed is None else torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        with _vae_tiling(self.pipe.vae, max(width, height) > TILE_OVER):
            result = self.pipe(num_inference_steps=params["steps"], guidance_scale=params["guidance"],
                               generator=generators if len(generators) > 1 else generators[0],
                               callback_on_step_end=on_step_end, output_type="pil",
                               **({"width": width, "height": height} if self.sized else {}), **kwargs)
        return [image.convert("RGB") for image in result.images]

    def _fit(self, image: Image.Image, resample: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
        """``image`` at the working size (see the module's docstring), and where it lies on the canvas:
        a sliver (a 4000x100 banner) is centred on a canvas padded with its own edge pixels, and
        ``_back`` crops the result back to it, so the picture keeps its aspect ratio."""
        fitted = fit_size(image.width, image.height, self.spec.working_size)
        if image.size != fitted:
            image = image.resize(fitted, resample)
        canvas = canvas_size(fitted, self.spec.working_size)
        if canvas == fitted:
            return image, (0, 0, *fitted)
        left, top = (canvas[0] - fitted[0]) // 2, (canvas[1] - fitted[1]) // 2
        pad = ((top, canvas[1] - fitted[1] - top), (left, canvas[0] - fitted[0] - left))
        pixels = np.asarray(image)
        padded = np.pad(pixels, pad + ((0, 0),) * (pixels.ndim - 2), mode="edge")
        return Image.fromarray(padded, image.mode), (left, top, left + fitted[0], top + fitted[1])

    @staticmethod
    def _back(result: Image.Image, original: tuple[int, int], box: tuple[int, int, int, int]) -> Output:
        """The result (cropped to the picture) at the working size, or at the input's size when that is larger."""
        if box != (0, 0, *result.size):
            result = result.crop(box)
        if max(original) > max(result.size):
            result = result.resize(original, Image.Resampling.LANCZOS)
        return Output(images=[result])


class Text2Image(_Diffusion):
    batch_keeps = ("prompt", "negative_prompt", "seed")
    params = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": steps(50), "guidance": guidance(7.5),
              "width": size(512), "height": size(512), "seed": SEED}

    def prompts(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": params["prompt"] + QUALITY, "negative_prompt": params["negative_prompt"] or SEED_NEGATIVE}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image, = self._run_pipe(params, progress, params["width"], params["height"], **self.prompts(params))
        return Output(images=[image])

    def run_batch(self, batch: list[dict[str, Any]], progress: Progress) -> list[Output]:
        """One pipeline call for the batch: a prompt, negative prompt and generator per job, so each job's
        image is the one it would get alone (``tests/test_batching.py``)."""
        first = batch[0]
        guided = first["guidance"] > 1  # as the pipeline decides classifier-free guidance
        # Each prompt encoded on its own, as its job alone would: the text encoder then sees the same shapes.
        encoded = [self.pipe.encode_prompt(p["prompt"], self.device, 1, guided, p["negative_prompt"])
                   for p in map(self.prompts, batch)]
        negative = torch.cat([negative for _, negative in encoded]) if guided else None
        images = self._run_pipe(first, progress, first["width"], first["height"],
                                seeds=[params["seed"] for params in batch], negative_prompt_embeds=negative,
                                prompt_embeds=torch.cat([positive for positive, _ in encoded]))
        return [Output(images=[image]) for image in images]


class InstructPix2Pix(_Diffusion):
    params = {"prompt": Param(str, required=True, help="the edit to make, e.g. 'make it winter'"),
              "steps": steps(40), "guidance": guidance(7.5),
              "image_guidance": Param(float, 1.2, min=1.0, max=5.0, help="how closely to keep the input image"),
              "seed": SEED}
    n_images = 1
    sized = False  # its size is its image's

    def prompts(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": params["prompt"]}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        original = images[0].convert("RGB")
        image, box = self._fit(original, Image.Resampling.LANCZOS)
        out, = self._run_pipe(params, progress, image.width, image.height, image=image,
                              image_guidance_scale=params["image_guidance"], **self.prompts(params))
        return self._back(out, original.size, box)


class Inpainting(_Diffusion):
    params = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": steps(50), "guidance": guidance(7.5),
              "seed": SEED}
    n_images = 2
    image_names = ("image", "mask")

    def prompts(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": params["prompt"], "negative_prompt": params["negative_prompt"] or None}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        original, mask = images[0].convert("RGB"), images[1].convert("L")  # mask: white = repaint
        if mask.size != original.size:
            raise BadRequest(f"{self.name} needs a mask the size of the image: the image is "
                             f"{original.width}x{original.height}, the mask {mask.width}x{mask.height}; "
                             "make the mask from the same image.")
        image, box = self._fit(original, Image.Resampling.LANCZOS)
        mask, _ = self._fit(mask, Image.Resampling.NEAREST)  # a mask stays black and white
        out, = self._run_pipe(params, progress, image.width, image.height, image=image, mask_image=mask,
                              **self.prompts(params))
        return self._back(out, original.size, box)


class ControlNetText2Image(_Diffusion):
    """One of the eight condition-image generators (canny, line, hed, ...); the weights say which."""

    params = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": steps(20), "guidance": guidance(9.0),
              "seed": SEED}
    n_images = 1
    prompts = Text2Image.prompts

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        original = images[0].convert("RGB")
        # Edge, line and scribble maps are black and white, as ControlNet was trained on: no grey when scaling.
        condition, box = self._fit(original,
                                   Image.Resampling.NEAREST if _is_binary(original) else Image.Resampling.BILINEAR)
        out, = self._run_pipe(params, progress, condition.width, condition.height, image=condition, eta=0.0,
                              **self.prompts(params))
        return self._back(out, original.size, box)


# --- loaders (listed in gpu_pool/models/__init__.py) ------------------------------------------


def load_text2image(spec: LoadSpec, bases: SharedBases) -> Text2Image:
    # Its own source is the base: [pool] sd_base unless an admin points Text2Image elsewhere.
    base = bases.get(spec.source or spec.sd_base, spec.device, spec.dtype, spec.home)
    scheduler = type(base.scheduler).from_config(base.scheduler.config)
    # dtype given: from_pipe would otherwise cast the shared modules to float32 in place.
    pipe = StableDiffusionPipeline.from_pipe(base, scheduler=scheduler, dtype=base.unet.dtype)
    return Text2Image(spec, pipe)


def load_controlnet(spec: LoadSpec, bases: SharedBases) -> ControlNetText2Image:
    base = bases.get(spec.sd_base, spec.device, spec.dtype, spec.home)
    controlnet = checked(ControlNetModel, spec.source, spec.dtype, w.diffusers("")).to(spec.load_device)
    scheduler = UniPCMultistepScheduler.from_config(base.scheduler.config)  # as the seed did
    pipe = StableDiffusionControlNetPipeline.from_pipe(base, controlnet=controlnet, scheduler=scheduler,
                                                       dtype=base.unet.dtype)  # dtype: see load_text2image
    return ControlNetText2Image(spec, pipe)


def load_pix2pix(spec: LoadSpec, bases: SharedBases) -> InstructPix2Pix:
    base = bases.get(spec.sd_base, spec.device, spec.dtype, spec.home)
    pipe = StableDiffusionInstructPix2PixPipeline(**_with_own_unet(spec, base, EulerAncestralDiscreteScheduler))
    return InstructPix2Pix(spec, pipe)


def load_inpainting(spec: LoadSpec, bases: SharedBases) -> Inpainting:
    base = bases.get(spec.sd_base, spec.device, spec.dtype, spec.home)
    pipe = StableDiffusionInpaintPipeline(**_with_own_unet(spec, base, DDIMScheduler))
    return Inpainting(spec, pipe)


def _with_own_unet(spec: LoadSpec, base: StableDiffusionPipeline, scheduler_cls: type) -> dict[str, Any]:
    """Pipeline components: the checkpoint's own UNet and schedule, the base's VAE and text encoder.

    Only the UNet is loaded from ``spec.source``: InstructPix2Pix and SD-inpainting
    trained the UNet only, on SD's VAE and CLIP text encoder, so the base's serve.
    """
    unet = checked(UNet2DConditionModel, spec.source, base.unet.dtype, w.diffusers("unet"), "unet")
    embed_once(unet.time_embedding)
    scheduler = scheduler_cls.from_config(scheduler_cls.load_config(spec.source, subfolder="scheduler"))
    return dict(unet=unet.to(spec.load_device), scheduler=scheduler, vae=base.vae, text_encoder=base.text_encoder,
                tokenizer=base.tokenizer, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
