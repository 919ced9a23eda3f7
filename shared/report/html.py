"""``index.html``: one self-contained page (charts embedded as base64 data URIs, inline CSS,
no script, nothing fetched), so it can be mailed or attached to a ticket as a single file.

The page is the Jinja2 template ``templates/index.html.j2`` (its pieces, a table, a chart, a
section, in ``templates/macros.html.j2``); this module computes what fills it.
"""
from __future__ import annotations

import base64
import datetime
import html
from typing import Any, Dict, List, Optional, Sequence

import jinja2
from markupsafe import Markup

from .load import Target
from .plots import Chart, not_drawn
from .tables import (DISPLAY_HEADER, NOT_MEASURED, NOT_REACHED, SCALING_HEADER, SPLIT_COLUMN,
                     Row, ScalingPoint, Section, display_cells, scaling_cells, target_sentence)

_TEXT_COLUMNS = {"run", "model", "target reached", SPLIT_COLUMN, "energy sources", "notes",
                 "best", "worst"}


def _escape(value: Any) -> Any:
    # Every value a template prints is escaped as the standard library's html.escape does
    # (&quot;, &#x27;), the page's escaping before it was a template; markup a template made
    # (a macro's output, a rendered section) passes as it is.
    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


#: autoescape on, through _escape (finalize runs before the escaping, which leaves Markup alone)
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("shared.report", "templates"),
                                autoescape=True, finalize=_escape, undefined=jinja2.StrictUndefined,
                                trim_blocks=True, lstrip_blocks=True)


def render_template(name: str, **context: Any) -> Markup:
    """The template ``templates/<name>`` filled with ``context``, as markup."""
    return Markup(_TEMPLATES.get_template(name).render(**context))


def _classes(column: str, value: str) -> str:
    """The CSS classes of a table cell: text columns left-aligned, missing figures greyed,
    a warning highlighted."""
    cls = []
    if column in _TEXT_COLUMNS:
        cls.append("text")
    if value in (NOT_REACHED, NOT_MEASURED) or value.startswith(NOT_MEASURED):
        cls.append("missing")
    if "\u26a0" in value:
        cls.append("warn")
    return " ".join(cls)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Dict[str, Any]:
    """A table for the templates' ``table`` macro: the header and each cell with its classes."""
    return {"header": list(header),
            "rows": [[(v, _classes(h, v)) for h, v in zip(header, row)] for row in rows]}


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(c: Chart) -> Dict[str, Any]:
    """A drawn chart for the templates' ``figure`` macro (its PNG read and embedded)."""
    return {"name": c.name, "title": c.title, "caption": c.caption, "left_out": list(c.left_out),
            "src": data_uri(c.path.read_bytes())}


def _section(section: Section) -> Dict[str, Any]:
    return {"name": section.name, "title": section.title, "intro": section.intro,
            "table": table(section.header, section.rows) if section.rows else None,
            "notes": section.notes}


def render(rows: Sequence[Row], points: Sequence[ScalingPoint], charts: Sequence[Chart],
           target: Optional[Target], title: str = "Time and energy to target",
           generated: Optional[datetime.datetime] = None, extra: str = "",
           sections: Sequence[Section] = ()) -> str:
    """The whole page as a string; reads the charts' PNG files to embed them. Charts with
    data come first, then one line for each chart no run had data for. ``sections``: further
    tables between the comparison and the charts; ``extra``: a further section (HTML) placed before the list of
    runs."""
    generated = generated or datetime.datetime.now().astimezone()
    return _TEMPLATES.get_template("index.html.j2").render(
        title=title, generated=generated.strftime("%Y-%m-%d %H:%M %Z"), runs=rows,
        target_sentence=target_sentence(target),
        comparison=table(DISPLAY_HEADER, [[display_cells(r)[k] for k in DISPLAY_HEADER] for r in rows]),
        recomputed=any(r.target_basis == "recomputed" for r in rows),
        sections=[_section(s) for s in sections],
        figures=[figure(c) for c in charts if c.name != "scaling" and c.drawn],
        missing=not_drawn(charts),
        scaling=table(SCALING_HEADER, [scaling_cells(p) for p in points]) if points else None,
        scaling_figures=[figure(c) for c in charts if c.name == "scaling"] if points else [],
        extra=Markup(extra))
