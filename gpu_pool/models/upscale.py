"""Upscale: twice the width and height, sharper, with Stability AI's latent upscaler.

``StableDiffusionLatentUpscalePipeline`` with ``stabilityai/sd-x2-latent-upscaler``,
which was trained on SD1.5's latent space. Its repo holds all of its parts
(UNet, VAE, CLIP text encoder, tokenizer, Euler scheduler), so it loads on its
own and shares nothing with the SD base. It denoises a 2x latent conditioned
on the input's latent; without guidance (the default, as its model card runs
it) the prompt is not used.

The UNet halves the 2x latent at each of its down blocks, so the input's
sides must divide evenly (32 px for the real model): an image whose sides do
not is padded with its own edge pixels and the result cropped back to exactly
twice the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionLatentUpscalePipeline
from PIL import Image

from .base import NEGATIVE, SEED, LoadSpec, Output, Param, Progress, SharedBases, guidance, steps
from .sd import _Diffusion


class Upscale(_Diffusion):
    params = {"prompt": Param(str, "", help="what the image shows (used with guidance above 0)"),
              "negative_prompt": NEGATIVE, "steps": steps(20), "guidance": guidance(0.0), "seed": SEED}
    n_images = 1
    image_names = ("image",)

    @property
    def multiple(self) -> int:
        """Input sides the UNet can halve at every down block (after the VAE's factor and the 2x)."""
        vae_factor = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        return vae_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1) // 2

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        w, h = image.size
        m = self.multiple
        pad_w, pad_h = -w % m, -h % m
        if pad_w or pad_h:
            image = Image.fromarray(np.pad(np.asarray(image), ((0, pad_h), (0, pad_w), (0, 0)), mode="edge"))

        def on_step(i: int, t: Any, latents: Any) -> None:
            progress(i + 1, params["steps"])  # raises JobCancelled to stop the loop

        # The pipeline drops the prompt without guidance and the negative prompt below 1: send what it uses.
        prompt = params["prompt"] if params["guidance"] else ""
        negative = params["negative_prompt"] if params["guidance"] > 1 else ""
        generator = torch.Generator(self.device).manual_seed(params["seed"])  # the scheduler picked one if none
        result = self.pipe(prompt=prompt, negative_prompt=negative or None, image=image,
                           num_inference_steps=params["steps"], guidance_scale=params["guidance"],
                           generator=generator, callback=on_step, callback_steps=1, output_type="pil")
        out = result.images[0].convert("RGB").crop((0, 0, 2 * w, 2 * h))
        return Output(images=[out], sent={"prompt": prompt, "negative_prompt": negative})


def load_upscale(spec: LoadSpec, bases: SharedBases) -> Upscale:
    pipe = StableDiffusionLatentUpscalePipeline.from_pretrained(spec.source, dtype=spec.dtype)
    return Upscale(spec, pipe.to(spec.load_device))
