"""The seed's own words for its models: ``ImageEditing``, and ``--load "Name_device,..."``.

The seed (visual_chatgpt.py) loaded its models with ``--load "ImageCaptioning_cuda:0,ImageEditing_cuda:1"``,
and its ImageEditing was a pair: a mask of the object named in words, then inpainting. Here that pair is
Text2Mask and Inpainting (the remove and replace flows mask with GroundingDINO + SAM instead when Text2Box
and Segmenting are loaded), so ``ImageEditing`` expands to them, each labelled "Text2Mask (ImageEditing)".
"""

from __future__ import annotations

from typing import Any

from settings.models import MODEL_DEFAULTS, MODEL_NAMES, SAFETY_CHECKER
from settings.schema import ConfigError, device_problem

ALIASES: dict[str, tuple[str, ...]] = {"ImageEditing": ("Text2Mask", "Inpainting")}
# --load picks the seed's visual models; these stay as config.toml has them unless --load names them too
KEPT = ("LLM", SAFETY_CHECKER)
LOAD_EXAMPLE = '"ImageCaptioning_cuda:0,ImageEditing_cuda:1,VisualQuestionAnswering_cuda:2"'


def known_models() -> str:
    """The names a [models.NAME] section or a --load entry may use, for error messages."""
    return ", ".join(MODEL_NAMES) + "".join(f"; and the seed's {a} ({' + '.join(p)})" for a, p in ALIASES.items())


def alias_table(name: str, table: Any) -> dict[str, Any]:
    """``[models.ImageEditing]``'s keys (device, dtype) checked: its two models have two sources."""
    if isinstance(table, dict) and "source" in table:
        parts = ALIASES[name]
        raise ConfigError(f"models.{name}.source: {name} stands for {' and '.join(parts)}, which read two sources; "
                          f"set source in [models.{parts[0]}] or [models.{parts[1]}] instead")
    return table


def with_load(data: dict[str, Any], load: str) -> dict[str, Any]:
    """``data`` (parsed config.toml) with its [models.*] sections replaced by the models ``load`` names
    ("Name_device,..."), each on its device; a section config.toml has for a named model keeps its
    other keys (source, dtype; ImageEditing: its two models' sections). [models.LLM] and
    [models.SafetyChecker] stay unless named."""
    entries = [e.strip() for e in load.split(",") if e.strip()]
    if not entries:
        raise ConfigError(f"--load: no models named; give Name_device entries separated by commas, like {LOAD_EXAMPLE}")
    old = data.get("models", {})
    old = old if isinstance(old, dict) else {}
    models: dict[str, Any] = {}
    for entry in entries:
        name, sep, device = entry.partition("_")
        if not (sep and name and device):
            raise ConfigError(f"--load: {entry!r} is not Name_device; each entry is a model and its device, "
                              f"like {LOAD_EXAMPLE}")
        if name not in MODEL_DEFAULTS and name not in ALIASES:
            raise ConfigError(f"--load: {entry!r}: there is no model called {name}; known models: {known_models()}")
        if problem := device_problem(device):
            raise ConfigError(f"--load: {entry!r}: {device!r} is not a device; {problem}")
        if name in models:
            raise ConfigError(f"--load: {entry!r}: {name} is named twice; name each model once")
        table = old.get(name)
        models[name] = {**(table if isinstance(table, dict) else {}), "device": device}
    for alias in (a for a in ALIASES if a in models):  # its models' own sections from config.toml, on its device
        for part in ALIASES[alias]:
            if part not in models and isinstance(old.get(part), dict):
                models[part] = {**old[part], "device": models[alias]["device"]}
    models.update({name: table for name, table in old.items() if name in KEPT and name not in models})
    return {**data, "models": models}
