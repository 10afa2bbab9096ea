"""Models that took the pool down while loading: counted across restarts, left unloaded after three.

Before a model's weights load, the pool writes its name into ``DATA/pool-loads.json``
(``loading``), and takes it out once the load returned, loaded or failed with an
error. A name still there when the pool starts again means the last pool died while
loading it (the kernel's out-of-memory killer, a crash in native code): one crash
counted against that model. A clean stop (SIGTERM, SIGINT, the bot gone) empties the
list first, so it counts nothing. After ``MAX_CRASHES`` crashes in a row the pool
starts without the model and ``/models`` says why; a load that succeeds clears the
count, and an admin's ``/load`` or ``/reload`` of the model tries it again.

Only the local pool keeps this file (one process per data directory); the bot's
supervisor (core/pool_process.py) restarts the pool with a backoff.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
MAX_CRASHES = 3
FILE = "pool-loads.json"


class LoadCrashes:
    def __init__(self, path: Path, limit: int = MAX_CRASHES):
        self.path, self.limit = Path(path), limit
        self._lock = threading.Lock()  # the loading thread and the event loop both write
        self._closed = False
        self.loading: list[str] = []
        self.crashes: dict[str, int] = {}
        self._read()

    def _read(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self.loading = [str(n) for n in data.get("loading", [])]
            self.crashes = {str(k): int(v) for k, v in data.get("crashes", {}).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as e:
            log.warning("%s is unreadable (%s); counting load crashes from zero", self.path, e)

    def _write(self) -> None:
        """Whole or not at all (a temporary file, then a rename); a full disk only costs the count."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{FILE}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"loading": self.loading, "crashes": self.crashes}, f)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            log.warning("could not write %s: %s", self.path, e)

    def recover(self) -> None:
        """At start: count a crash against every model the last pool died loading."""
        with self._lock:
            if not self.loading:
                return
            for name in dict.fromkeys(self.loading):  # once each, however it got there
                self.crashes[name] = self.crashes.get(name, 0) + 1
                n = self.crashes[name]
                if n >= self.limit:
                    log.error("the last pool died while loading %s, the %s time in a row: starting without it "
                              "(loading it again, by name, tries once more)", name, _nth(n))
                else:
                    log.error("the last pool died while loading %s (crash %d of %d before it is left out)",
                              name, n, self.limit)
            self.loading = []
            self._write()

    def given_up(self, name: str) -> str | None:
        """Why ``name`` is not loaded at start, or None to load it."""
        n = self.crashes.get(name, 0)
        if n < self.limit:
            return None
        return f"crashed the pool {n} times in a row while loading, so it is left out until an admin loads it again"

    @contextmanager
    def loading_of(self, name: str) -> Iterator[None]:
        """Around a model's load (on the loading thread): a crash inside counts against it at the next start."""
        with self._lock:
            if not self._closed and name not in self.loading:
                self.loading.append(name)
                self._write()
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._lock:
                if not self._closed and name in self.loading:
                    self.loading.remove(name)
                    if ok:
                        self.crashes.pop(name, None)
                    self._write()

    def forget(self, name: str | None = None) -> None:
        """An admin asks for ``name`` (None: every model) again: its crashes are forgiven."""
        with self._lock:
            before = dict(self.crashes)
            if name is None:
                self.crashes.clear()
            else:
                self.crashes.pop(name, None)
            if self.crashes != before:
                self._write()

    def close(self) -> None:
        """A clean stop: a load still running did not crash anything."""
        with self._lock:
            self._closed = True
            if self.loading:
                self.loading = []
                self._write()


def _nth(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")
