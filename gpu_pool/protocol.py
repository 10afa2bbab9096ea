"""The few messages the core and the pool exchange. Imports nothing of the project.

    core (PoolClient)                                 pool (gpu_pool.server)
    POST /jobs     frame(JobRequest) + raw pixels  ─▶ check, queue on the model's device
                   ◀─ frames, one per event, on the same response:
                      queued(job_id, position, done_in_s) · progress(step, total, done_in_s[, text]) ·
                      done(text, data, safety, provenance) + raw pixels | failed(message, code, detail)
                      (progress step 0 of 0: waiting for the model, with its
                       download or load progress, about once a second)
    DELETE /jobs/{job_id}                          ─▶ cancel (the stream ends with failed/cancelled)
                   job_id: a JobId, as the X-Job-Id header and every event name it
    GET  /queue                                    ◀─ {"jobs": [QueuedJob...]} (running first, per device)
    GET  /models                                   ◀─ {"models": [ModelInfo...]}
    POST /models/reload {"model": name | null}     ─▶ re-read config.toml, reload one or all
    POST /models/load   {"model", "device"?, "dtype"?}
    POST /models/unload {"model"}                  ◀─ {"ok", "message", "models"[, "code", "model"]}
                   (refused: "code" a FailCode, "model" the model it is about)
    GET  /health                                   ◀─ {"ok": true, "pid"}
    POST /v1/chat/completions, GET /v1/models      the built-in LLM, OpenAI's wire format
                                                   (gpu_pool/openai_api.py), not these frames

Before a job's images leave the pool, the safety checker looks at every image a
drawing model made: done.safety holds one Verdict per image (None for models
that only analyse their input: maps, masks, text). The core applies the
conversation's policy to them.

done.provenance says how the output was made, for the image's record: the
model, its source, every parameter as run (defaults filled in, and the seed
the pool picked when the job gave none), and the prompt and negative prompt
the model was really sent (the pool's models add quality words and a default
negative prompt to what the user asked).

A frame is a 4-byte big-endian header length, a UTF-8 JSON header, then the
raw pixel bytes of the images the header lists, back to back. Pixels travel
raw (width, height, mode, bytes) because encoding PNG costs 4-28 ms per
512x512 image here and a raw copy 0.1 ms; PNG is only for what users download.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# failed.message of a job whose pool (or Ray replica) died or could not be reached: the chat user reads it
UNAVAILABLE = "The image engine is not reachable right now; please try again in a minute."
CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}
_HEADER = struct.Struct(">I")
MAX_HEADER = 1 << 20


@dataclass
class RawImage:
    width: int
    height: int
    mode: str  # "L", "RGB" or "RGBA"
    data: bytes

    @classmethod
    def from_pil(cls, img: Any) -> RawImage:
        if img.mode not in CHANNELS:
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        return cls(img.width, img.height, img.mode, img.tobytes())

    def to_pil(self) -> Any:
        from PIL import Image

        return Image.frombytes(self.mode, (self.width, self.height), self.data)

    def meta(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "mode": self.mode, "nbytes": len(self.data)}


@dataclass
class JobRequest:
    model: str  # seed model name, e.g. "Text2Image"
    params: dict[str, Any] = field(default_factory=dict)
    images: list[RawImage] = field(default_factory=list)
    user: str = ""  # for logs only


@dataclass
class Verdict:
    """The safety checker's view of one output image."""

    flagged: bool | None  # None: the image could not be checked (no checker loaded); `note` says why
    score: float | None = None  # the checker's highest concept score; above 0 is flagged
    note: str | None = None  # why it was not checked, for the admins


