"""Getting a model's files onto this machine, with progress: a local folder as it is, a hub repo
into the Hugging Face cache. Loaders then read the local folder, never the hub.

    Download(want, dtype)   one repo: ``list`` picks the files (``gpu_pool.weights``) and learns their
                            sizes; ``fetch`` downloads the missing ones, counting bytes as they arrive
    Listings                the hub's file list of each repo, asked for once (several models read one repo)
    Fetcher                 the pool's downloads: one per repo, shared by every model that reads it
    python -m gpu_pool.fetch --config config.toml      (./scripts/run --fetch)
                            every configured model's files ahead of time, with a progress bar

Progress comes from huggingface_hub itself: ``hf_hub_download(tqdm_class=...)``
gives each file one bar, whose ``update`` is called with the bytes written
(plain HTTP and Xet alike; a class with ``update_transfer`` gets Xet's network
bytes there, so they are not counted twice). Offline (``HF_HUB_OFFLINE=1``) or
with the hub out of reach, the files are picked from the cache instead: the fetch command asks the hub
once first (``hub_problem``), so an unreachable hub costs one line, not five retries per repo.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import get_session
from tqdm.auto import tqdm

from gpu_pool import weights as w
from settings.units import hub_size

log = logging.getLogger(__name__)


class FetchFailed(Exception):
    """A repo's files could not be had; the message says what to do (for the admin's log and /models)."""


class Listings:
    """The hub's file listing of each repo, asked for once however many models read the repo
    (lllyasviel/Annotators serves three); a failed listing is asked for again next time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._per_repo: dict[str, threading.Lock] = {}
        self._got: dict[str, dict[str, int]] = {}

    def get(self, repo: str) -> dict[str, int]:
        with self._lock:
            lock = self._per_repo.setdefault(repo, threading.Lock())
        with lock:  # models of one repo listing side by side wait for the first one's answer
            if repo not in self._got:
                self._got[repo] = {f.path: f.size for f in HfApi().list_repo_tree(repo, recursive=True)
                                   if getattr(f, "size", None) is not None}
            return self._got[repo]


class Download:
    """One hub repo (or local folder) as one model's loader reads it."""

    # said after "not in the cache" when the hub is out of reach (the fetch command says it once, its own way)
    unreachable = "the hub is out of reach; run ./scripts/run --fetch where it can be reached"

    def __init__(self, want: w.Want, dtype: str, listings: Listings | None = None):
        self.want, self.dtype = want, dtype
        self.listings = listings or Listings()
        self.files: dict[str, int] = {}  # picked file -> bytes on disk
        self.weights: dict[str, tuple[w.Weights, str]] = {}  # weight file (or shard) -> its slot, the candidate picked
        self.done = 0  # bytes present (already cached, or arrived)
        self.cached = 0  # bytes that were present before fetching began
        self.started: float | None = None  # monotonic time the first missing file began
        self.listed = False
        self.folder: str | None = None
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.files.values())

    def rate(self) -> float:
        """Bytes per second arriving so far (0 before the first byte)."""
        if self.started is None:
            return 0.0
        return (self.done - self.cached) / max(1e-3, time.monotonic() - self.started)

    def weight_bytes(self) -> dict[str, int]:
        """Each picked weight file (each shard) with the bytes it takes once loaded at the dtype."""
        return {f: slot.loaded_bytes(name, self.files[f], self.dtype) for f, (slot, name) in self.weights.items()}

    def loaded_bytes(self) -> int:
        """What the picked weights take once loaded at the dtype (configs do not count)."""
        return sum(self.weight_bytes().values())

    # --- on a worker thread -----------------------------------------------------------

    def list(self) -> None:
        """Pick the files to read and learn their sizes (a sharded checkpoint's index is read here)."""
        listing = self._listing()
        files = {f: listing[f] for f in self.want.files if f in listing}
        picked: dict[str, tuple[w.Weights, str]] = {}
        for slot in self.want.weights:
            name = next((c for c in slot.candidates(self.dtype) if c in listing), None)
            if name is None:
                raise FetchFailed(self._missing(slot))
            files[name] = listing[name]
            for part in self._shards(name) if w.is_index(name) else [name]:
                if part not in listing:
                    raise FetchFailed(f"{self.want.source}: {name} names {part}, which is not there"
                                      + ("" if self.want.local or self._online else
                                         f" (not in the cache, and {self.unreachable})"))
                files[part] = listing[part]
                picked[part] = (slot, name)
        self.files, self.weights, self.listed = files, picked, True

    def fetch(self, on_bytes: Callable[[int], None] | None = None) -> str:
        """Download the picked files missing from the cache; returns the local folder holding them."""
        if not self.listed:
            self.list()
        if self.want.local:
            self.done = self.cached = self.total
            self.folder = self.want.source
            return self.folder
        missing = []
        for name, size in self.files.items():
            if isinstance(try_to_load_from_cache(self.want.source, name), str):
                self.done += size
            else:
                missing.append(name)
        self.cached = self.done
        if missing and (constants.HF_HUB_OFFLINE or not self._online):
            raise FetchFailed(f"{self.want.source}: {', '.join(missing)} not downloaded yet, and {self.unreachable}")
        path = None
        for name in missing:
            self.started = self.started or time.monotonic()
            path = hf_hub_download(self.want.source, name, tqdm_class=_bar_class(self, on_bytes))
        if path is None:  # everything was cached: any picked file tells the snapshot folder
            name = next(iter(self.files))
            path = try_to_load_from_cache(self.want.source, name)
        self.done = self.total
        self.folder = path[: -len(name)].rstrip("/")
        return self.folder

    def _arrived(self, n: int, on_bytes: Callable[[int], None] | None) -> None:
        with self._lock:
            self.done += n
        if on_bytes is not None:
            on_bytes(n)

    def _listing(self) -> dict[str, int]:
        """Every file of the repo with its size: the hub's listing, else what the cache (or folder) holds."""
        src = self.want.source
        if self.want.local:
            if not os.path.isdir(src):
                raise FetchFailed(f"{src} is not a folder; check the model's source in config.toml.")
            out = {}
            for root, _, names in os.walk(src):
                for n in names:
                    p = os.path.join(root, n)
                    out[os.path.relpath(p, src)] = os.path.getsize(p)
            return out
        self._online = not constants.HF_HUB_OFFLINE
        if self._online:
            try:
                return self.listings.get(src)
            except OfflineModeIsEnabled:
                self._online = False
            except (RepositoryNotFoundError, GatedRepoError) as e:
                raise FetchFailed(f"{src}: no such repo on the hub, or it needs a token: {e}") from None
            except Exception as e:  # the hub is out of reach or down: maybe the cache has it all
                log.warning("cannot list %s on the hub (%s); looking in the cache", src, e)
                self._online = False
        candidates = [*self.want.files, *(c for slot in self.want.weights for c in slot.candidates(self.dtype))]
        out = {}
        for name in candidates:
            path = try_to_load_from_cache(src, name)
            if isinstance(path, str):
                out[name] = os.path.getsize(path)
                for shard in w.shards(path, name) if w.is_index(name) else []:
                    if isinstance(part := try_to_load_from_cache(src, shard), str):
                        out[shard] = os.path.getsize(part)
        return out

    def _shards(self, index: str) -> list[str]:
        """The shards the index names: read from the folder, the cache, or downloaded (it is one of the files)."""
        if self.want.local:
            return w.shards(os.path.join(self.want.source, index), index)
        path = try_to_load_from_cache(self.want.source, index)
        if not isinstance(path, str):
            path = hf_hub_download(self.want.source, index, tqdm_class=_bar_class(None, None))
        return w.shards(path, index)

    _online = True

    def _missing(self, slot: w.Weights) -> str:
        where = "folder" if self.want.local else "repo"
        return (f"the {where} {self.want.source} has none of {', '.join(slot.candidates(self.dtype))}"
                + ("" if self.want.local or self._online else f" in the cache, and {self.unreachable}"))


