"""Counters that lie are not believed (shared/energy/sources/counters.py): every case of the
energy issue's "counters that lie", and the ones that are counted."""
from __future__ import annotations

import pytest

from shared.energy.sources.counters import counter_step, min_wrap_s

UJ = 1e-6
RANGE = 262_143_328_850  # a RAPL package's max_energy_range_uj (~262 kJ)


def step(prev, cur, elapsed=1.0, ceiling=1000.0, modulus=RANGE):
    return counter_step(prev, cur, elapsed_s=elapsed, joules_per_unit=UJ, max_power_w=ceiling,
                        modulus=modulus)


def test_an_increase_is_counted_with_its_power():
    s = step(1_000_000, 201_000_000)  # 200 J in 1 s
    assert (s.kind, s.delta, s.counted) == ("up", 200_000_000.0, True)
    assert s.implied_w == pytest.approx(200.0)
    assert step(5, 5).kind == "up" and step(5, 5).delta == 0.0


def test_a_wrap_within_the_ceiling_is_counted_across_it():
    s = step(RANGE - 100_000_000, 50_000_000)  # 150 J across the wrap in 1 s
    assert s.kind == "wrap" and s.delta == pytest.approx(150_000_000.0)


@pytest.mark.parametrize("prev,cur,elapsed,kind,why", [
    # the issue's case: above the declared range, then lower: once read as a wrap with a
    # negative delta of -4e9 units (-4000 W) that passed the ceiling
    (5_000_000_000, 0, 1.0, "implausible", "beyond the counter's range"),
    (-5, 1000, 1.0, "implausible", "the previous reading -5 is negative"),
    (1000, -5, 1.0, "implausible", "the current reading -5 is negative"),
    (10 ** 30, 1000, 1.0, "implausible", "beyond the counter's range"),
    # set to 0 by hand (or a hand-over edited to 0): 3.6 kW implied, more than the domain
    (0, 3_600_000_000, 1.0, "implausible", "more than the 1000 W the domain can draw"),
    # a reset to 0: as a wrap it would mean ~262 kW
    (500_000_000, 0, 1.0, "reset", "a wrap would mean"),
    # 700 s over a counter that can wrap every 262 s at the ceiling: how often is unknowable
    (100, 1100, 700.0, "implausible", "longer than the counter's shortest wrap period"),
])
def test_readings_that_lie_are_not_counted(prev, cur, elapsed, kind, why):
    modulus = 1_000_000_000 if prev == 5_000_000_000 else RANGE
    s = step(prev, cur, elapsed, modulus=modulus)
    assert (s.kind, s.delta, s.counted) == (kind, 0.0, False), s
    assert why in s.why


def test_the_issue_s_above_range_case_exactly():
    s = counter_step(5_000_000_000, 0, elapsed_s=1, joules_per_unit=1e-6, max_power_w=1000,
                     modulus=1_000_000_000)
    assert s.delta == 0.0 and not s.counted  # was: delta -4e9, kind 'wrap', implied -4000 W


def test_without_a_modulus_a_decrease_is_a_reset_and_without_a_ceiling_an_increase_counts():
    s = counter_step(900, 100, elapsed_s=1.0, joules_per_unit=1e-3, max_power_w=None)
    assert s.kind == "reset" and "went back from 900 to 100" in s.why
    assert counter_step(100, 10 ** 9, elapsed_s=1.0, joules_per_unit=1e-3, max_power_w=None).counted
    # with the GPU ceiling, an absurd increase is refused
    assert not counter_step(0, 10 ** 12, elapsed_s=1.0, joules_per_unit=1e-3,
                            max_power_w=2000.0).counted


def test_min_wrap_s():
    assert min_wrap_s(RANGE, UJ, 1000.0) == pytest.approx(262.143, rel=1e-3)
    assert min_wrap_s(None, UJ, 1000.0) is None and min_wrap_s(RANGE, UJ, None) is None