@dataclass(frozen=True)
class JobId:
    """A job's id on the wire: its scheduler's own id, prefixed with its replica's on Ray ("replica:job")."""

    job: str
    replica: str = ""

    @classmethod
    def parse(cls, text: str) -> JobId:
        replica, sep, job = text.partition(":")
        return cls(job, replica) if sep else cls(text)

    def __str__(self) -> str:
        return f"{self.replica}:{self.job}" if self.replica else self.job

    def slug(self) -> str:
        """The id in letters, digits and dashes (for ids of other formats, e.g. OpenAI's "chatcmpl-...")."""
        return f"{self.replica}-{self.job}" if self.replica else self.job


EventKind = Literal["queued", "progress", "done", "failed"]
# failed.code: why, for the core to map to a message or a retry decision. The message names the model and
# the cause, never a chat command: "not_loaded" says the model is not loaded here (the core tells its users
# how an admin loads it); "load_failed" that its load failed, and why; "oom" that the model does not fit
# the device's memory at all; "too_large" that the job ran out of device memory twice, memory freed in
# between (the core suggests a smaller size).
FailCode = Literal["bad_request", "unknown_model", "not_loaded", "load_failed", "oom", "too_large", "cancelled",
                   "internal", "unavailable"]


@dataclass
class Event:
    kind: EventKind
    job_id: str
    position: int | None = None  # queued: jobs ahead of this one on its device
    step: int | None = None  # progress (step 0 of total 0: waiting for the model to download or load)
    total: int | None = None
    phase: str | None = None  # waiting: "downloading" or "loading" (see ModelInfo)
    downloaded: int | None = None  # waiting: bytes of the model's files here so far
    download_total: int | None = None  # waiting: bytes of the model's files (0: not known yet)
    eta_s: float | None = None  # waiting: estimated seconds until the model is ready
    text: str | None = None  # done; progress: the next piece of an LLM's answer (streaming)
    images: list[RawImage] = field(default_factory=list)  # done
    data: dict[str, Any] | None = None  # done: structured results (e.g. Text2Box's boxes), JSON values
    seconds: float | None = None  # done: time inside the model
    message: str | None = None  # failed: meant for the chat user
    code: str | None = None  # failed: a FailCode
    detail: str | None = None  # failed: remote traceback, for the log only
    safety: list[Verdict] | None = None  # done: one per image of a drawing model; None for analyses
    provenance: dict[str, Any] | None = None  # done: {"model", "source", "params", "prompt"?, "negative_prompt"?}
    # queued, progress: about how many seconds until this job is done, from its model's recent timings in the
    # pool (gpu_pool/timings.py); None: no estimate yet. failed/cancelled: ``step`` is the last step it ran.
    done_in_s: float | None = None


