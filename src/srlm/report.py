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

report.html is self-contained: CSS inline, plots drawn as inline SVG by the small chart functions below
(matplotlib is not a dependency), no scripts, no external URLs. Every string that comes from the run, model output
above all, is HTML-escaped: a response containing `<script>` must show as text, never run. report.md carries the
same numbers as tables, with the examples in fenced code blocks.
"""

from __future__ import annotations

import datetime as _dt
import json
import html
import math
import re
from pathlib import Path
from typing import Any, Sequence

from srlm.errors import DataError
from srlm.evaluation.metrics import format_with_interval, score_histogram
from srlm.io import atomic_write_text, iter_jsonl, read_json

SCORE_BINS = (0, 1, 2, 3, 4, 5)
JUDGE_METRICS = (
    ("pairwise_accuracy", "pairwise acc."),
    ("five_best", "5-best"),
    ("exact_match", "exact match"),
    ("spearman", "Spearman"),
    ("kendall_tau", "Kendall τ"),
)
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
EXAMPLE_CHARS = 4000  # longer example texts are cut (and say so) to keep the page readable


def _e(value: Any) -> str:
    """HTML-escape anything shown on the page (quotes too: values also go into attributes)."""
    return html.escape(str(value), quote=True)


# ----------------------------------------------------------------------------------------------------------------
# Collecting the numbers


def _iteration_dirs(root: Path) -> dict[int, Path]:
    found = {}
    for path in root.glob("iter_*"):
        match = re.fullmatch(r"iter_(\d+)", path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return found


def _message_text(value: Any) -> str:
    """The text of a TRL conversational field (a list of messages) or of a plain string."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return "" if value is None else str(value)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _pair_margin(pair: dict) -> float | None:
    chosen, rejected = _number(pair.get("chosen_score")), _number(pair.get("rejected_score"))
    return None if chosen is None or rejected is None else chosen - rejected


def _example(pair: dict, kind: str) -> dict:
    return {
        "kind": kind,
        "prompt": _message_text(pair.get("prompt")),
        "chosen": _message_text(pair.get("chosen")),
        "rejected": _message_text(pair.get("rejected")),
        "chosen_score": _number(pair.get("chosen_score")),
        "rejected_score": _number(pair.get("rejected_score")),
        "margin": _pair_margin(pair),
    }


def _best_and_worst(pairs: list[dict]) -> list[dict]:
    """The largest-margin pair (ties: higher chosen score) and the smallest-margin one (ties: lower chosen score)."""
    scored = [p for p in pairs if _pair_margin(p) is not None]
    if not scored:
        return [_example(pairs[0], "example")] if pairs else []
    best = max(scored, key=lambda p: (_pair_margin(p), _number(p.get("chosen_score"))))
    worst = min(scored, key=lambda p: (_pair_margin(p), _number(p.get("chosen_score"))))
    if best is worst:
        return [_example(best, "only scored pair")]
    return [_example(best, "best (largest score margin)"), _example(worst, "worst (smallest score margin)")]


def _eval_entries(row: dict) -> tuple[dict[str, dict], dict | None]:
    """(win-rate comparisons by name, judge accuracy metrics) recorded for an iteration, if any.

    They live under `row["eval"]` (or, tolerated, at the top of the row). A value may be the metrics dict itself or
    a `pairwise_winrate` result {"metrics": ..., "items": ...}.
    """
    source = {**{k: v for k, v in row.items() if k.startswith("winrate") or k == "judge_accuracy"},
              **(row.get("eval") or {})}

    def unwrap(value: Any) -> dict | None:
        if isinstance(value, dict) and isinstance(value.get("metrics"), dict):
            value = value["metrics"]
        return value if isinstance(value, dict) else None

    winrates = {k: unwrap(v) for k, v in sorted(source.items()) if k.startswith("winrate") and unwrap(v)}
    return winrates, unwrap(source.get("judge_accuracy"))


