"""The modern profile's weights at real size on ``meta``, for bench/memory.py: bf16, fp8, NF4, the shared Qwen3.

Configs are the hub's config.json files, trimmed to what shapes the weights (the hub is unreachable here:
written by hand; each builder's parameter count is checked against the model card's). Bytes are counted by
``gpu_pool.accounting`` on the modules as the pool holds them:

- bf16: every module in bfloat16.
- fp8 (torchao float8, what a GPU of compute capability >= 8.9 holds): the klein transformer's and Qwen3's
  ``nn.Linear`` weights at 1 byte and one float32 scale per output row (per-row scaling), the rest in
  bfloat16; Qwen3's ``lm_head`` is its embedding (tied) and stays. Counted, since torchao cannot run on meta.
- fp8 (layerwise casting, older GPUs and the CPU): ``gpu_pool.quantize`` applied on meta, as the pool does.
- nf4: ``gpu_pool.quantize.to_nf4`` on meta, the module the pool runs, as bitsandbytes stores it with double
  quantization (``Linear4bit``'s default): 4-bit weights, an 8-bit absmax per 64 of them and a float32 per
  256 absmax; the rest (norms, embeddings, biases; Qwen3's tied lm_head) in bfloat16.

The hit rate replays the modern profile's jobs (chat turns around each tool, Zipf-skewed workflows, see
``WORKFLOWS``) through the pool's own ``Residency`` (bench/residency.py's replay: warm-first queues, the
SafetyChecker after each drawing) under an 8 GiB budget with a 2 GiB reserve, klein's transformer and Qwen3
in NF4, once with one Qwen3 for the LLM and klein, once with two.
"""

from __future__ import annotations

import contextlib
import copy
import random

import torch

from gpu_pool import quantize
from gpu_pool.accounting import unique_bytes

MIB, GIB = 2**20, 2**30
# black-forest-labs/FLUX.2-klein-4B transformer/config.json (3,876 M params)
KLEIN_TRANSFORMER = dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256,
                         mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6,
                         guidance_embeds=False)
# its vae/config.json: AutoencoderKLFlux2's defaults are FLUX.2's VAE (84 M)
KLEIN_VAE: dict = {}
# Qwen/Qwen3-4B config.json (4,023 M with the embedding tied to lm_head); klein's text_encoder is the same model
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000)
# florence-community/Florence-2-base (231 M): DaViT vision tower, BART-base text model
FLORENCE2_BASE = dict(
    vision_config=dict(embed_dim=[128, 256, 512, 1024], depths=[1, 1, 9, 1], num_heads=[4, 8, 16, 32],
                       num_groups=[4, 8, 16, 32], projection_dim=768, window_size=12),
    text_config=dict(vocab_size=51289, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                     decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                     max_position_embeddings=1024),
)
# facebook/sam2.1-hiera-base-plus (73 M): Hiera B+ image encoder
SAM21_BASE_PLUS = dict(vision_config=dict(
    backbone_config=dict(model_type="sam2_hiera_det_model", hidden_size=112, num_attention_heads=2,
                         blocks_per_stage=[2, 3, 16, 3], embed_dim_per_stage=[112, 224, 448, 896],
                         window_size_per_stage=[8, 4, 14, 7], global_attention_blocks=[12, 16, 20],
                         window_positional_embedding_background_size=[14, 14]),
    backbone_channel_list=[896, 448, 224, 112]))
# depth-anything/Depth-Anything-V2-Small-hf (25 M): DINOv2-S backbone, DPT head
DA2_SMALL = dict(backbone_config=dict(model_type="dinov2", hidden_size=384, num_attention_heads=6,
                                      num_hidden_layers=12, patch_size=14, image_size=518, out_indices=[3, 6, 9, 12],
                                      reshape_hidden_states=False),
                 neck_hidden_sizes=[48, 96, 192, 384], reassemble_factors=[4, 2, 1, 0.5], fusion_hidden_size=64,
                 head_hidden_size=32, depth_estimation_type="relative")
PARAMS_M = {"transformer": 3876, "vae": 84, "qwen3": 4023, "florence2": 231, "sam2": 73, "depth": 25}
QUANTIZED = ("transformer", "qwen3")  # what quantize = "fp8" | "nf4" holds in fewer bytes (klein's and the LLM's)


@contextlib.contextmanager
def bf16_meta():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"), torch.no_grad():
            yield
    finally:
        torch.set_default_dtype(old)


