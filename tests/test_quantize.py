"""``quantize = "fp8" | "nf4"`` per model: what the registry holds, counts and runs, on the CPU.

The tiny built-in LLM (Qwen3-VL) loads through the real registry in bfloat16, with and without fp8
(diffusers' layerwise casting, the CPU's fp8), under a residency budget so the budget's own count
is checked too; a job runs through the real scheduler. NF4 needs a CUDA GPU: on the CPU it falls
back to fp8 with one warning, and the model still answers. torchao float8 and NF4 themselves run
only on a GPU and are not tested here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
import torch
from torch.testing._internal.two_tensor import TwoTensor

import settings
from gpu_pool import accounting, quantize
from gpu_pool.protocol import JobRequest
from gpu_pool.registry import Registry
from gpu_pool.residency import Residency
from gpu_pool.scheduler import Scheduler
from tests.test_config import check_config, error_of, write
from tests.test_scheduler import finish

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0.0}


def llm_config(tiny_dir: Path, tmp_path: Path, quantize: str) -> settings.Config:
    path = tmp_path / f"config-{quantize}.toml"
    path.write_text(f'''[storage]\ndata_dir = "data"
[residency]\nbudget = "64MiB"\nreserve = "0"\ndevices = ["cpu"]
[models.LLM]\ndevice = "cpu"\ndtype = "bfloat16"\nsource = "{tiny_dir}/llm"\nquantize = "{quantize}"\n''')
    return settings.load(path, env_check=False)


async def loaded(config: settings.Config) -> tuple[Registry, Scheduler]:
    registry = Registry(config)
    await asyncio.gather(*registry.start_all())
    assert registry.entries["LLM"].state == "ready", registry.entries["LLM"].error
    return registry, Scheduler(registry)


async def chat(sched: Scheduler) -> dict:
    events = await finish(sched.submit(JobRequest("LLM", CHAT)))
    assert events[-1].kind == "done", events[-1].message
    return json.loads(events[-1].text)


async def test_fp8_on_the_cpu_halves_what_the_llm_holds_and_it_still_chats(tiny_dir, tmp_path):
    """Loaded in bfloat16, then /reload after the config file gained quantize = "fp8"."""
    config = llm_config(tiny_dir, tmp_path, "none")
    registry, sched = await loaded(config)
    sizes = {}
    try:
        for wanted in ("none", "fp8"):
            if wanted == "fp8":
                config.path.write_text(config.path.read_text().replace('quantize = "none"', 'quantize = "fp8"'))
                assert await registry.reload("LLM") == ["LLM"]
            [info] = registry.infos()
            mgr = registry.manager("cpu")
            held = mgr.bytes_of(registry.modules_of(["LLM"]))
            answer = await chat(sched)
            assert answer["completion_tokens"] > 0 and answer["finish_reason"] in ("stop", "length")
            assert mgr.resident_bytes == held  # what the budget counted while it ran
            model = registry.entries["LLM"].model.model
            text_part = accounting.unique_bytes([model.model.language_model, model.lm_head])
            in_fp8 = sum(p.numel() for p in model.parameters() if p.dtype == torch.float8_e4m3fn)
            sizes[wanted] = info.bytes, held, info.dtype, text_part, in_fp8
    finally:
        sched.close()
        registry.close()
    (bf16, bf16_budget, bf16_dtype, bf16_text, _), (fp8, fp8_budget, fp8_dtype, fp8_text, in_fp8) = sizes.values()
    assert bf16 == bf16_budget and fp8 == fp8_budget  # /models and the budget count the same bytes
    assert fp8_dtype == "bfloat16, fp8 (layerwise casting)" and bf16_dtype == "bfloat16"  # as /models shows it
    # Every Linear and Embedding is held at 1 byte a weight, computed in bfloat16: the language model (all but
    # 0.1 % of a real Qwen3-VL-2B) halves; norms and the vision tower's patch embedding (a third of this tiny
    # model, 0.1 % of the real one) stay in bfloat16.
    assert 0.5 <= fp8_text / bf16_text < 0.51, (fp8_text, bf16_text)
    assert bf16 - fp8 == in_fp8 > 0.6 * bf16 / 2  # one byte less for each weight now in fp8


async def test_nf4_on_the_cpu_falls_back_with_one_warning_and_the_model_works(tiny_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gpu_pool"):
        registry, sched = await loaded(llm_config(tiny_dir, tmp_path, "nf4"))
    try:
        warned = [r for r in caplog.records if r.name == "gpu_pool.quantize" and r.levelno >= logging.WARNING]
        assert [r.getMessage() for r in warned] == [
            "LLM: quantize = 'nf4' cannot run on cpu: bitsandbytes 4-bit runs on CUDA GPUs only, not on cpu; "
            "using fp8 (layerwise casting)"]
        assert (await chat(sched))["completion_tokens"] > 0
        assert registry.infos()[0].dtype == "bfloat16, fp8 (layerwise casting)"
        [fit] = [m for m in caplog.messages if "of weights" in m]  # the start-up estimate, from the file sizes
        assert fit.endswith("(file sizes: quantize will hold LLM in fewer bytes)")
    finally:
        sched.close()
        registry.close()


def test_what_each_device_runs_for_each_wish():
    assert quantize.choose("none", "cpu") == ("none", "")
    assert quantize.choose("fp8", "cpu") == (quantize.FP8_CAST, "")
    assert quantize.choose("fp8", "mps") == ("none", "mps has no float8 dtype")
    assert quantize.choose("nf4", "mps") == ("none", "bitsandbytes 4-bit runs on CUDA GPUs only, not on mps; "
                                                     "mps has no float8 dtype")


def test_a_module_two_models_hold_is_quantized_once(caplog):
    shared = torch.nn.Sequential(torch.nn.Embedding(64, 16), torch.nn.Linear(16, 16)).to(torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="gpu_pool.quantize"):
        assert quantize.apply("LLM", "fp8", {"model": shared}, "cpu", torch.bfloat16) == quantize.FP8_CAST
        assert quantize.apply("Klein", "fp8", {"text_encoder": shared}, "cpu", torch.bfloat16) == quantize.FP8_CAST
    assert "Klein: text_encoder is shared and already quantized (fp8 (layerwise casting))" in caplog.messages
    assert accounting.unique_bytes([shared]) == 64 * 16 + 16 * 16 + 16  # the Linear's bias too: 1 byte each
    out = shared(torch.tensor([[1, 2]]))  # one set of hooks: cast to bfloat16 for the forward, back after
    assert out.dtype == torch.bfloat16 and shared[1].weight.dtype == torch.float8_e4m3fn


def test_a_model_with_nothing_to_quantize_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="gpu_pool.quantize"):
        assert quantize.apply("Image2Canny", "nf4", {}, "cpu", torch.float32) == "none"
    assert caplog.messages == ["Image2Canny: quantize = 'nf4', but Image2Canny has no modules that may be "
                               "quantized; using none"]


def test_weights_a_tensor_subclass_wraps_are_counted_and_moved_by_what_they_hold():
    """torchao's float8 weights wrap their fp8 data and scales; the budget counts those (the wrapper's
    own storage is not real memory) and the manager moves them without pinning."""
    lin = torch.nn.Linear(8, 8, bias=False)
    lin.weight = torch.nn.Parameter(TwoTensor(torch.zeros(8, 8), torch.zeros(8, 8)), requires_grad=False)
    assert accounting.unique_bytes([lin]) == 2 * 8 * 8 * 4
    mgr = Residency("cpu", 1 << 20, home="cpu")
    with mgr.use("Wrapped", [lin]):
        assert mgr.resident_bytes == 2 * 8 * 8 * 4


def test_nf4_holds_what_bitsandbytes_stores_and_leaves_a_tied_lm_head_alone():
    """On meta (no GPU, no bitsandbytes needed): the buffers NF4 holds, as bench/memory.py counts them."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("meta"):
        lin = torch.nn.Linear(4096, 1024, dtype=torch.bfloat16)
        llm = Qwen3ForCausalLM(Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                           tie_word_embeddings=True)).to(torch.bfloat16)
    n = 4096 * 1024
    # 4 bits a weight, an 8-bit absmax per 64, a float32 absmax per 256 of those and an offset, the two codes
    expected = n // 2 + n // 64 + 4 * (n // 64 // 256) + 4 + 4 * (16 + 256) + 2 * 1024  # + the bfloat16 bias
    assert accounting.unique_bytes([quantize.NF4Linear(lin, "meta")]) == expected
    assert expected / n < 0.52 + 0.001  # bytes a weight: about a quarter of bfloat16's 2
    quantize.to_nf4(llm, "meta")
    assert isinstance(llm.model.layers[0].mlp.down_proj, quantize.NF4Linear)
    assert type(llm.lm_head) is torch.nn.Linear and llm.lm_head.weight is llm.model.embed_tokens.weight