# The per-iteration stats of summary.json that the report formats as numbers.
_NUMERIC_STATS = ("prompts", "responses", "judge_parse_rate", "score_mean", "pairs", "chosen_score_mean",
                  "rejected_score_mean", "chosen_len_mean", "rejected_len_mean", "dpo_reward_accuracy",
                  "dpo_reward_margin", "seconds")


def collect_report_data(run_dir: str | Path) -> dict:
    """Everything the report shows, as plain data (also handy for tests and notebooks)."""
    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is not a directory; `srlm report` takes the run directory `srlm run` wrote")
    if not root.is_dir():
        raise DataError(f"{root}: run directory not found")
    summary_path = root / "summary.json"
    if not summary_path.exists():
        raise DataError(f"{summary_path}: not found; `srlm run` writes it after each finished iteration")
    summary = read_json(summary_path)
    if not isinstance(summary, dict) or not isinstance(summary.get("iterations", []), list):
        raise DataError(f"{summary_path}: expected an object with an 'iterations' list")

    config = None
    if (root / "config.yaml").exists():
        import yaml

        try:
            config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError:
            config = None  # the report must not fail on a config it only quotes

    rows = {}
    for index, r in enumerate(summary.get("iterations", [])):
        if not isinstance(r, dict) or isinstance(r.get("iteration"), bool) or not isinstance(r.get("iteration"), int):
            raise DataError(f"{summary_path}: iterations[{index}] has no integer 'iteration'")
        for key in _NUMERIC_STATS:
            value = r.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"{summary_path}: iterations[{index}] field '{key}' must be a number or null, got "
                                f"{json.dumps(value)[:60]}")
        histogram = r.get("score_histogram")
        if isinstance(histogram, dict) and not all(
                isinstance(v, int) and not isinstance(v, bool) and str(k).lstrip("-").isdigit()
                for k, v in histogram.items()):
            raise DataError(f"{summary_path}: iterations[{index}] field 'score_histogram' must map scores to counts "
                            "(whole numbers)")
        rows[r["iteration"]] = r
    dirs = _iteration_dirs(root)
    iterations = []
    for t in sorted(set(rows) | set(dirs)):
        row, d = rows.get(t, {"iteration": t}), dirs.get(t)
        it: dict[str, Any] = {"iteration": t, "row": row, "finished": t in rows}

        judgements = d / "judgements.jsonl" if d else None
        if judgements is not None and judgements.exists():
            scores = [_number(r.get("score")) for r in iter_jsonl(judgements)]
            it["histogram"] = score_histogram(scores, SCORE_BINS)
            it["histogram_source"] = f"iter_{t}/judgements.jsonl"
        elif isinstance(row.get("score_histogram"), dict):
            counts = {int(k): int(v) for k, v in row["score_histogram"].items()}
            responses = _number(row.get("responses"))
            missing = max(0, int(responses) - sum(counts.values())) if responses is not None else 0
            it["histogram"] = {"counts": counts, "missing": missing, "out_of_range": 0,
                               "n": sum(counts.values()) + missing}
            it["histogram_source"] = "summary.json"
        else:
            it["histogram"] = None

        pairs_path = d / "pairs.jsonl" if d else None
        if pairs_path is not None and pairs_path.exists():
            pairs = list(iter_jsonl(pairs_path))
            it["pairs"] = len(pairs)
            it["chosen_len_mean"] = _mean([_number(p.get("chosen_len")) or len(_message_text(p.get("chosen")))
                                           for p in pairs])
            it["rejected_len_mean"] = _mean([_number(p.get("rejected_len")) or len(_message_text(p.get("rejected")))
                                             for p in pairs])
            it["examples"] = _best_and_worst(pairs)
            it["lengths_source"] = f"iter_{t}/pairs.jsonl"
        else:
            it["pairs"] = row.get("pairs")
            it["chosen_len_mean"] = _number(row.get("chosen_len_mean"))
            it["rejected_len_mean"] = _number(row.get("rejected_len_mean"))
            it["examples"] = []
            it["lengths_source"] = "summary.json"
        it["winrates"], it["judge_accuracy"] = _eval_entries(row)
        it["selection"] = row.get("selection") if isinstance(row.get("selection"), dict) else None
        iterations.append(it)

    return {"run_dir": str(root), "summary": summary, "config": config, "iterations": iterations,
            "models": _model_evals(summary, iterations),
            "generated": _dt.datetime.now().isoformat(timespec="seconds")}