def build() -> dict[str, torch.nn.Module]:
    """The modern profile's modules at real size, bf16, on meta (call in ``bf16_meta``); counts checked."""
    import transformers as tf
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    mods = {
        "transformer": Flux2Transformer2DModel(**KLEIN_TRANSFORMER),
        "vae": AutoencoderKLFlux2(**KLEIN_VAE),
        "qwen3": tf.Qwen3ForCausalLM(tf.Qwen3Config(**QWEN3_4B)),
        "florence2": tf.Florence2ForConditionalGeneration(tf.Florence2Config(**FLORENCE2_BASE)),
        "sam2": tf.Sam2Model(tf.Sam2Config(**SAM21_BASE_PLUS)),
        "depth": tf.DepthAnythingForDepthEstimation(tf.DepthAnythingConfig(**DA2_SMALL)),
    }
    for name, m in mods.items():
        m.to(torch.bfloat16).eval()
        n = sum(p.numel() for p in m.parameters()) / 1e6
        assert abs(n - PARAMS_M[name]) < 1, f"{name}: {n:.1f} M params, the model card says {PARAMS_M[name]} M"
    return mods


def torchao_fp8_bytes(m: torch.nn.Module) -> int:
    """What torchao float8 (per-row scales) would hold: Linear weights at 1 byte + a float32 scale per row."""
    linears = [lin for fqn, lin in m.named_modules()
               if isinstance(lin, torch.nn.Linear) and not quantize.KEEP.search(fqn)]
    saved = sum(lin.weight.numel() * lin.weight.element_size() - lin.weight.numel() - 4 * lin.out_features
                for lin in linears)
    return unique_bytes([m]) - saved


def sizes() -> tuple[dict[str, dict[str, int]], dict[str, torch.nn.Module]]:
    """(mode -> component -> bytes, for "bf16", "fp8" (torchao), "fp8_cast" (layerwise casting), "nf4";
    the modules as NF4 holds them)."""
    out: dict[str, dict[str, int]] = {}
    with bf16_meta():
        mods = build()
        out["bf16"] = {n: unique_bytes([m]) for n, m in mods.items()}
        out["fp8"] = {n: torchao_fp8_bytes(m) if n in QUANTIZED else out["bf16"][n] for n, m in mods.items()}
        out["fp8_cast"], out["nf4"] = dict(out["bf16"]), dict(out["bf16"])
        for n in QUANTIZED:
            quantize.apply(n, "fp8", {n: mods[n]}, "cpu", torch.bfloat16)  # the CPU's fp8: layerwise casting
            out["fp8_cast"][n] = unique_bytes([mods[n]])
        mods = build()
        for n in QUANTIZED:
            quantize.to_nf4(mods[n], "meta")
            out["nf4"][n] = unique_bytes([mods[n]])
    return out, mods


def report(table: dict[str, dict[str, int]]) -> None:
    modes = list(table)
    print(f"\n{'modern profile, real size on meta':<36}" + "".join(f"{m + ' MiB':>14}" for m in modes))
    for name in table["bf16"]:
        print(f"{name:<36}" + "".join(f"{table[m][name] / MIB:>14.1f}" for m in modes))
    print(f"{'total (Qwen3 held once)':<36}" + "".join(f"{sum(table[m].values()) / MIB:>14.1f}" for m in modes))
    print(f"{'a second Qwen3 (not shared)':<36}" + "".join(f"{table[m]['qwen3'] / MIB:>14.1f}" for m in modes))
    print("fp8: torchao float8 (compute capability >= 8.9); fp8_cast: layerwise casting (older GPUs, CPU, "
          "Embedding too); nf4: bitsandbytes with double quantization; the transformer and Qwen3 quantized")


# --- the hit rate under an 8 GiB budget, NF4 -----------------------------------------------------------------

BUDGET, RESERVE = 8 * GIB, 2 * GIB  # a 1024² klein job with 2 references works on ~12.8 k tokens: ~2 GiB
# Workflows of the modern profile, most used first: (steps done once, steps repeated). Every chat turn is an
# LLM call before the tools and one after; an upload gets Florence-2's detailed caption.
TURN = ["LLM"]
WORKFLOWS = [
    (["Florence2"], [*TURN, *TURN]),  # chat about an uploaded image
    ([], [*TURN, "Klein", *TURN]),  # generate
    (["Florence2"], [*TURN, "Klein", *TURN]),  # edit an upload
    (["Florence2", "Florence2"], [*TURN, "Klein", *TURN]),  # compose with reference images
    (["Florence2"], [*TURN, "Florence2", "Sam2", "KleinInpaint", *TURN]),  # remove / replace an object
    (["Florence2"], [*TURN, "Florence2", *TURN]),  # detect objects, OCR
    (["Florence2"], [*TURN, "Florence2", "Sam2", *TURN]),  # segment, remove the background
    (["Klein"], ["Klein"]),  # /edit without the LLM, the upscale button (klein img2img)
    (["Florence2"], [*TURN, "DepthAnything", *TURN]),  # depth
]
DRAWS = {"Klein", "KleinInpaint"}