def test_nf4_runs_on_the_weights_bitsandbytes_quantized():
    """Where bitsandbytes is installed (the quant extra; its CPU backend runs it too): close to the Linear."""
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 128, dtype=torch.bfloat16)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    nf4 = quantize.NF4Linear(lin, "cpu")
    with torch.device("meta"):
        counted = accounting.unique_bytes([quantize.NF4Linear(torch.nn.Linear(256, 128, dtype=torch.bfloat16),
                                                              "meta")])
    assert accounting.unique_bytes([nf4]) == counted  # bench/memory.py counts what it really holds
    error = (nf4(x) - lin(x)).float().norm() / lin(x).float().norm()
    assert error < 0.15, error


# --- the config key ---------------------------------------------------------------------------


def test_a_bad_quantize_value_is_refused_saying_what_is_accepted(tmp_path):
    text = error_of(tmp_path, '[models.LLM]\nquantize = "int4"\n')
    assert text.startswith("models.LLM.quantize: 'int4' is not valid; accepted values: \"none\"")
    assert '"fp8"' in text and '"nf4"' in text


@pytest.mark.slow
def test_check_config_shows_the_key(tmp_path):
    out = check_config(write(tmp_path, '[models.LLM]\ndevice = "cpu"\nquantize = "fp8"\n'
                                       '[models.ImageCaptioning]\ndevice = "cpu"\n'))
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    assert lines["LLM"].endswith("source=Qwen/Qwen3-VL-2B-Instruct quantize=fp8")
    assert "quantize" not in lines["ImageCaptioning"]  # "none" is not shown
    bad = check_config(write(tmp_path, '[models.LLM]\nquantize = "fp4"\n'))
    assert bad.returncode == 2 and bad.stderr.startswith("config error: models.LLM.quantize: 'fp4' is not valid")
