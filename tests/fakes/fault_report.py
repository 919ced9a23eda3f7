"""The energy issue's fault scenarios on the virtual clock of tests/test_energy_faults.py, as a
table: the figure against the truth (a steady 400 W over the meter's window), ``bridged_s``,
coverage and ``lag_s``. A measuring tool, not a test::

    PYTHONPATH=. python tests/fakes/fault_report.py
"""
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from test_energy_faults import WATTS, BmcSimulator, FaultyRun, windows  # noqa: E402


def report(name, period, fault_at, end, call_s=None):
    with BmcSimulator(WATTS, "ilo") as sim:
        run = FaultyRun(sim, period, fault_at, call_s=call_s)
        snap = run.end(end)
    err = snap.joules["node"] / (WATTS * snap.duration_s) - 1
    print(f"| {name} | {100 * err:+.2f} % | {snap.bridged_s['redfish']:.1f} | "
          f"{snap.coverage['redfish']:.2f} | {snap.lag_s['redfish']:.2f} |")


def main() -> None:
    print("| scenario | error vs truth | bridged_s | coverage | lag_s |")
    print("|---|---|---|---|---|")
    report("500s from 10 to 30 s, end at 40 s, 1 s period", 1.0, windows([(10, 30, "500")]), 40)
    report("500s from 30 to 90 s, end at 100 s, 5 s period", 5.0, windows([(30, 90, "500")]), 100)
    spec = [(5, 8, "500"), (12, 15, "garbage"), (20, 26, "timeout"), (30, 33, "trickle"),
            (38, 44, "zero"), (50, 52, "500"), (58, 64, "timeout"), (70, 75, "garbage")]
    report("eight mixed windows, end at 85 s, 1 s period", 1.0, windows(spec), 85)
    rng, seen = random.Random(7), {}

    def coin(t):
        key = round(t, 3)
        if key not in seen:
            seen[key] = "500" if rng.random() < 0.5 else None
        return seen[key]
    report("50 % random 500s, 60 s, 1 s period", 1.0, coin, 60)
    report("zero watts for 10 s of 60 s, 1 s period", 1.0, windows([(20, 30, "zero")]), 60)
    report("every call takes 10 s, 5 s period, 60 s", 5.0, lambda t: None, 60,
           call_s=lambda fault: 10.0)


if __name__ == "__main__":
    main()