def tools(mods: dict[str, torch.nn.Module], shared: bool = True) -> dict[str, list[torch.nn.Module]]:
    """The pool's modern models over ``mods``: klein's text encoder is the LLM's Qwen3 (``shared``), or a copy."""
    from bench import memory

    with bf16_meta():
        checker = memory.safety_checker().to(torch.bfloat16)
        qwen3 = mods["qwen3"] if shared else copy.deepcopy(mods["qwen3"])
    klein = [mods["transformer"], mods["vae"], qwen3]
    return {"LLM": [mods["qwen3"]], "Klein": klein, "KleinInpaint": klein, "Florence2": [mods["florence2"]],
            "Sam2": [mods["sam2"]], "DepthAnything": [mods["depth"]], "SafetyChecker": [checker]}


def make_trace(rng: random.Random, jobs: int, s: float = 1.2, users: int = 3, mean_repeats: float = 3) -> list[str]:
    """Sessions of ``users`` users interleaved, each a Zipf-drawn workflow whose last steps repeat."""
    weights = [1 / rank**s for rank in range(1, len(WORKFLOWS) + 1)]

    def session() -> list[str]:
        first, repeated = rng.choices(WORKFLOWS, weights)[0]
        repeats = 1
        while rng.random() > 1 / mean_repeats:
            repeats += 1
        return [*first, *repeated * repeats]

    active, trace = [session() for _ in range(users)], []
    while len(trace) < jobs:
        user = rng.randrange(users)
        trace.append(active[user].pop(0))
        active[user] = active[user] or session()
    return trace


def hit_rate(tools: dict[str, list[torch.nn.Module]], jobs: int, seed: int = 1) -> tuple[float, int, int, int]:
    """(warm-first hit rate, jobs run, peak resident bytes, weight bytes) of a trace replayed under the budget."""
    from bench import residency

    trace = make_trace(random.Random(seed), jobs)
    mgr, _, _ = residency.replay(tools, trace, residency.MAX_OVERTAKES, seed, budget=BUDGET, reserve=RESERVE,
                                 draws=DRAWS)
    total = unique_bytes(m for mods in tools.values() for m in mods)
    return mgr.stats["hits"] / mgr.stats["jobs"], mgr.stats["jobs"], mgr.peak_bytes, total


def figures(jobs: int, sensitivity: bool = False) -> dict[str, float]:
    """Print the table and the replays; the figures bench/memory.py ends with."""
    table, nf4 = sizes()
    report(table)
    rates = {}
    for shared in (True, False):
        rate, n, peak, total = hit_rate(tools(nf4, shared), jobs)
        rates[shared] = rate
        print(f"{'one Qwen3 (shared)' if shared else 'two Qwen3 (not shared)'}: {total / MIB:.0f} MiB of weights in "
              f"NF4 with the SafetyChecker, budget {BUDGET / GIB:.0f} GiB minus a {RESERVE / GIB:.0f} GiB reserve: "
              f"warm-first hit rate {rate:.1%} over {n} model uses, peak resident {peak / MIB:.0f} MiB")
    if sensitivity:
        shared_tools = tools(nf4)
        seeds = [hit_rate(shared_tools, jobs, seed)[0] for seed in range(2, 7)]
        print(f"sensitivity: seeds 2-6, one Qwen3: hit rate {min(seeds):.1%} to {max(seeds):.1%}")

    def total(mode: str) -> float:
        return sum(table[mode].values()) / MIB

    return {"modern_bf16_mib": total("bf16"), "modern_fp8_mib": total("fp8"), "modern_fp8_cast_mib": total("fp8_cast"),
            "modern_nf4_mib": total("nf4"), "shared_qwen_saving_mib": table["bf16"]["qwen3"] / MIB,
            "shared_qwen_saving_fp8_mib": table["fp8"]["qwen3"] / MIB,
            "shared_qwen_saving_nf4_mib": table["nf4"]["qwen3"] / MIB,
            "modern_hit_rate": rates[True], "modern_unshared_hit_rate": rates[False]}
