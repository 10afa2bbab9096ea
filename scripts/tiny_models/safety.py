"""Tiny random-weight safety checkers whose verdict is fixed by their own thresholds.

Laid out like ``CompVis/stable-diffusion-safety-checker`` (a CLIPConfig, the
weights of diffusers' ``StableDiffusionSafetyChecker``, a CLIP image
processor), so the pool loads them with the same ``from_pretrained``. The
checker flags an image when cos(image, concept) is above the concept's
threshold; cosines lie in [-1, 1], so thresholds saved in the weights decide
the answer whatever the random tower sees:

    safety-flags-all/    every threshold -2: every image is flagged
    safety-flags-none/   every threshold +2: no image is flagged
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import seeded

THRESHOLDS = {"safety-flags-all": -2.0, "safety-flags-none": 2.0}


def build(out: Path) -> None:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        # unused by the checker, but the real config has one: small, with its special ids inside the vocabulary
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=62, eos_token_id=63,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    for folder, threshold in THRESHOLDS.items():
        seeded()
        model = StableDiffusionSafetyChecker(config)
        with torch.no_grad():  # the real concept embeddings are learned; random ones are as good here
            model.concept_embeds.normal_()
            model.special_care_embeds.normal_()
            model.concept_embeds_weights.fill_(threshold)
            model.special_care_embeds_weights.fill_(threshold)
        model.save_pretrained(out / folder)
        processor.save_pretrained(out / folder)
