"""A tiny random-weight FLUX.2 [klein]: transformer, VAE, scheduler, and the tiny Qwen3 as its text encoder.

    klein/                                 Flux2KleinPipeline.save_pretrained's layout
    hub/black-forest-labs/FLUX.2-klein-4B  the real repo's: model_index.json, scheduler/, transformer/ and vae/
                                           in bfloat16, text_encoder/ in two bfloat16 shards and an index,
                                           tokenizer/ with chat_template.jinja, vocab.json, merges.txt,
                                           added_tokens.json; and the root's single-file ComfyUI checkpoint
                                           and sample pictures, which the pool must never fetch nor read

The text encoder's weights are the tiny Qwen3's (scripts/tiny_models/qwen3.py, built first), as klein 4B's
are Qwen3-4B's: the pool shares one copy between the LLM and klein. Sizes follow diffusers' own
tests/pipelines/flux2 dummies, with the real VAE's four blocks (8x down, so a 64-px image is 8x8 latents,
4x4 = 16 tokens after the 2x2 patches) and a joint attention width of three Qwen3 hidden states.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .common import seeded
from .qwen3 import HIDDEN, save_hub_tokenizer, save_hub_weights

REPO = "black-forest-labs/FLUX.2-klein-4B"
# FLUX.2 [klein] 4B's scheduler_config.json
SCHEDULE = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
JUNK = b"not for the pool: a file it must never download or read\n" * 64


def build(out: Path) -> None:
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    qwen = out / "qwen3"
    text_encoder = Qwen3ForCausalLM.from_pretrained(qwen).eval()
    tokenizer = AutoTokenizer.from_pretrained(qwen)
    seeded(4)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * HIDDEN, timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False)
    vae = AutoencoderKLFlux2(
        sample_size=64, block_out_channels=(4, 4, 4, 4), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=1, norm_num_groups=2,
        use_quant_conv=False, use_post_quant_conv=False)
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULE), vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                              is_distilled=True)
    folder = out / "klein"
    pipe.save_pretrained(folder)
    _hub(folder, out / "hub" / REPO, qwen)


def _hub(src: Path, repo: Path, qwen: Path) -> None:
    from safetensors.torch import load_file, save_file

    repo.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "model_index.json", repo / "model_index.json")
    shutil.copytree(src / "scheduler", repo / "scheduler", dirs_exist_ok=True)
    for sub in ("transformer", "vae"):
        (repo / sub).mkdir(exist_ok=True)
        shutil.copy(src / sub / "config.json", repo / sub / "config.json")
        state = load_file(src / sub / "diffusion_pytorch_model.safetensors")
        save_file({k: v.to(torch.bfloat16) for k, v in state.items()},
                  repo / sub / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    save_hub_weights(src / "text_encoder", repo / "text_encoder", shards=2)
    (repo / "tokenizer").mkdir(exist_ok=True)
    save_hub_tokenizer(qwen, repo / "tokenizer", template_file=True)
    index = json.loads((repo / "model_index.json").read_text())
    index.update(_diffusers_version="0.37.0.dev0", tokenizer=["transformers", "Qwen2TokenizerFast"])
    (repo / "model_index.json").write_text(json.dumps(index, indent=2))
    (repo / "flux-2-klein-4b.safetensors").write_bytes(JUNK * 8)  # the transformer again, for ComfyUI
    for name in ("editing.jpg", "others.jpg", "realism.jpg"):
        (repo / name).write_bytes(JUNK)
