"""The schema: one table of sections and keys, checked generically.

section -> key -> (python type(s), default, extra check or None).
A check returns an error text (what is accepted) or None when the value is fine.
"""

from __future__ import annotations

import re
from typing import Any
from collections.abc import Callable

from settings.models import DTYPES, MODEL_NAMES, SD15
from settings.units import parse_size


class ConfigError(ValueError):
    """The config file is invalid; the message says which key and how to fix it."""


Check = Callable[[Any], str | None] | None


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _one_of(*choices: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else "accepted values: " + ", ".join(repr(c) for c in choices)

    return check


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def device_problem(v: str) -> str | None:
    if _DEVICE_RE.match(v):
        return None
    return 'accepted values: "auto", "cpu", "cuda", "cuda:N" with N a GPU number (cuda:0, cuda:1 ...), "mps"'


def _env_name(v: str) -> str | None:
    ok = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v)
    return None if ok else "must be the name of an environment variable, like DISCORD_TOKEN (not the token itself)"


def _ids(v: list) -> str | None:
    return None if all(isinstance(x, (str, int)) for x in v) else "must be a list of user ids"


def _warmup_sizes(v: list) -> str | None:
    if not all(isinstance(x, int) and not isinstance(x, bool) and 64 <= x <= 4096 and x % 8 == 0 for x in v):
        return "must be a list of sizes in pixels, multiples of 8 between 64 and 4096 (e.g. [512, 768, 1024])"
    return None


def _size(v: str) -> str | None:
    return None if parse_size(v) is not None else 'must be a size like "8GiB", "512MiB" or "1.5GB"'


def _budget_devices(v: list) -> str | None:
    ok = all(isinstance(x, str) and x != "auto" and not device_problem(x) for x in v)
    return None if ok else 'must be a list of devices like ["cuda:0", "cuda:1"] ("cpu" and "mps" too; not "auto")'


def _slack_channels(v: list) -> str | None:
    ok = all(isinstance(x, str) and re.fullmatch(r"[CG][A-Z0-9]+", x) for x in v)
    return None if ok else 'must be a list of Slack channel ids like ["C0123ABCD"] (the id, not the #name)'


def _web_api(v: str) -> str | None:
    ok = re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?/", v)
    return None if ok else 'must be a URL ending in "/", like "https://slack.com/api/"'


# --- access: who may use the bot, its models, and how many images a day (core/access.py) ---


def _discord_roles(v: list) -> str | None:
    ok = all(isinstance(x, (str, int)) and not isinstance(x, bool) and str(x).isdigit() for x in v)
    return None if ok else 'must be a list of Discord role ids like ["112233445566778899"] (the id, not the @name)'


def _usergroups(v: list) -> str | None:
    ok = all(isinstance(x, str) and re.fullmatch(r"S[A-Z0-9]+", x) for x in v)
    return None if ok else 'must be a list of Slack user group ids like ["S0123ABCD"] (the id, not the @handle)'


def _per_model(ids: Callable[[list], str | None]) -> Callable[[dict], str | None]:
    def check(v: dict) -> str | None:
        for model, allowed in v.items():
            if model not in MODEL_NAMES:
                return f"{model!r} is not a model; known models: {', '.join(MODEL_NAMES)}"
            if not isinstance(allowed, list) or (problem := ids(allowed)):
                return f"{model}: " + (problem or "must be a list")
        return None

    return check


def _per_group(ids: Callable[[list], str | None]) -> Callable[[dict], str | None]:
    def check(v: dict) -> str | None:
        for group, images in v.items():
            if problem := ids([group]):
                return problem.replace("must be a list of", "keys must be")
            if isinstance(images, bool) or not isinstance(images, int) or images < 0:
                return f"{group}: must be a number of images per day, 0 or more (0: no limit)"
        return None

    return check


_ENABLED = ((bool, str), "auto",
            lambda v: None if v in (True, False, "auto") else 'accepted values: true, false, "auto"')

