"""The one Markdown table writer (shared/mdtable.py, tabulate) and the report's templates:
escaping, alignment, numbers kept as given; no module writes a table by hand."""
from __future__ import annotations

import pathlib
import re

import pytest

from mdtables import squeeze
from shared.mdtable import cell, markdown_table
from shared.report import html

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cells(line: str):
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_a_pipe_or_a_line_break_in_a_cell_stays_in_its_cell():
    text = markdown_table(["name", "a|b"], [["x | y", "one\ntwo"], ["`p|q`", "3"]])
    lines = text.split("\n")
    assert len(lines) == 4 and all(len(_cells(l)) == 2 for l in lines)
    assert _cells(lines[0]) == ["name", "a\\|b"]
    assert _cells(lines[2]) == ["x \\| y", "one two"]
    assert _cells(lines[3]) == ["`p\\|q`", "3"]  # escaped inside code spans too (GFM)
    assert cell("a|b\r\nc") == "a\\|b c" and cell(None) == "None"


def test_numbers_are_kept_as_the_caller_formatted_them():
    text = markdown_table(["x", "y", "z"], [["0.10", "1e-06", "007"], [1.50, 2, "-"]])
    assert squeeze(text) == "| x | y | z |\n|---|---|---|\n| 0.10 | 1e-06 | 007 |\n| 1.5 | 2 | - |"


def test_alignment_left_by_default_right_on_request():
    plain = markdown_table(["a", "b"], [["x", "1"]]).split("\n")
    assert ":" not in plain[1] and len({len(l) for l in plain}) == 1  # columns padded alike
    right = markdown_table(["a", "b"], [["x", "1"]], align=("left", "right")).split("\n")
    assert _cells(right[1])[0].startswith(":") and _cells(right[1])[1].endswith(":")
    assert right[2].endswith(" 1 |") and squeeze("\n".join(right)).split("\n")[1] == "|---|---:|"
    with pytest.raises(ValueError, match="align has 1 entries for 2 columns"):
        markdown_table(["a", "b"], [], align=("left",))
    with pytest.raises(ValueError, match=r"unknown alignment\(s\) \['middle'\]"):
        markdown_table(["a", "b"], [], align=("left", "middle"))


def test_an_empty_table_is_its_header():
    assert squeeze(markdown_table(["a", "b"], [])) == "| a | b |\n|---|---|"


def test_no_module_writes_a_markdown_table_by_hand():
    """Every table goes through shared.mdtable: a separator row spelled out in code, or a
    row joined with " | ", is a second writer."""
    hand = re.compile(r"""["'](\|?-{3}:?\|)|["']\| ?-{3}|\|---|" \| "\.join|' \| '\.join|"\| " \+|f["']\| """)
    found = []
    for top in ("shared", "benchmarks", "trials"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name == "mdtable.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if hand.search(line) and not line.lstrip().startswith("#"):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    # the energy meter's log line joins source descriptions with " | ": a sentence, not a table
    found = [f for f in found if "s.describe() for s in self._active" not in f]
    assert found == []


def test_the_report_page_escapes_as_html_escape_does():
    t = html.table(["run", "energy sources"], [["a<b> \"q\" 'x' & y", "not measured"]])
    env = html._TEMPLATES
    page = env.from_string('{% import "macros.html.j2" as m %}{{ m.table(t) }}').render(t=t)
    assert ('<td class="text">a&lt;b&gt; &quot;q&quot; &#x27;x&#x27; &amp; y</td>'
            '<td class="text missing">not measured</td>') in page
    assert page.startswith("<table>\n<thead><tr><th>run</th><th>energy sources</th></tr></thead>\n<tbody>\n<tr>")
    assert page.endswith("</tr>\n</tbody>\n</table>")


def test_the_missing_charts_line_joins_their_titles():
    class C:
        def __init__(self, name, title):
            self.name, self.title = name, title
    page = html._TEMPLATES.from_string('{% import "macros.html.j2" as m %}{{ m.missing(cs, why) }}').render(
        cs=[C("a", "A"), C("b", "B & b"), C("c", "C")], why="no <data>")
    assert page == ('<p class="missing" id="a"><b>A</b>, <b>B &amp; b</b> and <b>C</b>: not drawn, '
                    'no &lt;data&gt;</p>')
