"""What a tool is, how its arguments are checked, and how it runs pool jobs.

A tool never sees a file path: image arguments are the session's ids
(``img3``), offered to the LLM as an ``enum`` and checked again here. A tool
that fails returns an error result the LLM can act on; it never raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from PIL import Image

import settings
from core.errors import BadArguments, PoolFailed, UserFacingError
from core.images import ImageStore
from core.pool_client import PoolClient
from core.store import ImageRow
from gpu_pool.protocol import JobRequest, RawImage

log = logging.getLogger(__name__)
IMAGE = "x-image"  # marks a parameter whose value is a session image id


def image_param(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description, IMAGE: True}


def text_param(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description, "minLength": 1}


def int_param(description: str, minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "description": description, "minimum": minimum, "maximum": maximum}


@dataclass
class ToolContext:
    session: str
    user: str
    images: ImageStore
    pool: PoolClient
    limits: settings.LimitsConfig
    status: Callable[[str], Awaitable[None]]  # progress text for the chat (the Reply's status)
    made: list[str] = field(default_factory=list)  # image ids made during this turn
    shown: list[str] = field(default_factory=list)  # existing image ids the user asked to see again


@dataclass
class ToolResult:
    text: str
    images: list[str] = field(default_factory=list)
    ok: bool = True
    fatal: bool = False  # the pool is gone: end the turn instead of asking the LLM again


class Tool:
    """Subclasses set the class attributes and implement ``run``."""

    name: str = ""
    description: str = ""  # one sentence, for the LLM
    parameters: dict[str, dict[str, Any]] = {}
    required: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # pool models that must be loaded
    read_only: bool = False  # makes no image: may run side by side with other read-only calls

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        raise NotImplementedError

    def schema(self, image_ids: list[str]) -> dict[str, Any]:
        """The OpenAI function-tool schema, image parameters limited to ``image_ids``."""
        props = {}
        for key, spec in self.parameters.items():
            spec = {k: v for k, v in spec.items() if k != IMAGE}
            if self.parameters[key].get(IMAGE):
                spec["enum"] = list(image_ids) or ["(no images yet)"]
            props[key] = spec
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": {"type": "object", "properties": props, "required": list(self.required),
                           "additionalProperties": False}}}

    def needs_image(self) -> bool:
        return any(spec.get(IMAGE) and key in self.required for key, spec in self.parameters.items())


def check_args(tool: Tool, ctx: ToolContext, args: Any) -> dict[str, Any]:
    """Validate arguments against the tool's schema; raises BadArguments / UnknownImage."""
    if not isinstance(args, dict):
        raise BadArguments(f"{tool.name} takes an object of arguments: {', '.join(tool.parameters)}.")
    unknown = [k for k in args if k not in tool.parameters]
    if unknown:
        raise BadArguments(f"{tool.name} has no argument '{unknown[0]}'; it takes {', '.join(tool.parameters)}.")
    for key in tool.required:
        if args.get(key) in (None, ""):
            raise BadArguments(f"{tool.name} needs '{key}': {tool.parameters[key]['description']}")
    for key, value in args.items():
        spec = tool.parameters[key]
        if spec.get(IMAGE):
            ctx.images.row(ctx.session, value)  # raises UnknownImage listing the ids that exist
        elif spec["type"] == "integer":
            if isinstance(value, float) and value.is_integer():
                value = args[key] = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise BadArguments(f"'{key}' must be a whole number, got {value!r}.")
            if not spec["minimum"] <= value <= spec["maximum"]:
                raise BadArguments(f"'{key}' must be between {spec['minimum']} and {spec['maximum']}, got {value}.")
        elif spec["type"] == "string" and not isinstance(value, str):
            raise BadArguments(f"'{key}' must be text, got {value!r}.")
    return args


async def call(tool: Tool, ctx: ToolContext, args: Any) -> ToolResult:
    """Run a tool; every failure becomes an error result the LLM (or the user) can act on."""
    try:
        return await tool.run(ctx, check_args(tool, ctx, args))
    except PoolFailed as e:
        return ToolResult(f"Error: {e}", ok=False, fatal=e.code == "unavailable")
    except UserFacingError as e:
        return ToolResult(f"Error: {e}", ok=False)
    except Exception:
        log.exception("tool %s failed in session %s", tool.name, ctx.session)
        return ToolResult(f"Error: {tool.name} failed unexpectedly; the admins can see why in the bot's log.",
                          ok=False)


# --- running pool jobs -------------------------------------------------------


@dataclass
class JobOutput:
    text: str | None
    images: list[Image.Image]


async def run_job(ctx: ToolContext, model: str, params: dict[str, Any], images: list[Image.Image] = (),
                  label: str = "") -> JobOutput:
    """Run one pool job, reporting queue position and steps through ``ctx.status``."""
    label = label or model
    request = JobRequest(model, params, [RawImage.from_pil(im) for im in images], user=ctx.user)
    job = ctx.images.store.start_job(ctx.session, ctx.user, model)
    async for ev in ctx.pool.run(request):
        if ev.kind == "queued":
            await ctx.status(f"{label}: waiting, {ev.position} job(s) ahead" if ev.position else f"{label}: starting")
        elif ev.kind == "progress" and ev.total == 0:
            await ctx.status(f"{label}: waiting for {model} to load")
        elif ev.kind == "progress" and ev.total and ev.total > 1:
            await ctx.status(f"{label}: step {ev.step}/{ev.total}")
        elif ev.kind == "done":
            ctx.images.store.finish_job(job, "done")
            return JobOutput(ev.text, [im.to_pil() for im in ev.images])
        elif ev.kind == "failed":
            ctx.images.store.finish_job(job, "failed", ev.message)
            raise PoolFailed(ev.message or "The image engine failed.", ev.code or "internal")
    raise PoolFailed("The image engine stopped answering.", "unavailable")


def save(ctx: ToolContext, img: Image.Image, *, parent: str | None, operation: str,
         params: dict[str, Any]) -> ImageRow:
    """Record a tool's output image in the session, with its lineage."""
    row = ctx.images.add(ctx.session, img, parent=parent, operation=operation, params=params)
    ctx.made.append(row.image_id)
    return row
