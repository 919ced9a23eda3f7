"""The search replay (benchmarks.search_replay): Determined 0.38's adaptive ASHA re-implemented
(brackets, rungs, asynchronous early stopping) checked on worked examples, and the command
line on a tiny set of curves."""
from __future__ import annotations

import json
import math

import pytest

from mdtables import squeeze
from benchmarks import search_replay as sr
from benchmarks.curve_data import Curve, Recording, Validation
from shared import recipes


def test_brackets_of_the_energy_search_config():
    # experiment_configs/*/asha_energy.yaml: 32 trials, 8 at a time, 3 rungs, divisor 4,
    # standard mode; docs/configs.md: brackets of 24 and 8 trials, 4 at a time each, rungs at
    # 1000/4000/16000 and 4000/16000 batches
    settings = sr.SearcherSettings.from_config(
        recipes.REPO_ROOT / "experiment_configs" / "unet" / "asha_energy.yaml")
    assert settings == sr.SearcherSettings(16000, 32, 8, 3, 4.0, "standard")
    plan = sr.brackets(settings)
    assert plan == [sr.Bracket(3, 24, 4), sr.Bracket(2, 8, 4)]
    assert sr.rung_lengths(3, 4, 16000) == [1000, 4000, 16000]
    assert sr.rung_lengths(2, 4, 16000) == [4000, 16000]
    # the top rung must be reachable: 5 trials with divisor 4 allow 2 rungs at most
    assert [b.num_rungs for b in sr.brackets(sr.SearcherSettings(16000, 5, 0, 3, 4, "standard"))] == [2, 1]
    assert [b.num_rungs for b in sr.brackets(sr.SearcherSettings(160, 64, 0, 4, 4, "conservative"))] == [4, 3, 2, 1]
    # no max_concurrent_trials: each bracket runs max(last bracket's trials, divisor) at once
    assert [b.max_concurrent_trials for b in sr.brackets(sr.SearcherSettings(16000, 32, 0, 3, 4, "standard"))] == [8, 8]


def test_asha_stopping_worked_example():
    # rungs at 4, 16 and 64 batches; metrics: smaller is better
    asha = sr.AshaStopping(3, 4, 64)
    assert asha.units == [4, 16, 64]
    assert asha.report("A", 2, 9.0) is False        # before the first rung: no decision
    assert asha.report("A", 4, 5.0) is False        # first in rung 0: continues
    assert asha.report("B", 4, 3.0) is False        # [3, 5]: best of 2, keep 1: continues
    assert asha.report("C", 4, 4.0) is True         # [3, 4, 5]: 2nd, keep 1: stopped
    assert asha.report("D", 4, 1.0) is False        # [1, 3, 4, 5]: best
    assert asha.report("E", 4, 2.0) is True         # [1, 2, 3, 4, 5]: keep int(5/4) = 1
    # asynchronous: A got through rung 0 when it was the only one, and is judged at rung 1
    assert asha.report("A", 16, 4.0) is False       # rung 1 [4]: continues
    assert asha.report("B", 16, 2.0) is False       # rung 1 [2, 4]: continues
    assert asha.report("D", 16, 6.0) is True        # rung 1 [2, 4, 6]: stopped
    assert asha.report("A", 64, 3.0) is True        # the top rung: done
    # a tie ranks the newcomer first (inserted before the first metric >= it)
    assert asha.report("F", 4, 1.0) is False        # [1, 1, 2, 3, 4, 5]: index 0
    assert asha.report("G", 4, 7.0) is True         # 7 metrics keep 1
    # 8 metrics keep the best 2: 1.5 comes third
    assert asha.report("H", 4, 1.5) is True
    assert asha.rungs[0] == [1.0, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0]
    # one validation past two rungs is judged at both
    asha2 = sr.AshaStopping(3, 4, 64)
    assert asha2.report("X", 16, 1.0) is False
    assert asha2.rungs[0] == [1.0] and asha2.rungs[1] == [1.0]
    # an errored trial leaves the worst value in the rung it was heading for
    asha2.exited_early("X")
    assert asha2.rungs[2] == [sr.WORST]


def test_eight_metrics_keep_two():
    asha = sr.AshaStopping(2, 4, 16)
    for k, m in enumerate([8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]):
        asha.report(k, 4, m)
    # the 8th: [2, 2.5, 3, ...] index 1 < int(8/4) = 2 continues; index 2 would not
    assert asha.report("new", 4, 2.5) is False
    assert asha.report("newer", 4, 3.5) is True      # 9 metrics, keep 2, index 3


def _curve(name, values, energy_per_validation=1.0, batches_per_validation=4, ended="max_batches",
           target=70.0, cpu=True):
    vals = []
    for i, v in enumerate(values, 1):
        vals.append(Validation(batches=batches_per_validation * i, elapsed_s=float(i),
                               energy_wh=energy_per_validation * i, metrics={"miou": v},
                               cpu_s=float(i) if cpu else None))
    return Curve(name=name, search="toy", model="toy", target_metric="miou", target=target,
                 smaller_is_better=False, validations=vals, energy_source="nominal_power_x_cpu_time",
                 max_batches=batches_per_validation * len(values), ended=ended)


