"""Upscale: twice the width and height, sharper, with Stability AI's latent upscaler.

``StableDiffusionLatentUpscalePipeline`` with ``stabilityai/sd-x2-latent-upscaler``,
which was trained on SD1.5's latent space. Its repo holds all of its parts
(UNet, VAE, CLIP text encoder, tokenizer, Euler scheduler), so it loads on its
own and shares nothing with the SD base. It denoises a 2x latent conditioned
on the input's latent; without guidance (the default, as its model card runs
it) the prompt is not used.

The input is upscaled as it comes (the core sizes it so that the result fits
``[limits] max_output_size``), not fitted to the working size. The UNet halves
the 2x latent at each of its down blocks, so the input's sides must divide
evenly (32 px for the real model): an image whose sides do not is padded with
its own edge pixels and the result cropped back to exactly twice the input.
Results over 768 px decode the VAE in tiles, as the SD tools do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionLatentUpscalePipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel

from gpu_pool import weights as w

from .base import NEGATIVE, SEED, LoadSpec, Output, Param, Progress, SharedBases, guidance, steps
from .loading import checked
from .sd import TILE_OVER, _Diffusion, _vae_tiling


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

    def prompts(self, params: dict[str, Any]) -> dict[str, Any]:
        # The pipeline drops the prompt without guidance, and the negative prompt at guidance 1 or less.
        return {"prompt": params["prompt"] if params["guidance"] else "",
                "negative_prompt": params["negative_prompt"] if params["guidance"] > 1 else ""}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        w_in, h_in = image.size
        m = self.multiple
        pad_w, pad_h = -w_in % m, -h_in % m
        if pad_w or pad_h:
            image = Image.fromarray(np.pad(np.asarray(image), ((0, pad_h), (0, pad_w), (0, 0)), mode="edge"))

        def on_step(i: int, t: Any, latents: Any) -> None:
            progress(i + 1, params["steps"])  # raises JobCancelled to stop the loop

        sent = self.prompts(params)
        seed = params["seed"]  # the pool's scheduler picks one when the job gives none
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        with _vae_tiling(self.pipe.vae, 2 * max(image.size) > TILE_OVER):
            result = self.pipe(prompt=sent["prompt"], negative_prompt=sent["negative_prompt"] or None, image=image,
                               num_inference_steps=params["steps"], guidance_scale=params["guidance"],
                               generator=generator, callback=on_step, callback_steps=1, output_type="pil")
        return Output(images=[result.images[0].convert("RGB").crop((0, 0, 2 * w_in, 2 * h_in))])


def load_upscale(spec: LoadSpec, bases: SharedBases) -> Upscale:
    """Each network on its own (its fp16 variant where the repo has one, a loud failure on a wrong checkpoint),
    then the pipeline with the repo's tokenizer and scheduler."""
    unet = checked(UNet2DConditionModel, spec.source, spec.dtype, w.diffusers("unet"), "unet")
    vae = checked(AutoencoderKL, spec.source, spec.dtype, w.diffusers("vae"), "vae")
    text_encoder = checked(CLIPTextModel, spec.source, spec.dtype, w.transformers("text_encoder"), "text_encoder")
    pipe = StableDiffusionLatentUpscalePipeline.from_pretrained(spec.source, unet=unet, vae=vae,
                                                                text_encoder=text_encoder)
    return Upscale(spec, pipe.to(spec.load_device))
