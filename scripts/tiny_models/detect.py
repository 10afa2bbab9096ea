"""Tiny GroundingDINO and SAM, laid out like their hub checkpoints:

    grounding-dino/   IDEA-Research/grounding-dino-tiny (Swin backbone, BERT text tower)
    sam/              facebook/sam-vit-huge and facebook/sam-vit-base

Random weights find nothing above the seed's thresholds, so a few weights are
set by hand to make both answers testable through the real thresholds:

- The detector "sees everything but unicorns": every query scores about 1.0
  when the prompt holds a word, and about 0.0 when its only words are "the",
  "a", "an" or "unicorn" (or unknown to the vocabulary). The text features are
  made to depend on the token alone (BERT's and the text enhancer's residual
  branches zeroed, no position embeddings), one feature dimension carries +1
  or -1 per token, and the decoder's queries all point along that dimension.
- SAM predicts the whole image for every prompt, sure of it (predicted IoU 1.0,
  mask logits far from the cut-off), so segmenting everything finds one region.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from .common import seeded

# BERT's uncased layout where GroundingDINO expects it: [CLS] 101, [SEP] 102,
# "." 1012 and "?" 1029 are the phrase delimiters its model hard-codes.
_PUNCT = list(string.punctuation)
_LETTERS = list(string.ascii_lowercase)
WORDS = ["the", "a", "an", "unicorn", "dog", "cat", "box", "ball", "car", "yellow", "red", "blue", "main", "object"]
UNSEEN = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_PUNCT, "the", "a", "an", "unicorn"}
FEATURE = 0  # the text feature dimension that says "seen"


def bert_vocab() -> list[str]:
    head = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    head += [f"[unused{i}]" for i in range(99, 99 + 999 - len(head))]
    digits = list(string.digits)
    slash = _PUNCT.index("/") + 1  # from 999: ! " # ... . / 0-9 : ; < = > ? @ ..., as in bert-base-uncased
    vocab = head + _PUNCT[:slash] + digits + _PUNCT[slash:] + _LETTERS + WORDS + ["##" + c for c in _LETTERS + digits]
    assert vocab.index(".") == 1012 and vocab.index("?") == 1029 and vocab.index("[CLS]") == 101
    return list(dict.fromkeys(vocab))


def build(out: Path) -> None:
    seeded(16)
    _grounding_dino(out / "grounding-dino")
    _sam(out / "sam")


# --- GroundingDINO -----------------------------------------------------------


def _grounding_dino(folder: Path) -> None:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        SwinConfig,
    )

    vocab = bert_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer.from_pretrained(folder, model_max_length=64)
    d = 32
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 2, 2], window_size=2, out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=d, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=64),
        d_model=d, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=3, max_text_len=64,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    _sees_everything_but_unicorns(model, [t in UNSEEN or t.startswith("[unused") for t in vocab])
    model.save_pretrained(folder)
    # The hub's layout: preprocessor_config.json, vocab.txt and the tokenizer's files (no processor_config.json).
    # 128 px: a square image still has 2x2 cells at the last feature level (1x1 breaks its GroupNorm)
    GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@torch.no_grad()
def _sees_everything_but_unicorns(model, unseen: list[bool]) -> None:
    """Set the weights described in the module docstring."""
    inner = model.model
    d = inner.config.d_model
    bert = inner.text_backbone
    words = bert.embeddings.word_embeddings.weight
    words.normal_(0, 0.1)
    words[:, FEATURE] = torch.tensor([-4.0 if u else 4.0 for u in unseen])
    bert.embeddings.position_embeddings.weight.zero_()
    bert.embeddings.token_type_embeddings.weight.zero_()
    for layer in bert.encoder.layer:  # residual branches off: each token keeps its own embedding
        for dense in (layer.attention.output.dense, layer.output.dense):
            dense.weight.zero_()
            dense.bias.zero_()
    inner.text_projection.weight.copy_(torch.eye(d))
    inner.text_projection.bias.zero_()
    for layer in inner.encoder.layers:
        layer.fusion_layer.text_param.zero_()
        enhancer = layer.text_enhancer_layer
        for linear in (enhancer.self_attn.out_proj, enhancer.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
    last = inner.encoder.layers[-1].text_enhancer_layer.layer_norm_after
    last.weight.zero_()
    last.weight[FEATURE] = 2.0  # text feature: about +11 for a seen token, -11 for an unseen one
    last.bias.zero_()
    norm = inner.decoder.layer_norm  # every query: along FEATURE only
    norm.weight.zero_()
    norm.bias.zero_()
    norm.bias[FEATURE] = 1.0
    for head in [*model.bbox_embed, *inner.decoder.bbox_embed]:  # boxes: the query's reference, grown
        head.layers[-1].weight.zero_()
        head.layers[-1].bias.copy_(torch.tensor([0.0, 0.0, 2.0, 2.0]))


# --- SAM ---------------------------------------------------------------------


def _sam(folder: Path) -> None:
    from transformers import SamConfig, SamImageProcessor, SamModel

    hidden = 32
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=hidden, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, window_size=2, global_attn_indexes=[1], mlp_dim=37,
                           num_pos_feats=hidden // 2),
        prompt_encoder_config=dict(hidden_size=hidden, image_size=32, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=16, num_attention_heads=2, iou_head_hidden_dim=16),
    )
    model = SamModel(config).eval()
    with torch.no_grad():
        decoder = model.mask_decoder
        decoder.upscale_conv2.weight.zero_()  # every pixel alike ...
        decoder.upscale_conv2.bias.fill_(1.0)
        for mlp in decoder.output_hypernetworks_mlps:  # ... and inside every mask, far from the cut-off
            mlp.proj_out.weight.zero_()
            mlp.proj_out.bias.fill_(3.0)
        decoder.iou_prediction_head.proj_out.weight.zero_()
        decoder.iou_prediction_head.proj_out.bias.fill_(1.0)
    model.save_pretrained(folder)
    image_processor = SamImageProcessor(size={"longest_edge": 32}, pad_size={"height": 32, "width": 32},
                                        mask_size={"longest_edge": 8}, mask_pad_size={"height": 8, "width": 8})
    image_processor.save_pretrained(folder)  # preprocessor_config.json, as on the hub
