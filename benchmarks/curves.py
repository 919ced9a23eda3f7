"""Recorded learning curves: what the search replay (``benchmarks.search_replay``) runs ASHA on.

    python -m benchmarks.curves record [--out benchmarks/results/curves] [--searches ...]
                                       [--models ...] [--work-dir DIR] [--force] [--dry-run]
    python -m benchmarks.curves convert RUN_DIR [RUN_DIR ...] --search NAME
                                       [--out benchmarks/results/curves] [--source-note TEXT]
    python -m benchmarks.curves show [--curves benchmarks/results/curves]

A curve is one trial: at every validation its batches, elapsed seconds, energy (Wh) and
validation metrics, with the trial's target (metric, value, direction), its hyperparameters and
where the figures come from. One JSON file per trial under ``<out>/<search>/<trial>.json``; a
*search* is a set of trials the replay searches over together (same data, same target).
``<out>/manifest.json`` lists every recording (the command, the commit, the machine, the date
and the files it wrote), so the set is versioned with the repository and can grow: a GPU run
(``record`` on the device, or ``convert`` of its run directories) adds a search beside the
others.

**Energy.** From the run's energy counter where it had one (the validation metric
``energy_wh``: NVML, RAPL, ...). Without one (this project's 2-core CPU machines have no power
counter) it is a fixed nominal power times time, so that energy is proportional to time:
``NOMINAL_POWER_W`` (10 W, about one busy server core's share of its package power; the replay
compares trials with one another, so the constant scales every figure alike). ``record``
stamps each validation with the trial process's CPU seconds since the trial's first report and
uses those: on a machine shared by several people, wall time measures the wait for a core as
much as the work (the grid's pilot: 1.5-3x the CPU time for the same batches), CPU time tracks
the work. ``convert`` of a run that has no counter and no CPU stamps uses its elapsed wall time
(the energy group's ``duration_s``). Each curve says which (``energy_source``).

**The recorded grid** (``GRIDS``): the four segmentation models on the synthetic ADE20K-format
set (``shared.data.synthetic``, target 70 mIoU) and the rare-objects recipe on its synthetic set
(``shared.data.synthetic_rare``, target 80 % object IoU), at learning rates from too small to
too large and two batch sizes (DeepLab v3+, ten times slower than the others here: three
learning rates at one batch size), all run through their real ``train.py`` entry (Determined's
local mode) with the model's ``asha.yaml`` (the energy search's space; ``asha_energy.yaml``
refuses to start where no energy counter can measure) and ``--set`` overrides that make them
CPU-sized (32 px crops, small networks: see ``GRIDS``), one trial at a time with one thread,
validated every 10 batches for 160 batches: 16 validations, the search configs' count, so the
replay's rungs (160 / 16, 160 / 4, 160) fall on the 1st, 4th and 16th validation as the
configs' (1000, 4000 and 16000 of 16000 batches, validated every 1000) do. 53 trials, about 40
minutes on this project's shared 2-core machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from shared import recipes

from benchmarks.curve_data import (CPU_STAMPS, DEFAULT_DIR, NOMINAL_POWER_W, ROOT, CurveError,
                                   Recording, curve_from_run, group_by_search, load_curves)


# ============================================================================ the recorded grid
@dataclasses.dataclass(frozen=True)
class SearchGrid:
    """One search of the grid: a data set, a target, and trials = models x lrs x batch sizes."""

    name: str
    #: "segmentation" (shared.data.synthetic) or "rare_objects" (shared.data.synthetic_rare)
    data: str
    data_args: Mapping[str, Any]
    #: model -> its own --set overrides
    models: Mapping[str, Tuple[str, ...]]
    #: --set overrides of every trial ("{work}" is replaced by the work directory)
    common: Tuple[str, ...]
    target_metric: str
    target: float
    lrs: Tuple[float, ...]
    batch_sizes: Tuple[int, ...]
    batches: int = 160
    validation_period: int = 10
    #: model -> its learning rates and batch sizes where they differ from ``lrs`` and
    #: ``batch_sizes`` (a model too slow for all of them)
    model_lrs: Mapping[str, Tuple[float, ...]] = dataclasses.field(default_factory=dict)
    model_batch_sizes: Mapping[str, Tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def trials(self) -> List[Tuple[str, str, float, int]]:
        """(trial name, model, lr, batch size) for every trial, in the order of ``models``."""
        out = []
        for model in self.models:
            for lr in self.model_lrs.get(model, self.lrs):
                for bs in self.model_batch_sizes.get(model, self.batch_sizes):
                    out.append((f"{model}-lr{lr:g}-b{bs}", model, lr, bs))
        return out


_SEG_COMMON = ("crop_size=32", "scale=[64,32]", "num_classes=6", "workers_per_slot=0",
               "val_batch_size_per_slot=8", "base_batch_size=8", "warmup_batches=10",
               "report_period=10", "weight_decay=0.01", "seed=0")
_RARE_COMMON = ("tile_size=32", "base_batch_size=16", "workers_per_slot=0",
                "val_batch_size_per_slot=64", "unet_base_channels=8", "unet_depth=2",
                "dropout=0.1", "pos_weight=1.0", "weight_decay=1e-4", "warmup_batches=10",
                "report_period=10", "mine_period=40", "mine_tiles=64", "hard_negative_pool=64",
                "early_stop_patience=null", "seed=0", "tile_cache_dir={work}/tile-cache")

#: The grid recorded on this project's CPU machines (``record`` without --searches).
GRIDS: Dict[str, SearchGrid] = {g.name: g for g in (
    SearchGrid(
        name="cpu-synthetic-seg", data="segmentation",
        data_args={"num_train": 200, "num_val": 24, "num_classes": 6, "min_size": 48,
                   "max_size": 96, "seed": 5},
        models={"unet": ("unet_base_channels=16", "unet_depth=3"),
                "segformer": ("segformer_variant=b0", "drop_path_rate=0.0"),
                "segmenter": ("segmenter_backbone=vit_tiny_patch16_224", "drop_path_rate=0.0",
                              "val_crop_size=32", "val_stride=32"),
                # ResNet-50 is the smallest backbone the recipe has: 0.5 s of CPU a batch of
                # 4 at 32 px here (0.9 s a batch of 8), ten times the others: three trials
                "deeplabv3plus": ("deeplab_backbone=resnet50",)},
        common=_SEG_COMMON, target_metric="miou", target=70.0,
        lrs=(3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2), batch_sizes=(4, 8),
        model_lrs={"deeplabv3plus": (1e-4, 1e-3, 1e-2)},
        model_batch_sizes={"deeplabv3plus": (4,)}),
    SearchGrid(
        name="cpu-synthetic-rare", data="rare_objects",
        data_args={"num_train": 12, "num_val": 4, "size": 192, "seed": 0},
        models={"rare_objects": ()},
        # The target is the object class's pixel IoU, not the recipe's validation loss: on
        # these whole validation images (nearly all background) a network that finds no object
        # has a validation loss of 0.03-0.14, one at 88 % IoU 0.31 (this grid's first recording)
        common=_RARE_COMMON, target_metric="iou", target=80.0,
        lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), batch_sizes=(8, 16)),
)}


def ensure_data(grid: SearchGrid, work: pathlib.Path) -> pathlib.Path:
    """The grid's data set under ``work`` (generated once; a marker says it is complete)."""
    data = work / f"data-{grid.name}"
    marker = data / "curves-data.json"
    wanted = {"data": grid.data, **grid.data_args}
    if marker.is_file():
        if json.loads(marker.read_text()) != wanted:
            raise CurveError(f"{data} holds a data set with other parameters; delete it or use "
                             f"another --work-dir")
        return data
    if data.exists() and any(data.iterdir()):
        raise CurveError(f"{data}: an incomplete data set (no {marker.name}); delete it")
    if grid.data == "segmentation":
        from shared.data.synthetic import generate
        generate(data, **grid.data_args)
    else:
        from shared.data.synthetic_rare import generate as generate_rare
        generate_rare(data, **grid.data_args)
    marker.write_text(json.dumps(wanted))
    return data


