"""Every bench runs: ``bench/NAME.py --smoke`` in a subprocess, as a user would start it, and prints its figures.

A bench is a ``bench/*.py`` with an ``if __name__ == "__main__":`` block; the others are the benches'
helpers (harness.py). A bench declares ``FIGURES``, the ``name=value`` lines its ``--smoke`` run prints;
a bench without FIGURES, or whose ``--smoke`` fails or leaves a figure out, fails here. Where a bench
has a goal (a budget, a rate), its smoke figures are held to it too.
"""

from __future__ import annotations

import ast
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.pool import ROOT, child_env

BENCH = ROOT / "bench"
FIGURE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)=(\S+)$", re.M)


def is_bench(path: Path) -> bool:
    """Whether the file runs as a script (a module-level ``if __name__ == "__main__":``)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and \
                isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__":
            return True
    return False


def declared_figures(path: Path) -> tuple[str, ...]:
    """The bench's ``FIGURES``: a tuple of names, written as a literal."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FIGURES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{path.name} declares no FIGURES (the name=value lines its --smoke run prints)")


BENCHES = sorted(p.stem for p in BENCH.glob("*.py") if is_bench(p))

# what each smoke run's figures must show beyond being numbers
GOALS = {
    "residency": lambda f: f["peak_resident_mib"] <= f["budget_mib"] - 1024 and 0.5 < f["warm_first_hit_rate"] <= 1,
    "scale_out": lambda f: 0 < f["warm_hit_rate"] <= 1 and f["loads_after_warmup"] >= 0,
    "pool_overhead": lambda f: 0 < f["pool_overhead_p50_ms"] < 1000,
    # issue 21: the modern profile's weights, 15.5 / 8.5 / 5.2 GiB in bf16 / fp8 / NF4; one Qwen3 saves 7.49 / 4.11 GiB
    # (NF4: 2.47, not the issue's 2.52, which counted 16 bits of absmax per 64 weights; bitsandbytes' double
    # quantization holds 8 bits and a float32 per 256); with NF4 the profile stays resident in 8 GiB
    "memory": lambda f: 0 < f["shared_over_seed_ratio"] < 1 and f["safety_checker_fp16_mib"] > 0
    and f["buttons_fp16_mib"] > 0 and f["download_fp16_mib"] > f["seed_tool_set_fp16_mib"]
    and f["modern_bf16_mib"] <= 15.5 * 1024 and f["modern_fp8_mib"] <= 8.5 * 1024
    and f["modern_fp8_cast_mib"] <= 8.5 * 1024 and f["modern_nf4_mib"] <= 5.2 * 1024
    and f["shared_qwen_saving_mib"] >= 7.49 * 1024 and f["shared_qwen_saving_fp8_mib"] >= 4.11 * 1024
    and f["shared_qwen_saving_nf4_mib"] >= 2.45 * 1024
    and f["modern_hit_rate"] >= 0.95 and f["modern_unshared_hit_rate"] < f["modern_hit_rate"],
    "prompt_tokens": lambda f: 0 < f["json_1_images_tokens"] < f["native_1_images_tokens"]
    and f["native_1_images_tokens"] <= f["native_1_images_estimate"],
    "gpu_check": lambda f: f["failed"] == 0,
    "objects_gpu": lambda f: all(v > 0 for v in f.values()),
    "status_edits": lambda f: all(v >= 0 for v in f.values())  # a quick drawing may need no edit
    # issue 24: within the limits (enforced in the smoke run) with a Cancel button on every status message
    and f["slack_answered_429"] == f["discord_answered_429"] == 0
    and all(0 < f[f"{p}_status_posts"] == f[f"{p}_status_posts_with_cancel"] for p in ("slack", "discord"))
    and f["slack_statuses_with_eta"] > 0 and f["discord_statuses_with_eta"] > 0,
    "discord_e2e": lambda f: f["errors"] == 0 and 0 < f["first_sign_p95_ms"] < 5000,
    "shutdown": lambda f: f["sigterm_exit_code"] == 0 and f["sigterm_stop_s"] < 15
    and f["pool_gone_after_sigkill_s"] < 30,
    # the scripted server draws twice (valid calls) and answers in words: 6 of the 15 requests fit
    "real_llm": lambda f: f["calls_made"] == 2 and f["valid_tool_call_rate"] == 1 and f["right_tool_rate"] == 0.4,
    # [api]: a paired difference of two timings, so it may dip below 0 on a busy machine (goal: <= 10 ms each)
    "api_overhead": lambda f: all(-1000 < v < 1000 for v in f.values()),
    # a minute is too short to judge RSS growth (the goal, <= 50 MiB/hour, is for a run of 30 minutes or more)
    # issue 22: sanity only on the tiny shapes (the goals, sd15_speedup >= 1.9 and batch_speedup >= 2.0, are the
    # GPU run's); a batched job draws what it draws alone (same seed, byte-identical on the CPU: 1 for rounding)
    # and hears its own progress
    "gpu_speed": lambda f: all(v > 0 for n, v in f.items() if n != "batch_max_pixel_diff")
    and f["batch_max_pixel_diff"] <= 1 and f["batch_min_progress_events"] >= 1,
    "soak": lambda f: f["soak_turns"] >= 14 and f["soak_errors"] == 0 and f["sqlite_bytes_per_turn"] > 0
    and f["data_dir_growth_mib_per_hour"] > 0 and 0 < f["p95_turn_s"] < 120,
}
# benches that start a pool, a bot or Ray: tens of seconds each
SLOW = {"discord_e2e", "real_llm", "scale_out", "shutdown", "status_edits", "soak", "api_overhead", "gpu_speed"}
RAY = {"scale_out"}


