"""A tiny random-weight Qwen3 (text only), laid out as Qwen/Qwen3-4B: the modern profile's LLM, and
FLUX.2 [klein]'s text encoder (scripts/tiny_models/flux2.py saves the same weights there).

    qwen3/              save_pretrained's layout (model.safetensors, chat_template.jinja)
    hub/Qwen/Qwen3-4B   the real repo's: bfloat16 weights in three shards and an index, the output layer tied
                        to the embeddings (no lm_head), the chat template inside tokenizer_config.json,
                        vocab.json + merges.txt beside tokenizer.json, a generation_config.json

Hidden size 16 and 28 layers: klein reads the hidden states of layers 9, 18 and 27 (Qwen3-4B has 36), so
the tiny one needs at least 28 for the pipeline's own code path. Its chat template is Qwen3's format,
written for this fixture: tools in the system turn, calls as ``<tool_call>{json}</tool_call>``, tool
results as ``<tool_response>`` in a user turn, earlier thinking dropped, and ``enable_thinking=False``
opening the answer with an empty think block (``<think>\\n\\n</think>\\n\\n``), which klein's prompts
always carry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .common import seeded

LAYERS = 28
HIDDEN = 16
THINK = ["<think>", "</think>"]

CHAT_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" }}
    {{- "You are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within " }}
    {{- "<tool_call></tool_call> XML tags:\n<tool_call>\n" }}
    {{- "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string
          and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}{%- set content = message.content %}
    {%- else %}{%- set content = '' %}{%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1]
                                               .lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' }}
            {{- content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if (loop.first and content) or (not loop.first) %}{{- '\n' }}{%- endif %}
            {%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}{{- tool_call.arguments }}
            {%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' }}{{- content }}{{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}
{%- endif %}
""".strip()


def build(out: Path) -> None:
    seeded(3)
    model, tok = qwen3()
    folder = out / "qwen3"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    hub = out / "hub" / "Qwen" / "Qwen3-4B"
    hub.mkdir(parents=True, exist_ok=True)
    save_hub_weights(folder, hub, shards=3)
    shutil.copy(folder / "generation_config.json", hub / "generation_config.json")
    save_hub_tokenizer(folder, hub, template_file=False)
    (hub / "LICENSE").write_text("Apache License 2.0 (tiny fixture)\n")


def tokenizer():
    """Qwen's byte-level tokenizer (scripts/tiny_models/llm.py) with Qwen3's think tags, and Qwen3's template."""
    from .llm import TAGS
    from .llm import tokenizer as qwen_tokenizer

    tok = qwen_tokenizer(TAGS + THINK)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def qwen3():
    """The tiny model (float32, eval) and its tokenizer."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tok = tokenizer()
    end, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen3Config(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=LAYERS,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=40960,
                         max_window_layers=LAYERS, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                         bos_token_id=pad, eos_token_id=end)
    model = Qwen3ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(  # the real model's
        bos_token_id=pad, eos_token_id=[end, pad], pad_token_id=pad, do_sample=True, temperature=0.6, top_k=20,
        top_p=0.95)
    return model, tok


def save_hub_weights(src: Path, folder: Path, shards: int) -> None:
    """``src``'s Qwen3 as Qwen's repos hold it: config.json as transformers 4.51 wrote it, bfloat16 weights
    without the tied lm_head, in ``shards`` files named by model.safetensors.index.json."""
    from safetensors.torch import load_file, save_file

    config = json.loads((src / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config.update(rope_theta=rope["rope_theta"], rope_scaling=None, torch_dtype="bfloat16",
                  architectures=["Qwen3ForCausalLM"], transformers_version="4.51.0")
    config.pop("dtype", None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.to(torch.bfloat16) for k, v in load_file(src / "model.safetensors").items() if k != "lm_head.weight"}
    names = sorted(state)
    parts = {f"model-{i:05d}-of-{shards:05d}.safetensors": names[(i - 1) * len(names) // shards:
                                                                 i * len(names) // shards]
             for i in range(1, shards + 1)}
    for shard, keys in parts.items():
        save_file({k: state[k] for k in keys}, folder / shard, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": {k: shard for shard, keys in parts.items() for k in keys}}, indent=2))


def save_hub_tokenizer(src: Path, folder: Path, template_file: bool) -> None:
    """tokenizer.json, vocab.json + merges.txt, tokenizer_config.json with the added tokens; the chat template
    in chat_template.jinja (``template_file``: klein's tokenizer/) or inside tokenizer_config.json (Qwen3-4B)."""
    tokenizer = json.loads((src / "tokenizer.json").read_text())
    shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
    (folder / "vocab.json").write_text(json.dumps(tokenizer["model"]["vocab"]))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(
        f"{' '.join(m) if isinstance(m, list) else m}\n" for m in tokenizer["model"]["merges"]))
    added = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
             for t in tokenizer["added_tokens"]}
    config = {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added, "bos_token": None,
              "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
              "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
              "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    if template_file:
        (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
        ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
        (folder / "added_tokens.json").write_text(json.dumps(ids))
        (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|im_end|>",
                                                                    "pad_token": "<|endoftext|>"}))
    else:
        config["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
