"""The slash commands, in one table: every platform's commands and the /help text are made from it.

Discord's app commands (bot/adapters/discord_bot.py), Slack's slash commands (slack_bot.py) and
the terminal's (terminal.py) are each built by a loop over ``COMMANDS``, so a command takes the
same arguments, with the same meaning, everywhere. An ``image`` argument is an image id
(``img3``); where the platform can attach a file to a command (Discord), an attached image
may stand in for it. Typed words (Slack, the terminal) become arguments with ``from_words``;
an argument with a ``flag`` is typed as ``--flag VALUE`` anywhere in the line (``/imagine a
forest --ar 16:9 --seed 42``). A ``choice`` argument takes one of its ``choices`` (Discord
offers them as a list), an ``int`` one a whole number within its bounds (``limit``: a
``[limits]`` key that caps it); ``autocomplete``: Discord suggests values as the user types
(``Core.suggestions``).

What a command does is the core's: a ``tool`` command runs that tool in the conversation
(``Core.direct``); the others are answered by ``Core.command`` with a text, shown only to
the asker when ``private``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

TEXT, IMAGE, MODEL, DEVICE = "text", "image", "model", "device"
IMAGES = "images"  # up to ``high`` image ids: typed one after another (img1 img3); on Discord also attached files
USER = "user"  # a user of the platform: Discord's user option, a Slack @mention (<@U123>); the core gets the id
CHOICE, INT = "choice", "int"
_PLACEHOLDER = {IMAGE: "IMAGE_ID", IMAGES: "IMAGE_ID...", MODEL: "MODEL", DEVICE: "DEVICE", USER: "@USER"}
_ID = re.compile(r"(img[0-9]+)(?:\s+|$)")  # a text argument: its name


@dataclass(frozen=True)
class Arg:
    name: str
    # text: the rest of a typed line when last
    kind: Literal["text", "image", "images", "model", "device", "user", "choice", "int"]
    description: str  # the platform's hint for it
    required: bool = True
    choices: tuple[str, ...] = ()  # choice: the values it takes
    low: int | None = None  # int: the smallest value
    high: int | None = None  # int: the largest value (``limit`` may lower it); images: the most ids
    limit: str | None = None  # int: a [limits] key whose value caps it (steps: max_steps)
    flag: str = ""  # typed as --flag VALUE (Slack, the terminal); "": by its place in the line
    autocomplete: bool = False  # Discord suggests values as the user types (Core.suggestions)
    param: str = ""  # the tool's parameter it sets, when not ``name`` (aspect -> aspect_ratio)

    @property
    def usage(self) -> str:
        """PROMPT, IMAGE_ID, [MODEL], [--ar 1:1|3:2|2:3|16:9|9:16]."""
        word = _PLACEHOLDER.get(self.kind, self.name.upper())
        if self.kind == CHOICE:
            word = "|".join(self.choices)
        if self.flag:
            word = f"--{self.flag} {word}"
        return word if self.required else f"[{word}]"

    def highest(self, limits: object) -> int | None:
        """The largest value an int argument takes under ``limits`` (a settings.LimitsConfig)."""
        capped = getattr(limits, self.limit) if self.limit else None
        return capped if self.high is None else self.high if capped is None else min(self.high, capped)


@dataclass(frozen=True)
class Command:
    name: str
    description: str  # one line: the platform's description and the command's line in /help
    args: tuple[Arg, ...] = ()
    admin: bool = False  # only the bot's admins may run it
    tool: str | None = None  # runs this tool in the conversation, no LLM needed
    private: bool = False  # the answer is shown only to the asker
    subcommands: tuple[Command, ...] = ()  # /admin block @USER: the first word picks one (Discord: a group)

    @property
    def summary(self) -> str:
        """The platform's description: 'Admins: list the image models ...' for an admin command."""
        return f"Admins: {self.description[0].lower()}{self.description[1:]}" if self.admin else self.description

    @property
    def usage(self) -> str:
        """/load MODEL [DEVICE]; a group: /admin block|unblock|reset-quota @USER (its subcommands share args)."""
        if self.subcommands:
            args = {tuple(a.usage for a in s.args) for s in self.subcommands}
            shared = list(args.pop()) if len(args) == 1 else ["..."]
            return " ".join([f"/{self.name}", "|".join(s.name for s in self.subcommands), *shared])
        return " ".join([f"/{self.name}", *(a.usage for a in self.args)])


