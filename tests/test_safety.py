"""The safety checker in the pool and the policy in the core: the tiny checkers through the pool's
loader, the verdicts on done events, who filters where, and the config that says so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance
from PIL import Image

import settings
from core.errors import Withheld
from core.safety import UNCHECKED, WITHHELD, Policy, judge, policy_for
from core.turn import Turn
from gpu_pool.models import loader
from gpu_pool.models.base import LoadSpec, Output, PoolModel
from gpu_pool.protocol import Event, JobRequest, RawImage, Verdict, decode_frame, event_from_frame, event_to_frame
from gpu_pool.registry import Entry, Registry
from gpu_pool.scheduler import Scheduler
from tests.test_scheduler import finish


def images() -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), c) for c in ((200, 30, 30), (20, 160, 40), (240, 240, 240), (5, 5, 60))]


def checker(tiny_dir: Path, folder: str, device: str = "cpu"):
    """A tiny checker loaded the way the pool loads the hub's: the SafetyChecker loader on a folder."""
    return loader("SafetyChecker")(LoadSpec("SafetyChecker", str(tiny_dir / folder), device, torch.float32, ""), None)


# --- the model ---------------------------------------------------------------------------------


def test_the_tiny_checkers_flag_everything_or_nothing_by_the_thresholds_in_their_weights(tiny_dir):
    flags_all, flags_none = checker(tiny_dir, "safety-flags-all"), checker(tiny_dir, "safety-flags-none")
    assert torch.all(flags_all.model.concept_embeds_weights == -2)  # saved, and loaded back
    assert [v.flagged for v in flags_all.check(images())] == [True] * 4
    assert [v.flagged for v in flags_none.check(images())] == [False] * 4
    assert all(v.score > 0 for v in flags_all.check(images())) and all(v.score < 0 for v in flags_none.check(images()))
    assert flags_all.run({}, images()[:1], lambda step, total: None).text.startswith("flagged (score +")


