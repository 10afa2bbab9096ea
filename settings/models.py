"""The seed's model names, their default sources, and the dtypes and devices a model may run on."""

from __future__ import annotations

# The seed's model names and their default sources (the checkpoints the seed
# used, as they are named on the Hugging Face hub today). A source that starts
# with "/", "./" or "../" is a local folder, resolved against the config file.
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ANNOTATORS = "lllyasviel/Annotators"
# The model that checks every image the others draw: the pool runs it after each drawing job (and on every
# Ray replica), the core reads its verdicts, the bot warns at start when it is not configured.
SAFETY_CHECKER = "SafetyChecker"
SEED_DEFAULTS: dict[str, str] = {
    "ImageCaptioning": "Salesforce/blip-image-captioning-base",
    "VisualQuestionAnswering": "Salesforce/blip-vqa-base",
    "Text2Image": SD15,  # unless config.toml says otherwise: [pool] sd_base (see Config.default_source)
    "InstructPix2Pix": "timbrooks/instruct-pix2pix",
    "Inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "Text2Mask": "CIDAS/clipseg-rd64-refined",
    "Text2Box": "IDEA-Research/grounding-dino-tiny",
    "Segmenting": "facebook/sam-vit-huge",  # facebook/sam-vit-base: 0.2 GiB instead of 1.2 (fp16), coarser masks
    "Image2Canny": "",  # OpenCV Canny: no weights
    "Image2Line": ANNOTATORS,
    "Image2Hed": ANNOTATORS,
    "Image2Scribble": ANNOTATORS,
    "Image2Pose": ANNOTATORS,
    "Image2Seg": "openmmlab/upernet-convnext-small",
    "Image2Depth": "Intel/dpt-large",
    "Image2Normal": "Intel/dpt-hybrid-midas",
    "CannyText2Image": "lllyasviel/sd-controlnet-canny",
    "LineText2Image": "lllyasviel/sd-controlnet-mlsd",
    "HedText2Image": "lllyasviel/sd-controlnet-hed",
    "ScribbleText2Image": "lllyasviel/sd-controlnet-scribble",
    "PoseText2Image": "lllyasviel/sd-controlnet-openpose",
    "SegText2Image": "lllyasviel/sd-controlnet-seg",
    "DepthText2Image": "lllyasviel/sd-controlnet-depth",
    "NormalText2Image": "lllyasviel/sd-controlnet-normal",
    # Not the seed's: the buttons under an image. Variations is img2img on the shared base ([pool] sd_base,
    # no weights of its own: ""); Upscale is Stability AI's 2x latent upscaler (its own UNet, VAE, text encoder).
    "Variations": "",
    "Upscale": "stabilityai/sd-x2-latent-upscaler",
    # Not a tool: checks every image the others draw (the SD1.5 repo's safety_checker, with its CLIP image processor).
    SAFETY_CHECKER: "CompVis/stable-diffusion-safety-checker",
    # The built-in LLM (used when [llm] base_url is empty): small, Apache-2.0, calls tools, sees images.
    "LLM": "Qwen/Qwen3-VL-2B-Instruct",
}
# The modern profile's models (config.modern.toml), after the seed's. Its LLM is the same "LLM", sourced
# Qwen/Qwen3-4B there: that Qwen3 is also FLUX.2 [klein]'s text encoder, held once (gpu_pool/models/shared_qwen.py).
KLEIN = "black-forest-labs/FLUX.2-klein-4B"  # Apache-2.0 (klein 9B is non-commercial)
MODERN_DEFAULTS: dict[str, str] = {
    "Klein": KLEIN,  # FLUX.2 [klein]: generate, edit by instruction, compose with up to 4 reference images
    "KleinInpaint": KLEIN,  # the same weights, loaded once: remove and replace objects in a mask
    "Florence2": "florence-community/Florence-2-base",  # MIT: captions, OCR, phrase grounding
    "Sam2": "facebook/sam2.1-hiera-base-plus",  # Apache-2.0: masks from boxes or points
    "DepthAnything": "depth-anything/Depth-Anything-V2-Small-hf",  # Apache-2.0 (Base and Large are NC)
}
MODEL_DEFAULTS: dict[str, str] = {**SEED_DEFAULTS, **MODERN_DEFAULTS}
MODEL_NAMES = tuple(MODEL_DEFAULTS)


def default_source(name: str, sd_base: str) -> str:
    """Where model ``name`` loads from when its section names no source. Text2Image is the shared
    SD base itself, so a local or custom ``sd_base`` never loads a second base from the hub."""
    return sd_base if name == "Text2Image" else MODEL_DEFAULTS[name]


SEED_MODELS = tuple(n for n in SEED_DEFAULTS if n != "LLM")
# The models that draw a new image from words: what /imagine's model option and generate_image pick among
# (those loaded), the first loaded drawing when /imagine names none: the modern one before the seed's.
DRAWING_MODELS = ("Klein", "Text2Image")
# A drawing model's native square side and the multiple its sides must be (the seed's SD1.5: 8 px, drawn at
# [limits] working_size; FLUX.2 [klein]: about one megapixel, sides multiples of 16).
NATIVE_SIDE = {"Klein": 1024}
SIDE_MULTIPLE = {"Klein": 16, "KleinInpaint": 16}
DTYPES = ("auto", "float16", "bfloat16", "float32")


def resolve_device(device: str) -> str:
    """``auto`` is the first GPU when there is one, else the CPU; ``cuda`` is ``cuda:0``."""
    if device == "cuda":
        return "cuda:0"
    if device != "auto":
        return device
    import torch  # late: torch takes seconds to import and the bot side rarely needs it

    return "cuda:0" if torch.cuda.is_available() else "cpu"
