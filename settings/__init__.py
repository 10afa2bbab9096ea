"""Load and validate ``config.toml``.

Every part of the bot reads the same file: the bot process (LLM, platforms,
storage, limits) and the pool process (pool, models, limits). This package
imports nothing of the project so both sides can use it.

Validation errors are :class:`ConfigError` whose message names the key and
the accepted values, meant to be read by the person editing the file.

- ``settings.models``: the seed's model names, their default sources, dtypes, devices.
- ``settings.sections``: the typed sections of a validated config (``Config`` and its parts).
- ``settings.schema``: the table of sections and keys, and the checks that validate them.
- ``settings.seed``: the seed's words: ``[models.ImageEditing]`` and ``--load "Name_device,..."``.
- here: ``load`` and ``parse``, which build a ``Config`` from the checked tables.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from settings.models import (ANNOTATORS, DTYPES, MODEL_DEFAULTS, MODEL_NAMES, SAFETY_CHECKER, SD15, SEED_MODELS,
                             default_source, resolve_device)
from settings.schema import MODEL_KEYS, SCHEMA, SECTIONS, Check, ConfigError, check_table, device_problem, parse_size
from settings.seed import ALIASES, alias_table, known_models, with_load
from settings.sections import (
    ApiConfig,
    BotConfig,
    Config,
    DiscordConfig,
    LimitsConfig,
    LLMConfig,
    ModelConfig,
    PoolConfig,
    QuotasConfig,
    RayConfig,
    ResidencyConfig,
    SafetyConfig,
    SlackConfig,
    StorageConfig,
)

__all__ = [
    "ANNOTATORS", "DTYPES", "MODEL_DEFAULTS", "MODEL_NAMES", "SAFETY_CHECKER", "SD15", "SEED_MODELS", "resolve_device",
    "MODEL_KEYS", "SCHEMA", "SECTIONS", "Check", "ConfigError", "device_problem", "parse_size",
    "BotConfig", "Config", "DiscordConfig", "LimitsConfig", "LLMConfig", "ModelConfig", "PoolConfig", "RayConfig",
    "QuotasConfig", "ResidencyConfig", "SafetyConfig", "SlackConfig", "StorageConfig",
    "load", "parse", "reload",
    "ApiConfig",
]


def _table(data: dict[str, Any], name: str) -> Any:
    """The table of section ``name``; "pool.ray" is the [pool.ray] table inside [pool]."""
    outer, _, inner = name.partition(".")
    table = data.get(outer, {})
    if inner:
        return table.get(inner, {}) if isinstance(table, dict) else {}
    if isinstance(table, dict) and any(f"{name}.{k}" in SCHEMA for k in table):
        table = {k: v for k, v in table.items() if f"{name}.{k}" not in SCHEMA}  # checked as their own sections
    return table


def _source(raw: str, base_dir: Path) -> str:
    if raw.startswith(("/", "./", "../")):
        return str((base_dir / raw).resolve())
    return raw


def parse(data: dict[str, Any], path: Path, env_check: bool = True, load: str = "") -> Config:
    """Validate parsed TOML ``data``; ``path`` anchors relative paths. ``load``: the command line's
    ``--load "Name_device,..."``, which replaces the [models.*] sections (``settings.seed.with_load``)."""
    if load:
        data = with_load(data, load)
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; known sections: {', '.join(SECTIONS)}")
    sec = {name: check_table(name, _table(data, name), keys) for name, keys in SCHEMA.items()}
    base_dir = path.parent.resolve()

    models_raw = data.get("models", {})
    if not isinstance(models_raw, dict):
        raise ConfigError("models: must be a table of [models.NAME] sections")
    models: dict[str, ModelConfig] = {}
    by_alias = {part: alias for alias in ALIASES if alias in models_raw for part in ALIASES[alias]}
    for name, table in models_raw.items():
        if name not in MODEL_DEFAULTS and name not in ALIASES:
            raise ConfigError(f"models.{name}: unknown model; known models: {known_models()}")
        if name in by_alias:
            continue  # configured with its pair ([models.ImageEditing]); its own section's keys win there
        m = check_table(f"models.{name}", alias_table(name, table) if name in ALIASES else table, MODEL_KEYS)
        for real in ALIASES.get(name, (name,)):
            if real != name:  # a part of the seed's pair: [models.ImageEditing]'s keys, then its own section's
                own = models_raw.get(real, {})
                check_table(f"models.{real}", own, MODEL_KEYS)  # checked as itself first: its errors name it
                m = check_table(f"models.{real}", {**table, **own}, MODEL_KEYS)
            source = m["source"] if m["source"] is not None else default_source(real, sec["pool"]["sd_base"])
            models[real] = ModelConfig(real, m["device"], m["dtype"], _source(source, base_dir),
                                       alias=name if real != name else "", quantize=m["quantize"])

    p = sec["pool"]
    socket = None if p["host"] else (base_dir / sec["storage"]["data_dir"] / p["socket"]).resolve()
    if p["host"] and not p["port"]:
        raise ConfigError('pool.port: must be set (1-65535) when pool.host is set; leave host "" to use a unix socket')
    r = sec["pool.ray"]
    ray = RayConfig(r["address"], r["replicas"], r["gpus_per_replica"], r["cpus_per_replica"], r["spread_after"],
                    r["num_cpus"], parse_size(r["object_store_memory"]) or 0)
    pool = PoolConfig(p["start"], socket, p["host"], p["port"], _source(p["sd_base"], base_dir), p["startup_timeout_s"],
                      p["backend"], ray, p["fast"], tuple(p["warmup_sizes"]), p["max_batch"], p["step_cache"])
    if pool.backend == "ray":
        for m in models.values():
            if m.device.startswith("cuda:") and m.device != "cuda:0":
                raise ConfigError(f'models.{m.name}.device: {m.device!r} is not valid with pool.backend = "ray": each '
                                  'replica has one GPU of its own; use "auto" or "cuda"')

    d = sec["discord"]
    discord = DiscordConfig(d["enabled"], d["token_env"], tuple(str(x) for x in d["admin_ids"]),
                            _strs(d["allowed_roles"]), {m: _strs(ids) for m, ids in d["model_roles"].items()})
    s = sec["slack"]
    slack = SlackConfig(s["enabled"], s["mode"], s["bot_token_env"], s["app_token_env"], s["signing_secret_env"],
                        s["http_port"], tuple(str(x) for x in s["admin_ids"]), s["workspace_admins"], s["api_url"],
                        _strs(s["allowed_usergroups"]), {m: _strs(ids) for m, ids in s["model_usergroups"].items()})
    if env_check:
        if discord.enabled is True and not discord.token:
            raise ConfigError(f"discord.token_env: Discord is enabled but the environment variable {discord.token_env} "
                              'is not set; set it to the bot token, or set discord.enabled = "auto"')
        if slack.enabled is True:
            for key, name in (("bot_token_env", slack.bot_token_env),
                              ("app_token_env" if slack.mode == "socket" else "signing_secret_env",
                               slack.required_env()[1])):
                if not slack.env(name):
                    raise ConfigError(f"slack.{key}: Slack is enabled but the environment variable {name} is not set; "
                                      'set it, or set slack.enabled = "auto"')

    lim, safety = sec["limits"], sec["safety"]
    return Config(
        path=path,
        llm=LLMConfig(**sec["llm"]),
        pool=pool,
        models=models,
        discord=discord,
        slack=slack,
        storage=StorageConfig((base_dir / sec["storage"]["data_dir"]).resolve()),
        limits=LimitsConfig(**lim),
        residency=_residency(sec["residency"]),
        safety=SafetyConfig(**dict(safety, allow_in_slack_channels=tuple(safety["allow_in_slack_channels"]))),
        bot=BotConfig(float(sec["bot"]["shutdown_grace_s"])),
        api=_api(sec["api"], base_dir),
        quotas=_quotas(sec["quotas"]),
        raw=data,
        load=load,
    )


def _api(a: dict[str, Any], base_dir: Path) -> ApiConfig:
    keys_file = (base_dir / a["keys_file"]).resolve() if a["keys_file"] else None
    return ApiConfig(**dict(a, keys_file=keys_file))


def _strs(ids: list) -> tuple[str, ...]:
    return tuple(str(x) for x in ids)


def _quotas(q: dict[str, Any]) -> QuotasConfig:
    return QuotasConfig(q["images_per_day"], float(q["cooldown_s"]), q["admins_exempt"],
                        {str(k): v for k, v in q["discord_roles"].items()}, dict(q["slack_usergroups"]))


def _residency(r: dict[str, Any]) -> ResidencyConfig:
    budget = parse_size(r["budget"]) or 0
    reserve = (parse_size(r["reserve"]) or 0) if budget else 0  # no budget: nothing to reserve from
    if budget and reserve >= budget:
        raise ConfigError(f"residency.reserve: {r['reserve']!r} is not valid; must be smaller than "
                          f"residency.budget ({r['budget']!r}) so that some of the budget is left for weights")
    devices = tuple(resolve_device(d) if d == "cuda" else d for d in r["devices"])
    return ResidencyConfig(budget, reserve, r["max_overtakes"], devices)


def load(path: str | os.PathLike[str], env_check: bool = True, load: str = "") -> Config:
    """Read and validate a config file (``load``: the command line's --load, see ``parse``)."""
    path = Path(path)
    return parse(_read(path), path, env_check=env_check, load=load)


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The TOML at ``path``; a profile that says ``extends = "config.toml"`` (config.modern.toml) is that
    file with the profile's keys over it, section by section, and the profile's [models.*] sections
    instead of that file's: a profile names its own models."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: extends: must be the file this profile builds on, like \"config.toml\"")
    base_path = (path.parent / base).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(f"{path}: extends: {base} extends this file again; a profile builds on a plain config")
    merged = _read(base_path, (*seen, path.resolve()))
    for name, table in data.items():
        if name != "models" and isinstance(table, dict) and isinstance(merged.get(name), dict):
            merged[name] = _merged(merged[name], table)
        else:
            merged[name] = table
    if "models" not in data:
        merged.pop("models", None)
    return merged


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over``'s keys over ``base``'s; an inner table ([pool.ray]) merged the same way."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merged(base[key], value) if both else value
    return out


def reload(config: Config) -> Config:
    """``config``'s file read again, with the same --load (the pool's /reload)."""
    return load(config.path, env_check=False, load=config.load)