def test_the_verdicts_are_those_of_diffusers_forward(tiny_dir):
    """Thresholds set between the images' cosines: one image is flagged only because a special-care
    concept adds its 0.01; ours flag exactly the images diffusers' own forward flags."""
    sc = checker(tiny_dir, "safety-flags-none")
    pixels = sc.processor(images=images(), return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = sc.model.visual_projection(sc.model.vision_model(pixels)[1])
        cos = cosine_distance(embeds, sc.model.concept_embeds)
        special = cosine_distance(embeds, sc.model.special_care_embeds)
    tipped = int(cos[:, 1].argmax())  # missed by 0.005 on concept 1, matched on special-care 0
    concept = cos.max(dim=0).values + 0.05  # no other concept matches
    concept[0] = cos[tipped, 0] + 0.01  # concept 0 matches the images well above it, if any
    concept[1] = cos[tipped, 1] + 0.005
    specials = special.max(dim=0).values + 0.05
    specials[0] = special[tipped, 0] - 0.02

    def both(special_thresholds: torch.Tensor) -> tuple[list[bool], list[bool]]:
        with torch.no_grad():
            sc.model.concept_embeds_weights.copy_(concept)
            sc.model.special_care_embeds_weights.copy_(special_thresholds)
        _, theirs = sc.model(clip_input=pixels, images=[np.zeros(1) for _ in images()])
        return [v.flagged for v in sc.check(images())], theirs

    ours, theirs = both(specials)
    assert ours == theirs and ours[tipped] is True and False in ours
    ours, theirs = both(torch.full((3,), 2.0))  # no special-care match: no 0.01
    assert ours == theirs and ours[tipped] is False


# --- the pool: verdicts on done events ----------------------------------------------------------


async def test_every_drawing_model_s_images_carry_a_verdict_and_maps_none(pool):
    """The shared pool's checker flags nothing; what matters here is who gets checked."""
    client = pool.client()
    img = RawImage.from_pil(Image.new("RGB", (64, 40), (90, 120, 200)))
    mask = RawImage.from_pil(Image.new("L", (64, 40), 255))
    jobs = {"Text2Image": ({"prompt": "a cat", "steps": 2, "width": 64, "height": 64}, []),
            "InstructPix2Pix": ({"prompt": "snow", "steps": 2}, [img]),
            "Inpainting": ({"prompt": "a dog", "steps": 2}, [img, mask]),
            "CannyText2Image": ({"prompt": "a house", "steps": 2}, [img]),
            "Variations": ({"steps": 2}, [img]), "Upscale": ({"steps": 2}, [img]),  # the buttons' models draw too
            "Image2Canny": ({}, [img]), "Text2Mask": ({"prompt": "the sky"}, [img])}
    try:
        done = {m: await client.result(JobRequest(m, p, ims)) for m, (p, ims) in jobs.items()}
    finally:
        await client.close()
    for model in ("Text2Image", "InstructPix2Pix", "Inpainting", "CannyText2Image", "Variations", "Upscale"):
        [verdict] = done[model].safety
        assert verdict.flagged is False and verdict.score < 0 and verdict.note is None, model
    assert done["Image2Canny"].safety is None and done["Text2Mask"].safety is None


class Drawer(PoolModel):
    """Stands in for a drawing model in an in-process scheduler: one grey image per job."""

    draws = True

    def run(self, params, images, progress):
        return Output(images=[Image.new("RGB", (64, 64), (128, 128, 128))])


def ready(reg: Registry, name: str, model: PoolModel, device: str = "cpu") -> None:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(model)
    reg.entries[name] = Entry(name, device, "float32", "", state="ready", model=model, ready=fut)


async def test_without_a_checker_drawn_images_leave_unchecked_and_say_why(tiny_dir):
    reg = Registry(settings.parse({}, Path("config.toml"), env_check=False))
    ready(reg, "Text2Image", Drawer(LoadSpec("Text2Image", "", "cpu", torch.float32, "")))
    sched = Scheduler(reg)
    try:
        [*_, done] = await finish(sched.submit(JobRequest("Text2Image", {})))
        assert done.kind == "done" and len(done.images) == 1
        assert done.safety == [Verdict(None, note="SafetyChecker is not loaded on this bot.")]
        withheld = judge(Policy(True), "discord:channel:1", "Text2Image", done.safety)
        assert str(withheld) == UNCHECKED and "not checked: SafetyChecker is not loaded" in withheld.why
        assert judge(Policy(False), "discord:channel:1", "Text2Image", done.safety) is None
    finally:
        sched.close()


async def test_the_checker_shares_the_residency_budget(tiny_dir):
    data = {"residency": {"budget": "64MiB", "reserve": "0", "devices": ["cpu"]}}
    reg = Registry(settings.parse(data, Path("config.toml"), env_check=False))
    ready(reg, "Text2Image", Drawer(LoadSpec("Text2Image", "", "cpu", torch.float32, "")))
    sc = checker(tiny_dir, "safety-flags-all")
    reg.manager("cpu").adopt(sc.modules().values())  # what the registry does when it loads a model
    ready(reg, "SafetyChecker", sc)
    sched = Scheduler(reg)
    try:
        assert not reg.is_resident("SafetyChecker")
        [*_, done] = await finish(sched.submit(JobRequest("Text2Image", {})))
        [verdict] = done.safety
        assert verdict.flagged is True and verdict.score > 0
        mgr = reg.manager("cpu")
        assert reg.is_resident("SafetyChecker")  # moved onto the device for the check, under the budget
        assert mgr.resident_bytes == mgr.bytes_of(sc.modules().values()) > 0
    finally:
        sched.close()


def test_verdicts_survive_the_wire():
    ev = Event("done", "j1", text=None, safety=[Verdict(True, 0.031), Verdict(None, note="no checker")])
    back = event_from_frame(*decode_frame(event_to_frame(ev)))
    assert back.safety == ev.safety
    assert event_from_frame(*decode_frame(event_to_frame(Event("done", "j2")))).safety is None


# --- the policy ------------------------------------------------------------------------------------


def place(platform: str, session: str, channel: str, nsfw: bool = False, dm: bool = False,
          thread: str | None = None) -> Turn:
    return Turn(platform, session, "u1", "u1", "draw", nsfw_channel=nsfw, channel=channel, is_dm=dm, thread=thread)


@pytest.mark.parametrize("turn, exempt", [
    (place("discord", "discord:channel:3000", "3000"), False),
    (place("discord", "discord:channel:3001", "3001", nsfw=True), True),
    (place("discord", "discord:dm:42", "4200", dm=True), True),
    (place("slack", "slack:C1", "C1"), False),
    (place("slack", "slack:C7", "C7"), True),
    (place("slack", "slack:C7:1700000000.000100", "C7", thread="1700000000.000100"), True),  # a thread of it
    (place("slack", "slack:dm:U1", "D1", dm=True), True),
    (place("terminal", "terminal:local", "local", dm=True), True),
])
def test_who_filters(turn, exempt):
    """On by default everywhere; each exemption opens only its own place; off, nowhere."""
    assert policy_for(settings.SafetyConfig(), turn).filter is True
    opened = settings.SafetyConfig(allow_in_nsfw_channels=True, allow_in_slack_channels=("C7",), allow_in_dms=True)
    assert policy_for(opened, turn).filter is not exempt
    assert policy_for(settings.SafetyConfig(enabled=False), turn).filter is False


def test_judging_verdicts():
    assert judge(Policy(True), "s", "Text2Image", None) is None  # a map or a mask: nothing to judge
    assert judge(Policy(True), "s", "Text2Image", [Verdict(False, -0.2)]) is None
    flagged = judge(Policy(True), "s", "Inpainting", [Verdict(False, -0.2), Verdict(True, 0.0312)])
    assert isinstance(flagged, Withheld) and str(flagged) == WITHHELD and flagged.why == "Inpainting, score +0.031"
    assert judge(Policy(False, "exempt"), "s", "Inpainting", [Verdict(True, 0.03)]) is None


# --- the config ------------------------------------------------------------------------------------


def test_safety_config_is_on_by_default_and_validated(tmp_path):
    assert settings.parse({}, tmp_path / "c.toml").safety == settings.SafetyConfig()
    cfg = settings.parse({"safety": {"allow_in_slack_channels": ["C0123ABCD", "G77"], "allow_in_dms": True}},
                         tmp_path / "c.toml")
    assert cfg.safety.allow_in_slack_channels == ("C0123ABCD", "G77") and cfg.safety.allow_in_dms
    bad = {"allow_in_slack_channels": ["#general"], "enabled": "yes", "allow_in_nsfw": True}
    messages = {
        "allow_in_slack_channels": "safety.allow_in_slack_channels: ['#general'] is not valid; must be a list of "
                                   'Slack channel ids like ["C0123ABCD"] (the id, not the #name)',
        "enabled": "safety.enabled: must be true or false, got 'yes'",
        "allow_in_nsfw": "safety.allow_in_nsfw: unknown key; known keys in [safety]: enabled, "
                         "allow_in_nsfw_channels, allow_in_slack_channels, allow_in_dms",
    }
    for key, value in bad.items():
        with pytest.raises(settings.ConfigError) as exc:
            settings.parse({"safety": {key: value}}, tmp_path / "c.toml")
        assert str(exc.value) == messages[key]


def test_the_checker_is_a_model_like_any_other(tmp_path):
    cfg = settings.parse({"models": {"SafetyChecker": {"device": "cpu"}}}, tmp_path / "c.toml")
    assert cfg.models["SafetyChecker"] == settings.ModelConfig(
        "SafetyChecker", "cpu", "auto", "CompVis/stable-diffusion-safety-checker")
