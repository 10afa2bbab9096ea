"""Who may use the listener, and how much: named bearer keys, a rate limit and a daily image quota per key.

The keys are never in config.toml. ``[api] keys_env`` names an environment variable holding
``name=key,name=key`` (each with ``[api]``'s limits); ``[api] keys_file`` a TOML file with one table
per client::

    [keys.open-webui]
    key = "sk-..."                 # the bearer token the client sends
    requests_per_minute = 10       # optional: jobs it may start per minute
    images_per_day = 100           # optional: images it may get per UTC day
    models = ["Text2Image"]        # optional: the only pool models it may use

Both may be used at once; a name in both is an error. Counts live in memory: a restart of the
pool starts every key's day afresh.
"""

from __future__ import annotations

import hmac
import math
import os
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field

import settings

DAY = 86400


class KeyError_(ValueError):
    """The keys cannot be read; the message names the variable or file and what is wrong."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: str = field(repr=False)
    requests_per_minute: int
    images_per_day: int
    models: tuple[str, ...] = ()  # () = every model

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models


class OverLimit(Exception):
    """A key over its rate or its quota; ``retry_after``: whole seconds until it may try again."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, retry_after)


def load_keys(api: settings.ApiConfig, environ: dict[str, str] | None = None) -> dict[str, ApiKey]:
    """Every key, by name, from ``api.keys_env`` and ``api.keys_file``."""
    environ = os.environ if environ is None else environ
    keys: dict[str, ApiKey] = {}
    for part in filter(None, (p.strip() for p in environ.get(api.keys_env, "").split(","))):
        name, sep, secret = part.partition("=")
        if not sep or not name.strip() or len(secret.strip()) < 8:
            raise KeyError_(f"{api.keys_env}: each entry must be name=key with a key of 8 characters or more")
        _add(keys, ApiKey(name.strip(), secret.strip(), api.requests_per_minute, api.images_per_day), api.keys_env)
    if api.keys_file is not None:
        where = str(api.keys_file)
        try:
            data = tomllib.loads(api.keys_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyError_(f"{where}: file not found ([api] keys_file)") from None
        except tomllib.TOMLDecodeError as e:
            raise KeyError_(f"{where}: not valid TOML: {e}") from None
        tables = data.get("keys", {})
        if not isinstance(tables, dict):
            raise KeyError_(f"{where}: expected [keys.NAME] tables")
        for name, t in tables.items():
            _add(keys, _from_table(name, t, api, where), where)
    secrets = [k.secret for k in keys.values()]
    if len(set(secrets)) != len(secrets):
        raise KeyError_("two clients have the same key; give each its own")
    return keys


def _from_table(name: str, t: object, api: settings.ApiConfig, where: str) -> ApiKey:
    if not isinstance(t, dict) or not isinstance(t.get("key"), str) or len(t["key"]) < 8:
        raise KeyError_(f"{where}: [keys.{name}] needs key = \"...\" (8 characters or more)")
    unknown = set(t) - {"key", "requests_per_minute", "images_per_day", "models"}
    if unknown:
        raise KeyError_(f"{where}: [keys.{name}].{sorted(unknown)[0]}: unknown; known: key, requests_per_minute, "
                        "images_per_day, models")
    limits = {}
    for k in ("requests_per_minute", "images_per_day"):
        v = t.get(k, getattr(api, k))
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise KeyError_(f"{where}: [keys.{name}].{k} must be a whole number of 1 or more")
        limits[k] = v
    models = t.get("models", [])
    if not isinstance(models, list) or not all(m in settings.MODEL_NAMES for m in models):
        raise KeyError_(f"{where}: [keys.{name}].models must list model names, e.g. [\"Text2Image\"]; known: "
                        f"{', '.join(settings.MODEL_NAMES)}")
    return ApiKey(name, t["key"], models=tuple(models), **limits)


def _add(keys: dict[str, ApiKey], key: ApiKey, where: str) -> None:
    if key.name in keys:
        raise KeyError_(f"{where}: the key name {key.name!r} is given twice")
    keys[key.name] = key


class Keys:
    """The keys, and each key's use: requests in the last minute, images today."""

    def __init__(self, keys: dict[str, ApiKey], clock=time.time):
        self.keys, self.clock = keys, clock
        self._recent: dict[str, deque[float]] = {}
        self._day: dict[str, tuple[int, int]] = {}  # name -> (UTC day number, images counted)

    def find(self, authorization: str | None) -> ApiKey | None:
        """The key a ``Authorization: Bearer KEY`` header names; None for none or a wrong one."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token = token.strip().encode()
        found = None
        for key in self.keys.values():  # compare with every key, in constant time each
            if hmac.compare_digest(key.secret.encode(), token):
                found = key
        return found

    def take(self, key: ApiKey, images: int) -> None:
        """Count one request for ``images`` images, or raise OverLimit (nothing counted then)."""
        now = self.clock()
        recent = self._recent.setdefault(key.name, deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= key.requests_per_minute:
            wait = math.ceil(recent[0] + 60 - now)
            raise OverLimit(f"Rate limit: key {key.name!r} may start {key.requests_per_minute} request(s) a minute. "
                            f"Try again in {wait} s.", wait)
        day, used = self._today(key, now)
        if used + images > key.images_per_day:
            wait = math.ceil((day + 1) * DAY - now)
            left = key.images_per_day - used
            raise OverLimit(f"Daily quota: key {key.name!r} may make {key.images_per_day} image(s) a day (UTC) and "
                            f"has {left} left; this request asks for {images}. Try again after midnight UTC, in "
                            f"{wait} s.", wait)
        recent.append(now)
        self._day[key.name] = (day, used + images)

    def give_back(self, key: ApiKey, images: int) -> None:
        """Images counted by ``take`` that were not made (a failed or cancelled job, a withheld image)."""
        day, used = self._today(key, self.clock())
        self._day[key.name] = (day, max(0, used - images))

    def used_today(self, key: ApiKey) -> int:
        return self._today(key, self.clock())[1]

    def _today(self, key: ApiKey, now: float) -> tuple[int, int]:
        day = int(now // DAY)
        seen, used = self._day.get(key.name, (day, 0))
        return day, used if seen == day else 0
