"""Buttons under the images the bot posts on Slack, alive after restarts and days later.

A file shared with ``files_upload_v2`` cannot carry blocks, so the buttons
come in the message right after the images: per image a label and a Block
Kit ``actions`` block. Each button names everything a press needs:

    action_id  vc:<action>:<image id>              e.g. vc:reroll:img3 (unique within the message)
    value      <session>|<image id>|<tag>          e.g. slack:C1:1700000000.000100|img3|0192ab3f

Slack has no disabled buttons: a button whose model is not loaded is left
out. The Cancel button on a request's progress message (``status_blocks``) is

    action_id  vc:cancel:<token>                 e.g. vc:cancel:0a1b2c3d
    value      <session>|<token>                 read back by ``cancel_of``
 The Edit form is a modal (``views.open`` with the press's trigger_id)
whose ``private_metadata`` holds the same names plus where to answer, so a
submission needs nothing kept in memory either. What a press does is the
core's decision (``Core.press``); ``SlackBot`` carries it out.
"""

from __future__ import annotations

import json
import re
from typing import Any

from core.turn import CancelButton, OutImage, Press

ACTION_ID = re.compile(r"^vc:(?P<action>[a-z]+):(?P<image>img[0-9]+)$")
CANCEL_ID = re.compile(r"^vc:cancel:(?P<token>[0-9a-f]{8})$")
EDIT_VIEW = "vc_edit"  # the Edit form's callback_id
INSTRUCTION = "instruction"  # its input's block_id and action_id


def blocks_for(images: list[OutImage]) -> list[dict[str, Any]]:
    """A label and a row of buttons per image with buttons (enabled ones only)."""
    blocks: list[dict[str, Any]] = []
    for im in images:
        buttons = [{"type": "button", "action_id": f"vc:{a.name}:{im.image_id}",
                    "text": {"type": "plain_text", "text": a.label, "emoji": True},
                    "value": f"{im.session}|{im.image_id}|{im.tag}"} for a in im.actions if a.enabled]
        if buttons:
            blocks += [{"type": "context", "elements": [{"type": "mrkdwn", "text": f"*{im.image_id}*"}]},
                       {"type": "actions", "block_id": f"vc|{im.image_id}", "elements": buttons}]
    return blocks


def status_blocks(text: str, button: CancelButton) -> list[dict[str, Any]]:
    """A progress message with its Cancel button: the text (already escaped), then the button."""
    return [{"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "block_id": "vc|cancel", "elements": [
                {"type": "button", "action_id": f"vc:cancel:{button.token}", "style": "danger",
                 "text": {"type": "plain_text", "text": button.label}, "value": f"{button.session}|{button.token}"}]}]


def cancel_of(action: dict[str, Any]) -> tuple[str, str] | None:
    """(token, session) of a pressed Cancel button; None when it is not one."""
    match = CANCEL_ID.match(action.get("action_id", ""))
    session, _, token = (action.get("value") or "").rpartition("|")
    if match is None or token != match["token"] or not session:
        return None
    return token, session


def parse(action: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """(action, image, tag, session) of a pressed button; None when it is not one of ours."""
    match = ACTION_ID.match(action.get("action_id", ""))
    parts = (action.get("value") or "").rsplit("|", 2)
    if match is None or len(parts) != 3 or parts[1] != match["image"]:
        return None
    session, image, tag = parts
    return match["action"], image, tag, session


def meta_of(session: str, image: str, tag: str, action: str, channel: str, thread: str | None) -> dict:
    """Where a press answers and what it acts on (an Edit form carries it as its private_metadata)."""
    return {"session": session, "image": image, "tag": tag, "action": action, "channel": channel, "thread": thread}


def edit_view(press: Press, meta: dict[str, Any]) -> dict[str, Any]:
    """The Edit form: one text input; ``meta`` (session, image, tag, channel, thread) rides along."""
    return {"type": "modal", "callback_id": EDIT_VIEW, "private_metadata": json.dumps(meta),
            "title": {"type": "plain_text", "text": press.text[:24]},
            "submit": {"type": "plain_text", "text": "Edit"}, "close": {"type": "plain_text", "text": "Cancel"},
            "blocks": [{"type": "input", "block_id": INSTRUCTION, "label": {"type": "plain_text", "text": press.field},
                        "element": {"type": "plain_text_input", "action_id": INSTRUCTION, "max_length": 300,
                                    "placeholder": {"type": "plain_text", "text": press.hint or " "}}}]}


def submitted(view: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the form's meta, the instruction typed) of a submitted Edit form."""
    value = view["state"]["values"][INSTRUCTION][INSTRUCTION].get("value") or ""
    return json.loads(view["private_metadata"]), value.strip()