def _bar_class(download: Download | None, on_bytes: Callable[[int], None] | None) -> type:
    """A silent tqdm that hands the bytes huggingface_hub reports to ``download`` (None: to nobody)."""

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            if kwargs.get("initial") and download:  # a resumed download: what was there already
                download._arrived(int(kwargs["initial"]), on_bytes)

        def update(self, n: float | None = 1) -> None:
            if download:
                download._arrived(int(n or 0), on_bytes)  # negative on a retry that restarts a file

        def update_transfer(self, n: float | None = 1) -> None:
            pass  # network bytes (Xet); the bytes written arrive through update

        def set_transfer_postfix_str(self, *args, **kwargs) -> None:
            pass

    return Bar


# --- the pool's downloads -----------------------------------------------------------------


class Fetcher:
    """Downloads shared by the models that read the same repo, at most ``parallel`` at a time.

    Work runs on daemon threads: a pool told to stop does not wait for a 2 GB download.
    """

    def __init__(self, parallel: int = 2):
        self._slots = asyncio.Semaphore(parallel)
        self._jobs: dict[tuple[w.Want, bool], tuple[Download, asyncio.Task]] = {}
        self._listings = Listings()

    def get(self, want: w.Want, dtype: str) -> tuple[Download, asyncio.Task]:
        """The download of ``want`` (started now, or already under way) and its task (-> folder)."""
        key = (want, dtype in w.HALF)
        job = self._jobs.get(key)
        if job is None or (job[1].done() and (job[1].cancelled() or job[1].exception() is not None)):
            d = Download(want, dtype, self._listings)
            job = self._jobs[key] = (d, asyncio.create_task(self._run(d)))
        return job

    async def listed(self, want: w.Want, dtype: str) -> Download:
        """The download of ``want`` once its files are picked (sizes known)."""
        d, task = self.get(want, dtype)
        while not d.listed and not task.done():
            await asyncio.sleep(0.05)
        return d

    async def _run(self, d: Download) -> str:
        await _in_thread(d.list)
        if d.want.local:
            return d.fetch()  # nothing to download: no thread, no slot
        async with self._slots:
            return await _in_thread(d.fetch)


