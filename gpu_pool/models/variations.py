"""Variations: a new image close to a given one, img2img on the shared Stable Diffusion 1.5 base.

No weights of its own: ``StableDiffusionImg2ImgPipeline.from_pipe`` over the
base that Text2Image and the ControlNet generators share on the device, with
its own scheduler (schedulers keep per-run state). ``strength`` is how far
from the input it may go: at 0.6 the layout and colours stay, the details
change; every seed gives another variation. ``steps`` counts the denoising
steps that run (img2img runs ``strength`` of a schedule, so the schedule is
``steps / strength`` long): 30 by default, as SD's 50 at 0.6. Like the other SD tools it
works at ``[limits] working_size`` and gives the result back at the input's
size when that was larger.
"""

from __future__ import annotations

import math
from typing import Any

from diffusers import StableDiffusionImg2ImgPipeline, UniPCMultistepScheduler
from PIL import Image

from .base import NEGATIVE, SEED, LoadSpec, Output, Param, Progress, SharedBases, guidance, steps
from .sd import QUALITY, SEED_NEGATIVE, _Diffusion


class Variations(_Diffusion):
    params = {"prompt": Param(str, "", help="what the image shows (optional)"), "negative_prompt": NEGATIVE,
              "steps": steps(30), "guidance": guidance(7.5),
              "strength": Param(float, 0.6, min=0.05, max=1.0, help="how far from the image to go"), "seed": SEED}
    n_images = 1
    image_names = ("image",)
    sized = False  # its size is its image's

    @property
    def source(self) -> str:
        return self.spec.source or self.spec.sd_base  # the shared base's weights

    def prompts(self, params: dict[str, Any]) -> dict[str, Any]:
        prompt = params["prompt"] + QUALITY if params["prompt"] else QUALITY.removeprefix(", ")
        return {"prompt": prompt, "negative_prompt": params["negative_prompt"] or SEED_NEGATIVE}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        original = images[0].convert("RGB")
        image, box = self._fit(original, Image.Resampling.LANCZOS)
        # The pipeline runs int(schedule * strength) steps, from the image's latents noised that far.
        schedule = dict(params, steps=math.ceil(params["steps"] / params["strength"]))
        out, = self._run_pipe(schedule, progress, image.width, image.height, image=image, strength=params["strength"],
                              **self.prompts(params))
        return self._back(out, original.size, box)


def load_variations(spec: LoadSpec, bases: SharedBases) -> Variations:
    base = bases.get(spec.source or spec.sd_base, spec.device, spec.dtype, spec.home)
    scheduler = UniPCMultistepScheduler.from_config(base.scheduler.config)
    # dtype given: from_pipe would otherwise cast the shared modules to float32 in place (RECIPES).
    pipe = StableDiffusionImg2ImgPipeline.from_pipe(base, scheduler=scheduler, dtype=base.unet.dtype)
    return Variations(spec, pipe)