_MODEL = "The model to {}, like Text2Image"
_ASPECTS = ("1:1", "3:2", "2:3", "16:9", "9:16")
COMMANDS: tuple[Command, ...] = (
    Command("imagine", "Draw an image from a description.",
            (Arg("prompt", TEXT, "What to draw, in English"),
             Arg("aspect", CHOICE, "The shape, width:height (1:1 when left out)", False, _ASPECTS, flag="ar",
                 param="aspect_ratio"),
             Arg("seed", INT, "A seed: the same seed and prompt draw the same image", False, low=0, high=2**32 - 1,
                 flag="seed"),
             Arg("steps", INT, "Diffusion steps: more are finer and slower", False, low=1, limit="max_steps",
                 flag="steps"),
             Arg("model", MODEL, "The drawing model (a loaded one)", False, flag="model", autocomplete=True)),
            tool="generate_image"),
    Command("caption", "Describe what an image shows.", (Arg("image", IMAGE, "The image to describe, like img1"),),
            tool="caption_image"),
    Command("edit", "Change an image by an instruction, like 'make it winter', with up to 3 reference images.",
            (Arg("image", IMAGE, "The image to change, like img1"),
             Arg("references", IMAGES, "Up to 3 images to take things from, like img1 img3", False, high=3,
                 param="reference_images"),
             Arg("instruction", TEXT, "What to change, in English")), tool="edit_image"),
    Command("reset", "Forget this conversation's messages and images."),
    Command("queue", "Where your requests are in line, and about when they will be done.", private=True),
    Command("cancel", "Cancel your requests that are running in this conversation.", private=True),
    Command("help", "What this bot can do.", private=True),
    Command("models", "List the image models and where they run.", admin=True, private=True),
    Command("safety", "The safety filter, and what it does in this conversation.", admin=True, private=True),
    Command("reload", "Reload one image model, or all of them.",
            (Arg("model", MODEL, _MODEL.format("reload") + " (all when left out)", required=False),),
            admin=True, private=True),
    Command("load", "Load an image model, on a device if you name one.",
            (Arg("model", MODEL, _MODEL.format("load")),
             Arg("device", DEVICE, "cpu, cuda, cuda:1 ... (its configured device when left out)", required=False)),
            admin=True, private=True),
    Command("unload", "Unload an image model to free memory.", (Arg("model", MODEL, _MODEL.format("unload")),),
            admin=True, private=True),
    # --- access (core/access.py): quotas, cooldowns, blocks ---
    Command("quota", "How many images you have left today, and when the count starts again.", private=True),
    Command("admin", "Block or unblock a user, or give them their images for today back.", admin=True,
            private=True, subcommands=(
                Command("block", "Stop a user from using the bot; they are told once.",
                        (Arg("user", USER, "The user to block"),)),
                Command("unblock", "Let a blocked user use the bot again.",
                        (Arg("user", USER, "The user to unblock"),)),
                Command("reset-quota", "Give a user their images for today back.",
                        (Arg("user", USER, "The user whose count starts again"),)))),
)
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}
BY_TOOL: dict[str, Command] = {c.tool: c for c in COMMANDS if c.tool}
_FLAG = re.compile(r"(?:^|\s)--([a-z]+)(?:\s+(\S+))?")


