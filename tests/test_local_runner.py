"""The local runner's own figures, checked without training: the progress line's time left
(honest about stop_at_target), the last line's name, and the CPU thread count chosen for the
machine (shared.threads)."""
from __future__ import annotations

import pytest

from shared import launch, threads
from shared.summary import format_summary


def _line(capsys, **kw):
    p = launch._Progress("unet", 1000, 8, **kw)
    p.t0 = p.last[0] - 10.0  # 100 batches in 10 s: 10 batches/s
    p.last = (p.last[0] - 10.0, 0)
    p("training", 100, {"loss": 1.0, "lr": 1e-3})
    return capsys.readouterr().out


def test_eta_counts_to_max_batches_and_says_it_is_a_bound_with_stop_at_target(capsys):
    # 900 batches left at ~10 batches/s: about 90 s to max_batches
    plain = _line(capsys)
    assert "eta 0:01:2" in plain or "eta 0:01:3" in plain
    bound = _line(capsys, stop_at_target=True)
    assert "eta <= 0:01:" in bound and "(or at the target)" in bound


def test_the_last_line_uses_the_runs_name_and_names_the_model_beside_it():
    s = {"model": "resnet18", "batches": 20, "reached_target": False, "energy_wh": None,
         "energy_sources": None, "target_metric": "accuracy", "best_accuracy": 80.0,
         "final_accuracy": 75.0}
    assert format_summary(s, "image_classification").startswith(
        "[image_classification] done (resnet18): 20 batches")
    assert format_summary({**s, "model": "unet"}, "unet").startswith("[unet] done: 20 batches")


def test_threads_follow_omp_num_threads_when_set():
    assert threads.choose({"OMP_NUM_THREADS": "3"}) == threads.Choice(3, "OMP_NUM_THREADS")
    # not a positive integer: ignored, the machine decides
    assert threads.choose({"OMP_NUM_THREADS": "x"}, sample_s=0.01).reason != "OMP_NUM_THREADS"


@pytest.mark.parametrize("idle, cores, expected", [
    (1.0, 2, 2), (0.5, 2, 1), (0.0, 2, 1), (0.8, 8, 6), (0.2, 1, 1), (1.0, 16, 16)])
def test_threads_are_the_idle_cores_at_least_one(monkeypatch, idle, cores, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(threads, "idle_fraction", lambda s: (idle, "idle over 0.3 s"))
    choice = threads.choose({})
    assert choice.threads == expected
    assert f"of {cores} cores idle (idle over 0.3 s)" in choice.line()
    assert "set OMP_NUM_THREADS to choose" in choice.reason


def test_idle_fraction_is_measured_here():
    frac, how = threads.idle_fraction(0.05)
    assert frac is None or 0.0 <= frac <= 1.0
    assert 1 <= threads.usable_cores()
