"""GPU weight memory of the seed's tool set: the seed's placement against the pool's.

Builds every seed model at real size from its hub config (written out below,
nothing is downloaded) on the ``meta`` device in float16, so no weight memory
is allocated, and counts bytes with ``gpu_pool.accounting``, the code the pool
itself uses: each parameter/buffer once, at its dtype's size.

- seed placement: every SD-family tool (Text2Image, InstructPix2Pix,
  Inpainting, the eight ControlNet tools) holds its own UNet + VAE + text
  encoder (+ its ControlNet); BLIP caption, BLIP VQA and CLIPSeg on the GPU.
- pool placement: one SD1.5 base shared by Text2Image and the ControlNet
  pipelines; pix2pix and inpainting own only their UNets and share the base
  VAE and text encoder; BLIP caption, BLIP VQA and CLIPSeg on the GPU.
- both: GroundingDINO (Text2Box) and SAM (Segmenting) on the GPU, as the
  seed's final version loaded them; nothing of theirs is shared.
- annotators (Image2*) run on the CPU in both: 0 GPU bytes.

- safety checker (CLIP ViT-L/14): the seed loaded one into every SD-family
  pipeline; the pool holds one per device, which checks every drawn image.
- the buttons' models (not the seed's, so outside the comparison): Variations
  runs on the shared base (no bytes of its own); Upscale holds the latent
  upscaler's own UNet, VAE and text encoder.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/memory.py [--no-cuda] [--smoke]

Then what ``./scripts/run --fetch`` downloads per repo for float16 (the files
``gpu_pool/weights.py`` picks): the sizes are computed from the same
real-size configs on meta (an fp16 variant file holds the fp16 bytes, a full
one twice that), not read from the hub, which these machines cannot reach.
Which repos publish fp16 variant files is ``HAS_FP16`` (scripts/tiny_models/hub.py), from
their file listings; the pool itself decides from the live listing.

With a CUDA GPU it also builds the pool placement there with random fp16
weights and prints ``torch.cuda.max_memory_allocated`` (not with ``--smoke``: everything
else is counted on meta, in seconds, on any machine). Ends with
``safety_checker_fp16_mib=``, ``buttons_fp16_mib=``, ``download_fp16_mib=``,
``seed_tool_set_fp16_mib=<pool total>`` and
``shared_over_seed_ratio=<pool / seed>``.

Then the modern profile (bench/_modern.py: FLUX.2 klein 4B, its VAE, Qwen3-4B, Florence-2 base, SAM 2.1
base+, Depth Anything V2 small) in bf16, fp8 and NF4: ``modern_bf16_mib=``, ``modern_fp8_mib=``,
``modern_nf4_mib=``, what holding one Qwen3 for the LLM and klein saves (``shared_qwen_saving_mib=``,
bf16; ``_fp8_``, ``_nf4_``), and ``modern_hit_rate=``, its jobs replayed under an 8 GiB budget in NF4.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from pathlib import Path

import torch

import settings
from bench import _modern as modern
from gpu_pool.accounting import model_bytes, unique_bytes
from scripts.tiny_models.hub import HAS_FP16  # the repos that publish fp16 variant files
from scripts.tiny_models.sd import SD15_SCHEDULE
from settings import MODEL_DEFAULTS, SD15
from settings import SEED_MODELS as MODEL_NAMES

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("safety_checker_fp16_mib", "buttons_fp16_mib", "download_fp16_mib", "seed_tool_set_fp16_mib",
           "shared_over_seed_ratio", "modern_bf16_mib", "modern_fp8_mib", "modern_fp8_cast_mib", "modern_nf4_mib",
           "shared_qwen_saving_mib", "shared_qwen_saving_fp8_mib", "shared_qwen_saving_nf4_mib", "modern_hit_rate",
           "modern_unshared_hit_rate")

MIB = 2**20
SEED_PUBLISHED_MB = 42_054  # TaskMatrix README, per-tool GPU memory table, summed

# --- real configs (hub config.json files, trimmed to what shapes the weights) ---

_SD_BLOCKS = dict(
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    layers_per_block=2, attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32,
    norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
)
# stable-diffusion-v1-5/unet (instruct-pix2pix: in_channels 8, stable-diffusion-inpainting: 9)
SD15_UNET = dict(_SD_BLOCKS, in_channels=4, out_channels=4, sample_size=64,
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
# lllyasviel/sd-controlnet-* (all eight share this config)
SD15_CONTROLNET = dict(_SD_BLOCKS, in_channels=4, conditioning_channels=3,
                       conditioning_embedding_out_channels=[16, 32, 96, 256])
# stable-diffusion-v1-5/vae
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                block_out_channels=[128, 256, 512, 512], sample_size=512, act_fn="silu",
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
# stable-diffusion-v1-5/text_encoder: CLIP ViT-L/14 text tower
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                 hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1)
# Salesforce/blip-image-captioning-base and blip-vqa-base (same shapes)
BLIP_BASE = dict(
    text_config=dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512,
                     projection_dim=768, bos_token_id=30522, sep_token_id=102, pad_token_id=0),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=384, patch_size=16, projection_dim=512),
    projection_dim=512, image_text_hidden_size=256,
)
# CIDAS/clipseg-rd64-refined
CLIPSEG = dict(
    text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16),
    projection_dim=512, extract_layers=[3, 6, 9], reduce_dim=64, conditional_layer=0,
    decoder_num_attention_heads=4, decoder_intermediate_size=2048, use_complex_transposed_convolution=True,
)
# openmmlab/upernet-convnext-small (ADE20k, 150 labels)
UPERNET = dict(
    backbone_config=dict(model_type="convnext", depths=[3, 3, 27, 3], hidden_sizes=[96, 192, 384, 768],
                         out_features=["stage1", "stage2", "stage3", "stage4"]),
    hidden_size=512, pool_scales=[1, 2, 3, 6], use_auxiliary_head=True, auxiliary_in_channels=384,
    auxiliary_channels=256, auxiliary_num_convs=1, num_labels=150,
)
# Intel/dpt-large
DPT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 image_size=384, patch_size=16, backbone_out_indices=[5, 11, 17, 23],
                 neck_hidden_sizes=[256, 512, 1024, 1024], reassemble_factors=[4, 2, 1, 0.5],
                 fusion_hidden_size=256, readout_type="project", is_hybrid=False)
# Intel/dpt-hybrid-midas: ViT-B/16 on a BiT-R50 stem
DPT_HYBRID = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  image_size=384, patch_size=16, backbone_out_indices=[2, 5, 8, 11],
                  neck_hidden_sizes=[256, 512, 768, 768], reassemble_factors=[1, 1, 1, 0.5],
                  fusion_hidden_size=256, readout_type="project", is_hybrid=True,
                  backbone_featmap_shape=[1, 1024, 24, 24], neck_ignore_stages=[0, 1],
                  backbone_config=dict(model_type="bit", depths=[3, 4, 9], layer_type="bottleneck",
                                       global_padding="same", embedding_dynamic_padding=True,
                                       out_features=["stage1", "stage2", "stage3"]))
# IDEA-Research/grounding-dino-tiny: transformers' GroundingDinoConfig defaults are its config
# (Swin-T backbone, BERT-base text tower, 6+6 layers, 900 queries)
GROUNDING_DINO_TINY: dict = {}
# facebook/sam-vit-huge: ViT-H/16 image encoder (SamConfig's defaults are sam-vit-base's)
SAM_VIT_HUGE = dict(vision_config=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                       global_attn_indexes=[7, 15, 23, 31]))
# CompVis/stable-diffusion-safety-checker: the CLIP ViT-L/14 vision tower, its projection, 17 + 3 concepts
SAFETY_CHECKER = dict(vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                         num_attention_heads=16, image_size=224, patch_size=14),
                      projection_dim=768)
# stabilityai/sd-x2-latent-upscaler/unet: converted from k-diffusion's config (depths 4 x 4, channels
# 384/384/768/768, mapping_cond_dim 896 = a 128 noise-level embedding + CLIP-L's 768 pooled output, cross 768,
# has_variance: 5 output channels); its vae and text_encoder are SD's VAE and CLIP ViT-L/14 text tower
UPSCALER_UNET = dict(in_channels=8, out_channels=5, block_out_channels=[384, 384, 768, 768], layers_per_block=4,
                     down_block_types=["KDownBlock2D"] + ["KCrossAttnDownBlock2D"] * 3, mid_block_type=None,
                     up_block_types=["KCrossAttnUpBlock2D"] * 3 + ["KUpBlock2D"], act_fn="gelu", norm_num_groups=None,
                     cross_attention_dim=768, attention_head_dim=64, time_cond_proj_dim=896,
                     resnet_time_scale_shift="scale_shift", time_embedding_type="fourier", timestep_post_act="gelu",
                     conv_in_kernel=1, conv_out_kernel=1)
BUTTONS = ("Variations", "Upscale")  # the models of the buttons under an image (not the seed's)


@contextlib.contextmanager
def fp16_on(device: str):
    """Create modules on ``device`` with float16 as the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device(device), torch.no_grad():
            yield
    finally:
        torch.set_default_dtype(old)


