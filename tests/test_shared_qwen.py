"""One Qwen3 for the built-in LLM and FLUX.2 [klein]'s text encoder, through the real loaders: shared when
the weights are the same (whichever loads first), refused with a log line when not; thinking off in its turns;
/models saying what is shared and what it saves."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from PIL import Image

from gpu_pool import accounting
from gpu_pool.models import load_sd_base, loader
from gpu_pool.models.base import LoadSpec, PoolModel, SharedBases, check_params
from gpu_pool.models.shared_qwen import compare

LIMITS = {"max_steps": 10, "max_output_size": 64, "llm_max_tokens": 512}
CHAT = {"messages": [{"role": "user", "content": "what is on the sofa?"}], "max_tokens": 8, "temperature": 0.0}
TOOLS = [{"type": "function", "function": {
    "name": "caption_image", "description": "Describe an image.",
    "parameters": {"type": "object", "properties": {"image": {"type": "string", "enum": ["img1", "img2"]}},
                   "required": ["image"], "additionalProperties": False}}}]


def spec(name: str, folder, dtype: torch.dtype = torch.float32) -> LoadSpec:
    return LoadSpec(name, str(folder), "cpu", dtype, "", max_output_size=64)


def load_all(order: list[tuple[str, object]], dtype: torch.dtype = torch.float32) -> dict[str, PoolModel]:
    """The models (name, folder), loaded in that order on one set of shared bases, as one pool loads them."""
    bases = SharedBases(load_sd_base)
    return {name: loader(name)(spec(name, folder, dtype), bases) for name, folder in order}


def chat(llm: PoolModel, **params) -> dict:
    with torch.inference_mode():
        return json.loads(llm.run(check_params(llm, {**CHAT, **params}, LIMITS), [], lambda *a: None).text)


def draw(klein: PoolModel) -> bytes:
    params = {"prompt": "a cat on the sofa", "steps": 2, "seed": 5, "width": 64, "height": 64}
    with torch.inference_mode():
        return klein.run(check_params(klein, params, LIMITS), [], lambda *a: None).images[0].tobytes()


def same_storage(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(pa[k].untyped_storage().data_ptr() == pb[k].untyped_storage().data_ptr()
                                          for k in pa)


@pytest.fixture(scope="module")
def alone(tiny_dir) -> dict[str, object]:
    """What the LLM answers and klein draws, each loaded on its own (nothing shared)."""
    llm = load_all([("LLM", tiny_dir / "qwen3")])["LLM"]
    klein = load_all([("Klein", tiny_dir / "klein")])["Klein"]
    return {"answer": chat(llm), "drawing": draw(klein)}


@pytest.mark.parametrize("first", ["LLM", "Klein"])
def test_one_qwen3_is_the_chat_model_and_the_prompt_encoder(tiny_dir, alone, caplog, first):
    folders = {"LLM": tiny_dir / "qwen3", "Klein": tiny_dir / "klein"}
    order = [(first, folders[first]), *((n, f) for n, f in folders.items() if n != first)]
    with caplog.at_level(logging.INFO, "gpu_pool.models.shared_qwen"):
        models = load_all(order)
    llm, klein = models["LLM"], models["Klein"]
    assert llm.model is klein.pipe.text_encoder
    assert same_storage(llm.model, klein.pipe.text_encoder)
    second = "Klein's text encoder" if first == "LLM" else "LLM"
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{second} shares the Qwen3 that ") and "the weights are the same, held once" in line
    # each does what it does alone, before and after the other ran on the same weights
    assert chat(llm) == alone["answer"]
    assert draw(klein) == alone["drawing"]
    assert chat(llm) == alone["answer"]
    own, shared, peers = accounting.sharing({n: list(m.modules().values()) for n, m in models.items()})["LLM"]
    assert own == shared > 0 and peers == ["Klein"]  # all of the LLM is klein's text encoder


def test_different_weights_are_not_shared_and_the_log_says_why(tiny_dir, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "klein"
    shutil.copytree(tiny_dir / "klein", copy)
    weights = copy / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    state["model.layers.3.mlp.up_proj.weight"] += 0.01  # a fine-tuned encoder: one tensor changed
    save_file(state, weights, metadata={"format": "pt"})
    with caplog.at_level(logging.INFO, "gpu_pool.models.shared_qwen"):
        models = load_all([("LLM", tiny_dir / "qwen3"), ("Klein", copy)])
    llm, klein = models["LLM"], models["Klein"]
    assert llm.model is not klein.pipe.text_encoder
    ptrs = [{p.data_ptr() for p in m.parameters()} for m in (llm.model, klein.pipe.text_encoder)]
    assert not ptrs[0] & ptrs[1]
    assert [r.getMessage() for r in caplog.records] == [
        f"Klein's text encoder loads its own Qwen3 ({copy / 'text_encoder'}), not sharing LLM's "
        f"({tiny_dir / 'qwen3'}): tensor model.layers.3.mlp.up_proj.weight differs"]
    assert chat(llm)["completion_tokens"] > 0 and len(draw(klein)) == 64 * 64 * 3  # both run, each on its own


def test_a_different_config_is_not_shared(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir / "qwen3", tmp_path / "qwen3")
    config = json.loads((tmp_path / "qwen3" / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (tmp_path / "qwen3" / "config.json").write_text(json.dumps(config))
    assert compare(str(tmp_path / "qwen3"), str(tiny_dir / "klein" / "text_encoder"), torch.float32) == (
        "their configs differ in rms_norm_eps (1e-05 and 1e-06)")


def test_the_hub_repos_share_after_comparing_every_tensor(tiny_dir):
    """Qwen/Qwen3-4B's three shards and klein's two hold the same tensors, split differently."""
    hub = tiny_dir / "hub"
    qwen, klein = hub / "Qwen" / "Qwen3-4B", hub / "black-forest-labs" / "FLUX.2-klein-4B"
    assert len(list(qwen.glob("model-*.safetensors"))) == 3
    assert len(list((klein / "text_encoder").glob("model-*.safetensors"))) == 2
    models = load_all([("Klein", klein), ("LLM", qwen), ("KleinInpaint", klein)], torch.bfloat16)
    assert models["LLM"].model is models["Klein"].pipe.text_encoder is models["KleinInpaint"].pipe.text_encoder
    assert models["LLM"].model.dtype == torch.bfloat16
    # the LLM keeps its own generation settings (Qwen3-4B's), though the network came from klein's folder
    assert models["LLM"].generation.temperature == 0.6 and models["LLM"].generation.top_k == 20


def test_another_dtype_or_device_is_not_shared(tiny_dir):
    bases = SharedBases(load_sd_base)
    llm = loader("LLM")(spec("LLM", tiny_dir / "qwen3", torch.bfloat16), bases)
    klein = loader("Klein")(spec("Klein", tiny_dir / "klein", torch.float32), bases)
    assert llm.model is not klein.pipe.text_encoder and llm.model.dtype == torch.bfloat16


def test_the_qwen3_outlives_klein_while_the_llm_holds_it(tiny_dir):
    bases = SharedBases(load_sd_base)
    llm = loader("LLM")(spec("LLM", tiny_dir / "qwen3"), bases)
    klein = loader("Klein")(spec("Klein", tiny_dir / "klein"), bases)
    folder = str(tiny_dir / "klein")
    assert bases.holds(folder, "cpu", torch.float32)
    bases.drop_unused({id(m) for m in llm.modules().values()})  # Klein unloaded, the LLM still there
    assert not bases.holds(folder, "cpu", torch.float32)  # its transformer and VAE go
    assert bases.qwen.module_ids() == {id(llm.model)}
    bases.drop_unused(set())
    assert bases.qwen.module_ids() == set()
    del klein


# --- thinking off ---------------------------------------------------------------------------------------


def test_turns_render_qwen3_with_thinking_off(tiny_dir):
    llm = load_all([("LLM", tiny_dir / "qwen3")])["LLM"]

    def rendered(**params) -> str:
        inputs = llm._inputs(check_params(llm, {**CHAT, **params}, LIMITS), [])
        return llm.tokenizer.decode(inputs["input_ids"][0])

    assert rendered(tools=TOOLS).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "# Tools" in rendered(tools=TOOLS)
    # a plain answer too: it streams to the chat, where a think block would show
    assert rendered().endswith("what is on the sofa?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    calls = [chat(llm, tools=TOOLS, tool_choice="required", max_tokens=40, temperature=1.0, seed=s) for s in (0, 2)]
    assert all(c["tool_calls"] and c["tool_calls"][0]["name"] == "caption_image" for c in calls)  # the grammar holds
    assert any(c["finish_reason"] == "tool_calls" for c in calls)


def test_the_seeds_llm_keeps_its_template(tiny_dir):
    """Qwen3-VL-2B's template has no thinking switch: its tool turns render as before."""
    llm = load_all([("LLM", tiny_dir / "llm")])["LLM"]
    inputs = llm._inputs(check_params(llm, {**CHAT, "tools": TOOLS}, LIMITS), [])
    assert llm.tokenizer.decode(inputs["input_ids"][0]).endswith("<|im_start|>assistant\n")


