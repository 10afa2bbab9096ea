"""What a tool is, how its arguments are checked, and how it runs pool jobs.

A tool never sees a file path: image arguments are the session's ids
(``img3``), offered to the LLM as an ``enum`` and checked again here. A tool
that fails returns an error result the LLM can act on; it never raises.
A job's images pass the conversation's safety policy (core/safety.py) before
a tool can store them. Every image a tool stores records how it was made
(``Provenance``): the call's arguments, and the pool job the tool names when it
saves, the one that made its pixels (model, parameters as run with the seed,
prompts sent), whatever other jobs ran before or after it.

A ``ToolContext`` is the request's facts, fixed for the turn (who, where, the
policy, the limits, the stores, a button's press) plus the call's arguments;
what the turn's calls produce (the images made, shown or withheld) and its
deadline live apart, in ``Produced`` and ``Waits``, shared by every call.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Awaitable, Callable, Mapping

from PIL import Image

import settings
from core.errors import DISK_FULL, BadArguments, PoolFailed, UserFacingError, Withheld, no_room
from core.images import ImageStore
from core.inflight import InFlight
from core.pool_client import PoolClient
from core.safety import FOR_LLM, NO_RETRY, Policy, judge
from core.store import ImageRow, Provenance
from gpu_pool.protocol import Event, JobRequest, RawImage
from settings.units import hub_pair

log = logging.getLogger(__name__)
IMAGE = "x-image"  # marks a parameter whose value is a session image id
OPTIONAL = "x-optional"  # marks a parameter the call may leave out (all others are required)
COMMAND_ONLY = "x-command-only"  # marks a parameter a slash command may set, never offered to the LLM (optional)
IMAGES = "x-images"  # marks a parameter whose value is a list of session image ids (optional)
_MARKS = (IMAGE, OPTIONAL, COMMAND_ONLY, IMAGES)


def image_param(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description, IMAGE: True}


def images_param(description: str, most: int) -> dict[str, Any]:
    """An optional list of up to ``most`` session image ids, each offered and checked like an image parameter
    (an empty list: none)."""
    return {"type": "array", "description": description, "items": {"type": "string"}, "maxItems": most,
            IMAGES: True, OPTIONAL: True}


def image_ids(tool: Tool, args: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The images a call reads, as (parameter, id) in the order of its parameters: ``image``, a mask, each
    reference image."""
    out = []
    for key, spec in tool.parameters.items():
        value = args.get(key)
        if spec.get(IMAGE) and isinstance(value, str):
            out.append((key, value))
        elif spec.get(IMAGES) and isinstance(value, list):
            out += [(key, v) for v in value if isinstance(v, str)]
    return out


def text_param(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description, "minLength": 1}


def int_param(description: str, minimum: int, maximum: int, optional: bool = False) -> dict[str, Any]:
    spec = {"type": "integer", "description": description, "minimum": minimum, "maximum": maximum}
    return {**spec, OPTIONAL: True} if optional else spec


def choice_param(description: str, choices: tuple[str, ...], optional: bool = False) -> dict[str, Any]:
    spec = {"type": "string", "description": description, "enum": list(choices)}
    return {**spec, OPTIONAL: True} if optional else spec


