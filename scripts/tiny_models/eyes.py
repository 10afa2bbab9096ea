"""Tiny random-weight Florence-2, SAM 2.1 and Depth Anything V2, laid out like their hub repos:

    florence2/        florence-community/Florence-2-base (transformers-native; MIT)
    sam2/             facebook/sam2.1-hiera-base-plus (its transformers files; Apache-2.0)
    depth-anything/   depth-anything/Depth-Anything-V2-Small-hf (Apache-2.0)

and again under ``hub/<repo>`` with the files the pool must never fetch beside them
(SAM 2.1's original ``.pt`` checkpoint and ``.yaml``, the model cards).

The layouts, as the repos hold them:

- Florence-2: as transformers' conversion script saved it (float16 weights without the tied
  ``lm_head``; a CLIP image processor in ``preprocessor_config.json`` with ``image_seq_length``;
  ``processor_config.json`` with the post-processor's task rules; a BART tokenizer with Florence's
  1,024 added tokens and ``<image>`` after them). Its generation config beams 3 with no repeated 3-grams.
- SAM 2.1: a ``sam2_video`` config (``Sam2Model`` reads it), the image processor in
  ``preprocessor_config.json``, the video one in ``video_preprocessor_config.json``, and a
  95-byte ``processor_config.json`` naming ``Sam2VideoProcessor``.
- Depth Anything V2 Small: a DINOv2 backbone config, a DPT image processor that keeps the aspect
  ratio at multiples of 14.

The tiny SAM 2.1's mask decoder has larger weights than their init, so its masks are sure of most pixels
either way and differ from prompt to prompt (at the init scale every pixel sits at the cut-off).

Random weights say nothing, so the tiny Florence-2 is made to say one thing whatever it is shown
(``SAYS``): "red car" and a box at ``BOX`` (in Florence's 1,000 location bins). Its decoder's
residual branches are zeroed, so what it predicts at each position comes from that position's
embedding alone, set to the embedding of the token wanted there. Captions and OCR read the words,
grounding reads the phrase and its box, and generation stops at ``</s>`` after a few tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .common import _bytes_to_unicode, seeded

HUB = {"florence-community/Florence-2-base": "florence2", "facebook/sam2.1-hiera-base-plus": "sam2",
       "depth-anything/Depth-Anything-V2-Small-hf": "depth-anything"}
JUNK = b"not for the pool: a file it must never download or read\n" * 64
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# Florence-2's added tokens, in the order its tokenizer holds them (ids 50265 ... 51288 in the real one),
# then the image token the transformers port added (51289).
FLORENCE_TOKENS = (["<od>", "</od>", "<ocr>", "</ocr>"] + [f"<loc_{i}>" for i in range(1000)]
                   + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
                      "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
                      "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>"])
WORDS = ["red", "car", "the", "a", "what", "does", "image", "describe", "locate", "phrases", "in", "caption", "text"]
BOX = (250, 300, 750, 700)  # x0, y0, x1, y1 in bins of 1/1000 of the image
SAYS = ["Ġred", "Ġcar", *(f"<loc_{b}>" for b in BOX)]
# The post-processor's task rules, as transformers' conversion script wrote them into processor_config.json.
BANNED_GROUNDING = [
    "it", "I", "me", "mine", "you", "your", "yours", "he", "him", "his", "she", "her", "hers", "they", "them",
    "their", "theirs", "one", "oneself", "we", "us", "our", "ours", "you", "your", "yours", "they", "them",
    "their", "theirs", "mine", "yours", "his", "hers", "its", "ours", "yours", "theirs", "myself", "yourself",
    "himself", "herself", "itself", "ourselves", "yourselves", "themselves", "this", "that", "these", "those",
    "who", "whom", "whose", "which", "what", "who", "whom", "whose", "which", "that", "all", "another", "any",
    "anybody", "anyone", "anything", "each", "everybody", "everyone", "everything", "few", "many", "nobody",
    "none", "one", "several", "some", "somebody", "someone", "something", "each other", "one another", "myself",
    "yourself", "himself", "herself", "itself", "ourselves", "yourselves", "themselves", "the image", "image",
    "images", "the", "a", "an", "a group", "other objects", "lots", "a set"]
POST_PROCESSOR_CONFIG = {
    "ocr": {"pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
            "area_threshold": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": BANNED_GROUNDING},
    "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {}, "polygons": {}, "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def build(out: Path) -> None:
    seeded(21)
    _florence(out / "florence2")
    _sam2(out / "sam2")
    _depth_anything(out / "depth-anything")
    for repo, tiny in HUB.items():
        folder = out / "hub" / repo
        shutil.copytree(out / tiny, folder, dirs_exist_ok=True)
        (folder / "README.md").write_text(f"# {repo}\n\nA tiny random-weight stand-in.\n")
    sam = out / "hub" / "facebook/sam2.1-hiera-base-plus"
    (sam / "sam2.1_hiera_base_plus.pt").write_bytes(JUNK * 8)  # the original checkpoint: never fetched
    (sam / "sam2.1_hiera_b+.yaml").write_bytes(JUNK)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# --- Florence-2 ------------------------------------------------------------------------------


def bart_tokenizer(folder: Path):
    """A byte-level BPE tokenizer laid out like BART's (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last), whole
    tokens for ``WORDS`` after a space, then Florence-2's added tokens and ``<image>``; saved into ``folder``."""
    from transformers import AddedToken, BartTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = ["<s>", "<pad>", "</s>", "<unk>", *chars]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = ["Ġ", *word]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            if pair[0] + pair[1] not in vocab:
                vocab.append(pair[0] + pair[1])
            pieces = [pair[0] + pair[1], *pieces[2:]]
    vocab.append("<mask>")
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", {t: i for i, t in enumerate(vocab)})
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = BartTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=1024,
                              extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_special_tokens({"additional_special_tokens": FLORENCE_TOKENS}, replace_extra_special_tokens=False)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    return tokenizer


