"""Who may use the bot, and how much: blocks, role gates, per-model allow-lists, a daily image quota and
a cooldown between one user's requests.

The policy is the core's. Adapters only say who asks: a Turn's ``user_id``, ``is_admin`` and ``roles``
(Discord role ids, Slack user group ids). ``Core`` asks ``admit`` where a message, a command or a press
enters, before anything is sent to the pool, and calls ``spent`` when a request has made its images.

1. Blocked (``/admin block``): refused; a message gets one reply per block, then silence. A command or a
   press is always answered (the platform shows an error otherwise), only to the asker where it can.
2. ``allowed_roles`` ([discord]) / ``allowed_usergroups`` ([slack]): when set, only their members (and admins)
   may use the bot. ``model_roles`` / ``model_usergroups``: a model only for some roles (admins pass).
3. The quota: images per user per UTC day (``[quotas] images_per_day``, overridden per role or user group:
   a member of several gets the largest), admins exempt unless ``admins_exempt = false``. An image counts
   once it is made and kept for the user; one the safety filter withheld, a failed or a cancelled job does
   not. A request begun within the quota finishes (up to ``limits.images_per_turn`` images).
4. The cooldown: ``[quotas] cooldown_s`` between the start of one user's requests.
Refusals of the quota, cooldown and role gate tell a message's sender once per quiet window (the cooldown,
at least a minute), so repeating a message never floods the channel. Blocks and counts live in the session
store (migration ``m005_access``); the cooldown and the quiet windows in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import settings
from core.actions import LABELS, tool_of
from core.store import ImageRow, Store
from core.tools import Tool
from core.turn import Turn

log = logging.getLogger(__name__)
DAY = 86400
QUIET_S = 60.0  # a refused message is answered at most once per this (or the cooldown, when longer)
BLOCKED = ("Sorry, you can't use this bot: one of its admins has blocked you. I won't answer your messages "
           "until they unblock you; ask them if you think this is a mistake.")
NOT_ALLOWED = ("Sorry, this bot is only for members of certain {groups} here. Ask the bot's admins if you "
               "should have access.")
MODEL_DENIED = "Sorry, {what} is only for members of certain {groups} here; the bot's admins decide who."
QUOTA_USED = ("You have used your {images} for today. The count starts again at 00:00 UTC, in {left}; "
              "/quota shows where you stand.")
COOLING = "Please wait {left} before your next request (one request every {every})."


def wait_text(seconds: float) -> str:
    """'40 s', '12 min', '5 h 12 min'."""
    seconds = max(1, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


def images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def who(platform: str, user: str) -> str:
    """The user as the chat shows them: a mention on Discord and Slack (both write <@id>), else the id."""
    return f"<@{user}>" if platform in ("discord", "slack") else user


def models_of(tool: Tool | None) -> set[str]:
    """Every pool model ``tool`` may run (either of its ways to the same step)."""
    return {*tool.models, *(m for group in tool.any_of for m in group)} if tool else set()


class Access:
    """The access policy of one bot: read from the config, kept in the session store."""

    def __init__(self, config: settings.Config, store: Store, clock: Callable[[], float] = time.time):
        self.config, self.db, self.clock = config, store.db, clock
        self._last: dict[tuple[str, str], float] = {}  # (platform, user) -> when their last request began
        self._told: dict[tuple[str, str, str], float] = {}  # (platform, user, why) -> when a message was told

    # --- what a platform's config says ------------------------------------------------------

    def _groups(self, platform: str) -> tuple[str, tuple[str, ...], dict[str, tuple[str, ...]], dict[str, int]]:
        """What the platform calls its groups, the allowed ones, the per-model lists, the quota overrides."""
        c = self.config
        if platform == "discord":
            return "roles", c.discord.allowed_roles, c.discord.model_roles, c.quotas.discord_roles
        if platform == "slack":
            return "user groups", c.slack.allowed_usergroups, c.slack.model_usergroups, c.quotas.slack_usergroups
        return "roles", (), {}, {}

    def denied_models(self, turn: Turn) -> set[str]:
        """The models this user may not use (their allow-list names none of the user's roles)."""
        if turn.is_admin:
            return set()
        per_model = self._groups(turn.platform)[2]
        return {model for model, allowed in per_model.items() if not set(allowed) & set(turn.roles)}

    def limit(self, turn: Turn) -> int:
        """Images a day for this user; 0: no limit."""
        q = self.config.quotas
        if turn.is_admin and q.admins_exempt:
            return 0
        overrides = self._groups(turn.platform)[3]
        mine = [overrides[r] for r in turn.roles if r in overrides]
        if mine:
            return 0 if 0 in mine else max(mine)
        return q.images_per_day

    def _cooldown(self, turn: Turn) -> float:
        q = self.config.quotas
        return 0.0 if turn.is_admin and q.admins_exempt else q.cooldown_s

    # --- the store ---------------------------------------------------------------------------

    def _day(self, at: float | None = None) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self.clock() if at is None else at))

    def used(self, platform: str, user: str) -> int:
        row = self.db.execute("SELECT images FROM access_usage WHERE platform = ? AND user = ? AND day = ?",
                              [platform, user, self._day()]).fetchone()
        return row[0] if row else 0

    def blocked(self, platform: str, user: str) -> dict | None:
        rows = list(self.db["access_blocks"].rows_where("platform = ? AND user = ?", [platform, user]))
        return rows[0] if rows else None

    def spent(self, turn: Turn, images: int) -> None:
        """``images`` were made and kept for ``turn``'s user: count them against today's quota."""
        if images <= 0:
            return
        with self.db.conn:
            self.db.execute("INSERT INTO access_usage (platform, user, day, images) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (platform, user, day) DO UPDATE SET images = images + excluded.images",
                            [turn.platform, turn.user_id, self._day(), images])

    # --- the gate ----------------------------------------------------------------------------

    def admit(self, turn: Turn, *, models: Iterable[str] = (), what: str = "", request: bool = True,
              explicit: bool = False, record: bool = True) -> str | None:
        """None when ``turn`` may go on; else what to answer, "" for nothing (a message told already).

        ``models``: the pool models it will use, when known (``what`` names them in a refusal). ``request``:
        it runs something, so the quota and the cooldown apply (not to /help, /quota, /reset). ``explicit``: a
        command or a press, which the platform wants answered every time. ``record``: start the cooldown."""
        key = (turn.platform, turn.user_id)
        if not turn.is_admin and (block := self.blocked(*key)) is not None:
            if explicit:
                return BLOCKED
            if block["told"]:
                log.info("blocked user %s:%s wrote again; not answered", *key)
                return ""
            self.db["access_blocks"].update(key, {"told": 1})
            return BLOCKED
        groups, allowed, _, _ = self._groups(turn.platform)
        now = self.clock()
        if allowed and not turn.is_admin and not set(allowed) & set(turn.roles):
            return self._refuse(turn, "role", NOT_ALLOWED.format(groups=groups), now + QUIET_S, explicit)
        denied = sorted(self.denied_models(turn) & set(models))
        if denied:
            return MODEL_DENIED.format(what=what or " and ".join(denied), groups=groups)
        if not request:
            return None
        limit = self.limit(turn)
        if limit and self.used(*key) >= limit:
            reset = (now // DAY + 1) * DAY
            text = QUOTA_USED.format(images=images(limit), left=wait_text(reset - now))
            return self._refuse(turn, "quota", text, reset, explicit)
        cooldown, last = self._cooldown(turn), self._last.get(key)
        if cooldown and last is not None and now < last + cooldown:
            text = COOLING.format(left=wait_text(last + cooldown - now), every=wait_text(cooldown))
            return self._refuse(turn, "cooldown", text, last + cooldown, explicit)
        if record:
            self._last[key] = now
        return None

    def admit_press(self, turn: Turn, row: ImageRow, action: str, record: bool = True) -> str | None:
        """``admit`` for a press of ``action`` under ``row`` (Info runs nothing: only blocks and gates apply)."""
        return self.admit(turn, models=models_of(tool_of(row, action)), what=LABELS.get(action, action),
                          request=action != "info", explicit=True, record=record)

    def _refuse(self, turn: Turn, why: str, text: str, until: float, explicit: bool) -> str:
        """``text``, or "" when this message's sender was told so within the quiet window."""
        log.info("refused a request of %s:%s (%s)", turn.platform, turn.user_id, why)
        if explicit:
            return text
        key, now = (turn.platform, turn.user_id, why), self.clock()
        told = self._told.get(key)
        if told is not None and now < told + max(QUIET_S, self.config.quotas.cooldown_s) and now < until:
            return ""
        self._told[key] = now
        return text

    # --- /quota and /admin ------------------------------------------------------------------

    def quota(self, turn: Turn) -> str:
        """/quota: what is left today and when the count starts again, the cooldown, a block."""
        if not turn.is_admin and self.blocked(turn.platform, turn.user_id):
            return BLOCKED
        q, limit = self.config.quotas, self.limit(turn)
        if turn.is_admin and q.admins_exempt:
            return "You are one of the bot's admins: no daily image limit or cooldown applies to you."
        now = self.clock()
        if limit:
            left = max(0, limit - self.used(turn.platform, turn.user_id))
            reset = (now // DAY + 1) * DAY
            lines = [f"You have {left} of {images(limit)} left today. The count starts again at 00:00 UTC, in "
                     f"{wait_text(reset - now)}."]
        else:
            lines = ["You have no daily image limit."]
        if q.cooldown_s:
            last = self._last.get((turn.platform, turn.user_id))
            wait = f" (your next in {wait_text(last + q.cooldown_s - now)})" if last and now < last + q.cooldown_s \
                else ""
            lines.append(f"One request every {wait_text(q.cooldown_s)}{wait}.")
        return " ".join(lines)

    def admin(self, turn: Turn, subcommand: str = "", user: str = "") -> str:
        """/admin block, unblock, reset-quota @USER, for the bot's admins (the caller checked)."""
        platform, them = turn.platform, who(turn.platform, user)
        if not user:
            return "Name the user, like /admin block @someone."
        if subcommand == "block":
            if user == turn.user_id:
                return "You cannot block yourself."
            self.db["access_blocks"].insert({"platform": platform, "user": user, "by": turn.user_id,
                                             "created": self.clock(), "told": 0}, replace=True)
            log.warning("%s:%s blocked %s:%s", platform, turn.user_id, platform, user)
            return (f"Blocked {them}. Their next message gets one reply saying so, later ones none; "
                    f"/admin unblock {them} undoes it.")
        if subcommand == "unblock":
            gone = self.db["access_blocks"].count_where("platform = ? AND user = ?", [platform, user])
            self.db["access_blocks"].delete_where("platform = ? AND user = ?", [platform, user])
            log.warning("%s:%s unblocked %s:%s", platform, turn.user_id, platform, user)
            return f"Unblocked {them}: they can use the bot again." if gone else f"{them} was not blocked."
        if subcommand == "reset-quota":
            had = self.used(platform, user)
            self.db["access_usage"].delete_where("platform = ? AND user = ? AND day = ?", [platform, user, self._day()])
            self._last.pop((platform, user), None)
            log.warning("%s:%s reset the quota of %s:%s (%d images today)", platform, turn.user_id, platform, user,
                        had)
            return f"Reset today's image count of {them} (they had made {had}); their cooldown is over too."
        return "Unknown /admin command: block, unblock or reset-quota, then the user."
