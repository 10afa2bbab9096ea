"""Tiny random-weight Stable Diffusion 1.5 family: base, InstructPix2Pix, inpainting, eight ControlNets.

Each folder is laid out like its hub repo (``save_pretrained``), so the pool
loads it with the same ``from_pretrained`` calls. The architectures are the
real ones shrunk (64x64 images, 8x8 latents, CLIP hidden size 32); the VAE and
text encoder match across the three pipelines, as SD1.5's do, so the pool can
share them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from scripts.tiny_models.common import clip_tokenizer, seeded

# The scheduler numbers every SD1.5-derived checkpoint ships with.
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                     beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1)

# ControlNet folder names, as in lllyasviel/sd-controlnet-*.
CONTROLNETS = ["canny", "mlsd", "hed", "scribble", "openpose", "seg", "depth", "normal"]


def _unet(in_channels: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )


def _controlnet():
    from diffusers import ControlNetModel

    # The UNet's down path; four conditioning convs = three stride-2 steps, the VAE's factor of 8.
    cn = ControlNetModel(
        in_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32, conditioning_channels=3, conditioning_embedding_out_channels=(16, 16, 16, 16),
    )
    # Fresh ControlNets start with zero output convs (no effect at all); a trained one has
    # weights there, and so does this one, so a test can see the condition image matter.
    for conv in [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
        torch.nn.init.normal_(conv.weight, std=0.05)
    return cn


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=32, sample_size=64,
    )


def _text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    ))


def build(out: Path) -> None:
    """Write sd15/, pix2pix/, inpaint/ and controlnet-*/ under ``out``."""
    from diffusers import (DDIMScheduler, EulerAncestralDiscreteScheduler, PNDMScheduler,
                           StableDiffusionInpaintPipeline, StableDiffusionInstructPix2PixPipeline,
                           StableDiffusionPipeline)

    seeded()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(Path(tmp))
    shared = dict(vae=_vae(), text_encoder=_text_encoder(len(tokenizer)), tokenizer=tokenizer,
                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    # Scheduler classes and options as the hub repos have them.
    pipelines = {
        "sd15": (StableDiffusionPipeline, 4,
                 PNDMScheduler(**SD15_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False)),
        "pix2pix": (StableDiffusionInstructPix2PixPipeline, 8, EulerAncestralDiscreteScheduler(**SD15_SCHEDULE)),
        "inpaint": (StableDiffusionInpaintPipeline, 9,
                    DDIMScheduler(**SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False)),
    }
    for folder, (cls, in_channels, scheduler) in pipelines.items():
        cls(unet=_unet(in_channels), scheduler=scheduler, **shared).save_pretrained(out / folder)
    for kind in CONTROLNETS:
        _controlnet().save_pretrained(out / f"controlnet-{kind}")
