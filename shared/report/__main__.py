"""``python -m shared.report``: see docs/reports.md."""
from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from typing import List, Optional

from shared.mdtable import markdown_table

from . import ReportError, build_report, load_inputs
from .plots import not_drawn, not_drawn_line
from .tables import DISPLAY_HEADER, display_cells


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m shared.report",
        description="Time and energy to a target (mIoU or any validation metric), scaling and "
                    "charts, from local run "
                    "directories and/or Determined experiments.",
        epilog="examples:\n  python -m shared.report runs/unet runs/segformer --out report/\n"
               "  python -m shared.report --master https://det:8080 --user alice 12 15 --out report/\n"
               "The password comes from DET_PASS or a token cached by 'det user login', never "
               "from the command line.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="RUN_DIR|EXPERIMENT_ID",
                    help="a local run directory (holding metrics.jsonl, or whose subdirectories "
                         "do), or a Determined experiment ID (every trial is reported)")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("report"),
                    help="output directory (default: report)")
    ap.add_argument("--master", help="Determined master URL (default: DET_MASTER)")
    ap.add_argument("--user", help="Determined user (default: DET_USER, or the user of "
                                   "'det user login')")
    ap.add_argument("--target-miou", type=float,
                    help="compare at this validation mIoU (default: the runs' own target)")
    ap.add_argument("--target-value", type=float,
                    help="compare at this value of the runs' target metric (or of --target-metric), "
                         "in that metric's direction")
    ap.add_argument("--target-metric",
                    help="with --target-value: the validation metric to compare at (default: the "
                         "runs' own target metric)")
    ap.add_argument("--label", action="append", metavar="NAME",
                    help="name a run in tables and legends, once per run in the order the runs "
                         "are listed (default: the run's directory or trial, followed by the "
                         "hyperparameters that differ between runs of one model)")
    ap.add_argument("--title", default="Time and energy to target", help="report title")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        runs = load_inputs(args.inputs, master=args.master, user=args.user, labels=args.label)
        report = build_report(runs, args.out, target_miou=args.target_miou, title=args.title,
                              target_value=args.target_value, target_metric=args.target_metric)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(DISPLAY_HEADER[:-1],
                         [[display_cells(r)[k] for k in DISPLAY_HEADER[:-1]] for r in report.rows]))
    for r in report.rows:
        if r.notes:
            print(f"  {r.label}: " + "; ".join(r.notes))
    for section in report.sections:
        print("\n" + "\n".join(section.markdown()).rstrip())
    for charts, why in not_drawn(report.charts):
        print(f"  {not_drawn_line(charts, why)}")
    print(f"\nwrote {', '.join(p.name for p in report.files)} to {report.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
