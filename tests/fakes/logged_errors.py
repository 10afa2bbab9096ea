"""The bot's logged errors fail a test: a handler a fixture installs on the loggers it watches."""

from __future__ import annotations

import logging
from typing import Any


class LoggedErrors(logging.Handler):
    """Collects ERROR records (bolt's @app.error, listener failures) and bolt's "Unhandled request"
    warnings from the given loggers, for a fixture to assert on at teardown."""

    def __init__(self, *names: str):
        super().__init__(logging.WARNING)
        self.names, self.records = names, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or "Unhandled request" in record.getMessage():
            self.records.append(record)

    def __enter__(self) -> LoggedErrors:
        for name in self.names:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *_: Any) -> None:
        for name in self.names:
            logging.getLogger(name).removeHandler(self)

    def take(self, needle: str) -> list[logging.LogRecord]:
        """Remove and return the records whose message contains ``needle`` (errors a test expects)."""
        taken = [r for r in self.records if needle in r.getMessage()]
        self.records = [r for r in self.records if r not in taken]
        return taken

    def assert_none(self) -> None:
        assert not self.records, "the bot logged errors:\n" + "\n".join(
            f"{r.name}: {r.getMessage()}" + (f"\n{logging.Formatter().formatException(r.exc_info)}"
                                              if r.exc_info else "") for r in self.records)
