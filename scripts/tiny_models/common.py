"""Pieces several tiny-model builders share."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Words the tiny CLIP vocabulary knows whole; everything else falls back to bytes.
WORDS = ["a", "cat", "dog", "on", "the", "sofa", "house", "snow", "winter", "red", "photo", "of", "tree"]


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer(folder: Path) -> int:
    """Write a CLIP BPE tokenizer (vocab.json, merges.txt) into ``folder``; returns the vocab size.

    bos/eos are the last two ids, as CLIPTextConfig expects them to be configured.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in WORDS:
        # merge left to right: c a -> ca, ca t</w> -> cat</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            merged = a + b
            line = f"{a} {b}"
            if line not in merges:
                merges.append(line)
            if merged not in vocab:
                vocab.append(merged)
            pieces = [merged] + pieces[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def clip_tokenizer(folder: Path):
    """Write and load the tiny CLIP tokenizer; save it with ``save_pretrained`` where needed."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def seeded(seed: int = 0) -> None:
    """Make random init reproducible so fixture builds are byte-identical."""
    torch.manual_seed(seed)
