"""The energy-aware search, replayed over recorded learning curves (``benchmarks.curves``).

(One job, in one file: the replay. Its length is Determined's ASHA searcher re-implemented,
the replays that run it over the curves with each strategy, and their summary and chart.)

    python -m benchmarks.search_replay --curves benchmarks/results/curves [--searches NAME ...]
        [--metric NAME [--target VALUE]] [--projection linear curve] [--replays 200] [--seed 0]
        [--config experiment_configs/unet/asha_energy.yaml] [--json OUT] [--chart PNG]

Re-runs Determined 0.38's ``adaptive_asha`` searcher with the settings of an ``asha_energy.yaml``
(``max_trials``, ``max_concurrent_trials``, ``max_rungs``, ``divisor``, ``mode``) over the trials
of each recorded search, many times with different samples and orders of trials, once per
strategy, and reports what each strategy's search would have chosen and spent:

- ``metric``: ASHA on the target metric itself (``miou``, or ``validation_loss``...), the
  plain ``asha.yaml`` search;
- ``linear``: ASHA on ``projected_energy_to_target_wh`` with the linear rule (``energy.projection:
  linear``, ``shared.energy.projection.projected_energy_to_target``);
- ``curve``: the same with the learning-curve projection (``energy.projection: curve``,
  ``shared.energy.curve_fit``).

Each searcher metric is computed at every validation from what the trial had measured by then,
by the function the trial's energy hook uses (``shared.energy.projection.searcher_metric``).

**ASHA, as Determined 0.38 runs it** (re-implemented here, since the searcher runs inside
Determined's master and no Python package exposes it; from its documentation, "Adaptive
(Asynchronous) Method", and the ASHA paper, Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020): ``mode: standard`` with ``max_rungs`` R makes brackets of
``(R-1)//2 + 1`` .. R rungs (R limited so that the top rung is reachable:
``log_divisor(max_time) + 1`` and ``log_divisor(max_trials) + 1``); the trials are split among
brackets so that each gets about the same training budget (weight ``divisor^(rungs-1) / rungs``,
the rest to the most aggressive bracket), and ``max_concurrent_trials`` is split evenly among
them. In a bracket of r rungs, rung k is at ``max_time / divisor^(r-1-k)`` batches. The
searcher does not promote: every trial trains on, and at the first validation at or past a
rung's length its metric is ranked among every metric that rung has seen so far; it continues
only if it is among the best ``max(1, floor(n / divisor))`` of those n, else it is stopped (the
asynchronous early-stopping form, ``asha_stopping.go``). At the top rung a trial is stopped
(it is done). Every stop starts a new trial in that bracket until the bracket has created its
share of trials; a trial that ends by itself before the top rung is not replaced, one that
fails (a recorded curve that ``ended`` in an error: a diverged loss) gets the worst value in
the rung it was heading for and is replaced (its restarts, ``max_restarts``, are not replayed). The picked
trial is the one with the best searcher metric at any of its validations (Determined's best
validation).

**The replay.** A search's ``max_time`` is its curves' length (``max_batches``: the configs'
16000 batches scaled to the recorded runs, keeping the rungs at 1/16, 1/4 and 1 of it). Each
replay draws ``min(max_trials, trials in the set)`` trials without replacement in a random
order (seeded: replay i uses seed + i) and hands each bracket its share in that order; every
strategy replays the same draw, so their differences are paired. Trials run side by side on
their own devices; a trial's clock is its CPU seconds where the curve has them (the clock its
energy was computed from), else its elapsed seconds, and a new trial starts when the one it
replaces stops.

For each strategy, over the replays: the energy to target of the picked trial (measured on its
whole recorded curve, as if it were trained again to the target), its regret (that energy over
the cheapest trial's of the whole set, minus 1, in %; infinite when it never reaches the
target), the search's energy (every trial's energy until it was stopped), and how often the
pick never reaches the target; medians with the 25th-75th percentile spread.
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import pathlib
import random
import shlex
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from benchmarks.curve_data import DEFAULT_DIR, Curve, CurveError, group_by_search, load_curves
from shared import recipes
from shared.energy.projection import PROJECTIONS
from shared.energy.projection import searcher_metric as energy_searcher_metric
from shared.hparams import smaller_is_better as default_smaller_is_better
from shared.hparams import target_reached
from shared.mdtable import markdown_table

ROOT = recipes.REPO_ROOT
DEFAULT_CONFIG = ROOT / "experiment_configs" / "unet" / "asha_energy.yaml"
STRATEGIES = ("metric", "linear", "curve")
#: the searcher metric of a validation whose figure is missing (Determined would fail the
#: trial; the replay ranks it after everything else instead)
WORST = float("inf")


# ============================================================================ ASHA (Determined 0.38)
@dataclasses.dataclass(frozen=True)
class SearcherSettings:
    """The ``searcher`` section's fields the replay uses."""

    max_time: int
    max_trials: int
    max_concurrent_trials: int = 0
    max_rungs: int = 5
    divisor: float = 4.0
    mode: str = "standard"

    @classmethod
    def from_config(cls, path: pathlib.Path | str) -> "SearcherSettings":
        from shared.expconf import load_yaml
        conf = load_yaml(path)
        s = conf.get("searcher") or {}
        if s.get("name") != "adaptive_asha":
            raise CurveError(f"{path}: searcher.name is {s.get('name')!r}; the replay runs "
                             f"adaptive_asha")
        try:
            return cls(max_time=int(s["max_time"]), max_trials=int(s["max_trials"]),
                       max_concurrent_trials=int(s.get("max_concurrent_trials", 0)),
                       max_rungs=int(s.get("max_rungs", 5)), divisor=float(s.get("divisor", 4)),
                       mode=str(s.get("mode", "standard")))
        except KeyError as e:
            raise CurveError(f"{path}: searcher.{e.args[0]} is missing") from None