def _florence(folder: Path) -> None:
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    tokenizer = bart_tokenizer(folder)
    d = 32
    config = Florence2Config(
        text_config=dict(model_type="bart", vocab_size=len(tokenizer), d_model=d, max_position_embeddings=256,
                         encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                         encoder_ffn_dim=37, decoder_ffn_dim=37, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                         decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2),
        vision_config=dict(depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3], patch_prenorm=[False],
                           embed_dim=[16], num_heads=[1], num_groups=[1], window_size=4, projection_dim=d,
                           max_position_embeddings=16),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Florence2ForConditionalGeneration(config).eval()
    _says(model, [tokenizer.convert_tokens_to_ids(t) for t in SAYS])
    model.to(torch.float16).save_pretrained(folder)  # the hub's weights are float16
    side = 32  # 8x8 patches after the stride of 4, and one pooled token: 65 image tokens
    square = {"height": side, "width": side}
    image_processor = CLIPImageProcessor(size=square, crop_size=square, do_center_crop=False, resample=3,
                                         image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    image_processor.image_seq_length = (side // 4) ** 2 + 1
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   post_processor_config=POST_PROCESSOR_CONFIG)
    processor.save_pretrained(folder)
    _split_processor_config(folder, "Florence2Processor")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    _write_json(folder / "tokenizer_config.json", {**config, "tokenizer_class": "BartTokenizer"})  # as BART's repos
    _write_json(folder / "generation_config.json", {
        "bos_token_id": 0, "decoder_start_token_id": 2, "early_stopping": True, "eos_token_id": 2,
        "forced_bos_token_id": 0, "forced_eos_token_id": 2, "no_repeat_ngram_size": 3, "num_beams": 3,
        "pad_token_id": 1})


@torch.no_grad()
def _says(model, says: list[int]) -> None:
    """Make the decoder say ``<s>`` + ``says`` + ``</s>`` whatever its input (see the module docstring)."""
    embeddings = model.get_input_embeddings().weight  # tied to the output layer
    embeddings.normal_()
    embeddings -= embeddings.mean(dim=1, keepdim=True)  # the layer norms keep a zero-mean vector's direction
    embeddings /= embeddings.norm(dim=1, keepdim=True)  # equal norms: a token's own embedding scores highest
    decoder = model.model.language_model.decoder
    for layer in decoder.layers:  # residual branches off: each position keeps its own embedding
        for linear in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
    eos = model.config.text_config.eos_token_id
    wanted = [model.config.text_config.bos_token_id, *says]  # position p predicts token p + 1
    positions = decoder.embed_positions.weight  # offset 2, as BART's learned positions
    for p in range(positions.shape[0] - 2):
        positions[p + 2] = 20 * embeddings[wanted[p] if p < len(wanted) else eos]


def _split_processor_config(folder: Path, processor_class: str) -> None:
    """transformers 5 saves one processor_config.json; the repos hold the image processor's settings in
    preprocessor_config.json (and a video processor's in video_preprocessor_config.json) beside it."""
    config = json.loads((folder / "processor_config.json").read_text())
    _write_json(folder / "preprocessor_config.json",
                {**config.pop("image_processor"), "processor_class": processor_class})
    if "video_processor" in config:
        _write_json(folder / "video_preprocessor_config.json",
                    {**config.pop("video_processor"), "processor_class": processor_class})
    _write_json(folder / "processor_config.json", config)


# --- SAM 2.1 ---------------------------------------------------------------------------------


def _sam2(folder: Path) -> None:
    from transformers import (Sam2HieraDetConfig, Sam2ImageProcessor, Sam2VideoConfig, Sam2VideoModel,
                              Sam2VideoProcessor, Sam2VideoVideoProcessor, Sam2VisionConfig)

    side = 64
    backbone = Sam2HieraDetConfig(hidden_size=12, image_size=side, blocks_per_stage=[1, 1, 2, 1],
                                  embed_dim_per_stage=[12, 24, 48, 96], num_attention_heads_per_stage=[1, 1, 1, 1],
                                  window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[3],
                                  window_positional_embedding_background_size=[2, 2])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[96, 48, 24, 12],
                              backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=32)
    config = Sam2VideoConfig(
        vision_config=vision, prompt_encoder_config=dict(hidden_size=32, image_size=side, patch_size=16),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=side, memory_attention_hidden_size=32, memory_encoder_hidden_size=16,
        memory_encoder_output_channels=16, mask_downsampler_embed_dim=16, memory_fuser_embed_dim=16,
        memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=32)
    model = Sam2VideoModel(config).eval()
    with torch.no_grad():  # random weights at their init scale give logits within 0.02 of SAM's cut-off
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.normal_(0, 3)
        model.mask_decoder.upscale_conv2.weight.normal_(0, 3)
        model.mask_decoder.conv_s0.weight.normal_(0, 3)
    model.save_pretrained(folder)
    image_processor = Sam2ImageProcessor(size={"height": side, "width": side}, mask_size={"height": 16, "width": 16})
    Sam2VideoProcessor(image_processor, Sam2VideoVideoProcessor(size={"height": side, "width": side}),
                       target_size=side).save_pretrained(folder)
    _split_processor_config(folder, "Sam2VideoProcessor")
    config = json.loads((folder / "preprocessor_config.json").read_text())  # saved when only the fast one was
    _write_json(folder / "preprocessor_config.json", {**config, "image_processor_type": "Sam2ImageProcessorFast"})


# --- Depth Anything V2 Small -----------------------------------------------------------------


def _depth_anything(folder: Path) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=1, patch_size=14,
                            image_size=56, out_indices=[1, 2, 3, 4], reshape_hidden_states=False, layerscale_value=1.0)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                 head_hidden_size=8, reassemble_hidden_size=32, patch_size=14,
                                 depth_estimation_type="relative")
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
                      do_pad=False, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(folder)
