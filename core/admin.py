"""The admins' commands answered with a text: /models, /safety, /reload, /load, /unload.

``answer`` is what ``Core.admin`` says; ``format_models`` is the /models listing, one line per model.
"""

from __future__ import annotations

import logging
import time

import settings
from core import commands
from core.pool_client import PoolClient, PoolUnavailable
from core.safety import describe, summary
from core.tools.base import duration_text
from core.turn import Turn
from settings.units import hub_pair, hub_size, mib

log = logging.getLogger(__name__)


async def answer(config: settings.Config, pool: PoolClient, turn: Turn, action: str, model: str | None,
                 device: str | None, notes: dict[str, str]) -> tuple[str, bool]:
    """The answer to an admin's ``action``, refused for non-admins; True with it when the pool's models
    changed (reload, load, unload)."""
    if not turn.is_admin:
        log.warning("refused /%s from non-admin %s (%s)", action, turn.user_id, turn.platform)
        return f"Sorry, /{action} is for the bot's admins only.", False
    if action == "safety":
        try:
            return describe(config.safety, turn, await pool.models()), False
        except PoolUnavailable:
            return describe(config.safety, turn, None), False
    try:
        if action == "models":
            infos = await pool.models()
            noted = "".join(f"\n{topic}: {text}" for topic, text in notes.items())
            return format_models(infos, config.models) + "\n" + summary(config.safety, infos) + noted, False
        if action == "reload":
            reply = await pool.reload(model)
        elif action == "load":
            reply = await pool.load(model or "", device)
        elif action == "unload":
            reply = await pool.unload(model or "")
        else:
            return f"Unknown admin command /{action}. Admins: {commands.names(admin=True)}.", False
    except PoolUnavailable as e:
        return str(e), False
    return reply.get("message", "Done."), True


def format_models(infos, configured: dict | None = None) -> str:
    """One line per model: where it is, whether its weights are on the device now
    (offloaded: waiting in CPU RAM under a residency budget), its size, the part of it held once with
    which other models, an LLM's decoding speed (tokens/s over its recent jobs), and its last use; while it
    downloads or loads, how far it got and about how long is left. A last line says what holding shared
    weights once saves. ``configured`` (config.models) gives each model's label: "Text2Mask (ImageEditing)"
    for one configured by the seed's name."""
    if not infos:
        return "No models are configured."
    lines = []
    for m in infos:
        where = (", resident" if m.resident else ", offloaded to CPU RAM") if m.state == "ready" else ""
        size = mib(m.bytes, 0) if m.bytes else "no weights"
        shared = f", {mib(m.shared_bytes, 0)} shared with {', '.join(m.shares_with)}" if m.shared_bytes else ""
        if m.last_used is None:
            used = ", not used yet" if m.state == "ready" else ""
        else:
            ago = max(0, time.time() - m.last_used)
            used = ", last used " + (f"{ago:.0f} s" if ago < 90 else f"{ago / 60:.0f} min" if ago < 5400
                                     else f"{ago / 3600:.1f} h") + " ago"
        speed = f", {_rate(m.tokens_per_s)} tokens/s" if m.tokens_per_s else ""  # an LLM's decoding
        err = f" - {m.error}" if m.error else ""
        state = m.state
        if m.state == "loading" and m.phase:  # downloading 1.2 of 2.1 GB / loading 2.1 GB of files
            state = m.phase
            if m.download_total:
                size = (hub_pair(m.downloaded, m.download_total) if m.phase == "downloading"
                        else f"{hub_size(m.download_total)} of files")
            size += f", about {duration_text(m.eta_s)} left" if m.eta_s else ""
        label = configured[m.name].label if configured and m.name in configured else m.name
        lines.append(f"{label}: {state} on {m.device} ({m.dtype}){where}, {size}{shared}{speed}{used}{err}")
    if saved := sharing_saves(infos):
        lines.append(f"Weights shared by several models are held once: {mib(saved, 0)} less than each loading its own.")
    return "\n".join(lines)


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def sharing_saves(infos) -> int:
    """About the bytes that holding shared weights once saves: in each group of models that share (one SD
    base and its pipelines; klein, its inpainting and the LLM of one Qwen3), the bytes they share less the
    shared part of the one holding most of it (the base itself, or Klein, which holds all of them)."""
    shared = {m.name: m.shared_bytes for m in infos if m.shared_bytes}
    peers = {m.name: set(m.shares_with) & set(shared) for m in infos if m.name in shared}
    saved, seen = 0, set()
    for name in shared:
        if name in seen:
            continue
        group, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in group:
                group.add(n)
                todo.extend(peers[n] - group)
        seen |= group
        saved += sum(shared[n] for n in group) - max(shared[n] for n in group)
    return saved
