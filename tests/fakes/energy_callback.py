"""The energy callback as a test builds it around a fake trial context: its reports go to the
fake Core API's ``train.report_metrics`` (the trial passes ``determined_compat.report_group``,
which does the same through Determined's own context)."""
from __future__ import annotations

from typing import Any

from shared.energy.callback import EnergyCallback


def energy_callback(ctx: Any, *args: Any, **kwargs: Any) -> EnergyCallback:
    def report(group: str, steps_completed: int, metrics: dict) -> None:
        ctx._core.train.report_metrics(group=group, steps_completed=steps_completed,
                                       metrics=metrics)
    return EnergyCallback(ctx, *args, report=report, **kwargs)
