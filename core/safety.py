"""The safety policy: in which conversations drawn images the pool's checker flags are withheld.

The pool's SafetyChecker looks at every image a drawing model makes and the
done event carries its verdicts (``Event.safety``); the conversation's policy
decides here. Where it filters, an image that is flagged, or that the pool
could not check (no checker loaded), is never stored or posted: the user reads
``WITHHELD`` (or ``UNCHECKED``), the LLM's tool result says it was withheld and
not to try again, and the log gets the session, the tool and the score.

Who filters, from ``[safety]`` in config.toml: every conversation while
``enabled``, except Discord channels marked age-restricted when
``allow_in_nsfw_channels``, the Slack channels listed in
``allow_in_slack_channels``, and DMs (the terminal too) when ``allow_in_dms``.
Uploads are never blocked; what is made from them is checked like anything drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import settings
from settings import SAFETY_CHECKER
from core.errors import Withheld
from core.turn import Turn
from gpu_pool.protocol import ModelInfo, Verdict

log = logging.getLogger(__name__)
WITHHELD = "The image was withheld by this server's safety filter."
UNCHECKED = ("The image was withheld: this server's safety filter is not running right now, so I cannot post "
             "drawn images here. The bot's admins can see why with /safety.")
FOR_LLM = ("Error: the image was withheld by this server's safety filter: it was not stored and the user will not "
           "see it. Do not try again; tell the user it was withheld.")
NO_RETRY = ("Error: an image was withheld by the safety filter earlier in this turn, so no more images are made "
            "now. Tell the user it was withheld; trying again is their choice.")


@dataclass(frozen=True)
class Policy:
    filter: bool = True  # withhold images the checker flags or could not check
    why: str = "the safety filter is on"  # this conversation's case, for /safety


def policy_for(cfg: settings.SafetyConfig, turn: Turn) -> Policy:
    """The policy of the conversation a turn comes from."""
    if not cfg.enabled:
        return Policy(False, "the safety filter is off ([safety] enabled = false)")
    if turn.is_dm or turn.platform == "terminal":
        return Policy(not cfg.allow_in_dms, f"a DM (allow_in_dms = {_toml(cfg.allow_in_dms)})")
    if turn.nsfw_channel:
        return Policy(not cfg.allow_in_nsfw_channels,
                      f"a channel marked age-restricted (allow_in_nsfw_channels = {_toml(cfg.allow_in_nsfw_channels)})")
    if turn.platform == "slack" and turn.channel in cfg.allow_in_slack_channels:
        return Policy(False, f"Slack channel {turn.channel} is in allow_in_slack_channels")
    if turn.platform == "discord":
        return Policy(True, "a channel not marked age-restricted")
    return Policy(True, "a channel not in allow_in_slack_channels" if turn.platform == "slack" else "the default")


def judge(policy: Policy, session: str, model: str, verdicts: list[Verdict] | None) -> Withheld | None:
    """What keeps a job's images out of this conversation (to raise), or None when they may be shown."""
    for v in verdicts or ():
        if v.flagged is False:
            continue
        why = f"{model}, score {v.score:+.3f}" if v.flagged else f"{model}, not checked: {v.note}"
        if policy.filter:
            return Withheld(WITHHELD if v.flagged else UNCHECKED, why)
        if v.flagged:
            log.info("session %s: posting a flagged image (%s): %s", session, why, policy.why)
    return None


def with_notice(withheld: list[str], answer: str) -> str:
    """The agent's answer, led by the notice when an image was withheld and the answer does not say so."""
    if withheld and "withheld" not in answer.lower():
        return f"{withheld[0]} {answer}"
    return answer


# --- what admins see -------------------------------------------------------------------------


def summary(cfg: settings.SafetyConfig, models: list[ModelInfo]) -> str:
    """One line for /models."""
    if not cfg.enabled:
        return "Safety filter: off ([safety] enabled = false)."
    checker = _checker(models)
    if checker is None or checker.state == "failed":
        return (f"Safety filter: on, but {SAFETY_CHECKER} is not {'loaded' if checker is None else 'working'}, so "
                "drawn images are withheld wherever it applies. /safety says more.")
    return f"Safety filter: on, {SAFETY_CHECKER} {checker.state}. /safety shows where flagged images are withheld."


def describe(cfg: settings.SafetyConfig, turn: Turn, models: list[ModelInfo] | None) -> str:
    """/safety: the policy, the checker, and this conversation's case."""
    if cfg.enabled:
        lines = [f"Safety filter: on. The pool's {SAFETY_CHECKER} looks at every image the bot draws (generate, edit, "
                 "ControlNet, inpaint, extend, remove, replace); where the filter applies, a flagged image is "
                 "withheld: never stored or posted. Uploads are not blocked."]
    else:
        lines = ["Safety filter: off ([safety] enabled = false): drawn images are posted everywhere."]
    lines.append(_checker_line(cfg, models))
    here = policy_for(cfg, turn)
    lines.append(f"Here ({turn.session_key}): flagged images are {'withheld' if here.filter else 'posted'}; "
                 f"{here.why}.")
    if cfg.enabled:
        allowed = ", ".join(cfg.allow_in_slack_channels) or "none"
        lines += [f"Age-restricted Discord channels: {_rule(cfg.allow_in_nsfw_channels)} "
                  f"(allow_in_nsfw_channels = {_toml(cfg.allow_in_nsfw_channels)}).",
                  f"Slack channels where flagged images are posted (allow_in_slack_channels): {allowed}.",
                  f"DMs and the terminal: {_rule(cfg.allow_in_dms)} (allow_in_dms = {_toml(cfg.allow_in_dms)})."]
    lines.append("Change these under [safety] in config.toml, then restart the bot.")
    return "\n".join(lines)


def _checker_line(cfg: settings.SafetyConfig, models: list[ModelInfo] | None) -> str:
    if models is None:
        return "Checker: the image engine is not reachable right now."
    checker = _checker(models)
    if checker is None:
        if not cfg.enabled:
            return f"Checker: {SAFETY_CHECKER} is not loaded."
        return (f"Checker: {SAFETY_CHECKER} is not loaded, so drawn images are withheld wherever the filter applies. "
                f"Add [models.{SAFETY_CHECKER}] to config.toml, or /load {SAFETY_CHECKER}.")
    error = f": {checker.error}" if checker.error else ""
    line = (f"Checker: {SAFETY_CHECKER} {checker.state} on {checker.device} ({checker.dtype}), "
            f"from {checker.source}{error}.")
    if checker.state == "failed" and cfg.enabled:
        line += f" Until it loads (/reload {SAFETY_CHECKER}), drawn images are withheld wherever the filter applies."
    return line


def _checker(models: list[ModelInfo]) -> ModelInfo | None:
    return next((m for m in models if m.name == SAFETY_CHECKER), None)


def _rule(allowed: bool) -> str:
    return "flagged images are posted" if allowed else "flagged images are withheld"


def _toml(value: bool) -> str:
    return "true" if value else "false"
