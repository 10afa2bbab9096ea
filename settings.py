"""Load and validate ``config.toml``.

Every part of the bot reads the same file: the bot process (LLM, platforms,
storage, limits) and the pool process (pool, models, limits). This module
imports nothing of the project so both sides can use it.

Validation errors are :class:`ConfigError` whose message names the key and
the accepted values, meant to be read by the person editing the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# The seed's model names and their default sources (the checkpoints the seed
# used, as they are named on the Hugging Face hub today). A source that starts
# with "/", "./" or "../" is a local folder, resolved against the config file.
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ANNOTATORS = "lllyasviel/Annotators"
MODEL_DEFAULTS: dict[str, str] = {
    "ImageCaptioning": "Salesforce/blip-image-captioning-base",
    "VisualQuestionAnswering": "Salesforce/blip-vqa-base",
    "Text2Image": SD15,  # unless config.toml says otherwise: [pool] sd_base (see Config.default_source)
    "InstructPix2Pix": "timbrooks/instruct-pix2pix",
    "Inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "Text2Mask": "CIDAS/clipseg-rd64-refined",
    "Text2Box": "IDEA-Research/grounding-dino-tiny",
    "Segmenting": "facebook/sam-vit-huge",  # facebook/sam-vit-base: 0.2 GiB instead of 1.2 (fp16), coarser masks
    "Image2Canny": "",  # OpenCV Canny: no weights
    "Image2Line": ANNOTATORS,
    "Image2Hed": ANNOTATORS,
    "Image2Scribble": ANNOTATORS,
    "Image2Pose": ANNOTATORS,
    "Image2Seg": "openmmlab/upernet-convnext-small",
    "Image2Depth": "Intel/dpt-large",
    "Image2Normal": "Intel/dpt-hybrid-midas",
    "CannyText2Image": "lllyasviel/sd-controlnet-canny",
    "LineText2Image": "lllyasviel/sd-controlnet-mlsd",
    "HedText2Image": "lllyasviel/sd-controlnet-hed",
    "ScribbleText2Image": "lllyasviel/sd-controlnet-scribble",
    "PoseText2Image": "lllyasviel/sd-controlnet-openpose",
    "SegText2Image": "lllyasviel/sd-controlnet-seg",
    "DepthText2Image": "lllyasviel/sd-controlnet-depth",
    "NormalText2Image": "lllyasviel/sd-controlnet-normal",
    # Not the seed's: the buttons under an image. Variations is img2img on the shared base ([pool] sd_base,
    # no weights of its own: ""); Upscale is Stability AI's 2x latent upscaler (its own UNet, VAE, text encoder).
    "Variations": "",
    "Upscale": "stabilityai/sd-x2-latent-upscaler",
    # Not a tool: checks every image the others draw (the SD1.5 repo's safety_checker, with its CLIP image processor).
    "SafetyChecker": "CompVis/stable-diffusion-safety-checker",
    # The built-in LLM (used when [llm] base_url is empty): small, Apache-2.0, calls tools, sees images.
    "LLM": "Qwen/Qwen3-VL-2B-Instruct",
}
MODEL_NAMES = tuple(MODEL_DEFAULTS)
SEED_MODELS = tuple(n for n in MODEL_NAMES if n != "LLM")  # the seed's visual models, each used by a tool
DTYPES = ("auto", "float16", "bfloat16", "float32")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


class ConfigError(ValueError):
    """The config file is invalid; the message says which key and how to fix it."""


# --- typed sections -------------------------------------------------------


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    model: str
    api_key_env: str
    timeout_s: float
    turn_timeout_s: float
    max_tool_rounds: int
    history_tokens: int
    stream: bool
    max_tokens: int = 1024
    tools: str = "auto"  # "auto", "native" or "json"
    constrain: str = "auto"  # "auto", "strict" or "off"
    vision: bool | str = "auto"  # True, False or "auto"
    vision_images: int = 4

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    @property
    def built_in(self) -> bool:
        """No server named: the pool hosts the model ([models.LLM]) and serves it on its socket."""
        return not self.base_url


@dataclass(frozen=True)
class RayConfig:
    """The pool on Ray Serve (``pool.backend = "ray"``, see gpu_pool/ray/)."""

    address: str = ""  # "" starts a local Ray instance; "auto" or "HOST:PORT" joins a cluster
    replicas: int = 1
    gpus_per_replica: float = 1  # 0: CPU replicas
    cpus_per_replica: float = 1
    spread_after: int = 2  # jobs in flight on every replica holding a model before another loads it; 0: never
    num_cpus: int = 0  # local instance only; 0: every CPU
    object_store_memory: int = 0  # local instance only, bytes; 0: Ray's default


@dataclass(frozen=True)
class PoolConfig:
    start: bool
    socket: Path | None  # unix socket path, when host is empty
    host: str
    port: int
    sd_base: str
    startup_timeout_s: float
    backend: str = "local"  # "local": the pool runs the models itself; "ray": on Ray Serve replicas
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}" if self.host else f"unix:{self.socket}"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    device: str  # as written: auto, cpu, cuda, cuda:N, mps
    dtype: str  # as written: auto, float16, bfloat16, float32
    source: str  # hub id or absolute local folder ("" = no weights)

    def resolved_device(self) -> str:
        return resolve_device(self.device)

    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float16" if self.resolved_device().startswith("cuda") else "float32"


@dataclass(frozen=True)
class DiscordConfig:
    enabled: bool | str  # True, False or "auto" (on when the token is set)
    token_env: str
    admin_ids: tuple[str, ...]

    @property
    def token(self) -> str | None:
        return os.environ.get(self.token_env) or None

    @property
    def active(self) -> bool:
        return self.enabled is True or (self.enabled == "auto" and self.token is not None)


@dataclass(frozen=True)
class SlackConfig:
    enabled: bool | str
    mode: str  # "socket" or "http"
    bot_token_env: str
    app_token_env: str
    signing_secret_env: str
    http_port: int
    admin_ids: tuple[str, ...]
    workspace_admins: bool
    api_url: str = "https://slack.com/api/"

    def env(self, name: str) -> str | None:
        return os.environ.get(name) or None

    def required_env(self) -> list[str]:
        second = self.app_token_env if self.mode == "socket" else self.signing_secret_env
        return [self.bot_token_env, second]

    @property
    def active(self) -> bool:
        have_all = all(self.env(n) for n in self.required_env())
        return self.enabled is True or (self.enabled == "auto" and have_all)


@dataclass(frozen=True)
class BotConfig:
    shutdown_grace_s: float = 5.0  # seconds turns in flight get to finish on SIGTERM / SIGINT


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path


@dataclass(frozen=True)
class LimitsConfig:
    max_image_pixels: int
    max_upload_bytes: int
    working_size: int
    max_output_size: int
    max_steps: int
    per_user_jobs: int
    images_per_turn: int = 8
    llm_max_tokens: int = 1024


@dataclass(frozen=True)
class ResidencyConfig:
    """A weight budget per accelerator device (see gpu_pool/residency.py). budget 0: no budget."""

    budget: int = 0  # bytes
    reserve: int = 0  # bytes of the budget kept free for working memory (activations)
    max_overtakes: int = 3
    devices: tuple[str, ...] = ()  # the budgeted devices; () = every GPU (cuda:N, mps)

    def applies_to(self, device: str) -> bool:
        if not self.budget:
            return False
        return device in self.devices if self.devices else device.startswith(("cuda", "mps"))


@dataclass(frozen=True)
class SafetyConfig:
    """Where images the safety checker flags are withheld (see core/safety.py)."""

    enabled: bool = True
    allow_in_nsfw_channels: bool = False  # Discord channels marked age-restricted
    allow_in_slack_channels: tuple[str, ...] = ()  # Slack channel ids
    allow_in_dms: bool = False  # DMs, and the terminal chat


@dataclass(frozen=True)
class Config:
    path: Path
    llm: LLMConfig
    pool: PoolConfig
    models: dict[str, ModelConfig]
    discord: DiscordConfig
    slack: SlackConfig
    storage: StorageConfig
    limits: LimitsConfig
    residency: ResidencyConfig = field(default_factory=ResidencyConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    bot: BotConfig = field(default_factory=BotConfig)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def default_source(self, name: str) -> str:
        """Where model ``name`` loads from when its section names no source. Text2Image is the shared
        SD base itself, so a local or custom ``sd_base`` never loads a second base from the hub."""
        return self.pool.sd_base if name == "Text2Image" else MODEL_DEFAULTS[name]


# --- the schema: one table, checked generically ----------------------------
# section -> key -> (python type(s), default, extra check or None).
# A check returns an error text (what is accepted) or None when the value is fine.

Check = Callable[[Any], str | None] | None


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _one_of(*choices: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else "accepted values: " + ", ".join(repr(c) for c in choices)

    return check


def device_problem(v: str) -> str | None:
    if _DEVICE_RE.match(v):
        return None
    return 'accepted values: "auto", "cpu", "cuda", "cuda:N" with N a GPU number (cuda:0, cuda:1 ...), "mps"'


def _env_name(v: str) -> str | None:
    ok = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v)
    return None if ok else "must be the name of an environment variable, like DISCORD_TOKEN (not the token itself)"


def _ids(v: list) -> str | None:
    return None if all(isinstance(x, (str, int)) for x in v) else "must be a list of user ids"


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.I)


def parse_size(v: str) -> int | None:
    """Bytes in a size like "8GiB", "512MiB", "1.5GB" or "0" ("" is 0); None when it is not a size."""
    if not v.strip():
        return 0
    m = _SIZE_RE.match(v)
    return None if m is None else int(float(m[1]) * _UNITS[(m[2] or "").lower()])


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


_ENABLED = ((bool, str), "auto", lambda v: None if v in (True, False, "auto") else 'accepted values: true, false, "auto"')

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
        "working_size": (int, 512, lambda v: None if 64 <= v <= 2048 and v % 8 == 0 else "must be a multiple of 8 between 64 and 2048"),
        "max_output_size": (int, 1024, lambda v: None if 64 <= v <= 4096 and v % 8 == 0 else "must be a multiple of 8 between 64 and 4096"),
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
}
MODEL_KEYS: dict[str, tuple[Any, Any, Check]] = {
    "device": (str, "auto", device_problem),
    "dtype": (str, "auto", _one_of(*DTYPES)),
    "source": (str, None, None),  # default: MODEL_DEFAULTS[name]
}
SECTIONS = (*SCHEMA, "models")


def _type_name(t: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    ts = t if isinstance(t, tuple) else (t,)
    if ts == (int, float):
        return "a number"
    return " or ".join(names.get(x, x.__name__) for x in ts)


def _check_table(where: str, table: Any, keys: dict[str, tuple[Any, Any, Check]]) -> dict[str, Any]:
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


def parse(data: dict[str, Any], path: Path, env_check: bool = True) -> Config:
    """Validate parsed TOML ``data``; ``path`` anchors relative paths."""
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; known sections: {', '.join(SECTIONS)}")
    sec = {name: _check_table(name, _table(data, name), keys) for name, keys in SCHEMA.items()}
    base_dir = path.parent.resolve()

    models_raw = data.get("models", {})
    if not isinstance(models_raw, dict):
        raise ConfigError("models: must be a table of [models.NAME] sections")
    models: dict[str, ModelConfig] = {}
    for name, table in models_raw.items():
        if name not in MODEL_DEFAULTS:
            raise ConfigError(f"models.{name}: unknown model; known models: {', '.join(MODEL_NAMES)}")
        m = _check_table(f"models.{name}", table, MODEL_KEYS)
        source = m["source"]
        if source is None:  # as Config.default_source
            source = sec["pool"]["sd_base"] if name == "Text2Image" else MODEL_DEFAULTS[name]
        models[name] = ModelConfig(name, m["device"], m["dtype"], _source(source, base_dir))

    p = sec["pool"]
    socket = None if p["host"] else (base_dir / sec["storage"]["data_dir"] / p["socket"]).resolve()
    if p["host"] and not p["port"]:
        raise ConfigError('pool.port: must be set (1-65535) when pool.host is set; leave host "" to use a unix socket')
    r = sec["pool.ray"]
    ray = RayConfig(r["address"], r["replicas"], r["gpus_per_replica"], r["cpus_per_replica"], r["spread_after"],
                    r["num_cpus"], parse_size(r["object_store_memory"]) or 0)
    pool = PoolConfig(p["start"], socket, p["host"], p["port"], _source(p["sd_base"], base_dir), p["startup_timeout_s"],
                      p["backend"], ray)
    if pool.backend == "ray":
        for m in models.values():
            if m.device.startswith("cuda:") and m.device != "cuda:0":
                raise ConfigError(f'models.{m.name}.device: {m.device!r} is not valid with pool.backend = "ray": each '
                                  'replica has one GPU of its own; use "auto" or "cuda"')

    d = sec["discord"]
    discord = DiscordConfig(d["enabled"], d["token_env"], tuple(str(x) for x in d["admin_ids"]))
    s = sec["slack"]
    slack = SlackConfig(s["enabled"], s["mode"], s["bot_token_env"], s["app_token_env"], s["signing_secret_env"],
                        s["http_port"], tuple(str(x) for x in s["admin_ids"]), s["workspace_admins"], s["api_url"])
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
        raw=data,
    )


def _residency(r: dict[str, Any]) -> ResidencyConfig:
    budget = parse_size(r["budget"]) or 0
    reserve = (parse_size(r["reserve"]) or 0) if budget else 0  # no budget: nothing to reserve from
    if budget and reserve >= budget:
        raise ConfigError(f"residency.reserve: {r['reserve']!r} is not valid; must be smaller than "
                          f"residency.budget ({r['budget']!r}) so that some of the budget is left for weights")
    devices = tuple(resolve_device(d) if d == "cuda" else d for d in r["devices"])
    return ResidencyConfig(budget, reserve, r["max_overtakes"], devices)


def load(path: str | os.PathLike[str], env_check: bool = True) -> Config:
    """Read and validate a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(data, path, env_check=env_check)


def resolve_device(device: str) -> str:
    """``auto`` is the first GPU when there is one, else the CPU; ``cuda`` is ``cuda:0``."""
    if device == "cuda":
        return "cuda:0"
    if device != "auto":
        return device
    import torch  # late: torch takes seconds to import and the bot side rarely needs it

    return "cuda:0" if torch.cuda.is_available() else "cpu"
