"""Which pool model runs a step that two models can do: the modern profile's when it is loaded.

A tool that names two ways to the same step (``Tool.any_of``) asks here which is loaded now, so
the same tool name draws with FLUX.2 [klein] in the modern profile and with Stable Diffusion 1.5
in the seed's, sees with Florence-2 or with BLIP, masks with Florence-2 + SAM 2 or GroundingDINO + SAM.
"""

from __future__ import annotations

from itertools import product

from core.errors import PoolFailed
from core.pool_client import PoolUnavailable
from core.tools.base import ToolContext


async def loaded_models(ctx: ToolContext) -> set[str]:
    """Models ready in the pool, or loading (a job waits for them)."""
    try:
        return {m.name for m in await ctx.pool.models() if m.state in ("ready", "loading")}
    except PoolUnavailable as e:
        raise PoolFailed(str(e), "unavailable") from None


async def first_loaded(ctx: ToolContext, *ways: tuple[str, ...]) -> tuple[str, ...]:
    """The first of ``ways`` (each a group of models) whose models are all loaded; the last one when none
    is (its job then says which model an admin can load)."""
    loaded = await loaded_models(ctx)
    return next((way for way in ways if set(way) <= loaded), ways[-1])


def combined(*steps: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
    """``Tool.any_of`` of a flow of several steps, each done one of its ways: every combination of them
    (describe with Florence2 or BLIP, and paint with KleinInpaint or Inpainting: four groups)."""
    return tuple(tuple(dict.fromkeys(m for way in ways for m in way)) for ways in product(*steps))