def from_words(command: Command, text: str) -> dict[str, str] | None:
    """The arguments typed after a command: ``--flag VALUE`` for those with a flag, then one word each
    in order, a last text argument the rest of the line; None when they do not fit (too few, too many,
    a flag it does not take or without its value): answer with ``command.usage``. A group's first word
    names its subcommand, given back as ``{"subcommand": name, ...its arguments}``."""
    if command.subcommands:
        word, _, rest = text.strip().partition(" ")
        sub = next((s for s in command.subcommands if s.name == word.lower()), None)
        sub_args = from_words(sub, rest) if sub else None
        return None if sub_args is None else {"subcommand": sub.name, **sub_args}
    flagged = {a.flag: a for a in command.args if a.flag}
    found: dict[str, str] = {}
    for match in _FLAG.finditer(text):
        arg = flagged.get(match[1])
        if arg is None or match[2] is None or arg.name in found:
            return None
        found[arg.name] = match[2]
    rest = _FLAG.sub(" ", text).strip()
    args = [a for a in command.args if not a.flag]
    for i, arg in enumerate(args):
        if not rest:
            break
        if arg.kind == TEXT and i == len(args) - 1:  # a last text: the rest of the line
            found[arg.name], rest = rest, ""
        elif arg.kind == IMAGES:  # the image ids that come next, if any
            ids = []
            while len(ids) < (arg.high or 1) and (match := _ID.match(rest)):
                ids.append(match[1])
                rest = rest[match.end():]
            if ids:
                found[arg.name] = " ".join(ids)
        else:
            word, *more = rest.split(None, 1)
            found[arg.name], rest = word, (more[0] if more else "")
    if rest or any(a.required and a.name not in found for a in command.args):
        return None
    return found


def tool_args(command: Command, given: dict[str, Any], limits: object) -> dict[str, Any]:
    """A tool command's arguments as its tool takes them: named as its parameters, whole numbers as
    ints within their bounds, choices among theirs. Raises ValueError with the words for the user."""
    out: dict[str, Any] = {}
    for arg in command.args:
        value = given.get(arg.name)
        if value is None or value == "":
            continue
        if arg.kind == INT:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{arg.name} must be a whole number, like 42; got {value}.") from None
            high = arg.highest(limits)
            if (arg.low is not None and value < arg.low) or (high is not None and value > high):
                raise ValueError(f"{arg.name} must be between {arg.low} and {high}; got {value}.")
        elif arg.kind == CHOICE and value not in arg.choices:
            raise ValueError(f"{arg.name} must be one of {', '.join(arg.choices)}; got {value}.")
        elif arg.kind == IMAGES:
            value = [v for v in (re.split(r"[\s,]+", value.strip()) if isinstance(value, str) else value) if v]
            if len(value) > (arg.high or 1):
                raise ValueError(f"{arg.name}: at most {arg.high} images; got {len(value)} ({', '.join(value)}).")
        out[arg.param or arg.name] = value
    return out


def with_uploads(command: Command | None, takes_image: bool, given: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """A tool command's arguments with the images attached to it (``ids``, in order): the first fills a
    missing ``image``, the others join its list of images (/edit's references) after those it names."""
    given, ids = dict(given), list(ids)
    if ids and takes_image and not given.get("image"):
        given["image"] = ids.pop(0)
    listed = next((a for a in command.args if a.kind == IMAGES), None) if command else None
    if ids and listed:
        given[listed.name] = " ".join([*str(given.get(listed.name) or "").split(), *ids])
    return given


def _lines(admin: bool) -> list[str]:
    return [f"{c.usage}: {c.description}" for c in COMMANDS if c.admin == admin]


def names(admin: bool = False) -> str:
    """'/imagine, /caption, /edit, /reset, /help'."""
    return ", ".join(f"/{c.name}" for c in COMMANDS if c.admin == admin)


HELP = "\n".join([
    "I can talk about, draw and edit images. Mention me with a request, with or without an image:",
    '- "draw a cat on a sofa"  - "make it look like winter"  - "what breed is this dog?"',
    '- "find the edges of img2 and draw a house that follows them"  - "remove the car"  - "show me img1 again"',
    'Mention me with "reset" to start this conversation over. Images get ids like img1; say them to point at '
    "an image.",
    "Commands:", *_lines(admin=False),
    "Admins:", *_lines(admin=True),
])