def figures(stdout: str) -> dict[str, float]:
    """The ``name=value`` lines with a number for a value (the last one of each name)."""
    out = {}
    for name, value in FIGURE.findall(stdout):
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def run_smoke(name: str, timeout: float) -> subprocess.CompletedProcess:
    """``python bench/NAME.py --smoke`` in a process group of its own, killed whole if it overruns."""
    proc = subprocess.Popen([sys.executable, str(BENCH / f"{name}.py"), "--smoke"], cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bench/{name}.py --smoke ran over {timeout:.0f} s:\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def marked(name: str):
    marks = ([pytest.mark.slow] if name in SLOW else []) + ([pytest.mark.ray] if name in RAY else [])
    return pytest.param(name, marks=marks, id=name)


def test_every_bench_is_found_and_declares_its_figures():
    assert "harness" not in BENCHES and {"residency", "scale_out", "real_llm"} <= set(BENCHES)
    for name in BENCHES:
        assert declared_figures(BENCH / f"{name}.py"), name
        assert name in GOALS, f"bench/{name}.py: say in GOALS what its smoke figures must show"


@pytest.mark.parametrize("name", [marked(n) for n in BENCHES])
def test_the_bench_runs_in_smoke_mode_and_prints_its_figures(name, tiny_dir):
    if name in RAY:
        pytest.importorskip("ray", reason="ray[serve] is not installed: ./scripts/run --ray, or the ray extra")
    done = run_smoke(name, timeout=600 if name in RAY or name == "soak" else 300)  # soak: two bot starts
    assert done.returncode == 0, f"bench/{name}.py --smoke exited {done.returncode}:\n{done.stderr[-4000:]}"
    got = figures(done.stdout)
    missing = [f for f in declared_figures(BENCH / f"{name}.py") if f not in got]
    assert not missing, f"bench/{name}.py --smoke printed no number for {missing}:\n{done.stdout[-3000:]}"
    assert all(math.isfinite(v) for v in got.values()), got
    shown = {f: got[f] for f in declared_figures(BENCH / f"{name}.py")}
    assert GOALS[name](shown), f"bench/{name}.py --smoke: figures off their goal: {shown}"