@dataclasses.dataclass(frozen=True)
class Bracket:
    num_rungs: int
    max_trials: int
    max_concurrent_trials: int


def brackets(s: SearcherSettings) -> List[Bracket]:
    """The brackets ``adaptive_asha`` makes of ``s`` (most aggressive first)."""
    max_rungs = min(s.max_rungs,
                    int(math.log(s.max_time) / math.log(s.divisor)) + 1,
                    int(math.log(s.max_trials) / math.log(s.divisor)) + 1)
    if s.mode == "standard":
        rungs = list(range((max_rungs - 1) // 2 + 1, max_rungs + 1))
    elif s.mode == "conservative":
        rungs = list(range(1, max_rungs + 1))
    elif s.mode == "aggressive":
        rungs = [max_rungs]
    else:
        raise CurveError(f"searcher.mode {s.mode!r}: one of standard, conservative, aggressive")
    rungs.sort(reverse=True)
    weights = [s.divisor ** (r - 1) / r for r in rungs]
    total = sum(weights)
    trials = [max(int(w / total * s.max_trials), 1) for w in weights]
    trials[0] += max(s.max_trials - sum(trials), 0)
    if s.max_concurrent_trials == 0:
        each, extra = max(trials[-1], int(s.divisor)), 0
    else:
        mct = max(s.max_concurrent_trials, len(rungs))
        each, extra = mct // len(rungs), mct % len(rungs)
    conc = [each + (1 if i < extra else 0) for i in range(len(rungs))]
    return [Bracket(r, t, c) for r, t, c in zip(rungs, trials, conc)]


def rung_lengths(num_rungs: int, divisor: float, max_time: int) -> List[int]:
    """The batches at which a bracket's rungs judge trials."""
    return [max(int(max_time / divisor ** (num_rungs - i - 1)), 1) for i in range(num_rungs)]


class AshaStopping:
    """One bracket's asynchronous successive halving with early stopping: ``report`` is
    Determined's ``doEarlyStopping`` (metrics oriented so that smaller is better)."""

    def __init__(self, num_rungs: int, divisor: float, max_time: int) -> None:
        self.divisor = divisor
        self.units = rung_lengths(num_rungs, divisor, max_time)
        self.rungs: List[List[float]] = [[] for _ in self.units]
        self.trial_rung: Dict[Any, int] = {}

    def report(self, trial: Any, batches: int, metric: float) -> bool:
        """A validation of ``trial`` at ``batches`` with searcher ``metric``: True = stop it."""
        for r in range(self.trial_rung.get(trial, 0), len(self.units)):
            self.trial_rung[trial] = r
            if batches < self.units[r]:
                return False
            rung = self.rungs[r]
            # Determined inserts before the first metric >= this one (ties rank it first)
            index = next((i for i, m in enumerate(rung) if m >= metric), len(rung))
            rung.insert(index, metric)
            if r == len(self.units) - 1:
                return True
            keep = max(int(len(rung) / self.divisor), 1)
            if index >= keep:
                return True
        return False

    def exited_early(self, trial: Any) -> None:
        """A trial that errored (``trialExitedEarly``): the worst value in the rung it was
        heading for; the caller starts another trial in its place."""
        r = self.trial_rung.get(trial, 0)
        rung = self.rungs[r]
        rung.insert(next((i for i, m in enumerate(rung) if m >= WORST), len(rung)), WORST)


# ============================================================================ searcher metrics
def searcher_metric(strategy: str, curve: Curve, metric: str, target: float,
                    smaller: bool) -> List[float]:
    """The searcher metric of ``strategy`` at each validation of ``curve``, oriented so that
    smaller is better (``WORST`` where it is missing), from what the trial had then: the
    metric itself, or ``projected_energy_to_target_wh`` as the energy hook computes it
    (``shared.energy.projection.searcher_metric``; a recorded curve is fully measured)."""
    values = curve.values(metric)
    energies = curve.energies()
    out: List[float] = []
    reached_wh: Optional[float] = None
    history: List[Tuple[float, float]] = []
    for value, energy in zip(values, energies):
        if reached_wh is None and target_reached(value, target, smaller):
            reached_wh = energy
        if strategy == "metric":
            m = None if value is None else (value if smaller else -value)
        elif strategy in PROJECTIONS:
            m = energy_searcher_metric(energy, 1.0, value, target, reached_wh, smaller,
                                       projection=strategy, history=history)
        else:
            raise ValueError(f"unknown strategy {strategy!r}")
        if value is not None and math.isfinite(value):
            history.append((energy, value))
        out.append(WORST if m is None or not math.isfinite(m) else float(m))
    return out


# ============================================================================ one replay
@dataclasses.dataclass
class TrialRun:
    index: int              # into the search's curves
    bracket: int
    start_s: float
    stopped_at: int = -1    # index of its last validation
    best: float = WORST     # its best searcher metric


def replay_once(curves: Sequence[Curve], order: Sequence[int], settings: SearcherSettings,
                metrics: Sequence[Sequence[float]]) -> List[TrialRun]:
    """One search: trials ``order`` (indices into ``curves``) handed to the brackets in turn,
    ``metrics[i]`` the searcher metric series of curve i. Returns every trial that ran."""
    plan = brackets(settings)
    queues, at = [], 0
    for b in plan:
        queues.append(list(order[at:at + b.max_trials]))
        at += b.max_trials
    runs: List[TrialRun] = []
    events: List[Tuple[float, int, int]] = []   # (time, run id, validation index)

    def clock(c: Curve, i: int) -> float:
        v = c.validations[i]
        return v.cpu_s if v.cpu_s is not None else v.elapsed_s

    def start(bracket: int, t: float) -> None:
        if not queues[bracket]:
            return
        run = TrialRun(queues[bracket].pop(0), bracket, t)
        runs.append(run)
        heapq.heappush(events, (t + clock(curves[run.index], 0), len(runs) - 1, 0))

    searchers = [AshaStopping(b.num_rungs, settings.divisor, settings.max_time) for b in plan]
    for bi, b in enumerate(plan):
        for _ in range(min(b.max_concurrent_trials, b.max_trials)):
            start(bi, 0.0)
    while events:
        t, rid, i = heapq.heappop(events)
        run = runs[rid]
        curve = curves[run.index]
        m = metrics[run.index][i]
        run.best = min(run.best, m)
        run.stopped_at = i
        stop = searchers[run.bracket].report(rid, curve.validations[i].batches, m)
        if stop:
            start(run.bracket, t)
        elif i + 1 < len(curve.validations) and curve.validations[i + 1].batches <= settings.max_time:
            heapq.heappush(events, (run.start_s + clock(curve, i + 1), rid, i + 1))
        elif curve.ended == "error":
            # it failed after this validation (a diverged loss): Determined records the worst
            # value in its rung and starts another trial
            searchers[run.bracket].exited_early(rid)
            start(run.bracket, t)
        # else: the trial ended by itself before the top rung; Determined does not replace it
    return runs


# ============================================================================ many replays
@dataclasses.dataclass
class Outcome:
    pick: int
    pick_energy_to_target_wh: Optional[float]
    regret_pct: float
    search_wh: float


def _quantile(xs: Sequence[float], q: float) -> float:
    """The nearest-rank quantile (an actual value: infinite values stay infinite)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarize(outcomes: Sequence[Outcome]) -> Dict[str, Any]:
    regrets = [o.regret_pct for o in outcomes]
    ett = [o.pick_energy_to_target_wh if o.pick_energy_to_target_wh is not None else math.inf
           for o in outcomes]
    wh = [o.search_wh for o in outcomes]
    return {
        "replays": len(outcomes),
        "pick_energy_to_target_wh": {"median": _quantile(ett, 0.5), "p25": _quantile(ett, 0.25),
                                     "p75": _quantile(ett, 0.75)},
        "regret_pct": {"median": _quantile(regrets, 0.5), "p25": _quantile(regrets, 0.25),
                       "p75": _quantile(regrets, 0.75)},
        "search_wh": {"median": _quantile(wh, 0.5), "p25": _quantile(wh, 0.25),
                      "p75": _quantile(wh, 0.75)},
        "never_pct": 100.0 * sum(o.pick_energy_to_target_wh is None for o in outcomes) / len(outcomes),
    }


#: how the search's result is chosen (``--pick``)
PICK_RULES = {
    "best": "Determined's best trial: the best searcher metric at any of its validations",
    "last": "the best searcher metric at each trial's last validation",
    "measured": "the lowest energy_to_target_wh measured during the search (a trial that "
                "reached the target before it was stopped); Determined's best trial when none did",
}


def pick(runs: Sequence[TrialRun], rule: str, metrics: Sequence[Sequence[float]],
         reached_at: Sequence[Optional[int]], ett: Sequence[Optional[float]]) -> TrialRun:
    """The trial a search of ``runs`` returns under ``rule`` (``PICK_RULES``); a tie goes to the
    trial created first."""
    def first(key: Callable[[TrialRun], float]) -> TrialRun:
        return min(enumerate(runs), key=lambda kr: (key(kr[1]), kr[0]))[1]

    if rule == "last":
        return first(lambda r: metrics[r.index][r.stopped_at])
    if rule == "measured":
        done = [r for r in runs if reached_at[r.index] is not None
                and reached_at[r.index] <= r.stopped_at]
        if done:
            return min(enumerate(done), key=lambda kr: (ett[kr[1].index], kr[0]))[1]
    return first(lambda r: r.best)


def replay_search(curves: Sequence[Curve], settings: SearcherSettings, strategies: Sequence[str],
                  replays: int, seed: int, metric: Optional[str] = None,
                  target: Optional[float] = None, pick_rule: str = "best") -> Dict[str, Any]:
    """Every strategy over ``replays`` draws of ``curves``; per strategy and pick rule the
    summary, the paired comparison of curve and linear under ``pick_rule``, and the
    per-replay outcomes."""
    first_curve = curves[0]
    metric = metric or first_curve.target_metric
    if metric != first_curve.target_metric and target is None:
        raise CurveError(f"--metric {metric} is not the curves' target metric "
                         f"({first_curve.target_metric}): give its --target")
    target = first_curve.target if target is None else float(target)
    smaller = (first_curve.smaller_is_better if metric == first_curve.target_metric
               else default_smaller_is_better(metric))
    missing = [c.name for c in curves if metric not in c.validations[0].metrics]
    if missing:
        raise CurveError(f"metric {metric!r} is not recorded for {', '.join(missing[:3])}")
    max_time = max(c.max_batches or c.validations[-1].batches for c in curves)
    n = len(curves)
    settings = dataclasses.replace(settings, max_time=max_time,
                                   max_trials=min(settings.max_trials, n))
    reached_at = [c.first_reaching(metric, target, smaller) for c in curves]
    ett = [c.energy_to_target_wh(metric, target, smaller) for c in curves]
    reachable = [e for e in ett if e is not None]
    best = min(reachable) if reachable else None
    series = {s: [searcher_metric(s, c, metric, target, smaller) for c in curves]
              for s in strategies}
    outcomes: Dict[str, Dict[str, List[Outcome]]] = {
        s: {rule: [] for rule in PICK_RULES} for s in strategies}
    for r in range(replays):
        order = list(range(n))
        random.Random(seed + r).shuffle(order)
        order = order[:settings.max_trials]
        for s in strategies:
            runs = replay_once(curves, order, settings, series[s])
            spent = sum(curves[run.index].validations[run.stopped_at].energy_wh for run in runs)
            for rule in PICK_RULES:
                chosen = pick(runs, rule, series[s], reached_at, ett)
                e = ett[chosen.index]
                regret = math.inf if e is None or best is None else 100.0 * (e / best - 1.0)
                outcomes[s][rule].append(Outcome(chosen.index, e, regret, spent))
    result: Dict[str, Any] = {
        "search": first_curve.search, "trials": n, "metric": metric, "target": target,
        "smaller_is_better": smaller, "never_reach": sum(e is None for e in ett),
        "best_energy_to_target_wh": best,
        "best_trial": curves[ett.index(best)].name if best is not None else None,
        "settings": dataclasses.asdict(settings),
        "brackets": [dataclasses.asdict(b) | {"rungs": rung_lengths(b.num_rungs, settings.divisor,
                                                                    max_time)}
                     for b in brackets(settings)],
        "energy_source": first_curve.energy_source,
        "pick": pick_rule,
        "strategies": {s: summarize(outcomes[s][pick_rule]) for s in strategies},
        "by_pick": {rule: {s: summarize(outcomes[s][rule]) for s in strategies}
                    for rule in PICK_RULES},
        "per_replay": {s: {rule: [dataclasses.asdict(o) | {"pick_name": curves[o.pick].name}
                                  for o in outcomes[s][rule]] for rule in PICK_RULES}
                       for s in strategies},
    }
    if "linear" in strategies and "curve" in strategies:
        result["curve_vs_linear"] = compare(outcomes["linear"][pick_rule],
                                            outcomes["curve"][pick_rule])
    return result


def compare(base: Sequence[Outcome], new: Sequence[Outcome]) -> Dict[str, Any]:
    """Whether ``new`` beats ``base`` by more than the spread over replays: for regret and for
    search energy, margin = base's median - new's median, spread = the larger of the two
    25th-75th percentile ranges; better when margin > spread. Also the paired differences
    (new - base, per replay) and the share of replays where new is better, equal, worse."""
    out: Dict[str, Any] = {}
    for key in ("regret_pct", "search_wh"):
        b = [getattr(o, key) for o in base]
        n = [getattr(o, key) for o in new]
        margin = _quantile(b, 0.5) - _quantile(n, 0.5)
        spread = max(_quantile(b, 0.75) - _quantile(b, 0.25), _quantile(n, 0.75) - _quantile(n, 0.25))
        diffs = [(y - x) if math.isfinite(x) and math.isfinite(y) else
                 (0.0 if x == y else (-math.inf if math.isfinite(y) else math.inf))
                 for x, y in zip(b, n)]
        # a finite median against a base that mostly never reaches the target is better
        better = margin == math.inf or (math.isfinite(margin) and math.isfinite(spread)
                                        and margin > spread)
        out[key] = {"margin": margin, "spread": spread, "better": better,
                    "paired_median": _quantile(diffs, 0.5),
                    "new_better_pct": 100.0 * sum(d < 0 for d in diffs) / len(diffs),
                    "equal_pct": 100.0 * sum(d == 0 for d in diffs) / len(diffs),
                    "new_worse_pct": 100.0 * sum(d > 0 for d in diffs) / len(diffs)}
    out["better"] = out["regret_pct"]["better"] or out["search_wh"]["better"]
    return out


# ============================================================================ output
def _num(x: float, spec: str) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "never" if x > 0 else "-inf"
    return format(x, spec)


def table(result: Mapping[str, Any]) -> str:
    """The markdown table of one search's replay."""
    head = ("strategy", "picked trial's energy to target (Wh)", "regret vs best (%)",
            "search energy (Wh)", "picks a trial that never reaches")
    names = {"metric": f"plain `{result['metric']}`", "linear": "linear projection",
             "curve": "curve projection"}

    def cell(d: Mapping[str, float], spec: str) -> str:
        return f"{_num(d['median'], spec)} ({_num(d['p25'], spec)}-{_num(d['p75'], spec)})"
    return markdown_table(head, [
        [names[s], cell(r["pick_energy_to_target_wh"], ".4g"), cell(r["regret_pct"], ".0f"),
         cell(r["search_wh"], ".3g"), f"{r['never_pct']:.0f} %"]
        for s, r in result["strategies"].items()], align=("left",) + ("right",) * 4)


def header(result: Mapping[str, Any]) -> str:
    st = result["settings"]
    br = "; ".join(f"{b['max_trials']} trials, {b['max_concurrent_trials']} at a time, rungs at "
                   f"{'/'.join(str(u) for u in b['rungs'])} batches" for b in result["brackets"])
    best = result["best_energy_to_target_wh"]
    return (f"search {result['search']}: {result['trials']} trials, target {result['metric']} "
            f"{'<=' if result['smaller_is_better'] else '>='} {result['target']:g}, "
            f"{result['never_reach']} never reach it; best trial {result['best_trial']} "
            f"({_num(best, '.4g')} Wh); energy {result['energy_source']}\n"
            f"adaptive_asha {st['mode']}, max_trials {st['max_trials']}, divisor {st['divisor']:g}, "
            f"max_time {st['max_time']}: {br}\n"
            f"the pick: {PICK_RULES[result['pick']]}; medians over "
            f"{next(iter(result['strategies'].values()))['replays']} replays "
            f"(25th-75th percentile)")


def verdict(result: Mapping[str, Any]) -> str:
    cmp = result.get("curve_vs_linear")
    if not cmp:
        return ""
    parts = []
    for key, label in (("regret_pct", "regret"), ("search_wh", "search energy")):
        c = cmp[key]
        parts.append(f"{label}: margin {_num(c['margin'], '.3g')} vs spread {_num(c['spread'], '.3g')} "
                     f"(curve better in {c['new_better_pct']:.0f} % of replays, equal in "
                     f"{c['equal_pct']:.0f} %, worse in {c['new_worse_pct']:.0f} %)")
    word = "better" if cmp["better"] else "not better"
    return f"curve vs linear: {word} by more than the spread; " + "; ".join(parts)


def chart(results: Sequence[Mapping[str, Any]], path: pathlib.Path) -> None:
    """Regret (under the replay's pick rule, and under the measured pick beside it) and search
    energy per strategy: medians with 25th-75th percentile bars, one column per search."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.6 * len(results), 6.6), squeeze=False)
    colors = {"metric": "#888888", "linear": "#1f77b4", "curve": "#d62728"}

    def bar(ax: Any, x: float, d: Mapping[str, float], color: str, width: float,
            hatch: Optional[str] = None, label: Optional[str] = None) -> None:
        med, lo, hi = d["median"], d["p25"], d["p75"]
        if not math.isfinite(med):
            ax.text(x, 0, "never", ha="center", va="bottom", fontsize=8, rotation=90)
            return
        ax.bar(x, med, width, color=color, alpha=0.85 if hatch is None else 0.35, hatch=hatch,
               edgecolor=color, label=label)
        ax.errorbar(x, med, yerr=[[med - lo], [(hi if math.isfinite(hi) else med) - med]],
                    color="k", capsize=3)
        if not math.isfinite(hi):
            ax.text(x, med, "75th:\nnever", ha="center", va="bottom", fontsize=7)

    for col, res in enumerate(results):
        strategies = list(res["strategies"])
        labels = [{"metric": res["metric"]}.get(s, s) for s in strategies]
        ax = axes[0][col]
        others = [r for r in ("measured", "best") if r != res["pick"]][:1]
        for k, s in enumerate(strategies):
            bar(ax, k - 0.2, res["by_pick"][res["pick"]][s]["regret_pct"], colors.get(s, "k"), 0.4,
                label=f"pick: {res['pick']}" if k == 0 else None)
            for rule in others:
                bar(ax, k + 0.2, res["by_pick"][rule][s]["regret_pct"], colors.get(s, "k"), 0.4,
                    hatch="//", label=f"pick: {rule}" if k == 0 else None)
        ax.set_ylabel("regret vs the best trial (%)")
        ax.set_title(f"{res['search']} ({res['trials']} trials, {res['metric']} "
                     f"{'<=' if res['smaller_is_better'] else '>='} {res['target']:g})", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1][col]
        for k, s in enumerate(strategies):
            bar(ax, k, res["strategies"][s]["search_wh"], colors.get(s, "k"), 0.6)
        ax.set_ylabel("search energy (Wh)")
        for a in axes[:, col]:
            a.set_xticks(range(len(strategies)))
            a.set_xticklabels(labels)
    fig.suptitle("adaptive ASHA replayed over recorded learning curves: median, 25th-75th "
                 "percentile", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(x: Any) -> Any:
    """JSON has no infinity: an infinite figure (a pick that never reaches the target) is
    written as the string "inf"."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else None)
    return x


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.search_replay",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curves", type=pathlib.Path, default=DEFAULT_DIR)
    ap.add_argument("--searches", nargs="+", help="only these searches (default: all)")
    ap.add_argument("--metric", help="the target metric (default: each search's own)")
    ap.add_argument("--target", type=float, help="the target value for --metric")
    ap.add_argument("--projection", nargs="+", choices=("linear", "curve"),
                    default=["linear", "curve"],
                    help="the projections to replay beside the plain metric (default: both)")
    ap.add_argument("--replays", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pick", choices=list(PICK_RULES), default="best",
                    help="how the search's result is chosen: " + "; ".join(
                        f"{k}: {v}" for k, v in PICK_RULES.items()) + " (default %(default)s)")
    ap.add_argument("--config", type=pathlib.Path, default=DEFAULT_CONFIG,
                    help="the experiment config whose searcher is replayed (default: %(default)s)")
    ap.add_argument("--min-trials", type=int, default=8,
                    help="searches with fewer trials are listed, not replayed (default %(default)s)")
    ap.add_argument("--json", type=pathlib.Path, help="write the results here")
    ap.add_argument("--chart", type=pathlib.Path, help="write the regret/energy chart here (PNG)")
    args = ap.parse_args(argv)
    if args.replays < 1:
        ap.error("--replays must be >= 1")
    try:
        settings = SearcherSettings.from_config(args.config)
        groups = group_by_search(load_curves(args.curves))
        names = args.searches or list(groups)
        unknown = [n for n in names if n not in groups]
        if unknown:
            raise CurveError(f"{args.curves}: no search {', '.join(unknown)} (recorded: "
                             f"{', '.join(groups)})")
        strategies = ["metric", *args.projection]
        results = []
        for name in names:
            curves = groups[name]
            if len(curves) < args.min_trials:
                print(f"search {name}: {len(curves)} trials, fewer than --min-trials "
                      f"{args.min_trials}: not replayed\n")
                continue
            res = replay_search(curves, settings, strategies, args.replays, args.seed,
                                args.metric, args.target, args.pick)
            results.append(res)
            print(header(res))
            print()
            print(table(res))
            v = verdict(res)
            if v:
                print(f"\n{v}")
            print()
    except CurveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "-m", "benchmarks.search_replay", *argv])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable({"command": command, "results": results}),
                                        indent=1) + "\n")
    if args.chart and results:
        chart(results, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
