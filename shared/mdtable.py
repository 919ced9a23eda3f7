"""Markdown tables: the one writer of every table the project prints or writes (the README's
energy blocks, the package READMEs, the reports' ``.md`` files, the demos' tables, the
benchmarks' sections of BENCHMARKS.md).

``tabulate`` (installed by determined) lays the table out; this module only fixes the one
format and the one escape, so that every table of the project reads the same way:

- cells are text as given (numbers are formatted by the caller: ``disable_numparse``, so
  "0.10" stays "0.10");
- a ``|`` inside a cell is written ``\\|`` (GitHub-flavoured Markdown's escape, also inside
  code spans), a line break as a space (a Markdown table row is one line);
- columns are left-aligned (``|---|`` under the header: GitHub's "github" format); a table
  with a right-aligned column (``align``) marks every column's alignment (``|:---|---:|``,
  the "pipe" format).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from tabulate import tabulate

ALIGNMENTS = ("left", "right", "center")


def cell(value: Any) -> str:
    """``value`` as the text of one Markdown table cell: ``str()``, ``|`` escaped, line
    breaks as spaces."""
    return str(value).replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]],
                   align: Optional[Sequence[str]] = None) -> str:
    """The Markdown table (no trailing newline) of ``header`` and ``rows``; ``align``: one
    of ``ALIGNMENTS`` per column (default: all left).

    Raises:
        ValueError: an ``align`` of another length than the header, or an unknown alignment.
    """
    if align is not None:
        if len(align) != len(header):
            raise ValueError(f"align has {len(align)} entries for {len(header)} columns")
        bad = [a for a in align if a not in ALIGNMENTS]
        if bad:
            raise ValueError(f"unknown alignment(s) {bad}; known: {', '.join(ALIGNMENTS)}")
    marked = align is not None and any(a != "left" for a in align)
    return tabulate([[cell(c) for c in row] for row in rows], headers=[cell(h) for h in header],
                    tablefmt="pipe" if marked else "github", disable_numparse=True,
                    colalign=tuple(align) if marked else None)
