"""Tiny random-weight vision models: BLIP, CLIPSeg, the ControlNet annotators, UperNet, DPT.

Every folder is laid out like the hub checkpoint it stands in for, so the pool
loads it with the unmodified ``from_pretrained``:

    blip-caption/   Salesforce/blip-image-captioning-base
    blip-vqa/       Salesforce/blip-vqa-base
    clipseg/        CIDAS/clipseg-rd64-refined
    annotators/     lllyasviel/Annotators (HED, MLSD, OpenPose body/hand/face)
    upernet/        openmmlab/upernet-convnext-small
    dpt/            Intel/dpt-large and Intel/dpt-hybrid-midas
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .common import clip_tokenizer, seeded

# BERT WordPiece vocabulary for BLIP: the specials at the ids BLIP's text config uses.
BLIP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
BLIP_WORDS = ["a", "cat", "dog", "on", "the", "sofa", "what", "is", "color", "of", "in", "picture", "?", ".", ","]


def build(out: Path) -> None:
    seeded()
    _blip(out)
    _clipseg(out / "clipseg")
    _annotators(out / "annotators")
    _upernet(out / "upernet")
    _dpt(out / "dpt")


# --- BLIP --------------------------------------------------------------------


def _blip(out: Path) -> None:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = BLIP_SPECIALS + BLIP_WORDS + [c for c in chars if c not in BLIP_WORDS] + ["##" + c for c in chars]
    with tempfile.TemporaryDirectory() as tmp:  # the real repos ship vocab.txt; saving writes tokenizer.json
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer.from_pretrained(tmp, bos_token="[DEC]", model_max_length=64)
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
            pad_token_id=0, sep_token_id=3, eos_token_id=3, bos_token_id=5,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8,
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    for name, cls in (("blip-caption", BlipForConditionalGeneration), ("blip-vqa", BlipForQuestionAnswering)):
        cls(config).save_pretrained(out / name)
        processor.save_pretrained(out / name)


# --- CLIPSeg -----------------------------------------------------------------


def _clipseg(folder: Path) -> None:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    tokenizer = clip_tokenizer(folder)
    vocab = len(tokenizer)
    config = CLIPSegConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
            image_size=32, patch_size=8, hidden_act="quick_gelu",
        ),
        projection_dim=32,
        extract_layers=(0, 1, 2),
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        conditional_layer=0,
    )
    image_processor = ViTImageProcessor(
        size={"height": 32, "width": 32},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


# --- controlnet_aux annotators -----------------------------------------------


def _annotators(folder: Path) -> None:
    """The five checkpoints the HED, MLSD and OpenPose detectors read, at full architecture.

    The real files are 570 MB. Every tensor here has its real shape, but a
    large one is stored as an overlapping strided view of a few thousand random
    fp16 values drawn from the layer's own init, and ``torch.save`` writes only
    that small buffer. ``load_state_dict`` copies it into full fp32 parameters,
    so the detectors load through their unmodified ``from_pretrained``.
    """
    from controlnet_aux.hed import ControlNetHED_Apache2
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
    from controlnet_aux.open_pose.body import bodypose_model
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.hand import handpose_model

    folder.mkdir(parents=True, exist_ok=True)
    # OpenPose body/hand files hold keys without their first dotted component
    # (controlnet_aux's util.transfer adds it back); HED, MLSD and the face net use plain keys.
    strip = lambda sd: {k.split(".", 1)[1]: v for k, v in sd.items()}  # noqa: E731
    files = {
        "ControlNetHED.pth": ControlNetHED_Apache2().state_dict(),
        "mlsd_large_512_fp32.pth": MobileV2_MLSD_Large().state_dict(),
        "body_pose_model.pth": strip(bodypose_model().state_dict()),
        "hand_pose_model.pth": strip(handpose_model().state_dict()),
        "facenet.pth": FaceNet().state_dict(),
    }
    for name, state in files.items():
        torch.save({k: _compact(v) for k, v in state.items()}, folder / name)


def _compact(t: torch.Tensor, cap: int = 4096) -> torch.Tensor:
    """``t``'s shape, backed by at most about ``cap`` of its values (fp16 for floats)."""
    if t.is_floating_point():
        t = t.half()
    if t.numel() <= cap or t.dim() == 0:
        return t.clone()
    # Strides 1, 2, 3, 5, 7 ... from the last dim: neighbouring rows overlap but differ.
    primes = [1, 2, 3, 5, 7, 11, 13]
    strides = list(reversed(primes[: t.dim()]))
    need = 1 + sum((n - 1) * s for n, s in zip(t.shape, strides))
    if need >= t.numel():
        return t.clone()
    flat = t.flatten()
    if flat.numel() >= need:
        buf = flat[:need].clone()
    else:
        buf = flat.repeat(need // flat.numel() + 1)[:need].clone()
    return buf.as_strided(t.shape, strides)


# --- UperNet (ADE20K segmentation) -------------------------------------------


def _upernet(folder: Path) -> None:
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone, hidden_size=16, auxiliary_in_channels=32, auxiliary_channels=8,
        num_labels=150, pool_scales=[1, 2, 3, 6],
    )
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}, do_reduce_labels=False).save_pretrained(folder)


# --- DPT (depth) -------------------------------------------------------------


def _dpt(folder: Path) -> None:
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
        image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5],
    )
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
