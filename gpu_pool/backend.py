"""What runs behind the pool's HTTP face: the one seam both pools implement.

``gpu_pool/routes.py`` writes every handler once against a :class:`Backend`:
``gpu_pool/local.py`` runs the jobs in this process (a Registry and a
Scheduler), ``gpu_pool/ray/front.py`` on Ray Serve replicas. The built-in
LLM's OpenAI endpoint (``gpu_pool/openai_api.py``) uses the same seam.

The pool's words name models and causes, never a chat command: a refusal is
a :class:`Refused` with a code (a ``protocol.FailCode``) and the model it is
about, and the core words it for its users (``core/pool_client.py`` adds how
an admin loads a model that is ``not_loaded``).

Imports neither torch nor Ray, so the Ray front stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from collections.abc import AsyncIterator

import settings
from gpu_pool.protocol import Event, JobRequest, ModelInfo, QueuedJob


class Refused(Exception):
    """What the pool will not do, and why: the message names the model and the cause.

    ``code``: "unknown_model", "not_loaded" (the model is not loaded here), "load_failed", "bad_request",
    "config" (config.toml cannot be read); ``model``: the model it is about, where there is one.
    """

    def __init__(self, message: str, code: str = "bad_request", model: str | None = None):
        super().__init__(message)
        self.code, self.model = code, model


def unknown_model(name: Any, listing: bool = True) -> Refused:
    known = f" Known models: {', '.join(settings.MODEL_NAMES)}." if listing else ""
    return Refused(f"There is no model called {name}.{known}", "unknown_model", str(name))


def not_loaded(name: str) -> Refused:
    return Refused(f"{name} is not loaded on this bot.", "not_loaded", name)


@dataclass
class Reloaded:
    """What a reload did: the models reloaded, and those of them that failed to load."""

    names: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Backend(Protocol):
    """Jobs and admin calls. The admin calls raise :class:`Refused` for what they will not do."""

    limits: settings.LimitsConfig

    def run(self, request: JobRequest) -> AsyncIterator[Event]:
        """A job's events, the last one done or failed; closing the iterator early cancels the job."""

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (its stream ends with failed/cancelled); False: no such job."""

    async def queue(self) -> list[QueuedJob]:
        """The jobs in the pool now: per device the running one, then the queued ones in the order they run."""

    async def models(self) -> list[ModelInfo]:
        """Every model's listing."""

    async def reload(self, name: str | None) -> Reloaded:
        """Re-read config.toml, then reload ``name`` (None: every model)."""

    async def load(self, name: str, device: str | None, dtype: str | None) -> list[ModelInfo]:
        """Load ``name`` (again) on ``device`` in ``dtype`` (None: the config's); its listing per copy loaded."""

    async def unload(self, name: str) -> None:
        """Unload ``name``."""

    async def llm_info(self) -> ModelInfo | None:
        """The built-in LLM's listing (its source and state); None where no [models.LLM] is served."""

    def health(self) -> dict[str, Any]:
        """What ``/health`` adds to ``{"ok", "pid"}`` (e.g. which backend)."""
