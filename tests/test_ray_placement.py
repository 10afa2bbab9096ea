"""Which replica a job goes to on Ray (gpu_pool/ray/placement.py): the rule alone, no cluster."""

from __future__ import annotations

from gpu_pool.ray.placement import Load, pick


def load(replica: str, *models: str, jobs: int = 0) -> Load:
    return Load(replica, frozenset(models), jobs)


def test_a_job_goes_to_a_replica_holding_its_model_even_when_another_is_idle():
    replicas = [load("a", "Text2Image", jobs=1), load("b", "ImageCaptioning")]
    assert pick("Text2Image", replicas, spread_after=2) == "a"
    assert pick("ImageCaptioning", replicas, spread_after=2) == "b"


def test_the_least_busy_holder_takes_the_job():
    replicas = [load("a", "Text2Image", jobs=3), load("b", "Text2Image", jobs=1), load("c")]
    assert pick("Text2Image", replicas, spread_after=5) == "b"


def test_models_nobody_holds_spread_over_the_replicas_as_they_are_placed():
    replicas = [load("a"), load("b")]
    placed = {}
    for model in ("Text2Image", "ImageCaptioning", "Image2Canny", "InstructPix2Pix"):
        # placed side by side: each load is in flight until its model is ready
        chosen = pick(model, replicas, spread_after=2)
        placed[model] = chosen
        replicas = [Load(r.replica, r.models | {model}, r.jobs + 1) if r.replica == chosen else r for r in replicas]
    assert placed == {"Text2Image": "a", "ImageCaptioning": "b", "Image2Canny": "a", "InstructPix2Pix": "b"}


def test_a_new_model_goes_to_the_replica_with_fewer_models_when_both_are_idle():
    assert pick("Image2Canny", [load("a", "Text2Image", "ImageCaptioning"), load("b", "Inpainting")], 2) == "b"


def test_a_hot_model_gets_a_copy_on_a_less_busy_replica():
    replicas = [load("a", "Text2Image", jobs=2), load("b", "ImageCaptioning", jobs=0)]
    assert pick("Text2Image", replicas, spread_after=2) == "b"  # b loads Text2Image too


def test_no_copy_below_the_threshold_or_when_the_others_are_as_busy():
    assert pick("Text2Image", [load("a", "Text2Image", jobs=1), load("b")], spread_after=2) == "a"
    assert pick("Text2Image", [load("a", "Text2Image", jobs=3), load("b", jobs=3)], spread_after=2) == "a"


def test_spread_after_zero_never_copies():
    assert pick("Text2Image", [load("a", "Text2Image", jobs=9), load("b")], spread_after=0) == "a"


def test_once_copied_the_jobs_of_a_hot_model_share_its_replicas():
    replicas = [load("a", "Text2Image", jobs=2), load("b", "Text2Image", "ImageCaptioning", jobs=1), load("c", jobs=0)]
    assert pick("Text2Image", replicas, spread_after=2) == "b"  # b is below the threshold: no third copy yet
