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
- big files the pool must never fetch (single-file checkpoints, TF/Flax weights, other annotators);
- the models added since the seed (safety checker, GroundingDINO, SAM, Qwen3-VL), with the files
  their repos hold: a 2022 safety checker (.bin only, ``*_config_dict`` keys, a CLIPFeatureExtractor),
  processor configs without processor_config.json, Qwen's legacy chat_template.json, a
  video_preprocessor_config.json, bfloat16 weights with tied embeddings (no lm_head), and
  Qwen3-VL-4B's two shards and index.

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
    "CompVis/stable-diffusion-safety-checker": "safety-flags-none",
    "IDEA-Research/grounding-dino-tiny": "grounding-dino",
    "facebook/sam-vit-huge": "sam",
    "facebook/sam-vit-base": "sam",
    "Qwen/Qwen3-VL-2B-Instruct": "llm",
    "Qwen/Qwen3-VL-4B-Instruct": "llm",  # the next size up: the same files, its weights in two shards
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
        elif tiny in LATER:
            LATER[tiny](out / tiny, folder, repo)
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


# --- the models added since the seed ---------------------------------------------------------
# Their file lists: grounding-dino-tiny from a published manifest of its snapshot (a2bb814) plus
# its pytorch_model.bin; Qwen3-VL-2B-Instruct from published listings of its snapshot (one
# 4.26 GB model.safetensors, chat_template.json, no chat_template.jinja nor processor_config.json);
# Qwen3-VL-4B-Instruct's model-0000{1,2}-of-00002.safetensors from published paths. Not verified
# file for file (no stored copy of the repos): that the safety checker's main branch still holds
# no model.safetensors (tools fetch one from its refs/pr/41), its config's *_config_dict keys, SAM's
# tf_model.h5, GroundingDINO's added_tokens.json content, and whether Qwen's tokenizer_config.json
# also carries a chat template (here it does not, so the chat needs chat_template.json).


def _state(src: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(src / "model.safetensors")


def _safety_checker(src: Path, folder: Path, repo: str) -> None:
    """Saved in 2022: pytorch_model.bin only, a CLIPFeatureExtractor, the config as transformers 4.22 wrote it."""
    from transformers import CLIPTextConfig, CLIPVisionConfig

    config = json.loads((src / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype", "float32")
    config["transformers_version"] = None
    # what differs from the defaults, which transformers applies over text_config and vision_config
    for part, cls in (("text", CLIPTextConfig), ("vision", CLIPVisionConfig)):
        default = cls().to_dict()
        config[f"{part}_config_dict"] = {k: v for k, v in config[f"{part}_config"].items() if default.get(k) != v}
    _write_json(folder / "config.json", config)
    torch.save(_state(src), folder / "pytorch_model.bin")
    side = json.loads((src / "preprocessor_config.json").read_text())["size"]["shortest_edge"]
    _write_json(folder / "preprocessor_config.json", {
        "crop_size": side, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3, "size": side})


def _weights_and_processor(src: Path, folder: Path, processor: str) -> None:
    """config.json, model.safetensors beside pytorch_model.bin, and preprocessor_config.json naming its processor."""
    shutil.copy(src / "config.json", folder / "config.json")
    shutil.copy(src / "model.safetensors", folder / "model.safetensors")
    torch.save(_state(src), folder / "pytorch_model.bin")
    config = json.loads((src / "preprocessor_config.json").read_text())
    if processor == "SamProcessor":  # SAM's 2023 config predates the mask sizes
        config = {k: v for k, v in config.items() if k not in ("mask_size", "mask_pad_size")}
    _write_json(folder / "preprocessor_config.json", {**config, "processor_class": processor})


def _grounding_dino(src: Path, folder: Path, repo: str) -> None:
    """Weights both ways, a BERT tokenizer as vocab.txt and tokenizer.json, the 2024 tokenizer configs."""
    _weights_and_processor(src, folder, "GroundingDinoProcessor")
    shutil.copy(src / "vocab.txt", folder / "vocab.txt")
    shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
    vocab = (src / "vocab.txt").read_text().split("\n")
    special = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
               "unk_token": "[UNK]"}
    ids = {t: vocab.index(t) for t in special.values()}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "added_tokens.json", ids)
    model_max_length = json.loads((src / "tokenizer_config.json").read_text())["model_max_length"]
    _write_json(folder / "tokenizer_config.json", {
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for t, i in ids.items()},
        "clean_up_tokenization_spaces": True, "do_basic_tokenize": True, "do_lower_case": True,
        "model_max_length": model_max_length, "never_split": None, "strip_accents": None,
        "tokenize_chinese_chars": True, "tokenizer_class": "BertTokenizer", **special})


def _sam(src: Path, folder: Path, repo: str) -> None:
    """Weights three ways (TensorFlow's never read) and SamImageProcessor's 2023 config."""
    _weights_and_processor(src, folder, "SamProcessor")
    (folder / "tf_model.h5").write_bytes(JUNK * 4)


def _qwen3_vl(src: Path, folder: Path, repo: str) -> None:
    """Qwen's layout: bfloat16 weights with the output layer tied to the embeddings (no lm_head), the
    config as transformers 4.57 wrote it (rope_scaling), the chat template in the legacy
    chat_template.json, separate image and video processor configs, vocab.json + merges.txt beside
    tokenizer.json; the 4B's weights in two shards named by an index."""
    from safetensors.torch import save_file

    config = json.loads((src / "config.json").read_text())
    text = config["text_config"]
    rope = text.pop("rope_parameters")
    text.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope, tie_word_embeddings=True, dtype="bfloat16")
    config["vision_config"].pop("rope_parameters", None)
    config.update(tie_word_embeddings=True, dtype="bfloat16", transformers_version="4.57.0.dev0")
    _write_json(folder / "config.json", config)
    shutil.copy(src / "generation_config.json", folder / "generation_config.json")
    state = {k: v.to(torch.bfloat16) for k, v in _state(src).items() if k != "lm_head.weight"}
    if repo.endswith("-2B-Instruct"):
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        names = sorted(state)
        halves = {f"model-0000{i}-of-00002.safetensors": names[(i - 1) * len(names) // 2: i * len(names) // 2]
                  for i in (1, 2)}
        for shard, keys in halves.items():
            save_file({k: state[k] for k in keys}, folder / shard, metadata={"format": "pt"})
        _write_json(folder / "model.safetensors.index.json", {
            "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
            "weight_map": {k: shard for shard, keys in halves.items() for k in keys}})
    _write_json(folder / "chat_template.json", {"chat_template": (src / "chat_template.jinja").read_text()})
    processor = json.loads((src / "processor_config.json").read_text())
    _write_json(folder / "preprocessor_config.json", {**processor["image_processor"],
                                                      "image_processor_type": "Qwen2VLImageProcessorFast",
                                                      "processor_class": "Qwen3VLProcessor"})
    _write_json(folder / "video_preprocessor_config.json", {**processor["video_processor"],
                                                            "processor_class": "Qwen3VLProcessor"})
    tokenizer = json.loads((src / "tokenizer.json").read_text())
    shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
    _write_json(folder / "vocab.json", tokenizer["model"]["vocab"])
    merges = tokenizer["model"]["merges"]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(
        f"{' '.join(m) if isinstance(m, list) else m}\n" for m in merges))
    added = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
             for t in tokenizer["added_tokens"]}
    _write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": False, "added_tokens_decoder": added, "bos_token": None,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 262144, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None})


LATER = {"safety-flags-none": _safety_checker, "grounding-dino": _grounding_dino, "sam": _sam, "llm": _qwen3_vl}