def trial_command(grid: SearchGrid, model: str, lr: float, bs: int, data: pathlib.Path,
                  run_dir: pathlib.Path, work: pathlib.Path) -> List[str]:
    """The command that trains one trial of the grid (through ``run-trial``, which stamps the
    CPU time at each validation)."""
    recipe = recipes.get(model)
    sets = [s.replace("{work}", str(work)) for s in grid.common]
    sets += [*grid.models[model], f"lr={lr:g}", f"global_batch_size={bs}",
             f"validation_period={grid.validation_period}",
             f"checkpoint_period={grid.batches * 10}", "stop_at_target=false",
             f"target_metric={grid.target_metric}", f"target_value={grid.target:g}"]
    return [sys.executable, "-m", "benchmarks.curves", "run-trial", model, "--",
            "--config", str(recipe.configs_dir / "asha.yaml"), "--data-dir", str(data),
            "--output-dir", str(run_dir), "--batches", str(grid.batches), "--set", *sets]


def run_trial(model: str, argv: Sequence[str]) -> int:
    """Train one trial through the recipe's real entry (Determined's local mode), writing
    ``cpu_times.jsonl`` beside its metrics: the process's CPU seconds at each validation,
    counted from the trial's first report (after the imports)."""
    from shared import runlog
    from shared.launch import main as launch

    out = pathlib.Path(argv[list(argv).index("--output-dir") + 1]).resolve()
    origin: List[float] = []

    def stamp(group: str, steps: int, metrics: Mapping[str, Any]) -> None:
        now = time.process_time()
        if not origin:
            origin.append(now)
        if group == "validation":
            with (out / CPU_STAMPS).open("a") as f:
                f.write(json.dumps({"steps_completed": int(steps),
                                    "cpu_s": round(now - origin[0], 4)}) + "\n")

    runlog.ATTACH_LISTENERS.append(stamp)
    return launch(recipes.get(model).trial_class(), list(argv))


