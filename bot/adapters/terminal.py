"""Chat with the bot in a terminal: no platform needed.

Type a message and press Enter. Attach an image with ``/attach PATH [message]``.
Produced images are written to DATA_DIR/terminal/ and their paths printed.
Reads lines from standard input, so a scripted session can be piped in.
"""

from __future__ import annotations

import asyncio
import getpass
import mimetypes
import shlex
import shutil
import sys
from pathlib import Path

from core.engine import HELP, Core
from core.errors import UserFacingError
from core.turn import Attachment, OutImage, Turn

SESSION = "terminal:local"
COMMANDS = {"/imagine": ("generate_image", "prompt"), "/caption": ("caption_image", "image"),
            "/edit": ("edit_image", "image instruction")}


class TerminalReply:
    def __init__(self, out_dir: Path, stream=sys.stdout):
        self.out_dir, self.stream = out_dir, stream
        self._status_shown = False

    async def typing(self) -> None:
        self._write("bot: ...\n")

    async def status(self, text: str | None) -> None:
        if text is not None:
            self._write(f"  [{text}]\n")

    async def send(self, text: str, images: list[OutImage] = ()) -> None:
        self._write(f"bot: {text}\n")
        if images:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        for im in images:
            dest = self.out_dir / im.filename
            shutil.copyfile(im.path, dest)
            self._write(f"  image {im.image_id} written to {dest}\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _turn(text: str, attachments=()) -> Turn:
    user = getpass.getuser()
    return Turn("terminal", SESSION, user, user, text, tuple(attachments), is_admin=True)


async def handle_line(core: Core, line: str, reply: TerminalReply) -> bool:
    """One line of input; False when the user wants to quit."""
    line = line.strip()
    if not line:
        return True
    word, _, rest = line.partition(" ")
    if word in ("/quit", "/exit"):
        return False
    if word == "/help":
        await reply.send(HELP + "\nIn the terminal: /attach PATH [message], /quit.")
    elif word == "/reset":
        await reply.send(await core.reset(SESSION))
    elif word in ("/models", "/safety", "/reload", "/load", "/unload"):
        args = rest.split()
        try:
            text = await core.admin(_turn(line), word[1:], args[0] if args else None, args[1] if len(args) > 1 else None)
        except UserFacingError as e:
            text = str(e)
        await reply.send(text)
    elif word in COMMANDS:
        tool, names = COMMANDS[word]
        keys = names.split()
        parts = rest.split(" ", len(keys) - 1) if rest else []
        await core.direct(_turn(line), reply, tool, dict(zip(keys, parts)))
    elif word == "/attach":
        try:
            path_text, *words = shlex.split(rest)
        except ValueError:
            path_text, words = "", []
        path = Path(path_text).expanduser()
        if not path_text or not path.is_file():
            await reply.send(f"There is no file at {path_text or '(no path given)'}.")
            return True
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        await core.handle(_turn(" ".join(words), [Attachment(path.name, kind, path.read_bytes())]), reply)
    else:
        await core.handle(_turn(line), reply)
    return True


async def run(core: Core) -> int:
    reply = TerminalReply(core.config.storage.data_dir / "terminal")
    interactive = sys.stdin.isatty()
    print("Visual ChatGPT in your terminal. Type /help for what I can do, /quit to leave.", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        if interactive:
            print("you: ", end="", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:  # end of input
            return 0
        if not await handle_line(core, line, reply):
            return 0
