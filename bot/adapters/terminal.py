"""Chat with the bot in a terminal: no platform needed.

Type a message and press Enter. Attach an image with ``/attach PATH [message]``.
Produced images are written to DATA_DIR/terminal/ and their paths printed.
Reads lines from standard input, so a scripted session can be piped in.
"""

from __future__ import annotations

import asyncio
import getpass
import mimetypes
import shutil
import sys
import threading
from pathlib import Path

from core.commands import BY_NAME, from_words
from core.engine import Core
from core.turn import Attachment, OutImage, Turn

SESSION = "terminal:local"
HERE = "In the terminal: /attach PATH [message], /quit."


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
    return Turn("terminal", SESSION, user, user, text, tuple(attachments), is_admin=True, channel="local", is_dm=True)


def split_attach(rest: str) -> tuple[Path | None, str]:
    """``/attach PATH [message]``: the path (quoted, or the longest run of words naming a file,
    or the first word), then the message as free text (apostrophes and all)."""
    rest = rest.strip()
    if not rest:
        return None, ""
    if rest[0] in "\"'":
        end = rest.find(rest[0], 1)
        if end > 0:
            return Path(rest[1:end]).expanduser(), rest[end + 1:].strip()
    words = rest.split(" ")
    for n in range(len(words), 0, -1):  # a path with spaces, unquoted
        path = Path(" ".join(words[:n])).expanduser()
        if path.is_file():
            return path, " ".join(words[n:]).strip()
    return Path(words[0]).expanduser(), " ".join(words[1:]).strip()


async def handle_line(core: Core, line: str, reply: TerminalReply) -> bool:
    """One line of input; False when the user wants to quit."""
    line = line.strip()
    if not line:
        return True
    word, _, rest = line.partition(" ")
    if word in ("/quit", "/exit"):
        return False
    command = BY_NAME.get(word[1:]) if word.startswith("/") else None
    if command is not None:  # core/commands.py
        args = from_words(command, rest)
        if args is None:
            await reply.send(f"Usage: {command.usage}")
        elif command.tool:
            await core.direct(_turn(line), reply, command.tool, args)
        else:
            text = await core.command(_turn(line), command.name, args)
            await reply.send(text + ("\n" + HERE if command.name == "help" else ""))
    elif word == "/attach":
        path, message = split_attach(rest)
        if path is None or not path.is_file():
            await reply.send(f"There is no file at {rest.strip() or '(no path given)'}. "
                             "Type /attach PATH, then your message if you like.")
            return True
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        await core.handle(_turn(message, [Attachment(path.name, kind, path.read_bytes())]), reply)
    else:
        await core.handle(_turn(line), reply)
    return True


async def run(core: Core) -> int:
    reply = TerminalReply(core.config.storage.data_dir / "terminal")
    interactive = sys.stdin.isatty()
    print("Visual ChatGPT in your terminal. Type /help for what I can do, /quit to leave.", flush=True)
    lines = _stdin_lines()
    while True:
        if interactive:
            print("you: ", end="", flush=True)
        line = await lines.get()
        if line is None:  # end of input
            return 0
        if not await handle_line(core, line, reply):
            return 0


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of standard input, read by a daemon thread: a stop (SIGTERM, Ctrl-C) never waits for
    the user to press Enter."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:  # the loop is gone: the bot has stopped
            pass

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return queue
