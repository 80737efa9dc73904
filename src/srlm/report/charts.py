"""Inline SVG charts, a grouped bar chart and a line chart (about what a report needs and no more: matplotlib is not
a dependency), and the report's plots drawn with them. Every string on a chart is HTML-escaped; a chart holds no
script and no URL."""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

from srlm.report.collect import SCORE_BINS, _judge_training_steps

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")


def _e(value: Any) -> str:
    """HTML-escape anything shown on the page (quotes too: values also go into attributes)."""
    return html.escape(str(value), quote=True)


# ----------------------------------------------------------------------------------------------------------------
# Inline SVG charts: a grouped bar chart and a line chart, about what a report needs and no more

_W, _H = 640, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 16, 34, 64


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] with about `count` steps of 1, 2, 2.5 or 5 times a power of ten."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start, ticks = math.floor(low / step + 1e-9) * step, []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _svg_frame(title: str, y_ticks: list[float], y_of, y_label: str, tick_format) -> list[str]:
    parts = [
        # No xmlns: inline SVG in HTML5 needs none, and the page then holds no URL of any kind.
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-label="{_e(title)}" class="chart">',
        f"<title>{_e(title)}</title>",
        f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="#ffffff"/>',
        f'<text x="{_W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{_e(title)}</text>',
    ]
    for tick in y_ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
                     f"{_e(tick_format(tick))}</text>")
    parts.append(f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_H - _BOTTOM}" stroke="#555"/>')
    parts.append(f'<line x1="{_LEFT}" y1="{_H - _BOTTOM}" x2="{_W - _RIGHT}" y2="{_H - _BOTTOM}" stroke="#555"/>')
    if y_label:
        mid = (_TOP + _H - _BOTTOM) / 2
        parts.append(f'<text x="14" y="{mid:.1f}" transform="rotate(-90 14 {mid:.1f})" text-anchor="middle" '
                     f'font-size="11">{_e(y_label)}</text>')
    return parts


def _svg_legend(names: Sequence[str]) -> tuple[list[str], int]:
    """Legend swatches below the plot, wrapped onto more rows when they do not fit; returns (parts, extra height)."""
    parts, x, y = [], _LEFT, _H - 16
    for index, name in enumerate(names):
        width = 24 + 7 * len(name)  # about 7 px per character at font-size 11
        if x > _LEFT and x + width > _W - _RIGHT:
            x, y = _LEFT, y + 16
        color = PALETTE[index % len(PALETTE)]
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + 14}" y="{y}" font-size="11">{_e(name)}</text>')
        x += width
    return parts, y - (_H - 16)


def _close_svg(parts: list[str], legend_names: Sequence[str], x_label: str) -> str:
    """The x-axis label (when given), the legend under the plot, and the closing tag."""
    if x_label:
        plot_w = _W - _LEFT - _RIGHT
        parts.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - _BOTTOM + 32}" text-anchor="middle" '
                     f'font-size="11">{_e(x_label)}</text>')
    legend, extra = _svg_legend(legend_names)
    if extra:  # grow the canvas (first element: the <svg> tag) so that wrapped legend rows stay visible
        parts[0] = parts[0].replace(f'viewBox="0 0 {_W} {_H}"', f'viewBox="0 0 {_W} {_H + extra}"')
        parts[0] = parts[0].replace(f'height="{_H}"', f'height="{_H + extra}"')
        parts[2] = parts[2].replace(f'height="{_H}"', f'height="{_H + extra}"')
    return "\n".join(parts + legend + ["</svg>"])


def svg_bar_chart(
    title: str, categories: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *,
    y_label: str = "", x_label: str = "", tick_format=lambda v: f"{v:g}",
) -> str:
    """Grouped bars: one group per category, one bar per series (None: no bar). Hover titles give the values."""
    values = [v for _, vs in series for v in vs if v is not None]
    top = max(values + [0.0])
    ticks = _nice_ticks(0.0, top if top > 0 else 1.0)
    y_max = ticks[-1]
    plot_h, plot_w = _H - _TOP - _BOTTOM, _W - _LEFT - _RIGHT

    def y_of(v: float) -> float:
        return _H - _BOTTOM - plot_h * v / y_max

    parts = _svg_frame(title, ticks, y_of, y_label, tick_format)
    group_w = plot_w / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(series))
    for ci, category in enumerate(categories):
        x0 = _LEFT + ci * group_w + group_w * 0.1
        for si, (name, vs) in enumerate(series):
            value = vs[ci]
            if value is None:
                continue
            y = y_of(value)
            parts.append(
                f'<rect x="{x0 + si * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                f'height="{_H - _BOTTOM - y:.1f}" fill="{PALETTE[si % len(PALETTE)]}">'
                f"<title>{_e(name)}, {_e(category)}: {_e(tick_format(value))}</title></rect>"
            )
        parts.append(f'<text x="{_LEFT + (ci + 0.5) * group_w:.1f}" y="{_H - _BOTTOM + 15}" text-anchor="middle" '
                     f'font-size="11">{_e(category)}</text>')
    return _close_svg(parts, [name for name, _ in series], x_label)