# --- /models -----------------------------------------------------------------------------------


def test_models_says_what_is_shared_and_what_it_saves(tiny_dir):
    from core.admin import format_models
    from gpu_pool.protocol import ModelInfo

    models = load_all([("LLM", tiny_dir / "qwen3"), ("Klein", tiny_dir / "klein"),
                       ("KleinInpaint", tiny_dir / "klein")])
    sharing = accounting.sharing({n: list(m.modules().values()) for n, m in models.items()})
    infos = [ModelInfo(n, "cpu", "float32", "tiny", "ready", *sharing[n], resident=True) for n in models]
    qwen = accounting.unique_bytes([models["LLM"].model])
    klein = accounting.unique_bytes(models["Klein"].modules().values())
    mib = 2**20
    lines = format_models(infos).splitlines()
    assert lines[0].startswith(f"LLM: ready on cpu (float32), resident, {qwen / mib:,.0f} MiB, {qwen / mib:,.0f} MiB "
                               "shared with Klein, KleinInpaint")
    assert f"{klein / mib:,.0f} MiB shared with KleinInpaint, LLM" in lines[1]
    # without sharing: the Qwen3 three times, klein's transformer and VAE twice
    saved = 2 * qwen + (klein - qwen)
    assert lines[-1] == (f"Weights shared by several models are held once: {saved / mib:,.0f} MiB less than each "
                         "loading its own.")


def test_an_image_is_drawn_while_the_llm_holds_the_encoder(tiny_dir):
    """Edit and inpaint on the shared encoder too (the pool's CASES run them through the protocol)."""
    models = load_all([("LLM", tiny_dir / "qwen3"), ("KleinInpaint", tiny_dir / "klein")])
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    inpaint = models["KleinInpaint"]
    with torch.inference_mode():
        out = inpaint.run(check_params(inpaint, {"prompt": "a red house", "steps": 2, "seed": 1}, LIMITS),
                          [Image.new("RGB", (64, 64), (30, 90, 160)), mask], lambda *a: None)
    assert out.images[0].size == (64, 64)
    assert models["LLM"].model is inpaint.pipe.text_encoder
