"""Every loader against the real hub repos' layouts (scripts/tiny_models/hub.py), in every dtype.

The tiny folders next to these are saved by today's libraries; the real repos
are older (legacy preprocessor configs, CLIP tokenizers without tokenizer.json,
a model_index.json that lists a safety checker, .bin-only checkpoints, fp16
variant files). A first run on real weights meets those, so these tests do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import settings
from gpu_pool import weights as w
from gpu_pool.models import load_sd_base, loader
from gpu_pool.models.base import LoadSpec, PoolModel, SharedBases, check_params
from gpu_pool.models.loading import WeightsMismatch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SD15 = settings.SD15
LIMITS = {"max_steps": 10, "max_output_size": 256}
# The models whose code paths differ by dtype run in float16 and bfloat16 here (float32: every model in
# tests/test_models_*.py, and the SD base's full-precision files below). Every other model shares its
# loader and run with one of these (the seven other ControlNets with CannyText2Image, VQA with
# captioning) or runs in float32 whatever the dtype (the controlnet_aux networks): the slow sweep runs
# them in float16 and bfloat16, so every model meets every dtype.
BY_DTYPE = ["Text2Image", "InstructPix2Pix", "Inpainting", "CannyText2Image", "ImageCaptioning", "Text2Mask",
            "Image2Seg", "Image2Depth", "Image2Normal"]
CASES = [(n, d) for d in ("float16", "bfloat16") for n in BY_DTYPE] + [("Text2Image", "float32"),
                                                                        ("InstructPix2Pix", "float32")]
OTHERS = [n for n in settings.MODEL_NAMES if n not in BY_DTYPE]
KLEIN = {"Klein": 1, "KleinInpaint": 2}  # the images their jobs here send: edit an image; image and mask


@pytest.fixture(scope="module")
def hub(tiny_dir) -> Path:
    return tiny_dir / "hub"


def spec(hub: Path, name: str, dtype: torch.dtype, source: str | None = None) -> LoadSpec:
    repo = settings.MODEL_DEFAULTS[name] if source is None else source
    return LoadSpec(name, str(hub / repo) if repo else "", "cpu", dtype, str(hub / SD15), working_size=48)


@pytest.fixture(scope="module")
def load(hub):
    """load(name, dtype) from the hub layouts, one shared base per dtype, each model once."""
    bases = SharedBases(load_sd_base)
    cache: dict[tuple[str, str], PoolModel] = {}

    def get(name: str, dtype: str) -> PoolModel:
        if (name, dtype) not in cache:
            cache[name, dtype] = loader(name)(spec(hub, name, DTYPES[dtype]), bases)
        return cache[name, dtype]

    return get


def run_once(model: PoolModel):
    """One job at 48x32 (the working size here is 48 px), as the pool's device thread runs it."""
    params = {"prompt": "a cat on the sofa"} if "prompt" in model.params else {}
    if "steps" in model.params:
        params["steps"] = 1
    if model.name in ("Text2Image", "Klein"):
        params.update(width=64, height=64)
    if model.name == "VisualQuestionAnswering":
        params["question"] = "what is on the sofa?"
    if "detect_resolution" in model.params:
        params["detect_resolution"] = 64
    if model.name == "LLM":
        params.update(messages=[{"role": "user", "content": "what is on the sofa?"}], max_tokens=4)
    if model.name == "Sam2":
        params["boxes"] = [[4, 4, 40, 28]]
    size = (64, 64) if model.name in KLEIN else (48, 32)  # klein takes at least 64 px a side
    image = Image.new("RGB", size, (200, 120, 40))
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, 24, 16))
    images = [image, mask][:KLEIN.get(model.name, model.n_images or 0)]
    with torch.inference_mode():
        return model.run(check_params(model, params, LIMITS), images, lambda step, total, text=None: None)


