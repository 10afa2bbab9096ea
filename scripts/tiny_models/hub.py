"""The tiny models again, laid out file for file the way the real hub repos are, under ``hub/<org>/<name>``.

``save_pretrained`` of today's libraries writes a modern layout (tokenizer.json,
processor_config.json, safetensors only). The real repos are older, and a
first run on real weights meets what they hold:

- a ``model_index.json`` that lists ``safety_checker`` and ``feature_extractor`` (their folders are
  there too, and must never be read or downloaded);
- legacy ``preprocessor_config.json`` files with ``feature_extractor_type`` and an integer ``size``;
- CLIP tokenizers as ``vocab.json`` + ``merges.txt``, without ``tokenizer.json``;
- ``fp16`` variant files beside the full ones (``diffusion_pytorch_model.fp16.safetensors``);
- ``.bin`` checkpoints, and a repo with nothing else (openmmlab/upernet-convnext-small);
- a checkpoint without weights its network never uses (Intel/dpt-hybrid-midas's first fusion residual);
- big files the pool must never fetch (single-file checkpoints, TF/Flax weights, other annotators).

``tests/fakes/hub_server.py`` serves this folder as the hub; the loaders also read it directly.
Built from the tiny folders next to it (``build`` runs after sd.py and vision.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

ROOTS = {  # repo -> tiny folder it is made from
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "timbrooks/instruct-pix2pix": "pix2pix",
    "stable-diffusion-v1-5/stable-diffusion-inpainting": "inpaint",
    **{f"lllyasviel/sd-controlnet-{k}": f"controlnet-{k}" for k in
       ("canny", "mlsd", "hed", "scribble", "openpose", "seg", "depth", "normal")},
    "Salesforce/blip-image-captioning-base": "blip-caption",
    "Salesforce/blip-vqa-base": "blip-vqa",
    "CIDAS/clipseg-rd64-refined": "clipseg",
    "openmmlab/upernet-convnext-small": "upernet",
    "Intel/dpt-large": "dpt",
    "Intel/dpt-hybrid-midas": "dpt",
    "lllyasviel/Annotators": "annotators",
    "stabilityai/sd-x2-latent-upscaler": "upscaler",
}
# Repos whose UNet (or whole pipeline) ships an fp16 variant; the others are full precision only.
HAS_FP16 = {"stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-inpainting"}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
JUNK = b"not for the pool: a file it must never download or read\n" * 64


def build(out: Path) -> None:
    hub = out / "hub"
    for repo, tiny in ROOTS.items():
        folder = hub / repo
        folder.mkdir(parents=True, exist_ok=True)
        if tiny in ("sd15", "pix2pix", "inpaint"):
            _pipeline(out / tiny, folder, fp16=repo in HAS_FP16)
        elif tiny == "upscaler":
            _upscaler(out / tiny, folder)
        elif tiny.startswith("controlnet-"):
            _diffusers_model(out / tiny, folder, "", fp16=False)
        elif tiny == "annotators":
            for f in (out / tiny).iterdir():
                shutil.copy(f, folder / f.name)
            (folder / "ZoeD_M12_N.pt").write_bytes(JUNK)  # the repo holds many detectors' files
            (folder / "sk_model.pth").write_bytes(JUNK)
        else:
            _transformers_repo(out / tiny, folder, repo)


# --- Stable Diffusion ------------------------------------------------------------------------


def _pipeline(src: Path, folder: Path, fp16: bool) -> None:
    index = json.loads((src / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"], requires_safety_checker=True)
    index.pop("image_encoder", None)  # the 2022 repos predate it
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    shutil.copytree(src / "scheduler", folder / "scheduler", dirs_exist_ok=True)
    _diffusers_model(src / "unet", folder, "unet", fp16)
    _diffusers_model(src / "vae", folder, "vae", fp16)
    _text_encoder(src / "text_encoder", folder / "text_encoder", fp16)
    _clip_tokenizer(src / "tokenizer", folder / "tokenizer")
    _write_json(folder / "feature_extractor" / "preprocessor_config.json", {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3, "size": 224})
    _write_json(folder / "safety_checker" / "config.json", {"architectures": ["StableDiffusionSafetyChecker"],
                                                            "model_type": "clip"})
    (folder / "safety_checker" / "model.safetensors").write_bytes(JUNK)  # unreadable: reading it fails the load
    (folder / "safety_checker" / "pytorch_model.bin").write_bytes(JUNK)
    (folder / "v1-5-pruned-emaonly.safetensors").write_bytes(JUNK * 8)  # single-file checkpoints at the root


def _upscaler(src: Path, folder: Path) -> None:
    """stabilityai/sd-x2-latent-upscaler: a pipeline repo with no safety checker, full precision only."""
    shutil.copy(src / "model_index.json", folder / "model_index.json")
    shutil.copytree(src / "scheduler", folder / "scheduler", dirs_exist_ok=True)
    _diffusers_model(src / "unet", folder, "unet", fp16=False)
    _diffusers_model(src / "vae", folder, "vae", fp16=False)
    _text_encoder(src / "text_encoder", folder / "text_encoder", fp16=False)
    _clip_tokenizer(src / "tokenizer", folder / "tokenizer")


def _diffusers_model(src: Path, repo: Path, sub: str, fp16: bool) -> None:
    """config.json, the full safetensors, the legacy .bin, and the fp16 variant where the repo has one."""
    from diffusers.models.modeling_utils import load_state_dict

    folder = repo / sub if sub else repo
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", folder / "config.json")
    shutil.copy(src / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.safetensors")
    state = load_state_dict(str(src / "diffusion_pytorch_model.safetensors"))
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    if fp16:
        _save_half(state, folder / "diffusion_pytorch_model.fp16.safetensors")


def _text_encoder(src: Path, folder: Path, fp16: bool) -> None:
    from safetensors.torch import load_file

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", folder / "config.json")
    shutil.copy(src / "model.safetensors", folder / "model.safetensors")
    state = load_file(src / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    if fp16:
        _save_half(state, folder / "model.fp16.safetensors")


def _save_half(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path, metadata={"format": "pt"})


def _clip_tokenizer(src: Path, folder: Path) -> None:
    """vocab.json + merges.txt + the 2022 tokenizer_config.json: no tokenizer.json."""
    from scripts.tiny_models.common import write_clip_tokenizer

    write_clip_tokenizer(folder)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14", "tokenizer_class": "CLIPTokenizer", **special})


# --- transformers repos ------------------------------------------------------------------------


def _transformers_repo(src: Path, folder: Path, repo: str) -> None:
    from safetensors.torch import load_file

    shutil.copy(src / "config.json", folder / "config.json")
    state = load_file(src / "model.safetensors")
    if repo == "Intel/dpt-hybrid-midas":  # shipped without the residual its forward never uses
        state = {k: v for k, v in state.items() if not k.startswith("neck.fusion_stage.layers.0.residual_layer1.")}
    if repo != "openmmlab/upernet-convnext-small":  # that repo has a .bin and nothing else
        from safetensors.torch import save_file

        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    torch.save(state, folder / "pytorch_model.bin")
    if repo.startswith("Salesforce/"):
        (folder / "tf_model.h5").write_bytes(JUNK * 4)
    processor = json.loads((src / ("processor_config.json" if (src / "processor_config.json").exists()
                                   else "preprocessor_config.json")).read_text())
    image = processor.get("image_processor", processor)
    side = image["size"]["height"] if isinstance(image.get("size"), dict) else image["size"]
    legacy = {"do_normalize": True, "do_resize": True, "image_mean": image["image_mean"],
              "image_std": image["image_std"], "size": side}  # an integer, as 2022's feature extractors wrote
    if repo.startswith("Salesforce/"):
        legacy.update(image_processor_type="BlipImageProcessor", processor_class="BlipProcessor")
        _bert_tokenizer(src, folder)
    elif repo.startswith("CIDAS/"):
        legacy.update(feature_extractor_type="ViTFeatureExtractor", processor_class="CLIPSegProcessor", resample=2)
        _clip_tokenizer(src, folder)
    elif repo.startswith("openmmlab/"):
        legacy.update(feature_extractor_type="SegformerFeatureExtractor", reduce_labels=False, resample=2)
    else:  # Intel/dpt-*
        legacy.update(feature_extractor_type="DPTFeatureExtractor", resample=2, keep_aspect_ratio=False)
    _write_json(folder / "preprocessor_config.json", legacy)


def _bert_tokenizer(src: Path, folder: Path) -> None:
    """BLIP's tokenizer as the repos hold it: vocab.txt and a tokenizer_config.json."""
    tokens = json.loads((src / "tokenizer.json").read_text())["model"]["vocab"]
    (folder / "vocab.txt").write_text("\n".join(sorted(tokens, key=tokens.get)) + "\n")
    config = json.loads((src / "tokenizer_config.json").read_text())
    _write_json(folder / "tokenizer_config.json", {
        "do_lower_case": True, "model_max_length": config.get("model_max_length", 512),
        "tokenizer_class": "BertTokenizer", "bos_token": "[DEC]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"})
    _write_json(folder / "special_tokens_map.json", {"bos_token": "[DEC]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                                                     "pad_token": "[PAD]", "unk_token": "[UNK]",
                                                     "mask_token": "[MASK]"})


def _write_json(path: Path, data: dict) -> None:
    os.makedirs(path.parent, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