def _in_thread(fn: Callable[[], object]) -> asyncio.Future:
    """Run ``fn`` on a new daemon thread; the future has its result."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def work() -> None:
        try:
            result, ok = fn(), True
        except BaseException as e:  # handed to the waiting coroutine
            result, ok = e, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:  # the loop closed: the pool is stopping
            pass

    threading.Thread(target=work, daemon=True, name="fetch").start()
    return fut


# --- ./scripts/run --fetch ----------------------------------------------------------------


def wants_of(config) -> list[tuple[w.Want, str]]:
    """Every (repo, dtype) the configured models read, each once."""
    out: dict[tuple[w.Want, bool], tuple[w.Want, str]] = {}
    for m in config.models.values():
        dtype = m.resolved_dtype()
        for want in w.plan(m.name, m.source, config.pool.sd_base):
            out.setdefault((want, dtype in w.HALF), (want, dtype))
    return list(out.values())


def log_hub_once() -> None:
    """huggingface_hub's loggers print through a handler of their own and then through the root logger's:
    each retry warning came out twice. Ours (the root's) is enough."""
    hub = logging.getLogger("huggingface_hub")
    for h in hub.handlers[:]:
        hub.removeHandler(h)


def hub_problem() -> str | None:
    """None when the hub (``HF_ENDPOINT``) answers at all; else why not. One request, no retries:
    huggingface_hub would retry a refused connection five times per repo (23 s each)."""
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # refused, no such host, timed out, the proxy refused: all mean out of reach
        return str(e) or type(e).__name__
    return None


def _cannot_reach(problem: str, missing: list[str]) -> str:
    host = urlsplit(constants.ENDPOINT).netloc or constants.ENDPOINT
    return (f"{len(missing)} repo(s) are not in the cache ({', '.join(missing)}), and the Hugging Face hub at {host} "
            f"cannot be reached from this machine ({problem}).\n"
            "What to do: let this machine reach it (its network, or a proxy: HTTPS_PROXY=http://proxy:port), or set "
            "HF_ENDPOINT to a mirror; or fetch on a machine that can reach it and copy that machine's Hugging Face "
            f"cache here: its HF_HOME folder (~/.cache/huggingface by default) to {constants.HF_HOME}, or point "
            "HF_HOME at the copy.")


def main(argv: list[str] | None = None) -> int:
    import settings

    parser = argparse.ArgumentParser(prog="./scripts/run --fetch",
                                     description="Download the weights of the models config.toml names, ahead of "
                                                 "the first start (only the files the pool reads).")
    parser.add_argument("--config", default="config.toml", help="config file (default: config.toml)")
    parser.add_argument("--load", default="", metavar='"Name_device,..."',
                        help="the models the bot's --load names, instead of config.toml's [models.*]")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log_hub_once()
    try:
        config = settings.load(args.config, env_check=False, load=args.load)
    except settings.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    wants = wants_of(config)
    offline = bool(constants.HF_HUB_OFFLINE)
    problem = None if offline or all(want.local for want, _ in wants) else hub_problem()
    if problem:
        constants.HF_HUB_OFFLINE = True  # the cache is all there is: no request, no retry from here on
    downloads, listings, missing = [], Listings(), []
    for want, dtype in wants:
        if want.local:
            print(f"{want.source}: a local folder, nothing to fetch")
            continue
        d = Download(want, dtype, listings)
        d.unreachable = "the hub is out of reach"
        try:
            d.list()
        except FetchFailed as e:
            if offline or problem:
                missing.append(want.source)
                continue
            print(f"cannot fetch {want.source}: {e}", file=sys.stderr)
            return 1
        except Exception as e:
            print(f"cannot fetch {want.source}: {e}", file=sys.stderr)
            return 1
        have = sum(size for name, size in d.files.items()
                   if isinstance(try_to_load_from_cache(want.source, name), str))
        if (offline or problem) and have < d.total:
            missing.append(want.source)
            continue
        print(f"{want.source}: {len(d.files)} files, {hub_size(d.total)}"
              + (f" ({hub_size(have)} already here)" if have else ""))
        downloads.append((d, have))
    if missing:
        print(_cannot_reach(problem, missing) if problem else
              f"{len(missing)} repo(s) are not in the cache ({', '.join(missing)}), and HF_HUB_OFFLINE=1 keeps "
              "this command off the hub: run it without HF_HUB_OFFLINE to download them.", file=sys.stderr)
        return 1
    total, have = sum(d.total for d, _ in downloads), sum(h for _, h in downloads)
    print(f"Total: {hub_size(total)} in {len(downloads)} repos; {hub_size(total - have)} to download "
          f"into {constants.HF_HUB_CACHE}")
    with tqdm(total=total, initial=have, unit="B", unit_scale=True, desc="Fetching", file=sys.stderr) as bar:
        for d, _ in downloads:
            try:
                d.fetch(on_bytes=bar.update)
            except Exception as e:
                bar.close()
                print(f"cannot fetch {d.want.source}: {e}", file=sys.stderr)
                return 1
    print("All weights are here. Start the bot with ./scripts/run (HF_HUB_OFFLINE=1 keeps it off the network).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
