"""The figures Determined leaves out of TensorBoard, written there as scalars under stable tags.

Determined 0.38 writes only the ``training`` and ``validation`` groups to a trial's TensorBoard
(``Determined/<metric>``, ``Determined/val_<metric>``); custom groups reported through
``core_context.train.report_metrics(group=...)`` reach the WebUI but not TensorBoard. So every
custom group the trials report (``run``, ``energy``, ``mining``, ``resources``) and the
per-class IoU of each validation are also written, with the trial's own TensorBoard writer
(``PyTorchTrialContext.get_tensorboard_writer``: on a cluster Determined uploads its files
with the trial's TensorBoard; locally they go to ``<output dir>/tensorboard``), as

    <group>/<metric>          energy/energy_wh, energy/avg_power_w, run/peak_memory_mb, ...
    per_class_iou/<class>     the class's name (hyperparameter class_names) or its index

at the report's ``steps_completed``. Only numbers are written (a string such as
``energy/sources`` and a ``None``, a figure not measured, have no scalar: absent, never 0;
booleans are left out too). The tags are a public interface, as the metric names are.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

log = logging.getLogger("shared.tensorboard")

__all__ = ["add_scalars", "tag"]


def tag(group: str, name: str) -> str:
    """The TensorBoard tag of metric ``name`` of ``group``: ``energy/energy_wh``."""
    return f"{group}/{name}"


def _scalar(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def add_scalars(context: Any, group: str, steps_completed: int, metrics: Mapping[str, Any]) -> int:
    """Write the numeric ``metrics`` of ``group`` at ``steps_completed`` with ``context``'s
    TensorBoard writer and flush it; returns how many scalars were written. A failure is
    logged once per group and never stops training (TensorBoard is a view of figures that
    are reported elsewhere too)."""
    try:
        writer = context.get_tensorboard_writer()
        n = 0
        for name, value in metrics.items():
            if _scalar(value):
                writer.add_scalar(tag(group, name), float(value), int(steps_completed))
                n += 1
        writer.flush()
        return n
    except Exception as err:  # noqa: BLE001 - a view must not end the trial
        if group not in _FAILED:
            _FAILED.add(group)
            log.warning("TensorBoard: cannot write the %s group (%s: %s); it is still reported "
                        "to Determined and metrics.jsonl", group, type(err).__name__, err)
        return 0


_FAILED: set = set()