def _model_evals(summary: dict, iterations: list[dict]) -> list[dict]:
    """Per model (SFT baseline, M1, then each M_t+1): its judge accuracy and IFEval metrics, where measured."""
    def metrics(value: Any) -> dict | None:
        return value if isinstance(value, dict) else None

    models = []
    if (summary.get("sft_baseline_judge_accuracy") or summary.get("sft_baseline_ifeval")
            or summary.get("sft_baseline_harness")):
        models.append({"model": "sft_baseline", "judge_accuracy": metrics(summary.get("sft_baseline_judge_accuracy")),
                       "ifeval": metrics(summary.get("sft_baseline_ifeval")),
                       "harness": metrics(summary.get("sft_baseline_harness"))})
    models.append({"model": "m1", "judge_accuracy": metrics(summary.get("m1_judge_accuracy")),
                   "ifeval": metrics(summary.get("m1_ifeval")), "harness": metrics(summary.get("m1_harness"))})
    for it in iterations:
        evaluation = it["row"].get("eval") if isinstance(it["row"].get("eval"), dict) else {}
        models.append({"model": f"m{it['iteration'] + 1}", "judge_accuracy": it["judge_accuracy"],
                       "ifeval": metrics(evaluation.get("ifeval")), "harness": metrics(evaluation.get("harness"))})
    return [m for m in models if m["judge_accuracy"] or m["ifeval"] or m["harness"]]


# ----------------------------------------------------------------------------------------------------------------
# Tables, shared by both outputs: a title, a header and rows of already formatted strings


