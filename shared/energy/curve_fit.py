"""The learning-curve projection of the energy to target (``energy.projection: curve``).

The linear rule (``projected_energy_to_target``) scales the energy spent by the distance to the
target as if the metric grew in proportion to the energy. Learning curves flatten, so it is
optimistic for a trial that is levelling off below the target. This module fits the trial's own
validation history, metric against energy, with a small family of saturating parametric forms
(in the spirit of Domhan, Springenberg and Hutter, "Speeding up automatic hyperparameter
optimization of deep neural networks by extrapolation of learning curves", IJCAI 2015; least
squares here, not their MCMC ensemble) and projects the energy at which the fitted curve reaches
the target.

Every form is ``y(u) = c - a * g(u; theta)`` with ``u`` the energy over the energy at the last
validation, ``g`` decreasing to 0 and ``y`` the metric (its negative for a metric that decreases
to its target, a loss), so that

- ``a >= 0``: the fit is monotone (it never predicts that more energy makes the metric worse);
- ``c``, the asymptote, lies within the metric's range (``metric_bounds``: at most 100 for the
  project's increasing metrics, which are all percentages; at least 0 for a decreasing one).

The forms (``FORMS``):

========== ================================ ===============================================
name       g(u; theta)                      shape
========== ================================ ===============================================
pow3       u^-alpha                          power law to an asymptote (Domhan's pow3)
exp3       exp(-u / tau)                     exponential saturation (exp3)
logpower   1 / (1 + (u / kappa)^gamma)       sigmoid in log-energy, with an offset (Domhan's
                                             log power); gamma 1 is the hyperbolic
                                             (Michaelis-Menten) saturation in energy
========== ================================ ===============================================

Written with numpy alone (the project does not depend on scipy, and the bounded, monotone
three-parameter fits need no general optimiser): for a fixed ``theta`` the best ``(c, a)`` is a
closed-form linear least-squares problem with the
two bounds (variable projection); ``theta`` runs over a fixed log-spaced grid, all of it at once
in numpy, and is then refined by golden-section search between the best grid point's
neighbours. The form with the lowest BIC wins (``logpower`` has one parameter more and is tried
from ``LOGPOWER_MIN_POINTS`` validations on). Nothing is random and no other trial's data is
used, so the figure is what Determined's searcher may rank by. About a millisecond per
validation on one CPU core (``tests/test_curve_fit.py`` measures it).

The projected energy, before the target is reached:

- fewer than ``MIN_POINTS`` validations with a finite metric: the linear rule (the caller's);
- the fitted asymptote reaches the target: the energy where the fitted curve meets it, at least
  the energy spent so far and at most ``UNREACHABLE_WH``;
- it does not: ``UNREACHABLE_WH * (1 + shortfall)``, with ``shortfall`` the asymptote's distance
  below the target relative to the target, capped at 1. That is a finite number (Determined
  needs one) in [1e10, 2e10] Wh, larger than any projection of a trial that can reach the
  target, so such a trial ranks after every one projected to reach it, and among them the one
  that comes closest ranks first.

When it misleads (docs/configs.md, "The energy search"): a trial still in its warm-up or in an
early plateau can be fitted as saturating below the target and ranked last although it would
have taken off later; with validations far apart the first rungs have too few points and the
linear rule decides there; and a noisy metric makes the fitted asymptote jump between
validations.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

#: fewer validations with a finite metric than this: the caller's linear rule
MIN_POINTS = 4
#: at most this many validations are fitted (a longer history is thinned evenly)
MAX_POINTS = 256
#: the four-parameter form is tried from this many points on
LOGPOWER_MIN_POINTS = 6
#: the projection of a trial whose fitted asymptote does not reach the target is this times
#: (1 + shortfall); every projection that reaches it is below (Wh)
UNREACHABLE_WH = 1.0e10


def metric_bounds(target: float, smaller_is_better: bool) -> Tuple[Optional[float], Optional[float]]:
    """The range the fitted asymptote must stay in: a metric that decreases to its target
    (a loss, a count, a rate) is >= 0; one that increases is a percentage in this project
    (mIoU, accuracy, recall, AP, F1), <= 100, unless its target is above 100 (then unbounded)."""
    if smaller_is_better:
        return 0.0, None
    return None, (100.0 if target <= 100.0 else None)


# ---------------------------------------------------------------------------- the forms
@dataclasses.dataclass(frozen=True)
class Form:
    """``g(u; theta)`` on a grid of ``theta`` and its inverse (``u`` where ``g`` = r)."""

    name: str
    params: int                     # c, a and theta's dimension
    thetas: np.ndarray              # (m, d)
    g: Callable[[np.ndarray, np.ndarray], np.ndarray]        # (u (n,), thetas (m, d)) -> (m, n)
    inverse: Callable[[float, np.ndarray], float]             # (r in (0, 1), theta (d,)) -> u


def _grid(*axes: np.ndarray) -> np.ndarray:
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


FORMS: Tuple[Form, ...] = (
    Form("pow3", 3, _grid(np.logspace(-2, 1, 49)),
         lambda u, t: u[None, :] ** (-t[:, :1]),
         lambda r, t: r ** (-1.0 / t[0])),
    Form("exp3", 3, _grid(np.logspace(-2, 2, 49)),
         lambda u, t: np.exp(-u[None, :] / t[:, :1]),
         lambda r, t: -t[0] * math.log(r)),
    Form("logpower", 4, _grid(np.logspace(-2, 2, 33), np.array([0.5, 1.0, 2.0, 4.0])),
         lambda u, t: 1.0 / (1.0 + (u[None, :] / t[:, :1]) ** t[:, 1:2]),
         lambda r, t: t[0] * (1.0 / r - 1.0) ** (1.0 / t[1])),
)


@dataclasses.dataclass(frozen=True)
class Fit:
    """A fitted curve, in the metric's own units and direction."""

    form: str
    theta: Tuple[float, ...]
    asymptote: float        # the metric's value as energy grows without bound
    a: float                # (>= 0) amplitude, in the increasing orientation
    sse: float
    bic: float
    energy_scale: float     # the energy (Wh) that u = 1 stands for
    smaller_is_better: bool

    def value_at(self, energy_wh: float) -> float:
        """The fitted metric at ``energy_wh``."""
        form = _FORM[self.form]
        u = np.array([energy_wh / self.energy_scale])
        y = self._c - self.a * float(form.g(u, np.array([self.theta]))[0, 0])
        return -y if self.smaller_is_better else y

    @property
    def _c(self) -> float:
        return -self.asymptote if self.smaller_is_better else self.asymptote

    def energy_at(self, target: float) -> Optional[float]:
        """The energy (Wh) at which the fitted curve reaches ``target``; None if its asymptote
        does not (equal counts as not reaching: the curve only gets there in the limit)."""
        ty = -target if self.smaller_is_better else target
        gap = self._c - ty
        if gap <= 0:
            return None
        if self.a <= 0:
            return 0.0  # flat above the target: there already, by the fit
        r = gap / self.a
        if r >= 1.0 and self.form != "pow3":
            return 0.0  # g <= 1 for exp3 and logpower: the fit is above the target at u = 0
        u = _FORM[self.form].inverse(r, np.array(self.theta))
        return max(0.0, float(u)) * self.energy_scale