SCHEMA: dict[str, dict[str, tuple[Any, Any, Check]]] = {
    "llm": {
        "base_url": (str, "", None),
        "model": (str, "qwen2.5:7b-instruct", None),
        "api_key_env": (str, "OPENAI_API_KEY", _env_name),
        "timeout_s": ((int, float), 60, _positive),
        "turn_timeout_s": ((int, float), 600, _positive),
        "max_tool_rounds": (int, 6, _positive),
        "history_tokens": (int, 6000, _positive),
        "stream": (bool, False, None),
        "max_tokens": (int, 1024, lambda v: None if 16 <= v <= 32768 else "must be between 16 and 32768"),
        "tools": (str, "auto", _one_of("auto", "native", "json")),
        "constrain": (str, "auto", _one_of("auto", "strict", "off")),
        "vision": _ENABLED,
        "vision_images": (int, 4, lambda v: None if 0 <= v <= 16 else "must be between 0 and 16"),
    },
    "pool": {
        "start": (bool, True, None),
        "socket": (str, "pool.sock", None),
        "host": (str, "", None),
        "port": (int, 0, lambda v: None if 0 <= v < 65536 else "must be between 0 and 65535"),
        "sd_base": (str, SD15, None),
        "startup_timeout_s": ((int, float), 600, _positive),
        "backend": (str, "local", _one_of("local", "ray")),
        # speed (gpu_pool/fast.py, gpu_pool/batching.py)
        "fast": (str, "auto", _one_of("auto", "on", "off")),
        "warmup_sizes": (list, [512, 768, 1024], _warmup_sizes),
        "max_batch": (int, 4, lambda v: None if 1 <= v <= 16 else "must be between 1 and 16"),
        "step_cache": (int, 0, lambda v: None if v == 0 or 2 <= v <= 10 else "must be 0 (off) or between 2 and 10"),
    },
    "pool.ray": {
        "address": (str, "", None),
        "replicas": (int, 1, _positive),
        "gpus_per_replica": ((int, float), 1, lambda v: None if v >= 0 else "must be 0 or more"),
        "cpus_per_replica": ((int, float), 1, lambda v: None if v >= 0 else "must be 0 or more"),
        "spread_after": (int, 2, lambda v: None if v >= 0 else "must be 0 or more"),
        "num_cpus": (int, 0, lambda v: None if v >= 0 else "must be 0 or more"),
        "object_store_memory": (str, "", _size),
    },
    "discord": {
        "enabled": _ENABLED,
        "token_env": (str, "DISCORD_TOKEN", _env_name),
        "admin_ids": (list, [], _ids),
        "allowed_roles": (list, [], _discord_roles),
        "model_roles": (dict, {}, _per_model(_discord_roles)),
    },
    "slack": {
        "enabled": _ENABLED,
        "mode": (str, "socket", _one_of("socket", "http")),
        "bot_token_env": (str, "SLACK_BOT_TOKEN", _env_name),
        "app_token_env": (str, "SLACK_APP_TOKEN", _env_name),
        "signing_secret_env": (str, "SLACK_SIGNING_SECRET", _env_name),
        "http_port": (int, 3000, lambda v: None if 0 < v < 65536 else "must be between 1 and 65535"),
        "admin_ids": (list, [], _ids),
        "workspace_admins": (bool, False, None),
        "api_url": (str, "https://slack.com/api/", _web_api),
        "allowed_usergroups": (list, [], _usergroups),
        "model_usergroups": (dict, {}, _per_model(_usergroups)),
    },
    "storage": {
        "data_dir": (str, "data", None),
    },
    "bot": {
        "shutdown_grace_s": ((int, float), 5, lambda v: None if 0 <= v <= 300 else "must be between 0 and 300"),
    },
    "limits": {
        "max_image_pixels": (int, 40_000_000, _positive),
        "max_upload_bytes": (int, 25 * 1024 * 1024, _positive),
        "working_size": (int, 512, lambda v: None if 64 <= v <= 2048 and v % 8 == 0
                         else "must be a multiple of 8 between 64 and 2048"),
        "max_output_size": (int, 1024, lambda v: None if 64 <= v <= 4096 and v % 8 == 0
                            else "must be a multiple of 8 between 64 and 4096"),
        "max_steps": (int, 100, lambda v: None if 1 <= v <= 1000 else "must be between 1 and 1000"),
        "per_user_jobs": (int, 2, _positive),
        "images_per_turn": (int, 8, lambda v: None if 1 <= v <= 100 else "must be between 1 and 100"),
        "llm_max_tokens": (int, 1024, lambda v: None if 1 <= v <= 32768 else "must be between 1 and 32768"),
    },
    "residency": {
        "budget": (str, "", _size),
        "reserve": (str, "1GiB", _size),
        "max_overtakes": (int, 3, lambda v: None if v >= 0 else "must be 0 or more"),
        "devices": (list, [], _budget_devices),
    },
    "safety": {
        "enabled": (bool, True, None),
        "allow_in_nsfw_channels": (bool, False, None),
        "allow_in_slack_channels": (list, [], _slack_channels),
        "allow_in_dms": (bool, False, None),
    },
    # the pool's listener for other clients: OpenAI images API and MCP (gpu_pool/api/)
    "api": {
        "enabled": (bool, False, None),
        "host": (str, "127.0.0.1", None),
        "port": (int, 8090, lambda v: None if 0 <= v < 65536 else "must be between 0 and 65535"),
        "keys_env": (str, "VCHAT_API_KEYS", _env_name),
        "keys_file": (str, "", None),
        "requests_per_minute": (int, 30, _positive),
        "images_per_day": (int, 500, _positive),
        "max_upload_bytes": (int, 20 * 1024 * 1024, _positive),
        "max_n": (int, 4, lambda v: None if 1 <= v <= 10 else "must be between 1 and 10"),
    },
    "quotas": {
        "images_per_day": (int, 0, lambda v: None if v >= 0 else "must be 0 or more (0: no limit)"),
        "cooldown_s": ((int, float), 0, lambda v: None if 0 <= v <= 86400 else "must be between 0 and 86400"),
        "admins_exempt": (bool, True, None),
        "discord_roles": (dict, {}, _per_group(_discord_roles)),
        "slack_usergroups": (dict, {}, _per_group(_usergroups)),
    },
}
QUANTIZE = ("none", "fp8", "nf4")