def quiet_diffusers() -> None:
    """No "You have disabled the safety checker" notice for every pipeline built."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()


def half(m: torch.nn.Module) -> torch.nn.Module:
    """Make sure every floating tensor is fp16 (most already are; diffusers warns on a needless ``.to``)."""
    tensors = [*m.parameters(), *m.buffers()]
    if any(t.is_floating_point() and t.dtype != torch.float16 for t in tensors):
        m = m.to(torch.float16)
    return m.eval()


# --- builders: each returns fresh modules (call inside fp16_on) -------------

def unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel
    return half(UNet2DConditionModel(**dict(SD15_UNET, in_channels=in_channels)))


def controlnet():
    from diffusers import ControlNetModel
    return half(ControlNetModel(**SD15_CONTROLNET))


def vae():
    from diffusers import AutoencoderKL
    return half(AutoencoderKL(**SD15_VAE))


def upscaler_unet():
    from diffusers import UNet2DConditionModel
    return half(UNet2DConditionModel(**UPSCALER_UNET))


def text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel
    return half(CLIPTextModel(CLIPTextConfig(**SD15_TEXT)))


def blip(kind: str):
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipForQuestionAnswering
    cls = BlipForConditionalGeneration if kind == "caption" else BlipForQuestionAnswering
    return half(cls(BlipConfig(**BLIP_BASE)))


def clipseg():
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation
    return half(CLIPSegForImageSegmentation(CLIPSegConfig(**CLIPSEG)))


def grounding_dino():
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection
    return half(GroundingDinoForObjectDetection(GroundingDinoConfig(**GROUNDING_DINO_TINY)))


def sam():
    from transformers import SamConfig, SamModel
    return half(SamModel(SamConfig(**SAM_VIT_HUGE)))


def upernet():
    from transformers import UperNetConfig, UperNetForSemanticSegmentation
    return half(UperNetForSemanticSegmentation(UperNetConfig(**UPERNET)))


def dpt(cfg: dict):
    from transformers import DPTConfig, DPTForDepthEstimation
    return half(DPTForDepthEstimation(DPTConfig(**cfg)))


def safety_checker():
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig
    return half(StableDiffusionSafetyChecker(CLIPConfig(**SAFETY_CHECKER)))


def hed():
    from controlnet_aux.hed import ControlNetHED_Apache2
    return half(ControlNetHED_Apache2())


def mlsd():
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
    return half(MobileV2_MLSD_Large())


def openpose():  # body (loaded with the model), hand and face (loaded when a job asks for them)
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model
    return [half(bodypose_model()), half(handpose_model()), half(FaceNet())]


CONTROLNET_TOOLS = ["CannyText2Image", "LineText2Image", "HedText2Image", "ScribbleText2Image",
                    "PoseText2Image", "SegText2Image", "DepthText2Image", "NormalText2Image"]


def sd_copy(in_channels: int = 4) -> list:
    return [unet(in_channels), vae(), text_encoder()]


def gpu_extras() -> dict[str, list]:
    """The non-SD GPU models; neither placement shares anything among them."""
    return {"ImageCaptioning": [blip("caption")], "VisualQuestionAnswering": [blip("vqa")],
            "Text2Mask": [clipseg()], "Text2Box": [grounding_dino()], "Segmenting": [sam()]}


def annotators() -> dict[str, list]:
    """CPU in both placements; built only to report their sizes."""
    return {"Image2Canny": [], "Image2Line": [mlsd()], "Image2Hed": [hed()], "Image2Scribble": [hed()],
            "Image2Pose": openpose(), "Image2Seg": [upernet()], "Image2Depth": [dpt(DPT_LARGE)],
            "Image2Normal": [dpt(DPT_HYBRID)]}


def seed_placement() -> dict[str, list]:
    """What the seed put on the GPU: a full SD copy and a safety checker per SD-family tool."""
    models = {"Text2Image": sd_copy(), "InstructPix2Pix": sd_copy(8), "Inpainting": sd_copy(9)}
    models.update({name: sd_copy() + [controlnet()] for name in CONTROLNET_TOOLS})
    models = {name: mods + [safety_checker()] for name, mods in models.items()}
    return models | gpu_extras() | {"SafetyChecker": []}  # no checker of its own: each pipeline held one


def pool_placement() -> dict[str, list]:
    """What the pool puts on the GPU, built as the pool shares it: pipelines over one base."""
    from diffusers import (StableDiffusionControlNetPipeline, StableDiffusionInpaintPipeline,
                           StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline,
                           UniPCMultistepScheduler)

    u, v, t = sd_copy()
    with torch.device("cpu"):  # the scheduler computes its tables at construction
        scheduler = UniPCMultistepScheduler(**SD15_SCHEDULE)
    no_checker = dict(tokenizer=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    base = StableDiffusionPipeline(vae=v, text_encoder=t, unet=u, scheduler=scheduler, **no_checker)
    shared = dict(vae=base.vae, text_encoder=base.text_encoder, scheduler=base.scheduler, **no_checker)
    pipes = {
        "Text2Image": base,
        "InstructPix2Pix": StableDiffusionInstructPix2PixPipeline(unet=unet(8), **shared),
        "Inpainting": StableDiffusionInpaintPipeline(unet=unet(9), **shared),
    }
    for name in CONTROLNET_TOOLS:
        pipes[name] = StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet())
    models = {name: [m for m in p.components.values() if isinstance(m, torch.nn.Module)]
              for name, p in pipes.items()}
    return models | gpu_extras() | {"SafetyChecker": [safety_checker()]}  # one for the device


def upscaler_pipeline(tokenizer):
    """The latent upscaler's repo at real size (bench/gpu_check.py saves it): its three networks, SD's schedule."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline
    with torch.device("cpu"):  # the scheduler computes its tables at construction
        scheduler = EulerDiscreteScheduler(**dict(SD15_SCHEDULE, prediction_type="sample"))
    return StableDiffusionLatentUpscalePipeline(vae=vae(), text_encoder=text_encoder(), tokenizer=tokenizer,
                                                unet=upscaler_unet(), scheduler=scheduler)