_FORM: Dict[str, Form] = {f.name: f for f in FORMS}


def _solve(G: np.ndarray, y: np.ndarray, c_max: Optional[float]
           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sse, c, a) for every row of ``G`` (one theta's g at the points): least squares of
    ``y ~ c - a g`` with ``a >= 0`` and ``c <= c_max``, in closed form, all rows at once."""
    n = y.size
    gm = G.mean(axis=1)
    ym = y.mean()
    gc = G - gm[:, None]
    var = (gc * gc).sum(axis=1)
    cov = gc @ (y - ym)
    ok = var > 1e-18 * n
    slope = np.where(ok, cov / np.where(ok, var, 1.0), 0.0)   # y = c + slope * g, slope = -a
    slope = np.minimum(slope, 0.0)                            # monotone: a >= 0
    c = ym - slope * gm
    if c_max is not None:
        over = c > c_max
        if over.any():
            # c pinned at its bound: slope = sum g (y - c_max) / sum g^2, still <= 0
            gg = (G * G).sum(axis=1)
            pinned = np.minimum((G @ (y - c_max)) / np.where(gg > 0, gg, 1.0), 0.0)
            slope = np.where(over, pinned, slope)
            c = np.where(over, c_max, c)
    resid = y[None, :] - (c[:, None] + slope[:, None] * G)
    return (resid * resid).sum(axis=1), c, -slope


def _best_theta(form: Form, u: np.ndarray, y: np.ndarray, c_max: Optional[float]
                ) -> Tuple[float, np.ndarray, float, float]:
    """(sse, theta, c, a): the best of the grid, its first axis then refined between the
    grid's neighbours by golden-section search in log theta (the grid alone is ~6 % apart)."""
    sse, c, a = _solve(form.g(u, form.thetas), y, c_max)
    i = int(np.argmin(sse))              # the first minimum: deterministic
    best = (float(sse[i]), form.thetas[i].copy(), float(c[i]), float(a[i]))
    axis = np.unique(form.thetas[:, 0])
    k = int(np.searchsorted(axis, best[1][0]))
    lo, hi = math.log(axis[max(k - 1, 0)]), math.log(axis[min(k + 1, axis.size - 1)])

    def at(log_t: float) -> Tuple[float, np.ndarray, float, float]:
        theta = best[1].copy()
        theta[0] = math.exp(log_t)
        s1, c1, a1 = _solve(form.g(u, theta[None, :]), y, c_max)
        return float(s1[0]), theta, float(c1[0]), float(a1[0])

    golden = (math.sqrt(5.0) - 1.0) / 2.0
    p, q = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fp, fq = at(p), at(q)
    for _ in range(24):
        if fp[0] <= fq[0]:
            hi, q, fq = q, p, fp
            p = hi - golden * (hi - lo)
            fp = at(p)
        else:
            lo, p, fp = p, q, fq
            q = lo + golden * (hi - lo)
            fq = at(q)
    for cand in (fp, fq):
        if cand[0] < best[0]:
            best = cand
    return best


def fit_curve(energies: Sequence[float], values: Sequence[Optional[float]],
              smaller_is_better: bool = False,
              bounds: Tuple[Optional[float], Optional[float]] = (None, None)) -> Optional[Fit]:
    """The best saturating fit of ``values`` against ``energies`` (one pair per validation;
    pairs with a missing or non-finite value, or an energy <= 0, are left out). None with fewer
    than ``MIN_POINTS`` usable pairs.

    ``bounds`` = (lower, upper) of the metric (``metric_bounds``): the asymptote stays within.
    """
    pairs = [(float(e), float(v)) for e, v in zip(energies, values)
             if e is not None and v is not None and math.isfinite(e) and e > 0
             and math.isfinite(v)]
    if len(pairs) < MIN_POINTS:
        return None
    if len(pairs) > MAX_POINTS:
        # a long run's history, thinned evenly (the first and the last kept): the fit's cost
        # stays a few milliseconds however often the trial validates
        keep = np.unique(np.linspace(0, len(pairs) - 1, MAX_POINTS).round().astype(int))
        pairs = [pairs[i] for i in keep]
    x = np.array([p[0] for p in pairs])
    v = np.array([p[1] for p in pairs])
    scale = float(x.max())
    u = x / scale
    y = -v if smaller_is_better else v
    lower, upper = bounds
    c_max = (-lower if lower is not None else None) if smaller_is_better else upper
    n = y.size
    # a noise floor for the BIC: an exact fit must not win by log(0)
    floor = 1e-6 * (float(np.var(y)) + 1e-12)
    best: Optional[Fit] = None
    for form in FORMS:
        if form.params > 3 and n < LOGPOWER_MIN_POINTS:
            continue
        sse, theta, c, a = _best_theta(form, u, y, c_max)
        bic = n * math.log(sse / n + floor) + form.params * math.log(n)
        if best is None or bic < best.bic:
            best = Fit(form=form.name, theta=tuple(float(t) for t in theta),
                       asymptote=-c if smaller_is_better else c, a=a, sse=sse, bic=bic,
                       energy_scale=scale, smaller_is_better=smaller_is_better)
    return best


def curve_projection_wh(energies: Sequence[float], values: Sequence[Optional[float]],
                        target: float, smaller_is_better: bool = False) -> Optional[float]:
    """The energy (Wh) at which the trial's fitted learning curve reaches ``target``, for a
    trial that has not reached it yet (module docstring); None with too few points (then the
    caller applies the linear rule).

    Args:
        energies: the energy spent at each validation so far (Wh, non-decreasing).
        values: the target metric at each validation (None where missing).
        target: the target value (> 0).
        smaller_is_better: the metric decreases to its target (a loss).
    """
    fit = fit_curve(energies, values, smaller_is_better, metric_bounds(target, smaller_is_better))
    if fit is None:
        return None
    spent = max(float(e) for e in energies if e is not None and math.isfinite(e))
    at = fit.energy_at(target)
    if at is None:
        shortfall = abs(target - fit.asymptote) / abs(target)
        return UNREACHABLE_WH * (1.0 + min(1.0, shortfall))
    return min(max(at, spent), UNREACHABLE_WH)

