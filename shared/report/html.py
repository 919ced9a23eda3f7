"""``index.html``: one self-contained page (charts embedded as base64 data URIs, inline CSS,
no script, nothing fetched), so it can be mailed or attached to a ticket as a single file."""
from __future__ import annotations

import base64
import datetime
from html import escape
from typing import List, Optional, Sequence

from .load import Target
from .plots import Chart, join_titles, not_drawn
from .tables import (DISPLAY_HEADER, NOT_MEASURED, NOT_REACHED, SCALING_HEADER, SPLIT_COLUMN,
                     Row, ScalingPoint, Section, display_cells, scaling_cells, target_sentence)

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 12.5px; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td.text { text-align: left; }
td.missing { color: #888; font-style: italic; } td.warn { background: #fff4d6; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12.5px; color: #444; max-width: 80em; }
.small { font-size: 12px; color: #555; }
p.missing { color: #555; border-left: 3px solid #ccc; padding-left: .6em; max-width: 80em; }
"""

_TEXT_COLUMNS = {"run", "model", "target reached", SPLIT_COLUMN, "energy sources", "notes",
                 "best", "worst"}


def _cell(column: str, value: str) -> str:
    cls = []
    if column in _TEXT_COLUMNS:
        cls.append("text")
    if value in (NOT_REACHED, NOT_MEASURED) or value.startswith(NOT_MEASURED):
        cls.append("missing")
    if "\u26a0" in value:
        cls.append("warn")
    attr = f' class="{" ".join(cls)}"' if cls else ""
    return f"<td{attr}>{escape(value)}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(_cell(h, v) for h, v in zip(header, row)) + "</tr>"
                     for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def section_html(section: Section) -> str:
    """One further table of the report (per-class IoU, object metrics)."""
    parts = [f'<h2 id="{escape(section.name)}">{escape(section.title)}</h2>',
             f'<p class="small">{escape(section.intro)}</p>']
    if section.rows:
        parts.append(_table(section.header, section.rows))
    parts += [f'<p class="small">{escape(n)}</p>' for n in section.notes]
    return "\n".join(parts)


def render(rows: Sequence[Row], points: Sequence[ScalingPoint], charts: Sequence[Chart],
           target: Optional[Target], title: str = "Time and energy to target",
           generated: Optional[datetime.datetime] = None, extra: str = "",
           sections: Sequence[Section] = ()) -> str:
    """The whole page as a string; reads the charts' PNG files to embed them. Charts with
    data come first, then one line for each chart no run had data for. ``sections``: further
    tables between the comparison and the charts; ``extra``: a further section (HTML) placed before the list of
    runs."""
    generated = generated or datetime.datetime.now().astimezone()
    parts: List[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="small">Generated {escape(generated.strftime("%Y-%m-%d %H:%M %Z"))} by '
        f"<code>python -m shared.report</code> from {len(rows)} run(s).</p>",
        f"<p>{escape(target_sentence(target))}</p>",
        _table(DISPLAY_HEADER, [[display_cells(r)[k] for k in DISPLAY_HEADER] for r in rows]),
    ]
    if any(r.target_basis == "recomputed" for r in rows):
        parts.append('<p class="small">\u2020 recomputed from the validation series for this '
                     "target (time on the wall-time axis, pauses removed); other rows are the "
                     "trial's own figures.</p>")
    parts.append(
        '<p class="small">Time and energy to target: at the first validation whose target metric '
        "reaches the target. Avg power and J/img: whole measured run (J/img = energy / (batches &times; "
        "global_batch_size), validation and start-up included). Facility and CO2e: whole run, "
        "when a PUE / carbon intensity was configured. <i>not measured</i>: no energy source "
        "measured it (never 0). \u26a0 coverage below 1: part of the run or of its nodes was not "
        "measured.</p>")
    parts += [section_html(sec) for sec in sections]
    scaling = [c for c in charts if c.name == "scaling"]
    parts += [_figure(c) for c in charts if c.name != "scaling" and c.drawn]
    parts += [_missing(cs, why) for cs, why in not_drawn(charts)]
    if points:
        parts.append("<h2>Scaling</h2>")
        parts.append('<p class="small">speed-up = T(n0) / T(n), efficiency = speed-up / (n / n0), '
                     "n0 = the smallest slot count run; T = time to target (mean of the runs at "
                     "a slot count that reached it).</p>")
        parts.append(_table(SCALING_HEADER, [scaling_cells(p) for p in points]))
        parts += [_figure(c) for c in scaling]
    if extra:
        parts.append(extra)
    parts.append("<h2>Runs</h2><ul>")
    parts += [f"<li><b>{escape(r.label)}</b>: {escape(r.source)}</li>" for r in rows]
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"


def _missing(charts: Sequence[Chart], why: str) -> str:
    """Charts without data, one line saying why (not an empty frame)."""
    names = join_titles([f"<b>{escape(c.title)}</b>" for c in charts])
    return (f'<p class="missing" id="{escape(charts[0].name)}">{names}: not drawn, '
            f"{escape(why)}</p>")


def _figure(c: Chart) -> str:
    """A drawn chart as an embedded figure."""
    note = ""
    if c.left_out:
        note = f" Not shown (no data): {escape(', '.join(c.left_out))}."
    return (f'<figure id="{escape(c.name)}"><img alt="{escape(c.title)}" '
            f'src="{data_uri(c.path.read_bytes())}">'
            f"<figcaption><b>{escape(c.title)}.</b> {escape(c.caption)}{note}</figcaption></figure>")
