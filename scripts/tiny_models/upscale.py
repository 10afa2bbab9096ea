"""Tiny random-weight Stability AI latent upscaler (stabilityai/sd-x2-latent-upscaler), laid out like the hub repo.

The real repo holds its own UNet (k-diffusion blocks: 8 input channels, the
noisy latent and the low-resolution latent; 5 output channels, the last one
a variance the pipeline drops), VAE (SD's architecture), CLIP text encoder,
tokenizer and Euler scheduler. The UNet's time condition is the noise-level
embedding (128) plus the text encoder's pooled output, so its size follows
the text encoder's hidden size. Variations needs nothing here: it runs on the
tiny sd15 base.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from scripts.tiny_models.common import clip_tokenizer, seeded
from scripts.tiny_models.sd import _text_encoder, _vae

NOISE_LEVEL_EMBED = 128  # the pipeline's fixed noise-level embedding, concatenated before the pooled text
TEXT_HIDDEN = 32  # the tiny CLIP text encoder's hidden size (sd._text_encoder)


def _unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        in_channels=8, out_channels=5, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"), mid_block_type=None,
        up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"), act_fn="gelu",
        norm_num_groups=None, cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8,
        time_cond_proj_dim=NOISE_LEVEL_EMBED + TEXT_HIDDEN, resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier", timestep_post_act="gelu", conv_in_kernel=1, conv_out_kernel=1,
    )


def build(out: Path) -> None:
    """Write upscaler/ under ``out``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline

    seeded(2)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(Path(tmp))
    # The hub repo's scheduler: SD's noise schedule, the pipeline does the k-diffusion preconditioning.
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", prediction_type="sample", steps_offset=1)
    pipe = StableDiffusionLatentUpscalePipeline(vae=_vae(), text_encoder=_text_encoder(len(tokenizer)),
                                                tokenizer=tokenizer, unet=_unet(), scheduler=scheduler)
    pipe.save_pretrained(out / "upscaler")