def button_models(pool: dict[str, list]) -> dict[str, list]:
    """Variations is the pool's base (img2img over its modules); Upscale brings its own three."""
    return {"Variations": pool["Text2Image"], "Upscale": [upscaler_unet(), vae(), text_encoder()]}


def n_params(mods: list) -> int:
    return sum(p.numel() for p in {id(p): p for m in mods for p in m.parameters()}.values())


def report(seed: dict, pool: dict, cpu: dict) -> tuple[float, float]:
    seed_b, pool_b = model_bytes(seed), model_bytes(pool)
    seed_total = unique_bytes(m for mods in seed.values() for m in mods)
    pool_total = unique_bytes(m for mods in pool.values() for m in mods)
    assert seed_total == sum(b for b, _ in seed_b.values()), "seed copies must not share storage"
    print(f"{'model':<24}{'device':>7}{'params M':>10}{'seed MiB':>10}{'pool own MiB':>14}{'pool shared MiB':>17}")
    for name in (n for n in MODEL_NAMES if n not in BUTTONS):
        if name in cpu:
            mods, s, own, sh, dev = cpu[name], 0, 0, 0, "cpu"
        else:
            mods, s, (b, sh), dev = pool[name], seed_b[name][0], pool_b[name], "gpu"
            own = b - sh
        print(f"{name:<24}{dev:>7}{n_params(mods) / 1e6:>10.1f}{s / MIB:>10.1f}{own / MIB:>14.1f}{sh / MIB:>17.1f}")
    own_sum = sum(b - sh for b, sh in pool_b.values())
    print(f"{'total (GPU, fp16)':<24}{'':>7}{'':>10}{seed_total / MIB:>10.1f}{own_sum / MIB:>14.1f}"
          f"{(pool_total - own_sum) / MIB:>17.1f}")
    print("cpu: annotators, on the CPU in both placements: 0 GPU bytes. pool own: bytes no other tool holds;\n"
          "pool shared: bytes held with another tool (the SD1.5 base; counted once in the total row)")
    print(f"seed placement: {seed_total / MIB:.1f} MiB; pool placement: {pool_total / MIB:.1f} MiB")
    return pool_total / MIB, seed_total / MIB


