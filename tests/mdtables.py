"""The Markdown tables the project writes (``shared.mdtable``, laid out by tabulate) read
back without their padding, so that a test states a row as ``| a | b |`` whatever the
widths of the other rows."""
from __future__ import annotations

import re


def squeeze(text: str) -> str:
    """``text`` with each table line's cells stripped (``|  a   | b |`` -> ``| a | b |``) and
    each separator line written ``|---|---:|`` (``---:``: right-aligned); other lines as they are."""
    out = []
    for line in text.split("\n"):
        if line.startswith("|") and line.rstrip().endswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.rstrip())[1:-1]]
            if all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                line = "|" + "".join("---:|" if c.endswith(":") and not c.startswith(":") else "---|"
                                     for c in cells)
            else:
                line = "| " + " | ".join(cells) + " |"
        out.append(line)
    return "\n".join(out)