def check_output(name: str, out) -> None:
    if name in ("ImageCaptioning", "VisualQuestionAnswering"):
        assert isinstance(out.text, str) and not out.images
    elif name == "Florence2":  # the tiny Florence-2 says what it says of everything
        assert out.text == "red car" and not out.images
    elif name == "SafetyChecker":  # the tiny checker's thresholds flag nothing
        assert out.text.startswith("not flagged (score ") and not out.images
    elif name == "Text2Box":  # the tiny detector sees cats: one box per query, inside the image
        boxes = out.data["boxes"]
        assert boxes and all(0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 32 for x0, y0, x1, y1 in boxes)
    elif name == "LLM":
        answer = json.loads(out.text)
        assert answer["completion_tokens"] > 0 and answer["finish_reason"] in ("stop", "length")
    else:
        expected = (64, 64) if name in ("Text2Image", *KLEIN) else (96, 64) if name == "Upscale" else (48, 32)
        assert [im.size for im in out.images] == [expected]


@pytest.mark.parametrize("name, dtype", CASES)
def test_every_model_loads_the_real_layouts_and_runs_in_every_dtype(load, name, dtype):
    model = load(name, dtype)
    check_output(name, run_once(model))
    nets = list(model.modules().values())
    assert all(p.dtype == DTYPES[dtype] for m in nets for p in m.parameters())  # no silent upcast


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", OTHERS)
def test_the_other_models_load_the_real_layouts_in_16_bits(load, name, dtype):
    check_output(name, run_once(load(name, dtype)))


