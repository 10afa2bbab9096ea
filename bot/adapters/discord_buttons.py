"""Buttons under the images the bot posts on Discord, alive after restarts and days later.

Each button's ``custom_id`` names everything a press needs (at most 100 characters):

    vc:<action>:<image id>:<tag>:<session>      e.g. vc:reroll:img3:0192ab3f:discord:channel:3000

Every press reaches ``DiscordBot.on_interaction`` (discord.py hands the
client each interaction), which reads it with ``pressed_of``: nothing about a
button lives in memory, so one on a message however old, posted before any
restart, works; a custom_id this version does not know (an older version's
button) is still answered. The Edit form (a modal) has a custom_id of the same
shape (``vcform:...``) and its submission is read from the raw interaction
(``form_of``) the same way, so a restart between opening and submitting loses
nothing.

The Cancel button on a request's progress message names the request in flight:

    vc:cancel:<token>:<session>                 e.g. vc:cancel:0a1b2c3d:discord:channel:3000

(``cancel_view``, read back by ``cancel_of``); after a restart the request is over, and a press says so.

What a press does is the core's decision (``Core.press``); ``DiscordBot.on_button``
and ``on_form`` carry it out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import discord

from core.turn import CancelButton, OutImage

log = logging.getLogger(__name__)
_FIELDS = r"(?P<action>[a-z]+):(?P<image>img[0-9]+):(?P<tag>[0-9a-f]{8}):(?P<session>discord:[a-z]+:[0-9]+)"
BUTTON = re.compile("vc:" + _FIELDS)
FORM = re.compile("vcform:" + _FIELDS)
CANCEL = re.compile(r"vc:cancel:(?P<token>[0-9a-f]{8}):(?P<session>discord:[a-z]+:[0-9]+)")
INSTRUCTION = "instruction"  # the custom_id of the Edit form's text input
BUTTON_ROWS = 5  # Discord allows five rows of components per message: one image's buttons each


def custom_id(prefix: str, action: str, image: str, tag: str, session: str) -> str:
    return f"{prefix}:{action}:{image}:{tag}:{session}"


def action_button(action: str, image: str, tag: str, session: str, *, label: str = "", enabled: bool = True,
                  row: int | None = None) -> discord.ui.Button:
    """One button under an image (its callback is discord.py's no-op: presses go to ``on_interaction``)."""
    return discord.ui.Button(label=label or action, custom_id=custom_id("vc", action, image, tag, session),
                             style=discord.ButtonStyle.secondary, disabled=not enabled, row=row)


class EditForm(discord.ui.Modal):
    """The Edit form: one text field. Its submission is handled from the raw interaction (see ``form_of``),
    so ``on_submit`` stays discord.py's no-op and the form works across a restart."""

    def __init__(self, title: str, field: str, hint: str, form_id: str):
        super().__init__(title=title[:45], custom_id=form_id, timeout=900)  # forgotten after 15 min; see above
        self.add_item(discord.ui.TextInput(label=field[:45], custom_id=INSTRUCTION, placeholder=hint[:100] or None,
                                           max_length=300))


def view_for(images: Sequence[OutImage]) -> discord.ui.View | None:
    """One row of buttons per image (labels carry the id when there are several); None without buttons."""
    view = discord.ui.View(timeout=None)
    several = sum(1 for im in images if im.actions) > 1
    for row, im in enumerate(im for im in images if im.actions):
        for a in im.actions:
            button = action_button(a.name, im.image_id, im.tag, im.session, label=f"{a.label} {im.image_id}"
                                   if several else a.label, enabled=a.enabled, row=row)
            if len(button.custom_id) > 100:  # Discord's limit; a session key never gets this long
                log.warning("no %s button for %s: custom_id too long", a.name, im.image_id)
                continue
            view.add_item(button)
    if not view.children:
        return None
    view.stop()  # sent stopped, discord.py keeps no copy: every press goes to on_interaction, however old
    return view


def cancel_view(button: CancelButton | None) -> discord.ui.View | None:
    """The Cancel button of a progress message (red); None without one."""
    if button is None:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label=button.label, custom_id=f"vc:cancel:{button.token}:{button.session}",
                                    style=discord.ButtonStyle.danger))
    view.stop()  # as view_for: every press goes to on_interaction
    return view


def cancel_of(interaction: discord.Interaction) -> re.Match[str] | None:
    """The custom_id's fields (token, session) of a pressed Cancel button; None for another component."""
    return CANCEL.fullmatch((interaction.data or {}).get("custom_id", ""))


def buttons_for(group: Sequence[tuple[bytes, str]], images: Sequence[OutImage]) -> dict[str, Any]:
    """``view=`` for a message carrying the files of ``group`` (named ``<image id>.<ext>``), or nothing."""
    by_id = {im.image_id: im for im in images}
    view = view_for([by_id[i] for _, name in group if (i := name.rsplit(".", 1)[0]) in by_id])
    return {"view": view} if view else {}


def pressed_of(interaction: discord.Interaction) -> re.Match[str] | None:
    """The custom_id's fields of a pressed image button; None for another component (an older version's)."""
    return BUTTON.fullmatch((interaction.data or {}).get("custom_id", ""))


def form_of(interaction: discord.Interaction) -> tuple[re.Match[str], str] | None:
    """(the custom_id's fields, the instruction typed) of a submitted Edit form; None for another form."""
    data = interaction.data or {}
    match = FORM.fullmatch(data.get("custom_id", ""))
    if match is None:
        return None
    values = [c.get("value") for c in _walk(data.get("components", [])) if c.get("custom_id") == INSTRUCTION]
    return match, (values[0] if values else "") or ""


def _walk(components: list[dict]):
    for c in components:
        yield c
        yield from _walk(c.get("components", []) + ([c["component"]] if "component" in c else []))
