"""FLUX.2 [klein]: Klein draws, edits by instruction and composes from reference images; KleinInpaint repaints.

One klein base per (source, device, dtype), held by ``SharedBases`` as SD1.5's is:

    base (Flux2KleinPipeline, never run) ── transformer, vae, text_encoder (a Qwen3ForCausalLM), tokenizer
      ├─ Klein          Flux2KleinPipeline on the base's modules, its own scheduler
      └─ KleinInpaint   Flux2KleinInpaintPipeline on the same modules, its own scheduler

The text encoder may be the built-in LLM's own Qwen3 (``shared_qwen.py``), so nothing here casts, offloads
or compiles a pipeline (``pipe.to(dtype)``, ``enable_model_cpu_offload``): the transformer and VAE are
moved one by one at load. A scheduler keeps per-run state, so each pipeline has its own; two jobs never
run on one pipeline at once because a device's jobs run one at a time (``gpu_pool/scheduler.py``), and a
base is only shared on one device.

Klein takes 0 images (generate), 1 (edit by instruction) or 1 + up to 4 references (compose: "put the cat
from the second image on the sofa in the first"); the pipeline conditions on all of them as
``image=[PIL, ...]``. Each image adds its own tokens to every step's attention: 4,096 per megapixel. The
edited image keeps up to the output's pixels (what it shows is what is kept); references are scaled down to
``REFERENCE_PIXELS`` (0.25 MP, 1,024 tokens): enough for what a reference gives (an object, a face, a
style), and four of them cost what one 1 MP image does, where at 1 MP they would multiply a 1024² job's
attention by 25. Images must be at least 64 px a side and at most 8:1, as klein was trained.

The output is the size asked for, else the first image's fitted to about 1 MP, else 1024x1024, never over
``[limits] max_output_size``; the pipeline draws at multiples of 16 and a size between them is scaled to.
Klein 4B is distilled to 4 steps and ignores guidance (its default, 1.0, is what it was distilled at).
Klein's drawings from a prompt alone, queued together with the same size and steps, run as one batch
(``run_batch``, ``gpu_pool/batching.py``); edits and compositions run one job at a time.

KleinInpaint takes [image, mask (white = repaint), *up to 4 references]; the pipeline brings the references
to the first one's size (cropping) to batch them. It blends the kept part in latent space only, which the
VAE smears at the mask's edge and changes everywhere a little, so the original pixels are pasted back
outside the mask (the mask's grey edge blends the two).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinInpaintPipeline,
                       Flux2KleinPipeline, Flux2Transformer2DModel)
from PIL import Image
from transformers import Qwen3ForCausalLM

from gpu_pool import weights as w

from .base import (PROMPT, SEED, BadRequest, LoadSpec, Output, Param, PoolModel, Progress, SharedBases, check_params,
                   embed_once, guidance, no_progress, warm_up_batch, warm_up_inputs)
from .loading import checked

MULTIPLE = 16  # the pipeline's sides: the VAE's 8x down, then 2x2 patches
OUTPUT_PIXELS = 1024 * 1024
REFERENCE_PIXELS = 512 * 512  # each reference's pixels at most (see the module's docstring)
MAX_REFERENCES = 4
MIN_SIDE, MAX_ASPECT = 64, 8
INPAINT_STRENGTH = 1.0  # the masked part is drawn anew (remove or replace), from all the steps asked for


def _side(help_: str) -> Param:
    return Param(int, None, min=64, limit="max_output_size", multiple_of=8, help=help_)


def fit(width: int, height: int, pixels: int = OUTPUT_PIXELS, cap: int = 0) -> tuple[int, int]:
    """(width, height) scaled to about ``pixels`` (up or down), the long side at most ``cap`` (0: none),
    both sides multiples of 16 and at least 64, the aspect ratio kept as nearly as they allow."""
    scale = math.sqrt(pixels / (width * height))
    if cap:
        scale = min(scale, cap / max(width, height))
    return tuple(max(MIN_SIDE, int(side * scale) // MULTIPLE * MULTIPLE) for side in (width, height))


def check_picture(image: Image.Image, what: str) -> None:
    """Klein's limits on an input image, said the way a user can act on them."""
    wd, ht = image.size
    if min(wd, ht) < MIN_SIDE:
        raise BadRequest(f"{what} is {wd}x{ht}; FLUX.2 [klein] needs at least {MIN_SIDE} px on each side. "
                         "Send a larger image.")
    if max(wd, ht) > MAX_ASPECT * min(wd, ht):
        raise BadRequest(f"{what} is {wd}x{ht}, more than {MAX_ASPECT}:1; FLUX.2 [klein] takes images up to "
                         f"{MAX_ASPECT}:1. Crop it closer to a square.")


