"""LLM: a small instruct model hosted by the pool, for the core's agent (the built-in LLM).

A job's params are an OpenAI chat request already checked by ``gpu_pool/openai_api.py``
(image parts replaced by ``{"type": "image"}``, their pixels in the job's images, in order).
The prompt is the model's own chat template with the tools; decoding runs under
a grammar from the tools' schemas (``grammar.py``) so that a tool call always parses.
The answer is ``Output.text``: the JSON of :class:`Answer`. Pieces of a text answer are
reported as they are generated (``progress(step, total, text)``) for streaming.

A text-only Qwen3 (Qwen/Qwen3-4B, the modern profile's) may be the very network FLUX.2 [klein] reads its
prompts with: it is had through ``SharedBases.qwen`` (``shared_qwen.py``), which hands out one object when
the weights are the same. This model keeps its own tokenizer and generation settings, and never changes
the network. Qwen3 thinks before it answers unless its template is rendered with ``enable_thinking=False``
(an empty think block then opens the answer). Every turn renders it so: a tool turn's call is constrained by
the grammar from its first token, and a plain answer streams to the chat, where a think block would show and
would spend the answer's ``max_tokens`` (often all of them) before the answer begins.

Decoding keeps its keys and values in a static cache (``cache_implementation="static"``: one buffer of the
prompt's and answer's length, the same answers as the dynamic cache). On CUDA that lets transformers compile
the decode step (``torch.compile``, CUDA graphs), see :meth:`ChatModel._compiles`; the cache is then sized in
powers of two (``_cache_len``) so that a few graphs serve every request. Only ``generate`` uses the compiled
call: klein, encoding with a shared Qwen3, runs the network as it is. The cache is on the device while a job
runs, so a residency budget and the start-up estimate count it (``fit.cache_bytes``, for the longest chat the
core sends: ``LoadSpec.chat_tokens``). Each job's decoding speed (tokens after the first over the seconds after
the first, so the prompt's processing is not counted) feeds a rolling figure over recent jobs, ``tokens_per_s``,
which /models, GET /v1/models and the MCP tool list_models show.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
)
from transformers.generation.streamers import BaseStreamer

from gpu_pool import quantize
from gpu_pool import weights as w
from gpu_pool.fit import cache_bytes

from . import grammar
from .base import BadRequest, LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import checked

log = logging.getLogger(__name__)
IMAGE_PIXELS = 512 * 512  # the most pixels of one image the model looks at (about 256 image tokens for Qwen3-VL)
CACHE_MIN = 1024  # the smallest static cache when the decode step is compiled (tokens)
SPEED_JOBS = 20  # recent jobs in the decoding speed /models shows


@dataclass
class Answer:
    content: str | None
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # {"name", "arguments" (JSON text)}
    finish_reason: str = "stop"  # "stop", "length" or "tool_calls"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatModel(PoolModel):
    n_images = None  # any number: the image parts of the chat
    params = {
        "messages": Param(list, required=True, help="the chat so far, OpenAI-style"),
        "tools": Param(list, [], help="OpenAI function tools"),
        "tool_choice": Param(str, "auto", choices=("auto", "none", "required")),
        "tool_name": Param(str, "", help="the one function the model must call"),
        "parallel_tool_calls": Param(bool, True),
        "response_format": Param(dict, None),
        "max_tokens": Param(int, 512, min=1, limit="llm_max_tokens", help="tokens the answer may have"),
        "temperature": Param(float, None, min=0.0, max=2.0),
        "top_p": Param(float, None, min=0.0, max=1.0),
        "seed": Param(int, None, min=0, max=2**63 - 1),
        "stop": Param(list, []),
    }

    def __init__(self, spec: LoadSpec, bases: SharedBases):
        super().__init__(spec)
        config = AutoConfig.from_pretrained(spec.source)
        self.vision = getattr(config, "vision_config", None) is not None
        if self.vision:
            self.processor = AutoProcessor.from_pretrained(spec.source)
            self.tokenizer = self.processor.tokenizer
            _cap_pixels(self.processor.image_processor)
            auto = AutoModelForImageTextToText
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(spec.source)
            auto = AutoModelForCausalLM
        def load() -> torch.nn.Module:
            return checked(auto, spec.source, spec.dtype, w.transformers()).to(spec.load_device).eval()

        if config.model_type == "qwen3":  # a text-only Qwen3: perhaps klein's text encoder too
            self.model = bases.qwen.get(spec.source, spec.device, spec.dtype, load, spec.name)
        else:
            self.model = load()
        # its own, not the network's: a shared Qwen3 may have been loaded from klein's text_encoder/ folder
        self.generation = _generation_config(spec.source, self.model)
        self.cache = "static"  # the KV cache generate() makes ("dynamic": transformers' default, the tests' reference)
        self.speed = DecodeSpeed()
        self.format = grammar.ToolFormat.of(self.tokenizer)
        stops = self.generation.eos_token_id
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        # the tokenizer's end token too: it is the one the grammar allows once an answer is complete
        self.stops = sorted({*stops, self.tokenizer.eos_token_id} - {None})
        vocab = self.model.get_output_embeddings().out_features
        self.lltokenizer = grammar.tokenizer_for(self.tokenizer, vocab)
        template = (self.processor or self.tokenizer).chat_template or ""
        if not template:  # every chat would fail: fail the load instead, saying why
            raise ValueError(f"{spec.source} has no chat template (chat_template.jinja, chat_template.json, or one in "
                             "tokenizer_config.json), so the model cannot chat. Check the LLM's source in config.toml.")
        self.template_has_tools = "tools" in template
        self.template_thinks = "enable_thinking" in template  # Qwen3's: thinking on unless told otherwise
        if not self.template_has_tools:
            log.warning("%s: its chat template does not show tools; they go in a system note instead", spec.source)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        if images and not self.vision:
            raise BadRequest(f"{self.spec.source} cannot see images; send the messages without image parts.")
        inputs = self._inputs(params, images)
        n_prompt = inputs["input_ids"].shape[1]
        lark = grammar.grammar(params["tools"], params["tool_choice"], params["tool_name"],
                               params["response_format"], params["parallel_tool_calls"], self.format,
                               params["max_tokens"])
        constraint = grammar.Constraint(self.lltokenizer, lark) if lark else None
        if params["seed"] is not None:
            torch.manual_seed(params["seed"])
        streamer = _Stream(self.tokenizer, params["max_tokens"], progress,
                           hold=bool(params["stop"]) or constraint is not None and lark.startswith("start: calls"),
                           call_id=self.format.start_id)
        generation = copy.deepcopy(self.generation)
        compiles = self.cache == "static" and self._compiles()
        generation.update(**self._sampling(params), max_new_tokens=params["max_tokens"], eos_token_id=self.stops,
                          cache_implementation=self.cache, disable_compile=not compiles,
                          max_cache_len=_cache_len(n_prompt + params["max_tokens"]) if compiles else None)
        out = self.model.generate(**inputs, generation_config=generation,
                                  logits_processor=[constraint] if constraint else None, streamer=streamer)
        self.speed.add(*streamer.decoding())
        ids = out[0, n_prompt:].tolist()
        ended = bool(ids) and ids[-1] in self.stops
        stopped = constraint is not None and constraint.matcher.is_stopped()
        answer = self._answer(ids, params, finished=ended or stopped)
        answer.prompt_tokens, answer.completion_tokens = n_prompt, len(ids)
        return Output(text=json.dumps(asdict(answer)))

    def working_bytes(self) -> int:
        return cache_bytes(self.model.config.get_text_config(decoder=True).to_dict(), self.spec.chat_tokens, self.dtype)

    def tokens_per_s(self) -> float | None:
        return self.speed.rate()

    def _compiles(self) -> bool:
        """Whether ``generate`` compiles the decode step: on CUDA only (on the CPU it would not pay off), not under
        a residency budget (the weights move every job, and CUDA graphs would be recorded again each time), and
        not with weights held by hooks or bitsandbytes (fp8 layerwise casting, nf4: the graph breaks at every layer)."""
        quantized = getattr(self.model, quantize.MARK, "none")
        return self.device.startswith("cuda") and not self.spec.home and quantized in ("none", quantize.FP8_TORCHAO)

    def _inputs(self, params: dict[str, Any], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        messages, tools = params["messages"], params["tools"] or None
        if tools and not self.template_has_tools:
            messages = [{"role": "system", "content": _tools_note(tools)}, *messages]
            tools = None
        render = (self.processor or self.tokenizer).apply_chat_template
        thinking = {"enable_thinking": False} if self.template_thinks else {}  # see the module's docstring
        prompt = render(messages, tools=tools, tokenize=False, add_generation_prompt=True, **thinking)
        n_slots = prompt.count("<|image_pad|>") if self.vision else 0
        if self.vision and n_slots != len(images):
            raise BadRequest(f"The chat has {len(images)} image(s) but its template placed {n_slots}.")
        if self.processor is not None:
            inputs = self.processor(text=[prompt], images=[im.convert("RGB") for im in images] or None,
                                    return_tensors="pt")
        else:
            inputs = self.tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return dict(inputs)

    def _sampling(self, params: dict[str, Any]) -> dict[str, Any]:
        """The request's sampling over the model's defaults; temperature 0 is greedy."""
        t = params["temperature"]
        if t == 0:
            return {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        kw: dict[str, Any] = {"do_sample": True}
        if t is not None:
            kw["temperature"] = t
        if params["top_p"] is not None:
            kw["top_p"] = params["top_p"]
        return kw

    def _answer(self, ids: list[int], params: dict[str, Any], finished: bool) -> Answer:
        def decode(part: list[int]) -> str:
            return self.tokenizer.decode(part, skip_special_tokens=True)

        text, raw_calls, cut = grammar.split_calls(ids, decode, self.format)
        calls = []
        for raw in raw_calls:
            try:
                name, args = grammar.parse_call(raw)
            except ValueError as e:  # only without a grammar (tool_choice "none" still lets a model try)
                log.info("dropped a malformed tool call: %s", e)
                continue
            calls.append({"name": name, "arguments": args})
        for s in params["stop"]:
            if isinstance(s, str) and s and s in text:
                text, finished = text[:text.index(s)], True
        if calls and not cut:
            return Answer(text.strip() or None, calls, "tool_calls")
        if calls:
            return Answer(text.strip() or None, calls, "length")  # the complete calls; the cut one is dropped
        return Answer(text.strip(), [], "stop" if finished and not cut else "length")

    def quantizable(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}


class _Stream(BaseStreamer):
    """Reports each generated token as progress, with the new text of a text answer (a call is held back)."""

    def __init__(self, tokenizer: Any, total: int, progress: Progress, hold: bool, call_id: int | None):
        self.tokenizer, self.total, self.progress, self.hold, self.call_id = tokenizer, total, progress, hold, call_id
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.first = self.last = 0.0  # perf_counter at the first generated token (after the prompt), at the last

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        self.last = time.perf_counter()
        if not self.ids:
            self.first = self.last
        self.ids.extend(value.flatten().tolist())
        delta = None
        if not self.hold and self.ids[0] != self.call_id:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if not text.startswith("<tool_call>") and not text.endswith("\ufffd"):  # not half a character
                delta, self.sent = text[len(self.sent):] or None, text
        self.progress(len(self.ids), self.total, delta)

    def end(self) -> None:
        pass

    def decoding(self) -> tuple[int, float]:
        """(tokens decoded after the first, their seconds): the first token ends the prompt's processing."""
        return max(0, len(self.ids) - 1), self.last - self.first