def downloads(pool: dict, cpu: dict) -> dict[str, tuple[int, int]]:
    """Per repo the default config reads: (bytes fetched for float16, bytes of its full float32 files)."""
    base = {id(m) for m in pool["Text2Image"]}
    repos: dict[str, list] = {}
    for name in MODEL_NAMES:
        repo = MODEL_DEFAULTS[name]
        if not repo:
            continue
        own = [m for m in (pool.get(name) or cpu[name]) if id(m) not in base or name == "Text2Image"]
        if repo not in repos:
            repos[repo] = own
        elif name in ("Image2Hed", "Image2Pose"):  # lllyasviel/Annotators: MLSD, HED and OpenPose files
            repos[repo] = repos[repo] + own
    out = {}
    for repo, mods in repos.items():
        half = unique_bytes(mods)  # built in fp16 on meta
        keep_fp32 = repo == "lllyasviel/Annotators"  # the controlnet_aux .pth files: float32, no variant
        out[repo] = (half if repo in HAS_FP16 and not keep_fp32 else 2 * half, 2 * half)
    return out


# Qwen/Qwen3-VL-2B-Instruct's one weight file (bf16), as the hub lists it: the built-in LLM is not built here
QWEN3_VL_2B_BYTES = 4_255_140_312


def report_downloads(pool: dict, cpu: dict) -> float:
    rows = downloads(pool, cpu)
    print(f"\n{'what ./scripts/run --fetch downloads (float16)':<52}{'file':>6}{'MiB':>9}{'fp32 MiB':>10}")
    for repo, (fetched, full) in rows.items():
        kind = "fp16" if fetched < full else "fp32"
        print(f"{repo:<52}{kind:>6}{fetched / MIB:>9.1f}{full / MIB:>10.1f}")
    fetched, full = sum(f for f, _ in rows.values()), sum(f for _, f in rows.values())
    print(f"{'total, every model':<52}{'':>6}{fetched / MIB:>9.1f}{full / MIB:>10.1f}")
    shipped_models = settings.load(ROOT / "config.toml", env_check=False).models
    repos = {MODEL_DEFAULTS[n] or (SD15 if n == "Text2Image" else "") for n in shipped_models} & set(rows)
    shipped = sum(rows[r][0] for r in repos) + (QWEN3_VL_2B_BYTES if "LLM" in shipped_models else 0)
    print(f"the shipped config.toml ({', '.join(shipped_models)}): {shipped / MIB:.1f} MiB "
          f"({shipped / 1e9:.1f} GB) on a GPU in float16")
    return fetched / MIB


