"""Markdown tables of the energy library's settings, written from the declarations
(``shared.energy.options`` and each source class), for the README and the customer packages.
Documentation, not measurement: outside the energy library, which imports nothing of the
project (this module renders with the project's one table writer, ``shared.mdtable``).

- ``options_table_markdown()``: every ``energy.*`` option, its default, allowed values, meaning.
- ``environment_table_markdown()``: every ``ENERGY_*`` variable, who reads it, its meaning.
- ``sources_table_markdown()``: every source, what it covers, who reads it, when ``auto``
  tries it, how it measures.

A Markdown file carries each table between two markers (``<!-- BEGIN energy-options ... -->``
and ``<!-- END energy-options -->``); ``python -m shared.energy_docs README.md`` rewrites them,
``--check`` only says whether they are current (the tests run that check on the README).
"""
from __future__ import annotations

import argparse
import pathlib
import re
import sys
from typing import Callable, Dict, List, Optional, Sequence

from shared.mdtable import markdown_table

from shared.energy.options import all_env_vars, all_options
from shared.energy.schema import value_text
from shared.energy.sources import registered_sources

GENERAL = "core"  # who reads a general variable or option, in the tables


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return markdown_table(header, rows) + "\n"


def options_table_markdown() -> str:
    """Every key of the ``energy`` hyperparameter: | option | default | allowed | meaning |,
    the general options first, then each source's in priority order."""
    rows = []
    names = [cls.name for cls in registered_sources()]
    for owner, option in all_options():
        meaning = option.help if owner == "general" else f"{owner}: {option.help}"
        rows.append([f"`energy.{option.name}`", f"`{value_text(option.default)}`",
                     option.allowed_text(names), meaning])
    return _table(["option", "default", "allowed", "meaning"], rows)


def environment_table_markdown() -> str:
    """Every ``ENERGY_*`` variable: | variable | read by | meaning |."""
    rows = [[f"`{var.name}`", GENERAL if owner == "general" else f"`{owner}`", var.doc]
            for owner, var in all_env_vars()]
    return _table(["variable", "read by", "meaning"], rows)


def sources_table_markdown() -> str:
    """Every registered source: | name | covers | read by | `auto` tries it | how |."""
    rows = []
    for cls in registered_sources():
        covers = ", ".join(f"{c} (`{c}_wh`)" for c in cls.covers)
        reader = ("each training process, for its own GPUs" if cls.scope == "device"
                  else "one process per node (local rank 0)")
        auto = f"when `{cls.auto_env}` is set" if cls.auto_env else "always"
        rows.append([f"`{cls.name}`", covers, reader, auto, cls.summary])
    return _table(["name", "covers", "read by", "`auto` tries it", "how"], rows)


#: block name -> the function that writes it
TABLES: Dict[str, Callable[[], str]] = {
    "energy-sources": sources_table_markdown,
    "energy-options": options_table_markdown,
    "energy-environment": environment_table_markdown,
}

_BLOCK_RE = re.compile(r"(<!-- BEGIN (?P<name>[\w-]+)[^\n]*-->\n)(?P<body>.*?)(<!-- END (?P=name) -->)",
                       re.S)


def update_markdown(text: str, required: Sequence[str] = ()) -> str:
    """``text`` with every generated block rewritten from the declarations.

    Raises:
        ValueError: a block names no known table, or a name of ``required`` has no block.
    """
    found: List[str] = []

    def fill(match: "re.Match[str]") -> str:
        name = match.group("name")
        if name not in TABLES:
            raise ValueError(f"generated block {name!r}: no such table (known: "
                             f"{', '.join(TABLES)})")
        found.append(name)
        return match.group(1) + TABLES[name]() + match.group(4)

    out = _BLOCK_RE.sub(fill, text)
    missing = [name for name in required if name not in found]
    if missing:
        raise ValueError(f"no generated block for {', '.join(missing)} (expected a line "
                         f"'<!-- BEGIN {missing[0]} -->' and later '<!-- END {missing[0]} -->')")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.energy_docs",
        description="Rewrite the energy tables between their markers in Markdown files.")
    parser.add_argument("files", nargs="+", type=pathlib.Path)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a file's tables are not current")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        new = update_markdown(text)
        if new != text:
            stale.append(str(path))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if stale:
        verb = "not current" if args.check else "rewritten"
        print(f"energy tables {verb}: {', '.join(stale)}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
