"""The typed sections of a validated config: what the rest of the project reads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from settings.models import default_source, resolve_device


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
    fast: str = "auto"  # the diffusion fast path (gpu_pool/fast.py): "auto" (on CUDA), "on" (CPU too), "off"
    warmup_sizes: tuple[int, ...] = (512, 768, 1024)  # square sizes the fast path compiles while a model loads
    max_batch: int = 4  # queued jobs for one model with the same settings run as one batch of up to this many
    step_cache: int = 0  # FLUX.2 klein: a full transformer pass every this many steps, predicted between; 0: off

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}" if self.host else f"unix:{self.socket}"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    device: str  # as written: auto, cpu, cuda, cuda:N, mps
    dtype: str  # as written: auto, float16, bfloat16, float32
    source: str  # hub id or absolute local folder ("" = no weights)
    alias: str = ""  # the seed's name it was configured by ("ImageEditing": Text2Mask and Inpainting), else ""
    quantize: str = "none"  # "none", "fp8" or "nf4": how its big modules hold their weights (gpu_pool/quantize.py)

    @property
    def label(self) -> str:
        """Its name as --check-config and /models show it: "Text2Mask (ImageEditing)"."""
        return f"{self.name} ({self.alias})" if self.alias else self.name

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
    allowed_roles: tuple[str, ...] = ()  # role ids whose members may use the bot; (): everyone
    model_roles: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model -> the role ids that may use it

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
    allowed_usergroups: tuple[str, ...] = ()  # user group ids whose members may use the bot; (): everyone
    model_usergroups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model -> the groups that may use it

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
class ApiConfig:
    """The pool's listener for other clients (see gpu_pool/api/): off unless ``enabled``.

    The keys themselves are never in config.toml: ``keys_env`` names an environment variable
    (``name=key,name=key``), ``keys_file`` a TOML file with per-key limits (gpu_pool/api/keys.py)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8090
    keys_env: str = "VCHAT_API_KEYS"
    keys_file: Path | None = None  # resolved against the config's folder; None: none
    requests_per_minute: int = 30  # per key, the default of keys that set none
    images_per_day: int = 500  # per key (UTC days), the default of keys that set none
    max_upload_bytes: int = 20 * 1024 * 1024  # one request's body (images API and /mcp)
    max_n: int = 4  # images per request (n)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class QuotasConfig:
    """Images per user per day and the pause between one user's requests (see core/access.py)."""

    images_per_day: int = 0  # 0: no limit
    cooldown_s: float = 0  # 0: none
    admins_exempt: bool = True
    discord_roles: dict[str, int] = field(default_factory=dict)  # role id -> images per day (0: no limit)
    slack_usergroups: dict[str, int] = field(default_factory=dict)  # user group id -> images per day


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
    api: ApiConfig = field(default_factory=ApiConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    load: str = ""  # the command line's --load "Name_device,...", applied over [models.*]; "" if none

    def default_source(self, name: str) -> str:
        """``settings.models.default_source`` for this config's ``sd_base``."""
        return default_source(name, self.pool.sd_base)
