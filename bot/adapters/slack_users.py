"""Who a Slack user is, for the core's access policy (core/access.py): the user groups each user is in,
and a user typed in a slash command (``user_ids``).

Read with ``usergroups.list`` (``include_users``; the scope ``usergroups:read``) when the bot starts and
every ``REFRESH_S`` after, and only when the config names a user group. A Turn takes its user's groups from
the last reading without waiting: a message takes its place in its conversation before any await.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from collections.abc import Callable

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from core.commands import USER, Command

log = logging.getLogger(__name__)
REFRESH_S = 300.0


class UserGroups:
    def __init__(self, client: AsyncWebClient, note: Callable[[str, str], None], needed: bool):
        self.client, self.note, self.needed = client, note, needed
        self._of: dict[str, set[str]] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.needed:
            await self.refresh()
            self._task = asyncio.create_task(self._again())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def of(self, user: str) -> tuple[str, ...]:
        """The ids of the user groups ``user`` was in at the last reading."""
        return tuple(sorted(self._of.get(user, ())))

    async def refresh(self) -> None:
        """Read every group's members; on a failure keep the last reading and tell the admins why."""
        try:
            listed = await self.client.usergroups_list(include_users=True)
        except SlackApiError as e:
            error = e.response.get("error")
            hint = " (add the usergroups:read scope and reinstall the app)" if error == "missing_scope" else ""
            log.warning("usergroups.list failed: %s%s; user groups stay as last read", error, hint)
            self.note("Slack", f"user groups could not be read: {error}{hint}.")
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("usergroups.list failed: %r; user groups stay as last read", e)
            return
        members: dict[str, set[str]] = defaultdict(set)
        for group in listed.get("usergroups", []):
            for user in group.get("users", []):
                members[user].add(group["id"])
        self._of = dict(members)

    async def _again(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self.refresh()


def user_ids(command: Command, args: dict[str, str] | None) -> dict[str, str] | None:
    """A user argument as its id: typed as a mention (<@U123|name>, with the command's "Escape channels, users,
    and links" on) or as the id itself; None (the usage) for anything else, like a bare @name."""
    if args is None:
        return None
    found = next((s for s in command.subcommands if s.name == args.get("subcommand")), command)
    for arg in found.args:
        if arg.kind == USER and arg.name in args:
            typed = re.fullmatch(r"<@([UW][A-Z0-9]+)(\|[^>]*)?>|([UW][A-Z0-9]+)", args[arg.name])
            if typed is None:
                return None
            args[arg.name] = typed.group(1) or typed.group(3)
    return args