def test_the_base_never_reads_the_safety_checker_or_the_single_file_checkpoint(load, hub):
    """Their files in the layout are junk: reading them would fail the load above."""
    base = load("Text2Image", "float16").pipe
    assert base.safety_checker is None and base.feature_extractor is None
    index = json.loads((hub / SD15 / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert not (hub / SD15 / "tokenizer" / "tokenizer.json").exists()


@pytest.mark.parametrize("dtype, unet, pix2pix_unet", [
    ("float16", "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors"),
    ("bfloat16", "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors"),
    ("float32", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"),
])
def test_the_fp16_variant_is_picked_when_the_repo_has_one(hub, dtype, unet, pix2pix_unet):
    assert w.pick(str(hub / SD15), w.diffusers("unet"), dtype) == unet
    assert w.pick(str(hub / "timbrooks/instruct-pix2pix"), w.diffusers("unet"), dtype) == pix2pix_unet
    assert w.pick(str(hub / "openmmlab/upernet-convnext-small"), w.transformers(), dtype) == "pytorch_model.bin"


@pytest.mark.parametrize("keep", ["diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin"])
def test_a_unet_loads_from_whichever_file_the_folder_has(hub, tmp_path, keep):
    """Only the fp16 variant (what a float16 fetch downloads), or only the legacy .bin: both load in float32."""
    from diffusers import UNet2DConditionModel

    from gpu_pool.models.loading import checked

    folder = tmp_path / "sd"
    shutil.copytree(hub / SD15 / "unet", folder / "unet")
    for f in (folder / "unet").glob("diffusion_pytorch_model*"):
        if f.name != keep:
            f.unlink()
    unet = checked(UNet2DConditionModel, str(folder), torch.float32, w.diffusers("unet"), "unet")
    assert unet.dtype == torch.float32


# --- loads that fail loudly ----------------------------------------------------------------


def _prefixed(src: Path, dst: Path, weights: str) -> None:
    """A copy of a repo whose checkpoint's keys carry a prefix the network does not expect (as DataParallel saves)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if weights.endswith(".bin"):  # the repo's only checkpoint
        state = torch.load(dst / weights, weights_only=True)
        torch.save({f"module.{k}": v for k, v in state.items()}, dst / weights)
        return
    state = load_file(dst / weights)
    save_file({f"module.{k}": v for k, v in state.items()}, dst / weights, metadata={"format": "pt"})
    for f in dst.glob("*.bin"):
        f.unlink()


@pytest.mark.parametrize("name, repo, weights, network", [
    ("CannyText2Image", "lllyasviel/sd-controlnet-canny", "diffusion_pytorch_model.safetensors", "ControlNetModel"),
    ("ImageCaptioning", "Salesforce/blip-image-captioning-base", "model.safetensors", "BlipForConditionalGeneration"),
    ("Text2Box", "IDEA-Research/grounding-dino-tiny", "model.safetensors", "GroundingDinoForObjectDetection"),
    ("SafetyChecker", "CompVis/stable-diffusion-safety-checker", "pytorch_model.bin", "StableDiffusionSafetyChecker"),
    ("LLM", "Qwen/Qwen3-VL-2B-Instruct", "model.safetensors", "Qwen3VLForConditionalGeneration"),
    ("Florence2", "florence-community/Florence-2-base", "model.safetensors", "Florence2ForConditionalGeneration"),
    ("Sam2", "facebook/sam2.1-hiera-base-plus", "model.safetensors", "Sam2Model"),
    ("DepthAnything", "depth-anything/Depth-Anything-V2-Small-hf", "model.safetensors",
     "DepthAnythingForDepthEstimation"),
])
def test_a_checkpoint_whose_keys_do_not_match_fails_the_load(hub, tmp_path, name, repo, weights, network):
    _prefixed(hub / repo, tmp_path / "bad", weights)
    with pytest.raises(WeightsMismatch) as e:
        loader(name)(spec(hub, name, torch.float32, str(tmp_path / "bad")), SharedBases(load_sd_base))
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'bad'} is not a {network} checkpoint: ")
    assert "weights are missing" in message and "Check the model's source in config.toml" in message


def test_dpt_hybrid_without_its_unused_residual_loads(load, hub):
    """Intel/dpt-hybrid-midas lacks weights DPT never uses: not a mismatch (Image2Normal loads it above)."""
    from safetensors import safe_open

    with safe_open(hub / "Intel/dpt-hybrid-midas/model.safetensors", "pt") as f:
        assert not any(k.startswith("neck.fusion_stage.layers.0.residual_layer1.") for k in f.keys())
    check_output("Image2Normal", run_once(load("Image2Normal", "float32")))


def test_the_pool_never_asks_a_hub_space_to_convert_bin_checkpoints():
    code = "import os, gpu_pool.models; print(os.environ.get('DISABLE_SAFETENSORS_CONVERSION'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "DISABLE_SAFETENSORS_CONVERSION"},
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "1"


# --- the built-in LLM's repo -----------------------------------------------------------------


def test_a_sharded_checkpoint_loads_every_shard_its_index_names(load, hub):
    """Qwen3-VL-4B's layout: model.safetensors.index.json and two shards (the tiny 2B's weights split in two)."""
    folder = hub / "Qwen/Qwen3-VL-4B-Instruct"
    index = "model.safetensors.index.json"
    assert w.pick(str(folder), w.transformers(), "bfloat16") == index
    assert w.shards(str(folder / index), index) == ["model-00001-of-00002.safetensors",
                                                    "model-00002-of-00002.safetensors"]
    sharded = loader("LLM")(spec(hub, "LLM", torch.bfloat16, str(folder)), SharedBases(load_sd_base))
    check_output("LLM", run_once(sharded))
    whole = load("LLM", "bfloat16").model.state_dict()
    assert all(torch.equal(t, whole[k]) for k, t in sharded.model.state_dict().items())


def test_an_llm_without_a_chat_template_fails_the_load_saying_so(hub, tmp_path):
    shutil.copytree(hub / "Qwen/Qwen3-VL-2B-Instruct", tmp_path / "qwen")
    (tmp_path / "qwen" / "chat_template.json").unlink()  # what a fetch without it left
    with pytest.raises(ValueError, match=r"qwen has no chat template \(chat_template.jinja, chat_template.json"):
        loader("LLM")(spec(hub, "LLM", torch.float32, str(tmp_path / "qwen")), SharedBases(load_sd_base))
