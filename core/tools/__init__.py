"""Every tool the agent and the slash commands can call, in one visible list.

``available(loaded)`` is what the LLM is offered: the tools whose pool models
are all loaded right now. ``BUTTONS`` are run only by the buttons under an
image (core/actions.py), never offered to the LLM.
"""

from __future__ import annotations

from core.templates.background import RemoveBackground
from core.templates.outpaint import ExtendImage
from core.templates.remove import RemoveObject
from core.templates.replace import ReplaceObject
from core.tools import conditions, controlnet
from core.tools.base import Tool
from core.tools.caption import CaptionImage
from core.tools.detect import DetectObjects
from core.tools.edit import EditImage
from core.tools.generate import GenerateImage
from core.tools.inpaint import InpaintImage
from core.tools.mask import FindObject
from core.tools.question import AnswerQuestion
from core.tools.segment_everything import SegmentEverything
from core.tools.segment_object import SegmentObject
from core.tools.show import ShowImage
from core.tools.upscale import UpscaleImage
from core.tools.variations import MakeVariation

TOOLS: list[Tool] = [
    CaptionImage(),
    AnswerQuestion(),
    GenerateImage(),
    EditImage(),
    *conditions.TOOLS,
    *controlnet.TOOLS,
    FindObject(),
    DetectObjects(),
    SegmentEverything(),
    SegmentObject(),
    InpaintImage(),
    ShowImage(),
    # multi-step flows (core/templates), each one tool to the LLM
    ExtendImage(),
    RemoveObject(),
    ReplaceObject(),
    RemoveBackground(),
]
BY_NAME: dict[str, Tool] = {t.name: t for t in TOOLS}
BUTTONS: dict[str, Tool] = {t.name: t for t in (MakeVariation(), UpscaleImage())}


def available(loaded: set[str]) -> list[Tool]:
    """Tools whose models are loaded (see ``Tool.usable``), as offered while they are (``Tool.offered``)."""
    return [t.offered(loaded) for t in TOOLS if t.usable(loaded)]