def svg_line_chart(
    title: str, x_labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *,
    y_min: float | None = None, y_max: float | None = None, reference: float | None = None,
    y_label: str = "", x_label: str = "", tick_format=lambda v: f"{v:g}",
) -> str:
    """Lines with point markers over categorical x positions; None leaves a gap. `reference`: a dashed line."""
    values = [v for _, vs in series for v in vs if v is not None] + ([reference] if reference is not None else [])
    low = min(values + ([y_min] if y_min is not None else []))
    high = max(values + ([y_max] if y_max is not None else []))
    ticks = _nice_ticks(low, high)
    lo, hi = ticks[0], ticks[-1]
    plot_h, plot_w = _H - _TOP - _BOTTOM, _W - _LEFT - _RIGHT

    def y_of(v: float) -> float:
        return _H - _BOTTOM - plot_h * (v - lo) / (hi - lo)

    def x_of(i: int) -> float:
        return _LEFT + plot_w * (i + 0.5) / max(1, len(x_labels))

    parts = _svg_frame(title, ticks, y_of, y_label, tick_format)
    if reference is not None:
        parts.append(f'<line x1="{_LEFT}" y1="{y_of(reference):.1f}" x2="{_W - _RIGHT}" y2="{y_of(reference):.1f}" '
                     'stroke="#888" stroke-dasharray="5,4"/>')
    for i, label in enumerate(x_labels):
        parts.append(f'<text x="{x_of(i):.1f}" y="{_H - _BOTTOM + 15}" text-anchor="middle" font-size="11">'
                     f"{_e(label)}</text>")
    for si, (name, vs) in enumerate(series):
        color = PALETTE[si % len(PALETTE)]
        segment: list[str] = []
        for i, value in enumerate(list(vs) + [None]):  # a trailing None flushes the last segment
            if value is None:
                if len(segment) > 1:
                    parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(segment)}"/>')
                segment = []
                continue
            segment.append(f"{x_of(i):.1f},{y_of(value):.1f}")
            parts.append(f'<circle cx="{x_of(i):.1f}" cy="{y_of(value):.1f}" r="4" fill="{color}">'
                         f"<title>{_e(name)}, {_e(x_labels[i])}: {_e(tick_format(value))}</title></circle>")
    return _close_svg(parts, [name for name, _ in series], x_label)


# ----------------------------------------------------------------------------------------------------------------
# The plots: each returns an SVG, or a sentence saying why there is nothing to draw


def _plot_histograms(data: dict) -> str | None:
    its = [it for it in data["iterations"] if it["histogram"] and it["histogram"]["n"]]
    if not its:
        return None
    categories = [str(b) for b in SCORE_BINS]
    show_missing = any(it["histogram"]["missing"] for it in its)
    if show_missing:
        categories.append("missing")
    series = []
    for it in its:
        h = it["histogram"]
        counts = [float(h["counts"].get(b, 0)) for b in SCORE_BINS] + ([float(h["missing"])] if show_missing else [])
        series.append((f"iteration {it['iteration']}", counts))
    return svg_bar_chart("Judge scores of the candidates, per iteration", categories, series,
                         y_label="responses", x_label="mean judge score, rounded (0-5)")


def _plot_lengths(data: dict) -> str | None:
    its = [it for it in data["iterations"] if it["chosen_len_mean"] is not None or it["rejected_len_mean"] is not None]
    if not its:
        return None
    return svg_bar_chart(
        "Chosen vs rejected mean length", [f"iteration {it['iteration']}" for it in its],
        [("chosen", [it["chosen_len_mean"] for it in its]), ("rejected", [it["rejected_len_mean"] for it in its])],
        y_label="characters", tick_format=lambda v: f"{v:.0f}",
    )