@dataclass
class QueuedJob:
    """A job in the pool now, as ``GET /queue`` lists it: per device the running job first, then the
    queued ones in the order they will run."""

    job_id: str
    model: str
    device: str
    state: Literal["running", "queued", "loading"]  # loading: waiting for its model to download or load
    position: int  # jobs that run before it on its device (0: running, or next)
    user: str = ""  # JobRequest.user
    step: int = 0  # running: steps done of total
    total: int = 0
    done_in_s: float | None = None  # as in Event

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelInfo:
    name: str
    device: str
    dtype: str
    source: str
    state: Literal["loading", "ready", "failed", "unloaded"]
    bytes: int = 0
    shared_bytes: int = 0  # part of `bytes` also held by another model (counted once overall)
    shares_with: list[str] = field(default_factory=list)
    error: str | None = None
    last_used: float | None = None  # unix time of the last job
    resident: bool = False  # weights on the device now; False: offloaded to CPU RAM (or not loaded)
    # While state is "loading": downloading its files from the hub, then loading them ("loading").
    phase: str = ""
    downloaded: int = 0  # bytes of its files on this machine (from the cache or arrived)
    download_total: int = 0  # bytes of its files (0 while the hub's listing is not in, or none to fetch)
    eta_s: float | None = None  # estimated seconds until ready; None: no estimate yet
    tokens_per_s: float | None = None  # an LLM's decoding speed over its recent jobs; None: not an LLM, or no job yet

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelInfo:
        """From ``to_json``'s dict, leaving out fields a newer peer added (an older peer's lack ours: defaults)."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# --- framing ---------------------------------------------------------------


def encode_frame(header: dict[str, Any], images: list[RawImage] = ()) -> bytes:
    header = dict(header, images=[im.meta() for im in images])
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_HEADER.pack(len(head)), head, *(im.data for im in images)])


class FrameError(ValueError):
    """A frame that cannot be read; the message says what is wrong with it."""


def _images_from(header: dict[str, Any], payload: memoryview) -> list[RawImage]:
    images, offset = [], 0
    for i, m in enumerate(header.get("images", [])):
        try:
            w, h, mode, n = int(m["width"]), int(m["height"]), str(m["mode"]), int(m["nbytes"])
        except (KeyError, TypeError, ValueError):
            raise FrameError(f"image {i + 1}: needs width, height, mode and nbytes") from None
        if offset + n > len(payload):
            raise FrameError(f"image {i + 1}: {n} bytes announced, {len(payload) - offset} sent")
        images.append(RawImage(w, h, mode, bytes(payload[offset:offset + n])))
        offset += n
    if offset != len(payload):
        raise FrameError(f"{len(payload) - offset} bytes after the last image")
    return images


def decode_frame(buf: bytes) -> tuple[dict[str, Any], list[RawImage]]:
    """Split one whole frame into its header and images."""
    if len(buf) < _HEADER.size:
        raise FrameError("frame shorter than its length prefix")
    (n,) = _HEADER.unpack_from(buf)
    if n > MAX_HEADER or _HEADER.size + n > len(buf):
        raise FrameError("frame header length is wrong")
    try:
        header = json.loads(buf[_HEADER.size:_HEADER.size + n])
    except ValueError as e:
        raise FrameError(f"frame header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header must be a JSON object")
    return header, _images_from(header, memoryview(buf)[_HEADER.size + n:])


async def read_frame(reader: Any) -> tuple[dict[str, Any], list[RawImage]] | None:
    """Read one frame from an aiohttp StreamReader; None at the end of the stream."""
    try:
        prefix = await reader.readexactly(_HEADER.size)
    except Exception as e:  # asyncio.IncompleteReadError at a clean end
        if getattr(e, "partial", None) == b"":
            return None
        raise
    (n,) = _HEADER.unpack(prefix)
    if n > MAX_HEADER:
        raise FrameError("frame header length is wrong")
    header = json.loads(await reader.readexactly(n))
    total = sum(int(m["nbytes"]) for m in header.get("images", []))
    payload = await reader.readexactly(total) if total else b""
    return header, _images_from(header, memoryview(payload))


def request_to_frame(req: JobRequest) -> bytes:
    return encode_frame({"model": req.model, "params": req.params, "user": req.user}, req.images)


def request_from_frame(header: dict[str, Any], images: list[RawImage]) -> JobRequest:
    model, params = header.get("model"), header.get("params", {})
    if not isinstance(model, str) or not isinstance(params, dict):
        raise FrameError("a job needs 'model' (a string) and 'params' (an object)")
    return JobRequest(model, params, images, str(header.get("user", "")))


_EVENT_FIELDS = tuple(f for f in Event.__dataclass_fields__ if f not in ("images", "safety"))


def event_to_frame(ev: Event) -> bytes:
    # the fields as they are (JSON copies them anyway), not asdict's deep copy of every value
    header = {k: v for k in _EVENT_FIELDS if (v := getattr(ev, k)) is not None}
    if ev.safety is not None:
        header["safety"] = [asdict(v) for v in ev.safety]
    return encode_frame(header, ev.images)


def event_from_frame(header: dict[str, Any], images: list[RawImage]) -> Event:
    fields = {k: header.get(k) for k in Event.__dataclass_fields__ if k not in ("images", "safety")}
    safety = header.get("safety")
    return Event(**fields, images=images, safety=None if safety is None else [Verdict(**v) for v in safety])
