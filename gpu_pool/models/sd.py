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
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (ControlNetModel, DDIMScheduler, EulerAncestralDiscreteScheduler,
                       StableDiffusionControlNetPipeline, StableDiffusionInpaintPipeline,
                       StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline, UNet2DConditionModel,
                       UniPCMultistepScheduler)
from PIL import Image

from .base import (NEGATIVE, PROMPT, SEED, BadRequest, LoadSpec, Output, Param, PoolModel, Progress, SharedBases,
                   guidance, size, steps)

# The seed appended this to every generation prompt and used this negative prompt.
QUALITY = ", best quality, extremely detailed"
SEED_NEGATIVE = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
                 "cropped, worst quality, low quality")


def load_base(source: str, device: str, dtype: torch.dtype) -> StableDiffusionPipeline:
    """The shared SD1.5 base on ``device`` (its home under a budget); only ever built through ``SharedBases``."""
    pipe = StableDiffusionPipeline.from_pretrained(source, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    return pipe.to(device)


class _Diffusion(PoolModel):
    """What the SD models share: a diffusers pipeline, its modules, and a run with progress."""

    draws = True  # the pool's SafetyChecker checks every image (the pipelines' own checker is off)

    def __init__(self, spec: LoadSpec, pipe: Any):
        super().__init__(spec)
        self.name = spec.name
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)  # progress goes to the job, not to stderr

    def modules(self) -> dict[str, torch.nn.Module]:
        return {k: m for k, m in self.pipe.components.items() if isinstance(m, torch.nn.Module)}

    def _run_pipe(self, params: dict[str, Any], progress: Progress, **kwargs: Any) -> Output:
        """Call the pipeline with the job's seed, reporting each denoising step."""

        def on_step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict) -> dict:
            # PNDM (SD1.5's scheduler, kept by Text2Image) runs one warm-up pass more than the steps
            # asked for; count the steps the user asked for, so the job shows 1..steps of steps.
            warmup = max(0, pipe.num_timesteps - params["steps"])
            if i >= warmup:
                progress(i + 1 - warmup, pipe.num_timesteps - warmup)  # raises JobCancelled to stop the loop
            return callback_kwargs

        seed = params.get("seed")
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        result = self.pipe(num_inference_steps=params["steps"], guidance_scale=params["guidance"],
                           generator=generator, callback_on_step_end=on_step_end, output_type="pil", **kwargs)
        sent = {k: kwargs.get(k) or "" for k in ("prompt", "negative_prompt")}  # as the pipeline got them
        return Output(images=[result.images[0].convert("RGB")], sent=sent)

    def _check_size(self, image: Image.Image, what: str) -> None:
        w, h = image.size
        if w % 8 or h % 8:
            fix = f"crop or resize it to {max(8, w // 8 * 8)}x{max(8, h // 8 * 8)}"
            raise BadRequest(f"{self.name} needs image sizes that are multiples of 8, "
                             f"but the {what} is {w}x{h}; {fix}.")


class Text2Image(_Diffusion):
    params = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": steps(50), "guidance": guidance(7.5),
              "width": size(512), "height": size(512), "seed": SEED}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        return self._run_pipe(params, progress, prompt=params["prompt"] + QUALITY,
                              negative_prompt=params["negative_prompt"] or SEED_NEGATIVE,
                              width=params["width"], height=params["height"])


class InstructPix2Pix(_Diffusion):
    params = {"prompt": Param(str, required=True, help="the edit to make, e.g. 'make it winter'"),
              "steps": steps(40), "guidance": guidance(7.5),
              "image_guidance": Param(float, 1.2, min=1.0, max=5.0, help="how closely to keep the input image"),
              "seed": SEED}
    n_images = 1

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        self._check_size(image, "image")
        # The pipeline takes its output size from the image.
        return self._run_pipe(params, progress, prompt=params["prompt"], image=image,
                              image_guidance_scale=params["image_guidance"])


class Inpainting(_Diffusion):
    params = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": steps(50), "guidance": guidance(7.5),
              "seed": SEED}
    n_images = 2
    image_names = ("image", "mask")

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image, mask = images[0].convert("RGB"), images[1].convert("L")  # mask: white = repaint
        self._check_size(image, "image")
        if mask.size != image.size:
            raise BadRequest(f"{self.name} needs a mask the size of the image: the image is "
                             f"{image.width}x{image.height}, the mask {mask.width}x{mask.height}; "
                             "make the mask from the same image.")
        # Without width/height the pipeline would resize to its default size.
        return self._run_pipe(params, progress, prompt=params["prompt"],
                              negative_prompt=params["negative_prompt"] or None,
                              image=image, mask_image=mask, width=image.width, height=image.height)


class ControlNetText2Image(_Diffusion):
    """One of the eight condition-image generators (canny, line, hed, ...); the weights say which."""

    params = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": steps(20), "guidance": guidance(9.0),
              "seed": SEED}
    n_images = 1

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        condition = images[0].convert("RGB")
        self._check_size(condition, "condition image")
        return self._run_pipe(params, progress, prompt=params["prompt"] + QUALITY,
                              negative_prompt=params["negative_prompt"] or SEED_NEGATIVE, image=condition,
                              width=condition.width, height=condition.height, eta=0.0)


# --- loaders (listed in gpu_pool/models/__init__.py) ------------------------------------------


def load_text2image(spec: LoadSpec, bases: SharedBases) -> Text2Image:
    # Its own source is a base too: the same one as everybody's unless an admin points it elsewhere.
    base = bases.get(spec.source or spec.sd_base, spec.device, spec.dtype, spec.home)
    scheduler = type(base.scheduler).from_config(base.scheduler.config)
    # dtype given: from_pipe would otherwise cast the shared modules to float32 in place.
    pipe = StableDiffusionPipeline.from_pipe(base, scheduler=scheduler, dtype=base.unet.dtype)
    return Text2Image(spec, pipe)


def load_controlnet(spec: LoadSpec, bases: SharedBases) -> ControlNetText2Image:
    base = bases.get(spec.sd_base, spec.device, spec.dtype, spec.home)
    controlnet = ControlNetModel.from_pretrained(spec.source, dtype=spec.dtype).to(spec.load_device)
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
    unet = UNet2DConditionModel.from_pretrained(spec.source, subfolder="unet", dtype=base.unet.dtype)
    scheduler = scheduler_cls.from_config(scheduler_cls.load_config(spec.source, subfolder="scheduler"))
    return dict(unet=unet.to(spec.load_device), scheduler=scheduler, vae=base.vae, text_encoder=base.text_encoder,
                tokenizer=base.tokenizer, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