def _plot_winrates(data: dict) -> str | None:
    names = sorted({name for it in data["iterations"] for name in it["winrates"]})
    if not names:
        return None
    its = data["iterations"]
    series = []
    for name in names:
        series.append((f"{name} win rate", [(it["winrates"].get(name) or {}).get("win_rate") for it in its]))
        lc = [(it["winrates"].get(name) or {}).get("length_controlled_win_rate") for it in its]
        if any(v is not None for v in lc):
            series.append((f"{name} length-controlled", lc))
    return svg_line_chart("Win rates across iterations", [f"iteration {it['iteration']}" for it in its], series,
                          y_min=0.0, y_max=1.0, reference=0.5, y_label="win rate (win + tie/2)",
                          tick_format=lambda v: f"{v:.0%}")


def _plot_dpo(data: dict) -> str | None:
    curves = [(it["iteration"], it["row"].get("dpo_steps") or []) for it in data["iterations"]]
    curves = [(t, steps) for t, steps in curves if steps and all(isinstance(s.get("loss"), (int, float)) for s in steps)]
    if not curves:
        return None
    longest = max(len(steps) for _, steps in curves)
    series = [(f"iteration {t}", [s["loss"] for s in steps] + [None] * (longest - len(steps))) for t, steps in curves]
    return svg_line_chart("DPO loss per step (one curve per iteration)", [str(i + 1) for i in range(longest)], series,
                          reference=0.6931, y_label="DPO loss (dashed: ln 2, policy = reference)",
                          x_label="optimizer step", tick_format=lambda v: f"{v:.2f}")


def _plot_judge_training(data: dict) -> str | None:
    steps = _judge_training_steps(data)
    if not steps:
        return None
    series = [("Bradley-Terry loss", [s["loss"] for s in steps]),
              ("pair accuracy of the step's batch (before its update)", [s.get("pair_accuracy_mean") for s in steps])]
    return svg_line_chart("M1's judge training on human pairs, per step", [str(i + 1) for i in range(len(steps))],
                          series, y_min=0.0, y_max=1.0, reference=0.5,
                          y_label="loss; accuracy (dashed: 0.5)", x_label="optimizer step")


def _plot_judge_models(data: dict) -> str | None:
    models = [m for m in data.get("models", []) if m["judge_accuracy"]
              and isinstance(m["judge_accuracy"].get("pairwise_accuracy"), (int, float))]
    if not models:
        return None
    series = [("pairwise accuracy", [m["judge_accuracy"]["pairwise_accuracy"] for m in models])]
    for bound, label in ((0, "95% interval, low"), (1, "95% interval, high")):
        values = [(m["judge_accuracy"].get("pairwise_accuracy_ci") or [None, None])[bound] for m in models]
        if any(isinstance(v, (int, float)) for v in values):
            series.append((label, values))
    length = [(m["judge_accuracy"].get("length_baseline") or {}).get("pairwise_accuracy") for m in models]
    if any(isinstance(v, (int, float)) for v in length):
        series.append(("length baseline", length))
    return svg_line_chart("Judge accuracy on held-out human preferences, per model", [m["model"] for m in models],
                          series, y_min=0.3, y_max=0.8, reference=0.5, y_label="pairwise accuracy (dashed: chance)")


PLOTS = (
    ("Judge scores", _plot_histograms, "no judgements recorded yet (no iter_N/judgements.jsonl and no score "
     "histogram in summary.json)"),
    ("Chosen vs rejected length", _plot_lengths, "no preference pairs recorded yet"),
    ("Win rates", _plot_winrates, "no win rates recorded for this run (summary iterations have no "
     "eval.winrate_* entries); compute them with `srlm eval winrate`"),
    ("Judge accuracy", _plot_judge_models, "no judge accuracy recorded for this run (set eval.judge_data, e.g. "
     "builtin:hh_test, or compute it with `srlm eval judge`)"),
    ("DPO training", _plot_dpo, "no per-step DPO log recorded for this run"),
    ("Judge training", _plot_judge_training, "M1's judge was not trained on human pairs in this run "
     "(judge_training.pairs is off, as in the paper)"),
)
# Sections shown only when the run has them (an option that is off by default), rather than as "No data".
_OPTIONAL = {"Judge training": _judge_training_steps}


def _plots_for(data: dict):
    return [entry for entry in PLOTS if entry[0] not in _OPTIONAL or _OPTIONAL[entry[0]](data)]