def record(args: argparse.Namespace, command: str) -> int:
    out: pathlib.Path = args.out.resolve()
    work: pathlib.Path = args.work_dir.resolve()
    grids = [GRIDS[n] for n in (args.searches or list(GRIDS))]
    plan = [(g, *t) for g in grids for t in g.trials()
            if (not args.models or t[1] in args.models)
            and (not args.trials or any(fnmatch.fnmatch(t[0], p) for p in args.trials))]
    if args.dry_run:
        for g, name, model, lr, bs in plan:
            print(f"{g.name}/{name}")
        print(f"{len(plan)} trials")
        return 0
    recording = Recording(out, command, note=args.note)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    failed = []
    for n, (grid, name, model, lr, bs) in enumerate(plan, 1):
        target_file = out / grid.name / f"{name}.json"
        if target_file.exists() and not args.force:
            print(f"[{n}/{len(plan)}] {grid.name}/{name}: recorded already (--force records again)",
                  flush=True)
            continue
        data = ensure_data(grid, work)
        run_dir = work / "runs" / grid.name / name
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)
        cmd = trial_command(grid, model, lr, bs, data, run_dir, work)
        t = time.monotonic()
        log_path = work / "runs" / grid.name / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log_file:
            rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            curve = curve_from_run(run_dir, grid.name, name, hparams={"lr_given": lr, "batch": bs},
                                   max_batches=grid.batches,
                                   source=f"python -m benchmarks.curves record (trial {name})")
        except CurveError as e:
            curve = None
            why = str(e)
        if rc != 0:
            # A trial that fails (a diverged loss: too large a learning rate) is part of the
            # grid: its curve up to its last validation, marked as ended in an error.
            lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
            reason = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln),
                          lines[-1] if lines else f"exit status {rc}")
            if curve is not None and curve.ended != "error":
                curve.ended = "error"
            if curve is not None:
                curve.note = f"exit status {rc}: {reason.strip()[:300]}"
            else:
                why = f"exit status {rc}: {reason.strip()[:300]}"
        if curve is None:
            failed.append(name)
            recording.fail(f"{grid.name}/{name}", why)
            print(f"[{n}/{len(plan)}] {grid.name}/{name}: no curve ({why}); log: {log_path}",
                  flush=True)
            continue
        recording.add(curve)
        reached = curve.first_reaching()
        print(f"[{n}/{len(plan)}] {grid.name}/{name}: {time.monotonic() - t:.0f} s, "
              f"{grid.target_metric} {curve.values()[-1]}, "
              + (f"target at batch {curve.validations[reached].batches}" if reached is not None
                 else "target not reached"), flush=True)
    if failed:
        print(f"{len(failed)} trials failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def convert(args: argparse.Namespace, command: str) -> int:
    recording = Recording(args.out.resolve(), command, note=args.note)
    names = set()
    for run_dir in args.run_dirs:
        name = run_dir.resolve().name
        if args.prefix_parent:
            name = f"{run_dir.resolve().parent.name}-{name}"
        if name in names:
            raise CurveError(f"{run_dir}: two runs named {name!r}; use --prefix-parent")
        names.add(name)
        rel = os.path.relpath(run_dir.resolve(), ROOT)
        curve = curve_from_run(run_dir, args.search, name, nominal_power_w=args.nominal_power_w,
                               max_batches=args.max_batches, source=rel)
        path = recording.add(curve)
        print(f"{path}: {len(curve.validations)} validations, {curve.energy_source}, "
              f"energy to target {curve.energy_to_target_wh()}")
    return 0


def show(args: argparse.Namespace) -> int:
    curves = load_curves(args.curves)
    for search, members in group_by_search(curves).items():
        never = sum(c.first_reaching() is None for c in members)
        first = members[0]
        print(f"{search}: {len(members)} trials, target {first.target_metric} "
              f"{'<=' if first.smaller_is_better else '>='} {first.target:g}, "
              f"{never} never reach it, energy {first.energy_source}")
        for c in members:
            ett = c.energy_to_target_wh()
            vals = [v for v in c.values() if v is not None]
            best = (min(vals) if c.smaller_is_better else max(vals)) if vals else None
            print(f"  {c.name:32s} {len(c.validations):3d} validations  best "
                  f"{'-' if best is None else f'{best:.4g}'}  energy {c.validations[-1].energy_wh:.4g} Wh  "
                  f"to target {'never' if ett is None else f'{ett:.4g} Wh'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run-trial"]:  # internal: one trial of ``record``, in its own process
        if len(argv) < 3 or argv[2] != "--":
            print("usage: python -m benchmarks.curves run-trial MODEL -- TRAIN_ARGS...",
                  file=sys.stderr)
            return 2
        return run_trial(argv[1], argv[3:])
    ap = argparse.ArgumentParser(prog="python -m benchmarks.curves",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="train the grid's trials and record their curves")
    rec.add_argument("--out", type=pathlib.Path, default=DEFAULT_DIR)
    rec.add_argument("--searches", nargs="+", choices=list(GRIDS))
    rec.add_argument("--models", nargs="+", help="only these models' trials")
    rec.add_argument("--trials", nargs="+", metavar="PATTERN",
                     help="only the trials whose name matches (shell patterns: 'unet-lr0.001-*')")
    rec.add_argument("--work-dir", type=pathlib.Path, default=pathlib.Path("/tmp/curves-work"),
                     help="data sets and runs (not kept in the repository)")
    rec.add_argument("--force", action="store_true", help="record trials already recorded again")
    rec.add_argument("--dry-run", action="store_true", help="list the trials and stop")
    rec.add_argument("--note", help="a line for the manifest")
    con = sub.add_parser("convert", help="turn finished run directories into curves")
    con.add_argument("run_dirs", nargs="+", type=pathlib.Path)
    con.add_argument("--search", required=True, help="the search these trials belong to")
    con.add_argument("--out", type=pathlib.Path, default=DEFAULT_DIR)
    con.add_argument("--max-batches", type=int,
                     help="the runs' planned length (default: the batches each trained)")
    con.add_argument("--nominal-power-w", type=float, default=NOMINAL_POWER_W,
                     help="power for runs without an energy counter (default %(default)s W)")
    con.add_argument("--prefix-parent", action="store_true",
                     help="name each trial <parent dir>-<run dir> (runs from several folders)")
    con.add_argument("--note", help="a line for the manifest")
    sh = sub.add_parser("show", help="list the recorded searches and trials")
    sh.add_argument("--curves", type=pathlib.Path, default=DEFAULT_DIR)
    args = ap.parse_args(argv)
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ("OMP_NUM_THREADS",) if k in os.environ]
    command = " ".join(env + [shlex.join(["python", "-m", "benchmarks.curves", *argv])])
    try:
        if args.cmd == "record":
            return record(args, command)
        if args.cmd == "convert":
            return convert(args, command)
        return show(args)
    except CurveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
