"""Discord's app commands, made from the command table (core/commands.py).

Each row's arguments become options: an image's id is optional beside an attached ``file`` that may
stand in for it; a list of images (/edit's references) is a text option of ids beside up to
``high`` attachment options ``reference1``...; a user is a user option (its id goes to the core);
a whole number is a range within its bounds ([limits] included). ``attached`` takes the attachments
out of a command's options, the image first and then the references, in the order the core reads
them (Core.direct: the first fills a missing ``image``, the others become ``reference_images``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from inspect import Parameter, Signature
from typing import Any

import discord
from discord import app_commands

from core.commands import CHOICE, COMMANDS, IMAGE, IMAGES, INT, USER, Arg, Command

FILE = "file"  # the option of a command with an image argument that takes an attached image instead
REFERENCE = "reference{}"  # reference1, reference2 ...: attached images a list-of-images argument takes
Run = Callable[[discord.Interaction, Command, dict[str, Any]], Awaitable[None]]
Suggest = Callable[[str, str, str], Awaitable[list[str]]]


def add_commands(tree: app_commands.CommandTree, run: Run, suggest: Suggest, limits: object) -> None:
    """Every row of the table on ``tree``; ``run(interaction, row, options)`` answers one, ``suggest``
    gives an autocompleted option's values (Core.suggestions)."""
    for command in COMMANDS:
        if command.subcommands:  # /admin block @user: a group of app commands
            group = app_commands.Group(name=command.name, description=command.summary)
            for sub in command.subcommands:
                group.add_command(app_command(sub, run, suggest, limits, command))
            tree.add_command(group)
        else:
            tree.add_command(app_command(command, run, suggest, limits))


def app_command(command: Command, run: Run, suggest: Suggest, limits: object,
                group: Command | None = None) -> app_commands.Command:
    """The app command of a row; a subcommand of ``group`` runs the group's row with ``subcommand`` among
    its arguments."""

    async def callback(interaction: discord.Interaction, **options) -> None:
        if group is not None:
            return await run(interaction, group, dict(options, subcommand=command.name))
        await run(interaction, command, options)

    params = [Parameter("interaction", Parameter.POSITIONAL_ONLY, annotation=discord.Interaction)]
    described, choices = {}, {}
    for arg in command.args:
        required = arg.required and arg.kind not in (IMAGE, IMAGES)
        kind = option_type(arg, limits)
        params.append(Parameter(arg.name, Parameter.KEYWORD_ONLY, annotation=kind if required else kind | None,
                                default=Parameter.empty if required else None))
        described[arg.name] = arg.description
        if arg.kind == CHOICE:
            choices[arg.name] = [app_commands.Choice(name=c, value=c) for c in arg.choices]
        for name, words in _files(arg):
            params.append(Parameter(name, Parameter.KEYWORD_ONLY, annotation=discord.Attachment | None, default=None))
            described[name] = words
    callback.__signature__ = Signature(params)  # what discord.py reads the options from
    app = app_commands.Command(name=command.name, description=command.summary, callback=callback)
    for arg in command.args:
        if arg.autocomplete:
            app.autocomplete(arg.name)(_suggest(suggest, command, arg))
    return app_commands.describe(**described)(app_commands.choices(**choices)(app) if choices else app)


def _files(arg: Arg) -> list[tuple[str, str]]:
    """The attachment options beside ``arg`` (name, description): an image's one, a list's one per image."""
    if arg.kind == IMAGE:
        return [(FILE, f"Or attach the image here instead of naming its id ({arg.name})")]
    if arg.kind == IMAGES:
        return [(REFERENCE.format(n), f"Or attach {arg.name} image {n} here") for n in range(1, (arg.high or 1) + 1)]
    return []


def attached(options: dict[str, Any]) -> list[discord.Attachment]:
    """The attachments among ``options``, taken out of them: the image's, then each reference's in order."""
    refs = {int(k.removeprefix("reference")): k for k in options if re.fullmatch(r"reference[0-9]+", k)}
    names = [FILE, *(refs[n] for n in sorted(refs))]
    return [a for a in (options.pop(n, None) for n in names) if a is not None]


def option_type(arg: Arg, limits: object):
    """The option's type: a whole number within its bounds ([limits] included), a user, else text."""
    if arg.kind == INT:
        return app_commands.Range[int, arg.low, arg.highest(limits)]
    return discord.User if arg.kind == USER else str


def _suggest(suggest: Suggest, command: Command, arg: Arg):
    """The autocomplete callback of ``arg``: the core's suggestions, answered within Discord's 3 s."""

    async def callback(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = await suggest(command.name, arg.name, current or "")
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]

    return callback
