"""The learning-curve projection (shared.energy.curve_fit) on synthetic curves whose answer is
known: a curve that reaches the target at a known energy, one that plateaus below it, a noisy
one, a decreasing metric, and too few points."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.energy.curve_fit import (MIN_POINTS, UNREACHABLE_WH, curve_projection_wh, fit_curve,
                                     metric_bounds)

E = np.linspace(0.5, 8.0, 16)   # Wh at 16 validations


def saturating(e, top, rate):
    """An exponential learning curve from 0 to ``top`` (mIoU)."""
    return top * (1.0 - np.exp(-e / rate))


def test_reaches_target_at_known_energy():
    # 85 * (1 - exp(-e/4)) = 70 at e = 4 ln(85/15) = 6.94 Wh; the first 8 validations reach 4 Wh
    truth = 4.0 * math.log(85.0 / 15.0)
    y = saturating(E, 85.0, 4.0)
    n = 8
    assert y[n - 1] < 70.0
    got = curve_projection_wh(E[:n], y[:n], 70.0)
    assert got == pytest.approx(truth, rel=0.03)
    # the linear rule (energy x target / value) says much less: it ignores the flattening
    linear = E[n - 1] * 70.0 / y[n - 1]
    assert linear < 0.8 * truth


def test_power_law_curve_is_projected_too():
    # 100 - 90 e^-0.5 reaches 70 at e = 9 (Wh); known only from points up to 4 Wh
    e = np.linspace(0.25, 4.0, 16)
    y = 100.0 - 90.0 * e ** -0.5
    got = curve_projection_wh(e, y, 70.0)
    assert got == pytest.approx(9.0, rel=0.05)


def test_plateau_below_target_ranks_after_every_reachable_trial():
    y = saturating(E, 55.0, 1.5)         # levels off at 55 < 70
    got = curve_projection_wh(E, y, 70.0)
    assert UNREACHABLE_WH <= got <= 2 * UNREACHABLE_WH and math.isfinite(got)
    # the shortfall orders the unreachable ones: closer to the target ranks first
    closer = curve_projection_wh(E, saturating(E, 65.0, 1.5), 70.0)
    assert UNREACHABLE_WH <= closer < got
    # and every trial that can reach the target, however slowly, ranks before them
    slow = curve_projection_wh(E, saturating(E, 100.0, 60.0), 70.0)
    assert slow < UNREACHABLE_WH
    fit = fit_curve(E, y, False, metric_bounds(70.0, False))
    assert fit.asymptote == pytest.approx(55.0, abs=0.5)


def test_noisy_curve_within_a_tolerance_and_deterministic():
    rng = np.random.default_rng(3)
    truth = 4.0 * math.log(85.0 / 15.0)
    y = saturating(E, 85.0, 4.0) + rng.normal(0.0, 1.5, E.size)
    n = 10
    assert max(y[:n]) < 70.0
    got = curve_projection_wh(E[:n], y[:n], 70.0)
    assert got == pytest.approx(truth, rel=0.25)
    assert curve_projection_wh(E[:n], list(y[:n]), 70.0) == got   # same input, same answer


def test_decreasing_metric():
    # validation_loss = 0.1 + 0.9 exp(-e/3) reaches 0.25 at e = 3 ln(6) = 5.38 Wh
    truth = 3.0 * math.log(6.0)
    loss = 0.1 + 0.9 * np.exp(-E / 3.0)
    n = 9
    assert loss[n - 1] > 0.25
    assert curve_projection_wh(E[:n], loss[:n], 0.25, smaller_is_better=True) == pytest.approx(truth, rel=0.03)
    # a loss levelling off at 0.4 never gets to 0.25: unreachable, finite
    plateau = 0.4 + 0.9 * np.exp(-E / 1.0)
    got = curve_projection_wh(E, plateau, 0.25, smaller_is_better=True)
    assert UNREACHABLE_WH <= got <= 2 * UNREACHABLE_WH
    fit = fit_curve(E, plateau, True, metric_bounds(0.25, True))
    assert fit.asymptote == pytest.approx(0.4, abs=0.02)
    assert fit.value_at(E[-1]) == pytest.approx(plateau[-1], abs=0.02)


def test_fit_stays_in_the_metric_range():
    # a straight line up would pass 100 mIoU; the asymptote is held at 100
    y = 10.0 * E
    fit = fit_curve(E[:6], y[:6], False, metric_bounds(70.0, False))
    assert fit.asymptote <= 100.0 + 1e-9
    # a loss falling in a straight line is held at >= 0
    loss = 2.0 - 0.2 * E
    fit = fit_curve(E[:8], loss[:8], True, metric_bounds(0.1, True))
    assert fit.asymptote >= -1e-9


def test_monotone_even_when_the_curve_gets_worse():
    y = 60.0 - 2.0 * E                  # getting worse: the monotone fit is flat at best
    fit = fit_curve(E, y, False, metric_bounds(70.0, False))
    assert fit.a >= 0.0
    assert fit.value_at(100.0) <= max(y) + 1e-6
    assert curve_projection_wh(E, y, 70.0) >= UNREACHABLE_WH


def test_two_points_only_fall_back_to_the_caller():
    assert MIN_POINTS > 2
    assert curve_projection_wh(E[:2], saturating(E[:2], 85.0, 4.0), 70.0) is None
    # missing values do not count as points
    vals = [None, float("nan"), 10.0, 20.0, 30.0]
    assert curve_projection_wh(E[:5], vals, 70.0) is None
    assert curve_projection_wh(E[:6], [None, *saturating(E[1:6], 85.0, 4.0)], 70.0) is not None


def test_never_below_the_energy_spent():
    # a noisy curve whose fit is already above the target at the last validation
    y = np.array([40.0, 55.0, 62.0, 75.0, 66.0])
    got = curve_projection_wh(E[:5], y, 70.0)
    assert got >= E[4]


def test_the_cost_of_a_fit_is_bounded_however_long_the_history(monkeypatch):
    """Counted, not timed (a busy machine must not fail it): a history of 5,000 validations
    is thinned to MAX_POINTS, so every fit evaluates each form's fixed grid on at most that
    many points, first and last kept."""
    from shared.energy import curve_fit
    seen = []
    real = curve_fit._best_theta
    monkeypatch.setattr(curve_fit, "_best_theta",
                        lambda form, u, y, c_max: seen.append(u.copy()) or real(form, u, y, c_max))
    e = np.linspace(0.01, 50.0, 5000)
    assert curve_projection_wh(e, saturating(e, 85.0, 4.0), 90.0) is not None
    assert seen and all(len(u) == curve_fit.MAX_POINTS for u in seen)
    assert all(u[0] == pytest.approx(e[0] / e[-1]) and u[-1] == 1.0 for u in seen)
    assert len(seen) == len(curve_fit.FORMS)  # one grid per form, nothing iterated


def test_the_searcher_metric_with_the_curve_keeps_the_energy_rules():
    from shared.energy.projection import UNMEASURED_WH, searcher_metric
    y = saturating(E, 85.0, 4.0)
    history = list(zip(E[:7], y[:7]))
    truth = 4.0 * math.log(85.0 / 15.0)
    # measured (coverage 1): the fitted curve's energy
    got = searcher_metric(E[7], 1.0, y[7], 70.0, projection="curve", history=history)
    assert got == pytest.approx(truth, rel=0.03)
    # coverage 0.8: the energy so far scaled to the elapsed time, E / 0.8, and the fit follows
    scaled = searcher_metric(E[7] * 0.8, 0.8, y[7], 70.0, projection="curve", history=history)
    assert scaled == pytest.approx(got, rel=1e-6)
    # not measured: ranks last, whatever the curve says
    assert searcher_metric(E[7], 0.2, y[7], 70.0, projection="curve", history=history) == UNMEASURED_WH
    assert searcher_metric(None, None, y[7], 70.0, projection="curve", history=history) == UNMEASURED_WH
    # a plateau below the target: after every reachable trial, before an unmeasured one
    flat = saturating(E, 55.0, 1.5)
    unreachable = searcher_metric(E[7], 1.0, flat[7], 70.0, projection="curve",
                                  history=list(zip(E[:7], flat[:7])))
    assert UNREACHABLE_WH <= unreachable < UNMEASURED_WH
    # a diverged metric: ranks last as with the linear rule
    assert searcher_metric(E[7], 1.0, float("nan"), 70.0, projection="curve", history=history) == UNMEASURED_WH
    # reached: the measured energy to target, whichever projection
    assert searcher_metric(E[7], 1.0, 71.0, 70.0, 5.0, projection="curve", history=history) == 5.0
    for value in (got, scaled, unreachable):
        assert isinstance(value, float)
    with pytest.raises(ValueError, match="energy.projection 'cubic': one of linear, curve"):
        searcher_metric(E[7], 1.0, y[7], 70.0, projection="cubic")
