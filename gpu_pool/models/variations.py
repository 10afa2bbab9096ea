"""Variations: a new image close to a given one, img2img on the shared Stable Diffusion 1.5 base.

No weights of its own: ``StableDiffusionImg2ImgPipeline.from_pipe`` over the
base that Text2Image and the ControlNet generators share on the device, with
its own scheduler (schedulers keep per-run state). ``strength`` is how far
from the input it may go: at 0.6 the layout and colours stay, the details
change; every seed gives another variation.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionImg2ImgPipeline, UniPCMultistepScheduler
from PIL import Image

from .base import NEGATIVE, SEED, LoadSpec, Output, Param, Progress, SharedBases, guidance, steps
from .sd import QUALITY, SEED_NEGATIVE, _Diffusion


class Variations(_Diffusion):
    params = {"prompt": Param(str, "", help="what the image shows (optional)"), "negative_prompt": NEGATIVE,
              "steps": steps(50), "guidance": guidance(7.5),
              "strength": Param(float, 0.6, min=0.05, max=1.0, help="how far from the image to go"), "seed": SEED}
    n_images = 1
    image_names = ("image",)

    @property
    def source(self) -> str:
        return self.spec.source or self.spec.sd_base  # the shared base's weights

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        self._check_size(image, "image")
        prompt = params["prompt"] + QUALITY if params["prompt"] else QUALITY.removeprefix(", ")
        # The pipeline takes its output size from the image; it runs int(steps * strength) steps.
        return self._run_pipe(params, progress, prompt=prompt, negative_prompt=params["negative_prompt"] or SEED_NEGATIVE,
                              image=image, strength=params["strength"])


def load_variations(spec: LoadSpec, bases: SharedBases) -> Variations:
    base = bases.get(spec.source or spec.sd_base, spec.device, spec.dtype, spec.home)
    scheduler = UniPCMultistepScheduler.from_config(base.scheduler.config)
    # dtype given: from_pipe would otherwise cast the shared modules to float32 in place (RECIPES).
    pipe = StableDiffusionImg2ImgPipeline.from_pipe(base, scheduler=scheduler, dtype=base.unet.dtype)
    return Variations(spec, pipe)
