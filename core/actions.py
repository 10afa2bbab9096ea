"""The buttons under every image the bot posts: Reroll, Variations, Upscale ×2, Edit, Info.

1. ``offered`` decides which buttons an image gets from its record: Reroll
   only where a seed made it, Upscale only while the result can grow; a
   button whose model is not loaded is disabled (the adapter shows it so, or
   leaves it out where the platform has no disabled buttons).
2. ``press`` decides what a press does (``Press``): answer only the presser
   (Info, a stale or disabled button), open a form (Edit), or run.
3. ``run`` runs it as a tool call, recorded like any other: Reroll calls the
   image's tool again with its arguments and a new seed; Variations and
   Upscale run make_variation and upscale_image; Edit runs edit_image.

A press names the conversation, the image id and the image's tag, and all
else is read from the store, so a button works after a restart and days
later; an id that was reset away (ids start again after /reset) is stale,
one this conversation never had is said so (``missing``), and an image
whose file is gone from the data directory is said to be no longer stored.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import settings
from core.store import ImageRow, Store
from core.tools import BUTTONS, BY_NAME, Tool
from core.tools.base import ToolContext, ToolResult, call, image_ids
from core.tools.upscale import can_upscale
from core.turn import ImageAction, Press

log = logging.getLogger(__name__)
LABELS = {"reroll": "Reroll", "variations": "Variations", "upscale": "Upscale ×2", "edit": "Edit", "info": "Info"}
STALE = "That image is no longer in this conversation (it was cleared with /reset), so this button does nothing now."
NOT_HERE = ("{image} is not an image of this conversation, so this button does nothing. {have} Use the buttons under "
            "an image posted here, or ask me for a new one.")
GONE = ("{image} is no longer stored: its file is missing from the bot's data, so this button cannot use it. Upload "
        "it again to work on it, or ask me for a new one.")
EDIT_FIELD, EDIT_HINT = "What should change?", "e.g. make it look like winter"
# what the answer says, per button; {image}: the pressed image, {who}: the presser (a mention where there are)
DONE = {"reroll": "Rerolled {image} for {who}", "variations": "A variation of {image} for {who}",
        "upscale": "{image} upscaled ×2 for {who}", "edit": "Edited {image} for {who}"}
TAG_WRAP_MS = 16**8  # a tag is the image's creation time in ms, modulo this (about 50 days)


def rerollable(row: ImageRow) -> Tool | None:
    """The tool that made ``row`` with a seed, which a reroll calls again; None for uploads and maps."""
    tool = BY_NAME.get(row.operation) or BUTTONS.get(row.operation)
    if tool is None or row.made.args is None or row.made.seed is None or not row.made.model:
        return None
    return tool


def offered(row: ImageRow, loaded: set[str], limits: settings.LimitsConfig) -> tuple[ImageAction, ...]:
    """The buttons under ``row``, in order; disabled where the model they need is not loaded."""
    actions = []
    if (tool := rerollable(row)) is not None:
        actions.append(ImageAction("reroll", LABELS["reroll"], tool.usable(loaded)))
    actions.append(ImageAction("variations", LABELS["variations"], BUTTONS["make_variation"].usable(loaded)))
    if can_upscale(row.width, row.height, limits.max_output_size):
        actions.append(ImageAction("upscale", LABELS["upscale"], BUTTONS["upscale_image"].usable(loaded)))
    actions.append(ImageAction("edit", LABELS["edit"], BY_NAME["edit_image"].usable(loaded)))
    actions.append(ImageAction("info", LABELS["info"]))
    return tuple(actions)


def press(store: Store, row: ImageRow | None, action: str, loaded: set[str],
          limits: settings.LimitsConfig) -> Press:
    """What pressing ``action`` under ``row`` does (None: the image is gone)."""
    if row is None:
        return Press("private", STALE)
    if action == "info":
        return Press("private", info(store, row))
    button = next((a for a in offered(row, loaded, limits) if a.name == action), None)
    if button is None:
        return Press("private", f"{LABELS.get(action, action)} does not apply to {row.image_id}.")
    if not button.enabled:
        return Press("private", f"{button.label} is not available right now: the image model it needs is not "
                                "loaded. The bot's admins can load it (/models shows what is loaded).")
    if action == "edit":
        return Press("form", f"Edit {row.image_id}", EDIT_FIELD, EDIT_HINT)
    return Press("run")


def missing(store: Store, session: str, image_id: str, tag: str) -> str:
    """Why a button's image is not there: cleared with /reset since it was made (the tag tells when), or
    never an image of this conversation (an id nobody had, another conversation's button)."""
    started = store.started(session)  # None: the conversation holds nothing now (reset since)
    if started is None or store.image(session, image_id) is not None:  # the id itself was reset and used again
        return STALE
    now = int(time.time() * 1000)
    made = now - (now - int(tag, 16)) % TAG_WRAP_MS if re.fullmatch(r"[0-9a-f]{8}", tag) else now
    if made < started * 1000:  # the latest time the tag can stand for is before the conversation began
        return STALE
    ids = [r.image_id for r in store.images(session)]
    have = f"Its images are {', '.join(ids)}." if ids else "It has no images yet."
    return NOT_HERE.format(image=image_id, have=have)


def lost(store: Store, path: Callable[[ImageRow], Path], row: ImageRow, action: str) -> str | None:
    """What to tell the presser when a file the press reads (the pressed image's, or for a reroll those its
    tool read) is gone from the data directory; None when all are there. The admins get one log line."""
    if action == "reroll":
        tool = rerollable(row)
        used = [v for _, v in image_ids(tool, row.made.args or {})] if tool else []
    else:
        used = [] if action == "info" else [row.image_id]
    for image_id in used:
        found = store.image(row.session, image_id)
        if found is not None and not path(found).is_file():
            log.warning("session %s: the file of %s (%s) is missing from the data directory; a %s press was "
                        "refused", row.session, image_id, found.path, action)
            return GONE.format(image=image_id)
    return None


def tool_of(row: ImageRow, action: str) -> Tool | None:
    """The tool a press of ``action`` under ``row`` runs (None: Info, or nothing to run)."""
    if action == "reroll":
        return rerollable(row)
    return {"variations": BUTTONS["make_variation"], "upscale": BUTTONS["upscale_image"],
            "edit": BY_NAME["edit_image"]}.get(action)


async def run(ctx: ToolContext, row: ImageRow, action: str, instruction: str | None = None) -> ToolResult:
    """Run a pressed button as a tool call; the images it stores record the press."""
    ctx = replace(ctx, action=(action, row.image_id))
    if action == "reroll":
        tool = rerollable(row)
        ctx = replace(ctx, seeds={row.made.model: new_seed(row.made.seed)})
        return await call(tool, ctx, dict(row.made.args))
    if action == "variations":
        return await call(BUTTONS["make_variation"], ctx, {"image": row.image_id})
    if action == "upscale":
        return await call(BUTTONS["upscale_image"], ctx, {"image": row.image_id})
    if action == "edit":
        return await call(BY_NAME["edit_image"], ctx, {"image": row.image_id, "instruction": instruction or ""})
    raise ValueError(f"no button {action!r}")


def answer(action: str, row: ImageRow, who: str, result: ToolResult, instruction: str | None = None) -> str:
    """The message the result is posted with, the presser named in it (anyone may press)."""
    if not result.ok:
        return result.text.removeprefix("Error: ")
    what = DONE[action].format(image=row.image_id, who=who)
    if action == "edit":
        what += f" ({instruction})"
    return f"{what}: {', '.join(result.images)}."


def new_seed(old: int | None) -> int:
    """A seed other than ``old``, in the pool's range."""
    while (seed := secrets.randbelow(2**32)) == old:
        pass
    return seed


# --- Info -------------------------------------------------------------------------------------


def chain(store: Store, row: ImageRow) -> list[ImageRow]:
    """The image and its ancestors (parent links), oldest first."""
    rows, seen = [row], {row.image_id}
    while rows[-1].parent and rows[-1].parent not in seen and len(rows) < 50:
        parent = store.image(row.session, rows[-1].parent)
        if parent is None:
            break
        rows.append(parent)
        seen.add(parent.image_id)
    return rows[::-1]


def info(store: Store, row: ImageRow) -> str:
    """How ``row`` was made, read from the store: for the presser of Info only."""
    made, when = row.made, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(row.created or 0))
    steps = [f"{r.operation} ({r.image_id})" for r in chain(store, row)]
    lines = [f"{row.image_id}: {row.width}x{row.height}, made {when}", "Tool chain: " + " → ".join(steps)]
    if made.action and made.action_of:
        lines.append(f"Asked for with the {LABELS.get(made.action, made.action)} button under {made.action_of}")
    if row.operation == "upload":
        lines.append(f"Uploaded as {row.params.get('filename') or 'a file'}: no model made it, so it has no "
                     "prompt or seed.")
    if inputs := _inputs(row):
        lines.append("Input images: " + inputs)
    if made.model:
        took = f", {made.seconds:.1f} s in the model" if made.seconds is not None else ""
        lines.append(f"Model: {made.model} ({made.source or 'no weights'}){took}")
    if made.prompt is not None:
        lines.append(f"Prompt sent: {made.prompt or '(none)'}")
    if made.negative_prompt is not None:
        lines.append(f"Negative prompt: {made.negative_prompt or '(none)'}")
    if settings_line := _settings(made.model_params or {}):
        lines.append(settings_line)
    if row.caption:
        lines.append(f"Caption: {row.caption}")
    return "\n".join(lines)


def _inputs(row: ImageRow) -> str:
    """'img2 (the image), img1 (reference 1), img3 (reference 2)': every image the tool that made ``row`` read."""
    tool = BY_NAME.get(row.operation) or BUTTONS.get(row.operation)
    used = image_ids(tool, row.made.args or {}) if tool else []
    refs = [v for k, v in used if k == "reference_images"]
    return ", ".join(f"{v} (reference {refs.index(v) + 1})" if k == "reference_images" else
                     f"{v} (the {k})" for k, v in used)


def _settings(params: dict[str, Any]) -> str:
    """Seed, steps, guidance and the rest of what the model ran with, in one line."""
    shown = {"seed": "seed {}", "steps": "{} steps", "guidance": "guidance {:g}", "strength": "strength {:g}",
             "image_guidance": "image guidance {:g}"}
    line = " · ".join(fmt.format(params[k]) for k, fmt in shown.items() if params.get(k) is not None)
    return line[:1].upper() + line[1:]