def _quantize(v: str) -> str | None:
    if v in QUANTIZE:
        return None
    return ('accepted values: "none" (the weights in dtype), "fp8" (8-bit float weights, half of bfloat16), '
            '"nf4" (4-bit NormalFloat weights, about a quarter; bitsandbytes, CUDA GPUs only)')


MODEL_KEYS: dict[str, tuple[Any, Any, Check]] = {
    "device": (str, "auto", device_problem),
    "dtype": (str, "auto", _one_of(*DTYPES)),
    "source": (str, None, None),  # default: MODEL_DEFAULTS[name]
    "quantize": (str, "none", _quantize),
}
SECTIONS = (*SCHEMA, "models")


def _type_name(t: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a table"}
    ts = t if isinstance(t, tuple) else (t,)
    if ts == (int, float):
        return "a number"
    return " or ".join(names.get(x, x.__name__) for x in ts)


def check_table(where: str, table: Any, keys: dict[str, tuple[Any, Any, Check]]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table ([{where}])")
    unknown = [k for k in table if k not in keys]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; known keys in [{where}]: {', '.join(keys)}")
    out: dict[str, Any] = {}
    for key, (typ, default, check) in keys.items():
        if key not in table:
            out[key] = default
            continue
        value = table[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        # TOML booleans are ints in Python; never accept one for the other.
        bad_bool = isinstance(value, bool) and bool not in types
        if bad_bool or not isinstance(value, types):
            raise ConfigError(f"{where}.{key}: must be {_type_name(typ)}, got {value!r}")
        if check and (problem := check(value)):
            raise ConfigError(f"{where}.{key}: {value!r} is not valid; {problem}")
        out[key] = value
    return out
