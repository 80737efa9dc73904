"""`srlm report RUN_DIR`: one self-contained HTML page and one Markdown file that show how a run went.

What a reader of a self-rewarding run needs to see, per iteration (paper sections 4 and 6):
- how the judge scored the candidates (a score histogram: a judge that gives everything the same score makes no
  preference pairs),
- how long the chosen and rejected responses were (the paper reports answers growing longer with each iteration;
  a chosen side that is always longer is the first sign of a length-biased judge),
- win rates and judge accuracy across iterations, when the run recorded them (`eval` keys of summary iterations),
- the best and the worst preference pair, as examples: the largest and the smallest chosen-minus-rejected score
  margin (the clearest and the closest call of the judge).

Sources: `summary.json` (one row per finished iteration, written by the loop), `iter_N/judgements.jsonl` (scores)
and `iter_N/pairs.jsonl` (pairs); when an iteration file is missing the summary's own aggregates are used.

report.html is self-contained: CSS inline, plots drawn as inline SVG by the small chart functions of `charts`
(matplotlib is not a dependency), no scripts, no external URLs. Every string that comes from the run, model output
above all, is HTML-escaped: a response containing `<script>` must show as text, never run. report.md carries the
same numbers as tables, with the examples in fenced code blocks.

The package: `collect` reads the run directory into plain data, `tables` formats the tables both outputs share,
`charts` draws the SVG plots, `render` fills the Jinja2 templates `srlm/templates/report.html.j2` and
`report.md.j2`.
"""

from __future__ import annotations

from pathlib import Path

from srlm.io import atomic_write_text
from srlm.report.charts import PALETTE, PLOTS, _nice_ticks, svg_bar_chart, svg_line_chart
from srlm.report.collect import SCORE_BINS, collect_report_data
from srlm.report.render import EXAMPLE_CHARS, render_html, render_markdown
from srlm.report.tables import JUDGE_METRICS

__all__ = ["EXAMPLE_CHARS", "JUDGE_METRICS", "PALETTE", "PLOTS", "SCORE_BINS", "collect_report_data", "render_html",
           "render_markdown", "svg_bar_chart", "svg_line_chart", "write_report", "_nice_ticks"]


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN_DIR/report.html and RUN_DIR/report.md; returns their paths."""
    data = collect_report_data(run_dir)
    root = Path(run_dir)
    html_path, md_path = root / "report.html", root / "report.md"
    atomic_write_text(html_path, render_html(data))
    atomic_write_text(md_path, render_markdown(data))
    return html_path, md_path