def shrink(image: Image.Image, pixels: int) -> Image.Image:
    """``image`` scaled down to at most ``pixels`` pixels (never up), the aspect ratio kept."""
    if image.width * image.height <= pixels:
        return image
    scale = math.sqrt(pixels / (image.width * image.height))
    size = (max(MIN_SIDE, round(image.width * scale)), max(MIN_SIDE, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def references(images: list[Image.Image], first: int) -> list[Image.Image]:
    """The reference images, checked and scaled down (``first``: the number of the first, for messages)."""
    if len(images) > MAX_REFERENCES:
        raise BadRequest(f"FLUX.2 [klein] takes up to {MAX_REFERENCES} reference images; got {len(images)}. "
                         "Send fewer.")
    out = []
    for i, image in enumerate(images):
        image = image.convert("RGB")
        check_picture(image, f"Image {first + i} (a reference)")
        out.append(shrink(image, REFERENCE_PIXELS))
    return out


class _Klein(PoolModel):
    """A klein pipeline on the shared base, run with progress per step."""

    draws = True  # the pool's SafetyChecker sees every image drawn
    n_images = None  # checked in run: the counts differ by model

    def __init__(self, spec: LoadSpec, pipe: Any):
        super().__init__(spec)
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)  # progress goes to the job, not to stderr

    def modules(self) -> dict[str, torch.nn.Module]:
        return {k: m for k, m in self.pipe.components.items() if isinstance(m, torch.nn.Module)}

    def fast_modules(self) -> dict[str, torch.nn.Module]:
        """The transformer and VAE the two klein pipelines share; never the text encoder (the LLM's Qwen3)."""
        return {"transformer": self.pipe.transformer, "vae": self.pipe.vae}

    def warm_up(self, sizes: tuple[int, ...]) -> list[int]:
        """A drawing from the prompt alone at each size (KleinInpaint: a repaint of a size x size image);
        an edit's image adds tokens, so the first edit of a size compiles (once: its shapes then turn dynamic)."""
        cap = self.spec.max_output_size or max(sizes, default=0)
        drawn = sorted({min(side, cap) // MULTIPLE * MULTIPLE for side in sizes})
        for side in drawn:
            params = {"prompt": "a warm-up", "steps": 2, "seed": 0}
            images: list[Image.Image] = []
            if "width" in self.params:
                params |= {"width": side, "height": side}
            else:
                images = warm_up_inputs(side)
            self.run(check_params(self, params, {}), images, no_progress)
        if drawn:
            warm_up_batch(self, drawn[0])  # Klein (gpu_pool/batching.py)
        return drawn

    def prompts(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": params["prompt"]}

    def _draw(self, params: dict[str, Any], progress: Progress, **kwargs: Any) -> Image.Image:
        image, = self._draw_all([params], progress, **kwargs)
        return image

    def _draw_all(self, batch: list[dict[str, Any]], progress: Progress, **kwargs: Any) -> list[Image.Image]:
        """One pipeline call for the jobs of ``batch`` (the same but for prompt and seed; one job alone:
        ``_draw``): each prompt encoded on its own and a generator per job, so each image is its job's alone."""
        def on_step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict) -> dict:
            progress(i + 1, pipe.num_timesteps)  # raises JobCancelled to stop the loop
            return callback_kwargs

        first = batch[0]
        generators = [None if p["seed"] is None else torch.Generator(self.device).manual_seed(p["seed"])
                      for p in batch]
        embeds = {"prompt_embeds": torch.cat([self._encode(p["prompt"]) for p in batch])}
        if first["guidance"] > 1 and not self.pipe.config.is_distilled:  # the pipeline's classifier-free guidance
            embeds["negative_prompt_embeds"] = self._encode("").expand(len(batch), -1, -1)
        result = self.pipe(num_inference_steps=first["steps"], guidance_scale=first["guidance"],
                           generator=generators if len(batch) > 1 else generators[0],
                           callback_on_step_end=on_step_end, output_type="pil", **embeds, **kwargs)
        return [image.convert("RGB") for image in result.images]

    def _encode(self, prompt: str) -> torch.Tensor:
        """The prompt's embeddings in the model's dtype. The pipeline would make them in its text encoder's
        ``dtype``, the dtype of its first weight: float8 once the Qwen3 is held in fp8 (``quantize``), and
        float8 embeddings fail (no float8 random numbers for the latents) and lose the prompt's detail."""
        with torch.no_grad():
            return self.pipe._get_qwen3_prompt_embeds(self.pipe.text_encoder, self.pipe.tokenizer, [prompt],
                                                      dtype=self.dtype, device=self.device)


class Klein(_Klein):
    params = {"prompt": PROMPT,
              "width": _side("pixels; default: the first image's width fitted to about 1 MP, else 1024"),
              "height": _side("pixels; default: the first image's height fitted to about 1 MP, else 1024"),
              "steps": Param(int, 4, min=1, limit="max_steps", help="diffusion steps (klein is made for 4)"),
              "guidance": guidance(1.0), "seed": SEED}
    image_names = ("image", *(f"reference {i}" for i in range(1, MAX_REFERENCES + 1)))
    batch_keeps = ("prompt", "seed")  # drawings from prompts alone batch (jobs with images never do)

    def quantizable(self) -> dict[str, torch.nn.Module]:
        """The transformer (7.2 GiB of klein 4B's 7.4); the text encoder is the shared Qwen3, quantized as the LLM."""
        return {"transformer": self.pipe.transformer}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        if len(images) > 1 + MAX_REFERENCES:
            raise BadRequest(f"{self.name} takes an image and up to {MAX_REFERENCES} reference images; got "
                             f"{len(images)} images. Send fewer.")
        first = images[0].convert("RGB") if images else None
        if first is not None:
            check_picture(first, "The image" if len(images) == 1 else "Image 1 (the one to edit)")
        width, height = self._size(params, first)
        canvas = fit(width, height, width * height)  # multiples of 16, about the size asked for
        condition = []
        if first is not None:
            condition = [shrink(first, canvas[0] * canvas[1]), *references(images[1:], 2)]
        out = self._draw(params, progress, image=condition or None, width=canvas[0], height=canvas[1])
        return self._output(out, (width, height))

    def run_batch(self, batch: list[dict[str, Any]], progress: Progress) -> list[Output]:
        """Drawings from prompts alone, the same size, steps and guidance (``gpu_pool/batching.py``), in one call."""
        width, height = self._size(batch[0], None)
        canvas = fit(width, height, width * height)
        return [self._output(out, (width, height))
                for out in self._draw_all(batch, progress, width=canvas[0], height=canvas[1])]

    @staticmethod
    def _output(image: Image.Image, size: tuple[int, int]) -> Output:
        """The drawing at the size asked for (the pipeline draws at multiples of 16)."""
        return Output(images=[image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)])

    def _size(self, params: dict[str, Any], first: Image.Image | None) -> tuple[int, int]:
        """The size asked for, the missing side(s) from the first image fitted to about 1 MP (else 1024²)."""
        default = fit(*(first.size if first else (1024, 1024)), cap=self.spec.max_output_size)
        return params["width"] or default[0], params["height"] or default[1]


class KleinInpaint(_Klein):
    params = {"prompt": Param(str, required=True, help="what to draw in the masked part (to remove: what is behind)"),
              "steps": Param(int, 4, min=1, limit="max_steps", help="diffusion steps (klein is made for 4)"),
              "guidance": guidance(1.0), "seed": SEED}
    image_names = ("image", "mask", *(f"reference {i}" for i in range(1, MAX_REFERENCES + 1)))

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        if not 2 <= len(images) <= 2 + MAX_REFERENCES:
            raise BadRequest(f"{self.name} takes an image, a mask (white = repaint) and up to {MAX_REFERENCES} "
                             f"reference images; got {len(images)} image(s).")
        original, mask = images[0].convert("RGB"), images[1].convert("L")
        check_picture(original, "The image")
        if mask.size != original.size:
            raise BadRequest(f"{self.name} needs a mask the size of the image: the image is "
                             f"{original.width}x{original.height}, the mask {mask.width}x{mask.height}; "
                             "send a mask of the same size.")
        if mask.getextrema()[1] == 0:
            raise BadRequest("The mask is all black, so there is nothing to repaint: white marks what to repaint.")
        refs = references(images[2:], 3)
        canvas = fit(*original.size, min(OUTPUT_PIXELS, original.width * original.height),
                     cap=self.spec.max_output_size)
        out = self._draw(params, progress, image=original.resize(canvas, Image.Resampling.LANCZOS),
                         mask_image=mask.resize(canvas, Image.Resampling.BILINEAR), image_reference=refs or None,
                         width=canvas[0], height=canvas[1], strength=INPAINT_STRENGTH)
        if out.size != original.size:
            out = out.resize(original.size, Image.Resampling.LANCZOS)
        return Output(images=[Image.composite(out, original, mask)])  # the original outside the mask


# --- loading ------------------------------------------------------------------------------------

TRANSFORMER = w.diffusers("transformer", full_is_16_bit=True)  # klein's repos ship bfloat16 weights
VAE = w.diffusers("vae", full_is_16_bit=True)
TEXT_ENCODER = w.transformers("text_encoder", full_is_16_bit=True)


def _base(spec: LoadSpec, bases: SharedBases) -> Flux2KleinPipeline:
    """The klein base on ``spec``'s device: loaded once, by whichever of Klein and KleinInpaint loads first."""

    def load(source: str, device: str, dtype: torch.dtype) -> Flux2KleinPipeline:
        transformer = checked(Flux2Transformer2DModel, source, dtype, TRANSFORMER, "transformer").to(device)
        embed_once(transformer.time_guidance_embed)  # a batch's images are each its job's alone
        vae = checked(AutoencoderKLFlux2, source, dtype, VAE, "vae").to(device)
        vae.enable_slicing()  # a batch decodes one image at a time: one image's peak, each image its job's alone
        text_encoder = bases.qwen.get(
            os.path.join(source, "text_encoder"), spec.device, dtype,
            lambda: checked(Qwen3ForCausalLM, source, dtype, TEXT_ENCODER, "text_encoder").to(device).eval(),
            f"{spec.name}'s text encoder")
        # the tokenizer and scheduler from the repo; the networks as loaded (from_pretrained casts nothing given)
        pipe = Flux2KleinPipeline.from_pretrained(source, transformer=transformer, vae=vae, text_encoder=text_encoder)
        _check_template(source, pipe.tokenizer)
        return pipe

    return bases.get(spec.source, spec.device, spec.dtype, spec.home, loader=load)


def _check_template(source: str, tokenizer: Any) -> None:
    """Klein reads prompts through Qwen3's chat template with thinking off (an empty think block): a plain
    ChatML template renders without it and changes every drawing, silently. Fail the load instead."""
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False,
                                          add_generation_prompt=True, enable_thinking=False)
    if "<think>" not in probe:
        raise ValueError(f"{source}/tokenizer has no Qwen3 chat template (thinking off should render an empty "
                         "<think></think> block): its prompts would be read wrongly. Check the source in config.toml.")


def _pipeline(cls: type, base: Flux2KleinPipeline) -> Any:
    """A pipeline of class ``cls`` on the base's modules, with a scheduler of its own."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(base.scheduler.config)
    return cls(scheduler=scheduler, vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
               transformer=base.transformer, is_distilled=base.config.is_distilled)


def load_klein(spec: LoadSpec, bases: SharedBases) -> Klein:
    return Klein(spec, _pipeline(Flux2KleinPipeline, _base(spec, bases)))


def load_klein_inpaint(spec: LoadSpec, bases: SharedBases) -> KleinInpaint:
    return KleinInpaint(spec, _pipeline(Flux2KleinInpaintPipeline, _base(spec, bases)))