def _fmt(value: Any, kind: str = "num") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "int":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _iteration_table(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["iteration", "model", "prompts", "candidates", "judge parse rate", "mean score", "pairs",
              "chosen / rejected score", "chosen / rejected length (chars)", "DPO reward acc.", "seconds",
              "top-score share", "tie rate", "warnings"]
    rows = []
    for it in data["iterations"]:
        r = it["row"]
        rows.append([
            str(it["iteration"]) + ("" if it["finished"] else " (unfinished)"),
            _fmt(r.get("model")), _fmt(r.get("prompts")), _fmt(r.get("responses")),
            _fmt(r.get("judge_parse_rate"), "pct"), _fmt(r.get("score_mean")), _fmt(it.get("pairs")),
            f"{_fmt(r.get('chosen_score_mean'))} / {_fmt(r.get('rejected_score_mean'))}",
            f"{_fmt(it['chosen_len_mean'], 'int')} / {_fmt(it['rejected_len_mean'], 'int')}",
            _fmt(r.get("dpo_reward_accuracy"), "pct"), _fmt(r.get("seconds")),
            _fmt((r.get("monitors") or {}).get("top_score_share"), "pct"),
            _fmt((r.get("monitors") or {}).get("tie_rate"), "pct"),
            "; ".join(str(w) for w in r.get("warnings") or []) or "none",
        ])
    return header, rows


def _histogram_table(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["iteration", *[str(b) for b in SCORE_BINS], "missing", "responses", "source"]
    rows = []
    for it in data["iterations"]:
        h = it["histogram"]
        if h is None:
            continue
        rows.append([str(it["iteration"]), *[str(h["counts"].get(b, 0)) for b in SCORE_BINS], str(h["missing"]),
                     str(h["n"]), it["histogram_source"]])
    return header, rows


def _length_table(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["iteration", "pairs", "chosen mean length", "rejected mean length", "chosen / rejected", "source"]
    rows = []
    for it in data["iterations"]:
        chosen, rejected = it["chosen_len_mean"], it["rejected_len_mean"]
        if chosen is None and rejected is None:
            continue
        ratio = chosen / rejected if chosen is not None and rejected else None
        rows.append([str(it["iteration"]), _fmt(it["pairs"]), _fmt(chosen, "int"), _fmt(rejected, "int"),
                     _fmt(ratio), it["lengths_source"]])
    return header, rows


def _winrate_table(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["iteration", "comparison", "win", "tie", "loss", "win rate", "length-controlled", "n"]
    rows = []
    for it in data["iterations"]:
        for name, m in it["winrates"].items():
            rows.append([str(it["iteration"]), name, _fmt(m.get("win"), "pct"), _fmt(m.get("tie"), "pct"),
                         _fmt(m.get("loss"), "pct"), _fmt(m.get("win_rate"), "pct"),
                         _fmt(m.get("length_controlled_win_rate"), "pct"), _fmt(m.get("n"))])
    return header, rows


def _with_ci(metrics: dict | None, key: str) -> str:
    return format_with_interval(metrics, key) or "n/a"


def _judge_table(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["model", "pairwise acc. [95% CI]", "length baseline", "signal", *[label for _, label in JUDGE_METRICS[1:]],
              "parse failures", "pairs", "data"]
    rows = []
    for entry in data.get("models", []):
        m = entry["judge_accuracy"]
        if m is None:
            continue
        rows.append([entry["model"], _with_ci(m, "pairwise_accuracy"), _with_ci(m.get("length_baseline"), "pairwise_accuracy"),
                     _fmt(m.get("judge_signal")), *[_fmt(m.get(key)) for key, _ in JUDGE_METRICS[1:]],
                     _fmt(m.get("parse_failure_rate"), "pct"), _fmt(m.get("n_pairs")), _fmt(m.get("data"))])
    return header, rows


def _ifeval_table(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["model", "prompt strict", "prompt loose", "instruction strict", "instruction loose", "prompts"]
    rows = []
    for entry in data.get("models", []):
        m = entry["ifeval"]
        if m is None:
            continue
        rows.append([entry["model"], *[_with_ci(m, f"{level}_level_{kind}_acc")
                                       for level, kind in (("prompt", "strict"), ("prompt", "loose"),
                                                           ("inst", "strict"), ("inst", "loose"))],
                     _fmt(m.get("n_prompts"))])
    return header, rows


def _harness_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """One row per model, one column per lm-eval task and metric (value ± stderr), from eval.harness_tasks."""
    columns: list[tuple[str, str]] = []
    measured = []
    for entry in data.get("models", []):
        tasks = (entry.get("harness") or {}).get("tasks")
        if not isinstance(tasks, dict) or not tasks:
            continue
        measured.append((entry["model"], tasks))
        for task, figures in tasks.items():
            for metric in (figures if isinstance(figures, dict) else {}):
                if metric != "n" and not metric.endswith("_stderr") and (task, metric) not in columns:
                    columns.append((task, metric))
    header = ["model", *[f"{task} {metric}" for task, metric in columns], "n"]
    rows = []
    for model, tasks in measured:
        cells = []
        for task, metric in columns:
            figures = tasks.get(task) if isinstance(tasks.get(task), dict) else {}
            value, stderr = _number(figures.get(metric)), _number(figures.get(f"{metric}_stderr"))
            cells.append("n/a" if value is None else f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else ""))
        counts = sorted({str(f.get("n")) for f in tasks.values() if isinstance(f, dict) and f.get("n") is not None})
        rows.append([model, *cells, "/".join(counts) or "n/a"])
    return header, rows


def _dpo_table(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["iteration", "steps", "loss first", "loss last", "reward acc. last", "reward margin last"]
    rows = []
    for it in data["iterations"]:
        steps = it["row"].get("dpo_steps") or []
        if not steps:
            continue
        rows.append([str(it["iteration"]), str(len(steps)), _fmt(steps[0].get("loss")), _fmt(steps[-1].get("loss")),
                     _fmt(steps[-1].get("reward_accuracy")), _fmt(steps[-1].get("reward_margin"))])
    return header, rows


def _selection_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """Checkpoint selection (eval.select_checkpoint): every candidate's result against M_t, and which became M_t+1."""
    header = ["iteration", "candidate", "step", "win", "tie", "loss", "win rate", "prompts", "selected"]
    rows = []
    for it in data["iterations"]:
        s = it.get("selection")
        if not s:
            continue
        for c in s.get("candidates") or []:
            if not isinstance(c, dict):
                continue
            name = str(c.get("candidate")) + (" (final)" if c.get("final") else "")
            rows.append([str(it["iteration"]), name, _fmt(c.get("step")), _fmt(c.get("win"), "pct"),
                         _fmt(c.get("tie"), "pct"), _fmt(c.get("loss"), "pct"), _fmt(c.get("win_rate"), "pct"),
                         _fmt(c.get("n")), "yes" if c.get("selected") else ""])
    return header, rows


IFEVAL_NOTE = ("Greedy answers to IFEval prompts, checked by the lm-evaluation-harness IFEval checkers: no judge "
               "decides these figures. 95% bootstrap intervals over prompts.")
HARNESS_NOTE = ("lm-evaluation-harness tasks (eval.harness_tasks) run through lm_eval.simple_evaluate, as `srlm eval "
                "harness` runs them: value ± lm-eval's standard error; n = documents scored per task. Full results "
                "in eval_m1/harness.json and iter_t/eval/harness.json.")
SELECTION_NOTE = ("Each DPO checkpoint answered the selection prompts and a pairwise judge compared its answers with "
                  "M_t's in both orders; the highest win rate became M_t+1 (equal rates: the later step).")


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


def _close_svg(parts: list[str], legend_names: Sequence[str]) -> str:
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
    if x_label:
        parts.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - _BOTTOM + 32}" text-anchor="middle" '
                     f'font-size="11">{_e(x_label)}</text>')
    return _close_svg(parts, [name for name, _ in series])


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
    if x_label:
        parts.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - _BOTTOM + 32}" text-anchor="middle" '
                     f'font-size="11">{_e(x_label)}</text>')
    return _close_svg(parts, [name for name, _ in series])


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


def _plot_judge(data: dict) -> str | None:
    its = data["iterations"]
    if not any(it["judge_accuracy"] for it in its):
        return None
    series = [(label, [(it["judge_accuracy"] or {}).get(key) for it in its]) for key, label in JUDGE_METRICS]
    series = [(label, vs) for label, vs in series if any(v is not None for v in vs)]
    if not series:
        return None
    return svg_line_chart("Judge agreement with human rankings", [f"iteration {it['iteration']}" for it in its],
                          series, y_min=0.0, y_max=1.0, y_label="metric value")


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


def _judge_training_steps(data: dict) -> list[dict]:
    stats = (data.get("summary") or {}).get("train_judge")
    steps = stats.get("per_step") if isinstance(stats, dict) else None
    return [s for s in steps or [] if isinstance(s.get("loss"), (int, float))]


def _plot_judge_training(data: dict) -> str | None:
    steps = _judge_training_steps(data)
    if not steps:
        return None
    series = [("Bradley-Terry loss", [s["loss"] for s in steps]),
              ("pair accuracy of the step's batch (before its update)", [s.get("pair_accuracy_mean") for s in steps])]
    return svg_line_chart("M1's judge training on human pairs, per step", [str(i + 1) for i in range(len(steps))],
                          series, y_min=0.0, y_max=1.0, reference=0.5,
                          y_label="loss; accuracy (dashed: 0.5)", x_label="optimizer step")


def _judge_training_table(data: dict) -> tuple[list[str], list[list[str]]]:
    stats = (data.get("summary") or {}).get("train_judge")
    if not isinstance(stats, dict) or not _judge_training_steps(data):
        return ["pairs", "steps", "loss first", "loss last", "held-out pair accuracy, first pass"], []
    return (["pairs", "steps", "loss first", "loss last", "held-out pair accuracy, first pass"],
            [[_fmt(stats.get("pairs_trained")), _fmt(stats.get("steps")), _fmt(stats.get("loss_first")),
              _fmt(stats.get("loss_last")), _fmt(stats.get("pair_accuracy_first_epoch"))]])


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


_TABLES = {
    "Judge scores": _histogram_table,
    "Chosen vs rejected length": _length_table,
    "Win rates": _winrate_table,
    "Judge accuracy": _judge_table,
    "DPO training": _dpo_table,
    "Judge training": _judge_training_table,
    "IFEval": _ifeval_table,
}


# ----------------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1000px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.no-data { color: #777; font-style: italic; }
.chart { max-width: 100%; height: auto; display: block; margin: .5em 0; }
pre { white-space: pre-wrap; word-wrap: break-word; background: #f7f7f7; border: 1px solid #e2e2e2;
      padding: .6em; max-height: 24em; overflow: auto; font-size: .85em; }
.example { border: 1px solid #ddd; border-radius: 4px; padding: .4em .9em; margin: .8em 0; }
.meta { color: #555; font-size: .9em; }
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cut(text: str) -> str:
    if len(text) <= EXAMPLE_CHARS:
        return text
    return text[:EXAMPLE_CHARS] + f"\n[... {len(text) - EXAMPLE_CHARS} more characters in pairs.jsonl]"


def _overview(data: dict) -> list[tuple[str, str]]:
    summary, config = data["summary"], data["config"] or {}
    model = (config.get("model") or {}).get("name_or_path") if isinstance(config, dict) else None
    items = [
        ("run directory", data["run_dir"]),
        ("base model", model or "n/a (no config.yaml)"),
        ("iterations finished", str(sum(1 for it in data["iterations"] if it["finished"]))),
        ("final model", summary.get("final_model") or "n/a (run not finished)"),
        ("total seconds", _fmt(summary.get("seconds"))),
        ("report generated", data["generated"]),
    ]
    if isinstance(config, dict):
        for section, key in (("loop", "iterations"), ("respond", "num_samples"), ("judge", "num_samples"),
                             ("seed", None)):
            value = config.get(section) if key is None else (config.get(section) or {}).get(key)
            if value is not None:
                items.append((f"config {section}{'.' + key if key else ''}", str(value)))
    return items


def render_html(data: dict) -> str:
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>srlm report: {_e(Path(data['run_dir']).name)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        "<h1>Self-rewarding run report</h1>",
        "<table><tbody>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _overview(data))
        + "</tbody></table>",
        "<h2>Iterations</h2>",
    ]
    header, rows = _iteration_table(data)
    out.append(_html_table(header, rows) if rows else '<p class="no-data">No iterations recorded yet.</p>')
    for title, plot, why_empty in _plots_for(data):
        out.append(f"<h2>{_e(title)}</h2>")
        svg = plot(data)
        out.append(svg if svg else f'<p class="no-data">No data: {_e(why_empty)}.</p>')
        header, rows = _TABLES[title](data)
        if rows:
            out.append(_html_table(header, rows))
    header, rows = _ifeval_table(data)
    if rows:
        out.append("<h2>IFEval (judge-free)</h2>")
        out.append(f'<p class="meta">{_e(IFEVAL_NOTE)}</p>')
        out.append(_html_table(header, rows))
    header, rows = _harness_table(data)
    if rows:
        out.append("<h2>lm-evaluation-harness</h2>")
        out.append(f'<p class="meta">{_e(HARNESS_NOTE)}</p>')
        out.append(_html_table(header, rows))
    header, rows = _selection_table(data)
    if rows:
        out.append("<h2>Checkpoint selection</h2>")
        out.append(f'<p class="meta">{_e(SELECTION_NOTE)}</p>')
        out.append(_html_table(header, rows))
    out.append("<h2>Example pairs</h2>")
    out.append('<p class="meta">Per iteration, the pair with the largest chosen-minus-rejected judge score margin '
               "(the clearest call) and the one with the smallest (the closest call).</p>")
    any_example = False
    for it in data["iterations"]:
        for ex in it["examples"]:
            any_example = True
            out.append('<div class="example">')
            out.append(f"<h3>Iteration {_e(it['iteration'])}: {_e(ex['kind'])}</h3>")
            out.append(f'<p class="meta">chosen score {_e(_fmt(ex["chosen_score"]))}, rejected score '
                       f'{_e(_fmt(ex["rejected_score"]))}, margin {_e(_fmt(ex["margin"]))}</p>')
            for label, key in (("Prompt", "prompt"), ("Chosen", "chosen"), ("Rejected", "rejected")):
                out.append(f"<h4>{label} ({len(ex[key])} chars)</h4><pre>{_e(_cut(ex[key]))}</pre>")
            out.append("</div>")
    if not any_example:
        out.append('<p class="no-data">No data: no iter_N/pairs.jsonl in the run directory.</p>')
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _fence(text: str) -> list[str]:
    """A fenced code block that the text cannot close: one backtick more than its longest backtick run."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", text, fence, ""]


def render_markdown(data: dict) -> str:
    out = ["# Self-rewarding run report", ""]
    out += [f"- **{_md_cell(k)}**: {_md_cell(v)}" for k, v in _overview(data)] + [""]
    out += ["## Iterations", ""]
    header, rows = _iteration_table(data)
    out += _md_table(header, rows) if rows else ["No iterations recorded yet.", ""]
    for title, plot, why_empty in _plots_for(data):
        out += [f"## {title}", ""]
        header, rows = _TABLES[title](data)
        if rows:
            out += _md_table(header, rows)
            out += ["(plotted in report.html)", ""]
        else:
            out += [f"No data: {why_empty}.", ""]
    header, rows = _ifeval_table(data)
    if rows:
        out += ["## IFEval (judge-free)", "", _md_cell(IFEVAL_NOTE), ""] + _md_table(header, rows)
    header, rows = _harness_table(data)
    if rows:
        out += ["## lm-evaluation-harness", "", _md_cell(HARNESS_NOTE), ""] + _md_table(header, rows)
    header, rows = _selection_table(data)
    if rows:
        out += ["## Checkpoint selection", "", _md_cell(SELECTION_NOTE), ""] + _md_table(header, rows)
    out += ["## Example pairs", "",
            "Per iteration, the pair with the largest chosen-minus-rejected judge score margin (the clearest call) "
            "and the one with the smallest (the closest call).", ""]
    any_example = False
    for it in data["iterations"]:
        for ex in it["examples"]:
            any_example = True
            out += [f"### Iteration {it['iteration']}: {ex['kind']}", "",
                    f"chosen score {_fmt(ex['chosen_score'])}, rejected score {_fmt(ex['rejected_score'])}, "
                    f"margin {_fmt(ex['margin'])}", ""]
            for label, key in (("Prompt", "prompt"), ("Chosen", "chosen"), ("Rejected", "rejected")):
                out += [f"**{label}** ({len(ex[key])} chars)", ""] + _fence(_cut(ex[key]))
    if not any_example:
        out += ["No data: no iter_N/pairs.jsonl in the run directory.", ""]
    return "\n".join(out)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN_DIR/report.html and RUN_DIR/report.md; returns their paths."""
    data = collect_report_data(run_dir)
    root = Path(run_dir)
    html_path, md_path = root / "report.html", root / "report.md"
    atomic_write_text(html_path, render_html(data))
    atomic_write_text(md_path, render_markdown(data))
    return html_path, md_path

