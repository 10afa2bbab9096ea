"""What tests/ and bench/ share: a tiny-model pool process, the core wired as the bot wires it, the bot
as a user starts it, and test pictures. Helpers only: no fixtures (those stay in tests/conftest.py) and no
assertions about the bot's behaviour (those stay in the tests).

- ``testkit.pool``: configs over the tiny models, a pool process started, waited for and stopped;
- ``testkit.core``: ``make_core``, the real Core on such a pool (``bot.app.build_core``), and ``close_core``;
- ``testkit.bot_process``: ``python -m bot`` in a subprocess, killed with its pool by pid;
- ``testkit.images``: the house photo, a mask, PNG bytes and a PNG text-chunk bomb.
"""