def test_replay_once_worked_example():
    # one bracket of 2 rungs (4 and 16 batches), one trial at a time, 4 trials; a trial's
    # validation i (from 1) comes i seconds after its start
    settings = sr.SearcherSettings(16, 4, 1, 2, 4, "aggressive")
    assert sr.brackets(settings) == [sr.Bracket(2, 4, 1)]
    curves = [_curve("A", [50, 60, 70, 80]), _curve("B", [40, 45, 48, 50]),
              _curve("C", [55, 75, 85, 90]), _curve("D", [52, 80, 90, 95])]
    metrics = [sr.searcher_metric("metric", c, "miou", 70.0, False) for c in curves]
    runs = sr.replay_once(curves, [0, 1, 2, 3], settings, metrics)
    # A: alone at rung 0, trains to 16 batches (the top rung, t = 4) and stops; B starts and is
    # stopped at rung 0 (40 < 50, t = 5); C starts, is the best of 3 at rung 0, trains to the
    # top (t = 9); D starts and is stopped at rung 0 (52: second of 4, keep 1) although it
    # would have been the best at the top: the price of judging early
    assert [(r.index, r.start_s, r.stopped_at) for r in runs] == [
        (0, 0.0, 3), (1, 4.0, 0), (2, 5.0, 3), (3, 9.0, 0)]
    assert [r.best for r in runs] == [-80.0, -40.0, -90.0, -52.0]
    # in another order D gets through: the first trial at a rung always does
    runs = sr.replay_once(curves, [3, 1, 2, 0], settings, metrics)
    assert [(r.index, r.stopped_at) for r in runs] == [(3, 3), (1, 0), (2, 3), (0, 0)]
    # a trial whose curve ends before max_time (it stopped at its target) is not replaced
    short = [_curve("A", [50, 60]), *curves[1:]]
    runs = sr.replay_once(short, [0, 1, 2, 3], settings,
                          [sr.searcher_metric("metric", c, "miou", 70.0, False) for c in short])
    assert [r.index for r in runs] == [0]
    # one that failed is: the worst value goes into its rung, and the next trial starts
    failed = [_curve("A", [50, 60], ended="error"), *curves[1:]]
    runs = sr.replay_once(failed, [0, 1, 2, 3], settings,
                          [sr.searcher_metric("metric", c, "miou", 70.0, False) for c in failed])
    # (A fails after t = 2; B is stopped at t = 3; C passes rung 0 and ends at t = 7)
    assert [(r.index, r.start_s) for r in runs] == [(0, 0.0), (1, 2.0), (2, 3.0), (3, 7.0)]


def test_searcher_metrics_follow_the_energy_hook():
    c = _curve("A", [10, 20, 30, 40, 50, 72, 80], energy_per_validation=2.0)
    lin = sr.searcher_metric("linear", c, "miou", 70.0, False)
    # energy x target / value before the target, then the measured energy to target (12 Wh)
    assert lin[0] == pytest.approx(2.0 * 70 / 10)
    assert lin[5:] == [12.0, 12.0]
    cur = sr.searcher_metric("curve", c, "miou", 70.0, False)
    assert cur[:3] == lin[:3]                 # too few points: the linear rule
    assert cur[5:] == [12.0, 12.0]
    assert sr.searcher_metric("metric", c, "miou", 70.0, False)[0] == -10.0


def _write_set(out, n=16):
    """A toy search: trials that reach 70 at different energies, and some that never do."""
    rec = Recording(out, "test")
    for k in range(n):
        top = 60.0 + 4.0 * k                 # asymptotes 60..104: the first three never reach
        rate = 1.0 + 0.4 * k
        vals = [min(99.0, top * (1 - math.exp(-(i + 1) / rate))) for i in range(16)]
        rec.add(_curve(f"t{k:02d}", vals, energy_per_validation=0.5 + 0.1 * (k % 4),
                       batches_per_validation=10))
    return out


def test_replay_cli_prints_the_three_strategies(tmp_path, capsys):
    curves = _write_set(tmp_path / "curves")
    out_json, png = tmp_path / "r.json", tmp_path / "r.png"
    assert sr.main(["--curves", str(curves), "--replays", "6", "--json", str(out_json),
                    "--chart", str(png)]) == 0
    text = squeeze(capsys.readouterr().out)
    assert "search toy: 16 trials, target miou >= 70" in text
    for row in ("| plain `miou` |", "| linear projection |", "| curve projection |"):
        assert row in text
    assert "rungs at 10/40/160 batches" in text
    data = json.loads(out_json.read_text())
    res = data["results"][0]
    assert res["never_reach"] == 3 and res["trials"] == 16
    assert set(res["strategies"]) == {"metric", "linear", "curve"}
    assert len(res["per_replay"]["curve"]["best"]) == 6
    assert set(res["by_pick"]) == {"best", "last", "measured"}
    assert png.stat().st_size > 1000
    # the same seed gives the same replay
    assert sr.main(["--curves", str(curves), "--replays", "6", "--json", str(tmp_path / "s.json")]) == 0
    again = json.loads((tmp_path / "s.json").read_text())["results"][0]
    assert again["per_replay"] == res["per_replay"]


def test_replay_cli_errors_name_the_problem(tmp_path, capsys):
    assert sr.main(["--curves", str(tmp_path)]) == 2
    assert f"{tmp_path}/manifest.json: no manifest" in capsys.readouterr().err
    curves = _write_set(tmp_path / "c", n=9)
    assert sr.main(["--curves", str(curves), "--searches", "nope"]) == 2
    assert "no search nope (recorded: toy)" in capsys.readouterr().err
    assert sr.main(["--curves", str(curves), "--metric", "validation_loss"]) == 2
    assert "give its --target" in capsys.readouterr().err
    bad = tmp_path / "c" / "toy" / "t00.json"
    data = json.loads(bad.read_text())
    data["validations"][2]["energy_wh"] = 0.1       # energy going back
    bad.write_text(json.dumps(data))
    assert sr.main(["--curves", str(curves)]) == 2
    assert "t00.json: validation 2: energy_wh 0.1 must be finite, > 0 and not below" in capsys.readouterr().err
