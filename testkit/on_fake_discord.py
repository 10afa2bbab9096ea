"""``python -m testkit.on_fake_discord URL [python -m bot's arguments]``: the bot as a user starts it, with
discord.py pointed at a fake Discord at URL (tests/fakes/discord_server.py), as ``FakeDiscord.patch`` does
in-process. Everything else is ``python -m bot`` unchanged: Discord has no API-URL setting to point it with."""

from __future__ import annotations

import sys

import discord
import yarl

from bot.__main__ import main
from tests.fakes.discord_payloads import API

if __name__ == "__main__":
    base = sys.argv[1].rstrip("/")
    discord.http.Route.BASE = f"{base}{API}"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(base.replace("http://", "ws://", 1) + "/gateway")
    sys.exit(main(sys.argv[2:]))