def command_only(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` for a slash command's option only: optional, and not in the schema the LLM is offered."""
    return {**spec, OPTIONAL: True, COMMAND_ONLY: True}


IMAGE_TO_CHANGE = image_param("the image to change")
IMAGE_TO_SEARCH = image_param("the image to search")


@dataclass
class Waits:
    """The turn's deadline (set by the agent loop), stopped while any of its jobs waits for a model to
    download or load and given the time back afterwards: a first download of 2 GB must not cost the
    user the answer."""

    deadline: asyncio.Timeout | None = None
    waiting: int = 0  # jobs waiting now
    since: float = 0.0  # loop time the first of them began
    when: float | None = None  # the deadline it had then

    def hold(self) -> None:
        if self.deadline is None:
            return
        if self.waiting == 0:
            self.since, self.when = asyncio.get_running_loop().time(), self.deadline.when()
            self.deadline.reschedule(None)
        self.waiting += 1

    def release(self) -> None:
        if self.deadline is None or self.waiting == 0:
            return
        self.waiting -= 1
        if self.waiting == 0 and self.when is not None:
            self.deadline.reschedule(self.when + asyncio.get_running_loop().time() - self.since)


@dataclass
class Produced:
    """What the turn's tool calls produced so far, shared by all of them."""

    made: list[str] = field(default_factory=list)  # image ids made during this turn
    withheld: list[str] = field(default_factory=list)  # what the user is told for each image withheld this turn
    shown: list[str] = field(default_factory=list)  # existing image ids the user asked to see again


@dataclass(frozen=True)
class ToolContext:
    """The request's facts, never changed by a job; ``call`` gives each call its own copy with its ``args``."""

    session: str
    user: str
    images: ImageStore
    pool: PoolClient
    limits: settings.LimitsConfig
    status: Callable[[str], Awaitable[None]]  # progress text for the chat (the Reply's status)
    policy: Policy = field(default_factory=Policy)  # the conversation's safety policy
    seeds: Mapping[str, int] = field(default_factory=dict)  # pool model -> the seed its jobs use (a reroll's)
    action: tuple[str, str] | None = None  # (button, image id) when a button press runs the tool
    args: Mapping[str, Any] | None = None  # the arguments of this tool call (set by ``call``)
    produced: Produced = field(default_factory=Produced)
    waits: Waits = field(default_factory=Waits)
    request: InFlight | None = None  # the request in flight it serves: its jobs are noted there (/queue, Cancel)

    @property
    def made(self) -> list[str]:
        return self.produced.made

    @property
    def withheld(self) -> list[str]:
        return self.produced.withheld

    @property
    def shown(self) -> list[str]:
        return self.produced.shown


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
    parameters: dict[str, dict[str, Any]] = {}  # every one required unless marked OPTIONAL
    models: tuple[str, ...] = ()  # pool models that must be loaded
    any_of: tuple[tuple[str, ...], ...] = ()  # and, if set, one of these groups (two ways to the same step)
    read_only: bool = False  # makes no image: may run side by side with other read-only calls

    def usable(self, loaded: set[str]) -> bool:
        """Whether the models this tool needs are all among ``loaded``."""
        return set(self.models) <= loaded and (not self.any_of or any(set(g) <= loaded for g in self.any_of))

    def offered(self, loaded: set[str]) -> Tool:
        """The tool as the LLM is offered it while ``loaded`` are loaded (a tool may leave out a parameter
        that only a model not loaded now can use)."""
        return self

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(k for k, spec in self.parameters.items() if not spec.get(OPTIONAL))

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        raise NotImplementedError

    def schema(self, image_ids: list[str]) -> dict[str, Any]:
        """The OpenAI function-tool schema, image parameters limited to ``image_ids``."""
        props = {}
        for key, spec in self.parameters.items():
            if spec.get(COMMAND_ONLY):
                continue
            spec = {k: v for k, v in spec.items() if k not in _MARKS}
            if self.parameters[key].get(IMAGE):
                spec["enum"] = list(image_ids) or ["(no images yet)"]
            elif self.parameters[key].get(IMAGES):
                spec["items"] = {"type": "string", "enum": list(image_ids) or ["(no images yet)"]}
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
        elif spec.get(IMAGES):
            _check_ids(key, spec, ctx, value)
        elif spec["type"] == "integer":
            if isinstance(value, float) and value.is_integer():
                value = args[key] = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise BadArguments(f"'{key}' must be a whole number, got {value!r}.")
            if not spec["minimum"] <= value <= spec["maximum"]:
                raise BadArguments(f"'{key}' must be between {spec['minimum']} and {spec['maximum']}, got {value}.")
        elif spec["type"] == "string" and not isinstance(value, str):
            raise BadArguments(f"'{key}' must be text, got {value!r}.")
        elif "enum" in spec and value not in spec["enum"]:
            raise BadArguments(f"'{key}' must be one of {', '.join(spec['enum'])}, got {value!r}.")
    return args


def _check_ids(key: str, spec: dict[str, Any], ctx: ToolContext, value: Any) -> None:
    most = spec["maxItems"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadArguments(f"'{key}' must be a list of image ids, like [\"img1\", \"img3\"]; got {value!r}.")
    if len(value) > most:
        raise BadArguments(f"'{key}' takes at most {most} images, got {len(value)}.")
    if len(set(value)) < len(value):
        raise BadArguments(f"'{key}' names an image twice: {', '.join(value)}; name each image once.")
    for image_id in value:
        ctx.images.row(ctx.session, image_id)  # raises UnknownImage listing the ids that exist


async def call(tool: Tool, ctx: ToolContext, args: Any) -> ToolResult:
    """Run a tool; every failure becomes an error result the LLM (or the user) can act on."""
    if ctx.withheld and not tool.read_only:  # trying again is the user's choice, not the LLM's
        return ToolResult(NO_RETRY, ok=False)
    try:
        args = check_args(tool, ctx, args)
        return await tool.run(replace(ctx, args=dict(args)), args)
    except Withheld as e:
        log.warning("session %s: %s: image withheld by the safety filter (%s)", ctx.session, tool.name, e.why)
        ctx.withheld.append(str(e))
        return ToolResult(FOR_LLM, ok=False)
    except PoolFailed as e:  # a pool that is gone, or a cancelled request, ends the turn
        return ToolResult(f"Error: {e}", ok=False, fatal=e.code in ("unavailable", "cancelled"))
    except UserFacingError as e:
        return ToolResult(f"Error: {e}", ok=False)
    except Exception as e:
        if no_room(e):  # the data directory's disk is full (a job's row, say)
            log.error("tool %s in session %s: no room in the data directory: %s", tool.name, ctx.session, e)
            return ToolResult(f"Error: {DISK_FULL}", ok=False)
        log.exception("tool %s failed in session %s", tool.name, ctx.session)
        return ToolResult(f"Error: {tool.name} failed unexpectedly; the admins can see why in the bot's log.",
                          ok=False)


# --- running pool jobs -------------------------------------------------------


@dataclass
class JobOutput:
    text: str | None
    images: list[Image.Image]
    data: dict[str, Any] = field(default_factory=dict)  # structured results, e.g. Text2Box's boxes
    provenance: dict[str, Any] = field(default_factory=dict)  # the pool's account of the job, plus "seconds"


async def run_job(ctx: ToolContext, model: str, params: dict[str, Any], images: list[Image.Image] = (),
                  label: str = "") -> JobOutput:
    """Run one pool job, reporting queue position, download/load progress and steps through ``ctx.status``,
    with about how long until it is done (the pool's ETA). Its events are noted in ``ctx.request``
    (/queue, Cancel); a cancelled request runs no more jobs, and its job's row says "cancelled".

    Time spent waiting for the model to download or load does not count against the turn's deadline.
    """
    label = label or model
    if model in ctx.seeds:
        params = dict(params, seed=ctx.seeds[model])
    if ctx.request is not None and ctx.request.cancelled_by is not None:
        raise PoolFailed("Cancelled.", "cancelled")
    request = JobRequest(model, params, [RawImage.from_pil(im) for im in images], user=ctx.user)
    job = ctx.images.store.start_job(ctx.session, ctx.user, model)
    held, finished = False, False
    try:
        async for ev in ctx.pool.run(request):
            if ctx.request is not None:
                ctx.request.seen(model, ev)
            waiting = ev.kind == "progress" and ev.total == 0
            if waiting != held:
                (ctx.waits.hold if waiting else ctx.waits.release)()
                held = waiting
            if ev.kind == "queued":
                await ctx.status((f"{label}: waiting, {ev.position} job(s) ahead" if ev.position
                                  else f"{label}: starting") + _eta(ev, "done in about {}"))
            elif waiting:
                await ctx.status(waiting_text(model, ev))
            elif ev.kind == "progress" and ev.total and ev.total > 1:
                await ctx.status(f"{label}: step {ev.step}/{ev.total}" + _eta(ev, "about {} left"))
            elif ev.kind == "done":
                withheld = judge(ctx.policy, ctx.session, model, ev.safety)  # before anything is stored
                finished = True
                ctx.images.store.finish_job(job, "withheld" if withheld else "done", withheld and withheld.why)
                if withheld:
                    raise withheld
                return JobOutput(ev.text, [im.to_pil() for im in ev.images], ev.data or {},
                                 dict(ev.provenance or {"model": model}, seconds=ev.seconds))
            elif ev.kind == "failed":
                finished = True
                if ev.code == "cancelled":  # a cancelled job does not count as one that ran
                    at = f"at step {ev.step} of {ev.total}" if ev.total else "before it started"
                    ctx.images.store.finish_job(job, "cancelled", f"cancelled {at}")
                    raise PoolFailed(f"Cancelled {at}.", "cancelled")
                ctx.images.store.finish_job(job, "failed", ev.message)
                raise PoolFailed(ev.message or "The image engine failed.", ev.code or "internal")
    finally:
        if held:
            ctx.waits.release()
        if not finished and ctx.request is not None and ctx.request.cancelled_by is not None:
            at = ctx.request.stopped_at  # stopped before the pool answered: the last step seen
            ctx.images.store.finish_job(job, "cancelled", f"cancelled at step {at[0]} of {at[1]}" if at
                                        else "cancelled")
    raise PoolFailed("The image engine stopped answering.", "unavailable")


def _eta(ev: Event, words: str) -> str:
    """', about 20 s left' from the pool's ETA; '' when it has none yet."""
    return f", {words.format(duration_text(ev.done_in_s))}" if ev.done_in_s is not None else ""


def waiting_text(model: str, ev: Event) -> str:
    """'Text2Image is still downloading (1.2 of 2.1 GB, about 2 min left); I'll answer when it is ready'."""
    eta = f"about {duration_text(ev.eta_s)} left" if ev.eta_s else ""
    if ev.phase == "downloading":
        got = hub_pair(ev.downloaded or 0, ev.download_total) if ev.download_total else ""
        detail = ", ".join(p for p in (got, eta) if p)
        what = "still downloading"
    else:
        detail, what = eta, "still loading"
    return f"{model} is {what}" + (f" ({detail})" if detail else "") + "; I'll answer when it is ready"


def duration_text(seconds: float) -> str:
    """40 s, 2 min, 1.5 h."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def save(ctx: ToolContext, img: Image.Image, job: JobOutput | None, *, parent: str | None, operation: str,
         params: dict[str, Any]) -> ImageRow:
    """Record a tool's output image in the session, with its lineage and how it was made: by ``job``
    (None: drawn here, from no job's pixels)."""
    row = ctx.images.add(ctx.session, img, parent=parent, operation=operation, params=params,
                         made=provenance(ctx, job))
    ctx.made.append(row.image_id)
    return row


def provenance(ctx: ToolContext, job: JobOutput | None) -> Provenance:
    """The call's arguments and the job that made the pixels; the button press, if a button asked for it."""
    made = job.provenance if job else {}
    run = made.get("params")
    action, action_of = ctx.action or (None, None)
    return Provenance(args=dict(ctx.args) if ctx.args is not None else None, model=made.get("model"),
                      source=made.get("source"), model_params=run, seed=(run or {}).get("seed"),
                      prompt=made.get("prompt"), negative_prompt=made.get("negative_prompt"),
                      seconds=made.get("seconds"), action=action, action_of=action_of, user=ctx.user)


# --- the steps most tools share ----------------------------------------------


async def on_image(ctx: ToolContext, model: str, params: dict[str, Any], label: str,
                   *more: Image.Image) -> tuple[Image.Image, JobOutput]:
    """The call's ``image`` argument, opened, and ``model``'s job on it (and ``more`` images)."""
    img = ctx.images.open(ctx.session, ctx.args["image"])
    return img, await run_job(ctx, model, params, [img, *more], label=label)


def keep(ctx: ToolContext, img: Image.Image, job: JobOutput | None, operation: str, params: dict[str, Any],
         said: Callable[[str], str]) -> ToolResult:
    """Save ``img``, made from the call's ``image`` by ``job``; the result is ``said(the new image's id)``."""
    row = save(ctx, img, job, parent=ctx.args.get("image"), operation=operation, params=params)
    return ToolResult(said(row.image_id), [row.image_id])