def cuda_peak_mib() -> tuple[float, float]:
    """Build the pool placement on the GPU with random fp16 weights: (peak allocated, accounted) MiB."""
    torch.cuda.reset_peak_memory_stats()
    with fp16_on("cuda"):
        pool = pool_placement()
    torch.cuda.synchronize()
    accounted = unique_bytes(m for mods in pool.values() for m in mods)
    return torch.cuda.max_memory_allocated() / MIB, accounted / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU measurement even if a GPU is present")
    parser.add_argument("--smoke", action="store_true", help="on meta only (as --no-cuda)")
    args = parser.parse_args()
    started = time.perf_counter()
    quiet_diffusers()
    with fp16_on("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # controlnet_aux imports all its detectors; timm/mediapipe notices
        seed, pool, cpu = seed_placement(), pool_placement(), annotators()
        buttons = button_models(pool)
    assert set(pool) | set(cpu) | set(buttons) == set(MODEL_NAMES) and set(seed) == set(pool)
    ours, seeds = report(seed, pool, cpu)
    fetched = report_downloads(pool | {"Upscale": buttons["Upscale"]}, cpu)  # Variations: the base's files
    print(f"built and counted on meta in {time.perf_counter() - started:.1f} s")
    if torch.cuda.is_available() and not (args.no_cuda or args.smoke):
        peak, accounted = cuda_peak_mib()
        print(f"cuda ({torch.cuda.get_device_name()}): pool placement max_memory_allocated {peak:.1f} MiB "
              f"(accounted {accounted:.1f} MiB); seed published {SEED_PUBLISHED_MB:,} MB")
    checker = unique_bytes(pool["SafetyChecker"]) / MIB
    print(f"safety checker: {checker:.1f} MiB, once per device in the pool, once per SD-family tool in the seed")
    extra = unique_bytes(m for mods in (*pool.values(), *buttons.values()) for m in mods) - unique_bytes(
        m for mods in pool.values() for m in mods)
    for name, mods in buttons.items():
        own = unique_bytes(mods) if name == "Upscale" else 0
        print(f"button model {name}: {n_params(mods) / 1e6:.1f} M params, {own / MIB:.1f} MiB of its own in fp16"
              + (" (the shared base)" if name == "Variations" else ""))
    print(f"safety_checker_fp16_mib={checker:.1f}")
    print(f"buttons_fp16_mib={extra / MIB:.1f}")
    print(f"download_fp16_mib={fetched:.1f}")
    print(f"seed_tool_set_fp16_mib={ours:.1f}")
    print(f"shared_over_seed_ratio={ours / seeds:.4f}")
    for name, value in modern.figures(jobs=300 if args.smoke else 1000, sensitivity=not args.smoke).items():
        print(f"{name}={value:.3f}" if name.endswith("rate") else f"{name}={value:.1f}")


if __name__ == "__main__":
    main()
