"""Pool edges a bug could slip through: the residency reserve, with a reserve as large as a model."""

from __future__ import annotations

import threading

import pytest

from gpu_pool.residency import DoesNotFit, Residency
from tests.test_residency import linear, nbytes, on


def test_weights_never_take_the_reserve_even_when_it_is_a_whole_model():
    models = {name: [linear()] for name in ("A", "B", "C", "D")}  # each the same size
    size = nbytes(*models["A"])
    budget, reserve = 3 * size + 100, size  # room for three models, minus a reserve of one
    mgr = Residency("meta", budget=budget, reserve=reserve, home="cpu")
    for n, name in enumerate(["A", "B", "C", "D", "A", "C", "B", "D"]):
        with mgr.use(name, models[name]):
            on_device = [m for mods in models.values() for m in mods if on("meta", [m])]
            assert nbytes(*on_device) == mgr.resident_bytes <= budget - reserve
            assert len(on_device) == min(n + 1, 2)  # two fit beside the reserve; a third would take it
    assert mgr.peak_bytes <= budget - reserve and mgr.stats["moves_out"] == 6

    # a model that fits the budget but not beside the reserve is refused, saying so
    big = [linear(int(100 * 2.5 ** 0.5))]  # about 2.5 models: under the budget, over budget minus reserve
    assert budget - reserve < nbytes(*big) <= budget
    with pytest.raises(DoesNotFit, match="minus a .* reserve"):
        mgr.make_resident("Big", big)
    assert on("cpu", big) and mgr.resident_bytes <= budget - reserve


def test_a_job_waits_rather_than_use_the_reserve_while_others_run():
    a, b, c = linear(), linear(), linear()
    size = nbytes(a)
    mgr = Residency("meta", budget=3 * size + 100, reserve=size, home="cpu")
    running, finish = threading.Event(), threading.Event()

    def hold(name, mods):
        with mgr.use(name, mods):
            running.set()
            finish.wait(5)

    jobs = [threading.Thread(target=hold, args=(n, [m])) for n, m in (("A", a), ("B", b))]
    for job in jobs:
        running.clear()
        job.start()
        assert running.wait(5)
    with pytest.raises(TimeoutError, match="no room on meta"):  # the reserve's room is not for weights
        mgr.make_resident("C", [c], timeout=0.3)
    assert on("cpu", [c]) and mgr.resident_bytes == 2 * size
    finish.set()
    for job in jobs:
        job.join(5)
    with mgr.use("C", [c]):
        assert mgr.resident_bytes == 2 * size <= mgr.budget - mgr.reserve
