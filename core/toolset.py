"""What the LLM is offered each round: a small core set of compact tools, the rest by routing.

Small models lose their way among 26 tool schemas (3,200 tokens before the first
word of the conversation). Each request offers:
1. the core tools, for everyday requests (draw, edit, ask about, cut out);
2. the groups the user's own words point at (``route``: "edges" brings
   detect_edges and generate_from_edges);
3. the groups the LLM unlocked with the ``more_tools`` meta-tool this turn, or
   whose tools it used in the history it is shown.
Image-id parameters carry the session's ids as an ``enum`` only while the list
is short (a grammar-constrained server then cannot name another id); beyond
that a ``pattern``, the ids are listed once in the system prompt, and every call
is validated: an unknown id gets an error result naming the ids that exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from core.tools import TOOLS, Tool
from core.tools.base import IMAGE, IMAGES
from core.tools.controlnet import CONTROLS

MORE_TOOLS = "more_tools"
CORE = ("generate_image", "edit_image", "answer_question", "remove_background")
ENUM_IDS = 4  # image ids listed in enums up to this many; more cost more tokens than they protect
ID_PATTERN = r"^img[0-9]+$"  # a bracket class: llama-cpp-python writes \d into a grammar that fails to parse

# group -> its tools: a condition map and drawing from one, in pairs; masks; anything else new
GROUPS: dict[str, tuple[str, ...]] = {
    name.removeprefix("generate_from_"): (maker, name) for name, (_, _, maker) in CONTROLS.items()}
GROUPS["objects"] = ("remove_object", "replace_object", "find_object", "inpaint_image", "detect_objects",
                     "segment_object", "segment_everything")
GROUPS["extend"] = ("extend_image",)
GROUPS["caption"] = ("caption_image",)
GROUPS["show"] = ("show_image",)
_GROUPED = {t for names in GROUPS.values() for t in names} | set(CORE)
GROUPS["other"] = tuple(t.name for t in TOOLS if t.name not in _GROUPED)  # tools added later land here
GROUP_OF = {t: g for g, names in GROUPS.items() for t in names}

# the user's words that point at a group (a cheap first routing step, no LLM round needed)
ROUTES = {
    "edges": r"\bedges?\b|canny|outline",
    "lines": r"straight lines?|\blines\b|m-?lsd",
    "soft_edges": r"soft edges?|\bhed\b|boundar",
    "sketch": r"sketch|scribbl|doodle",
    "pose": r"\bpos(e|es|ed|ing|ture)\b|skeleton",
    "segmentation": r"segment",
    "depth": r"\bdepth|how far",
    "normals": r"\bnormals?\b|surface direction",
    "objects": (r"\b(remove|replace|erase|delete|get rid|swap|instead|mask|inpaint|repaint"
                r"|detect|find|locate|where|count|box|segment)"),
    "extend": r"extend|outpaint|expand|wider|taller|larger|bigger|\b\d{2,4} ?x ?\d{2,4}\b",
    "caption": r"caption|describe",
    "show": r"\b(show|display|again|repost|resend)\b",
}


def route(text: str) -> set[str]:
    """Groups the user's own words point at (not the bot's "[uploaded img1 ...: 64x40 ...]" lines, whose
    sizes and captions would bring groups nobody asked for)."""
    words = "\n".join(line for line in text.lower().splitlines() if not line.startswith("[uploaded "))
    return {g for g, pattern in ROUTES.items() if re.search(pattern, words)}


def select(available: list[Tool], groups: Iterable[str]) -> list[Tool]:
    """The core tools plus every tool of ``groups``, in TOOLS order."""
    wanted = set(CORE).union(*(GROUPS.get(g, ()) for g in groups))
    return [t for t in available if t.name in wanted]


def hidden_groups(available: list[Tool], offered: list[Tool]) -> list[str]:
    """Groups with an available tool not offered yet: what ``more_tools`` can unlock."""
    names = {t.name for t in available} - {t.name for t in offered}
    return [g for g, tools in GROUPS.items() if names.intersection(tools)]


_SAYS = {"objects": "objects (find, detect, segment, remove, replace, mask, repaint)",
         "extend": "extend (outpaint to a larger size)", "caption": "caption",
         "show": "show (post an existing image again)", "other": "other"}


def more_tools_schema(groups: list[str]) -> dict[str, Any]:
    maps = [g for g in groups if g not in _SAYS]
    what = ["a map (make one of an image, or draw following one)"] if maps else []
    what += [_SAYS[g] for g in groups if g in _SAYS]
    return _function(MORE_TOOLS, f"Unlock a group of tools: {', '.join(what)}.",
                     {"group": {"type": "string", "enum": groups}}, ["group"])


def schema(tool: Tool, image_ids: list[str]) -> dict[str, Any]:
    """The tool's schema (``Tool.schema``) made compact (core/llm.py's ``strict`` makes OpenAI's strict
    subset of it): no descriptions the name, the enum or the range says; image ids as a pattern when
    listing them costs more than it protects. ``minLength`` stays: a grammar-constrained server
    (llama.cpp, vLLM, the built-in LLM) then cannot write an empty required text such as
    ``find_object(object="")``; the tools validate lengths too, for servers that do not constrain."""
    out = tool.schema(image_ids)
    for key, spec in out["function"]["parameters"]["properties"].items():
        image, images = tool.parameters[key].get(IMAGE), tool.parameters[key].get(IMAGES)
        if spec["type"] != "string" or image:
            spec.pop("description", None)
        if images:  # the ids' enum says they are strings; the tool checks how many
            spec.pop("maxItems")
            spec["items"].pop("type")
        if (image or images) and len(image_ids) > ENUM_IDS:
            ids = spec["items"] if images else spec
            del ids["enum"]
            ids.update(type="string", pattern=ID_PATTERN)
    return out


def _function(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": required, "additionalProperties": False}}}