class DecodeSpeed:
    """Tokens per second of decoding over the last ``SPEED_JOBS`` jobs, all their tokens over all their seconds.
    Jobs add on the device's thread and /models reads on the event loop: a deque's append and copy are atomic."""

    def __init__(self) -> None:
        self.recent: deque[tuple[int, float]] = deque(maxlen=SPEED_JOBS)

    def add(self, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds > 0:  # an answer of one token has no decoding to time
            self.recent.append((tokens, seconds))

    def rate(self) -> float | None:
        recent = list(self.recent)
        seconds = sum(s for _, s in recent)
        return round(sum(t for t, _ in recent) / seconds, 1) if seconds else None


def _generation_config(source: str, model: torch.nn.Module) -> GenerationConfig:
    """The LLM's sampling defaults and end tokens, from its own folder (the model's when it has none)."""
    try:
        return GenerationConfig.from_pretrained(source)
    except OSError:  # no generation_config.json
        return model.generation_config


def _cache_len(needed: int) -> int:
    """The static cache's length for a compiled decode step: a power of two, at least CACHE_MIN tokens, so that
    a few cache shapes (one graph each) serve every request, not one per prompt length."""
    return max(CACHE_MIN, 1 << (needed - 1).bit_length())


def _cap_pixels(image_processor: Any) -> None:
    """Look at images of at most IMAGE_PIXELS pixels (the processor would take megapixels)."""
    size = dict(getattr(image_processor, "size", None) or {})
    if "longest_edge" in size and size["longest_edge"] > IMAGE_PIXELS:
        size["longest_edge"] = IMAGE_PIXELS
        image_processor.size = size
    if getattr(image_processor, "max_pixels", None) and image_processor.max_pixels > IMAGE_PIXELS:
        image_processor.max_pixels = IMAGE_PIXELS


def _tools_note(tools: list[dict]) -> str:
    """The tools in Qwen's words, for a chat template that does not show them."""
    listed = "\n".join(json.dumps(t) for t in tools)
    return ("You may call functions. Their signatures are within <tools></tools>:\n<tools>\n" + listed +
            "\n</tools>\nTo call one, answer with <tool_call>\n{\"name\": <function-name>, \"arguments\": "
            "<args-json-object>}\n</tool_call>")


def load_llm(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return ChatModel(spec, bases)
