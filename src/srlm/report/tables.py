"""The tables both outputs show: each a header and rows of already formatted strings, from `collect_report_data`'s
data. report.html lays them out as HTML tables, report.md as Markdown ones; the numbers are the same."""

from __future__ import annotations

import math
from typing import Any

from srlm.evaluation.metrics import format_with_interval, sample_size
from srlm.report.collect import SCORE_BINS, _judge_training_steps, _number

JUDGE_METRICS = (
    ("pairwise_accuracy", "pairwise acc."),
    ("five_best", "5-best"),
    ("exact_match", "exact match"),
    ("spearman", "Spearman"),
    ("kendall_tau", "Kendall τ"),
)


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


def _count(n: Any, unit: str) -> str:
    """A sample's size; under 100 it says it is a demonstration (srlm.evaluation.metrics.sample_size)."""
    return "n/a" if n is None else sample_size(n, unit)


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
                         _fmt(m.get("length_controlled_win_rate"), "pct"), _count(m.get("n"), "prompts")])
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
                     _fmt(m.get("parse_failure_rate"), "pct"), _count(m.get("n_pairs"), "pairs"), _fmt(m.get("data"))])
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
                     _count(m.get("n_prompts"), "prompts")])
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


def _judge_training_table(data: dict) -> tuple[list[str], list[list[str]]]:
    stats = (data.get("summary") or {}).get("train_judge")
    if not isinstance(stats, dict) or not _judge_training_steps(data):
        return ["pairs", "steps", "loss first", "loss last", "held-out pair accuracy, first pass"], []
    return (["pairs", "steps", "loss first", "loss last", "held-out pair accuracy, first pass"],
            [[_fmt(stats.get("pairs_trained")), _fmt(stats.get("steps")), _fmt(stats.get("loss_first")),
              _fmt(stats.get("loss_last")), _fmt(stats.get("pair_accuracy_first_epoch"))]])


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


# The table shown under each plot of srlm.report.charts.PLOTS, by the plot's section title.
_TABLES = {
    "Judge scores": _histogram_table,
    "Chosen vs rejected length": _length_table,
    "Win rates": _winrate_table,
    "Judge accuracy": _judge_table,
    "DPO training": _dpo_table,
    "Judge training": _judge_training_table,
    "IFEval": _ifeval_table,
}
