"""Rendering the report through the Jinja2 templates `srlm/templates/report.html.j2` and `report.md.j2`.

Both outputs get the same context, built here from `collect_report_data`'s data: the overview, the tables of
srlm.report.tables and the example pairs, already formatted as strings. The HTML page also gets the charts of
srlm.report.charts. The HTML environment autoescapes: every value from the run (model output above all) is escaped
by the template, so a response containing `<script>` shows as text; only the charts, which escape their own text,
are passed as `Markup`. The Markdown environment does not autoescape; its cells go through `_md_cell`.
"""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path

import jinja2
from markupsafe import Markup

from srlm.report.charts import _plots_for
from srlm.report.tables import (HARNESS_NOTE, IFEVAL_NOTE, SELECTION_NOTE, _TABLES, _fmt, _harness_table,
                                _ifeval_table, _iteration_table, _overview, _selection_table)

EXAMPLE_CHARS = 4000  # longer example texts are cut (and say so) to keep the page readable


@functools.lru_cache(maxsize=None)
def _environment(autoescape: bool) -> jinja2.Environment:
    """The templates' environment, loaded from the installed package (a wheel too): HTML autoescaped, Markdown not."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("srlm", "templates"), autoescape=autoescape,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["md_cell"] = _md_cell
    return env


def _md_cell(text: str) -> str:
    """A Markdown table cell (or line) that shows as the text: <, > and & escaped, | escaped, newlines as spaces."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _fence(text: str) -> str:
    """The fence of a Markdown code block that the text cannot close: one backtick more than its longest run."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cut(text: str) -> str:
    if len(text) <= EXAMPLE_CHARS:
        return text
    return text[:EXAMPLE_CHARS] + f"\n[... {len(text) - EXAMPLE_CHARS} more characters in pairs.jsonl]"


def _table(table: tuple[list[str], list[list[str]]]) -> dict:
    header, rows = table
    return {"header": header, "rows": rows}


def _examples(data: dict) -> list[dict]:
    """Each iteration's example pairs, formatted: scores as in the tables, the texts cut to EXAMPLE_CHARS."""
    examples = []
    for it in data["iterations"]:
        for ex in it["examples"]:
            texts = []
            for label, key in (("Prompt", "prompt"), ("Chosen", "chosen"), ("Rejected", "rejected")):
                text = _cut(ex[key])
                texts.append({"label": label, "chars": len(ex[key]), "text": text, "fence": _fence(text)})
            examples.append({"iteration": it["iteration"], "kind": ex["kind"], "chosen_score": _fmt(ex["chosen_score"]),
                             "rejected_score": _fmt(ex["rejected_score"]), "margin": _fmt(ex["margin"]),
                             "texts": texts})
    return examples


def _context(data: dict, charts: bool) -> dict:
    """What both templates show; `charts`: also draw the plots (report.html), as Markup."""
    plots = []
    for title, plot, why_empty in _plots_for(data):
        svg = plot(data) if charts else None
        plots.append({"title": title, "svg": Markup(svg) if svg else None, "why_empty": why_empty,
                      "table": _table(_TABLES[title](data))})
    extras = []
    for title, note, table in (("IFEval (judge-free)", IFEVAL_NOTE, _ifeval_table),
                               ("lm-evaluation-harness", HARNESS_NOTE, _harness_table),
                               ("Checkpoint selection", SELECTION_NOTE, _selection_table)):
        header, rows = table(data)
        if rows:
            extras.append({"title": title, "note": note, "table": _table((header, rows))})
    return {"run_name": Path(data["run_dir"]).name, "overview": _overview(data),
            "iterations": _table(_iteration_table(data)), "plots": plots, "extras": extras,
            "examples": _examples(data)}


def render_html(data: dict) -> str:
    """report.html: self-contained (inline CSS, inline SVG charts, no scripts, no URLs), every run value escaped."""
    return _environment(True).get_template("report.html.j2").render(_context(data, charts=True))


def render_markdown(data: dict) -> str:
    """report.md: the same numbers as tables, with the examples in fenced code blocks."""
    return _environment(False).get_template("report.md.j2").render(_context(data, charts=False))
