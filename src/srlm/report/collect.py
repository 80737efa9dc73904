"""Collecting the numbers of a run directory: `summary.json`, `config.yaml` and each `iter_N/` folder's
`judgements.jsonl` (scores) and `pairs.jsonl` (pairs), as plain data. Where an iteration file is missing, the
summary's own aggregates are used.

The report only reads: it lists the `iter_N` folders itself rather than through `srlm.rundir.RunDir`, whose
constructor creates the run directory.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any, Sequence

from srlm.errors import DataError
from srlm.evaluation.metrics import score_histogram
from srlm.io import iter_jsonl, read_json

SCORE_BINS = (0, 1, 2, 3, 4, 5)

# The per-iteration stats of summary.json that the report formats as numbers.
_NUMERIC_STATS = ("prompts", "responses", "judge_parse_rate", "score_mean", "pairs", "chosen_score_mean",
                  "rejected_score_mean", "chosen_len_mean", "rejected_len_mean", "dpo_reward_accuracy",
                  "dpo_reward_margin", "seconds")


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


def _read_summary(root: Path) -> tuple[dict, dict[int, dict]]:
    """summary.json, checked, and its iteration rows by iteration number."""
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
    return summary, rows


def _read_config(root: Path) -> Any:
    """config.yaml as written by the run, or None (missing or unreadable: the report only quotes it)."""
    if not (root / "config.yaml").exists():
        return None
    import yaml

    try:
        return yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None  # the report must not fail on a config it only quotes


def _histogram(t: int, row: dict, d: Path | None) -> dict:
    """The score histogram of iteration t: from its judgements.jsonl, else from the summary row, else none."""
    judgements = d / "judgements.jsonl" if d else None
    if judgements is not None and judgements.exists():
        scores = [_number(r.get("score")) for r in iter_jsonl(judgements)]
        return {"histogram": score_histogram(scores, SCORE_BINS), "histogram_source": f"iter_{t}/judgements.jsonl"}
    if isinstance(row.get("score_histogram"), dict):
        counts = {int(k): int(v) for k, v in row["score_histogram"].items()}
        responses = _number(row.get("responses"))
        missing = max(0, int(responses) - sum(counts.values())) if responses is not None else 0
        return {"histogram": {"counts": counts, "missing": missing, "out_of_range": 0,
                              "n": sum(counts.values()) + missing},
                "histogram_source": "summary.json"}
    return {"histogram": None}


def _pairs(t: int, row: dict, d: Path | None) -> dict:
    """Pair count, mean lengths and example pairs of iteration t: from its pairs.jsonl, else from the summary row."""
    pairs_path = d / "pairs.jsonl" if d else None
    if pairs_path is not None and pairs_path.exists():
        pairs = list(iter_jsonl(pairs_path))
        return {
            "pairs": len(pairs),
            "chosen_len_mean": _mean([_number(p.get("chosen_len")) or len(_message_text(p.get("chosen")))
                                      for p in pairs]),
            "rejected_len_mean": _mean([_number(p.get("rejected_len")) or len(_message_text(p.get("rejected")))
                                        for p in pairs]),
            "examples": _best_and_worst(pairs),
            "lengths_source": f"iter_{t}/pairs.jsonl",
        }
    return {"pairs": row.get("pairs"), "chosen_len_mean": _number(row.get("chosen_len_mean")),
            "rejected_len_mean": _number(row.get("rejected_len_mean")), "examples": [],
            "lengths_source": "summary.json"}


def collect_report_data(run_dir: str | Path) -> dict:
    """Everything the report shows, as plain data (also handy for tests and notebooks)."""
    root = Path(run_dir)
    summary, rows = _read_summary(root)
    config = _read_config(root)
    dirs = _iteration_dirs(root)
    iterations = []
    for t in sorted(set(rows) | set(dirs)):
        row, d = rows.get(t, {"iteration": t}), dirs.get(t)
        it: dict[str, Any] = {"iteration": t, "row": row, "finished": t in rows}
        it.update(_histogram(t, row, d))
        it.update(_pairs(t, row, d))
        it["winrates"], it["judge_accuracy"] = _eval_entries(row)
        it["selection"] = row.get("selection") if isinstance(row.get("selection"), dict) else None
        iterations.append(it)

    return {"run_dir": str(root), "summary": summary, "config": config, "iterations": iterations,
            "models": _model_evals(summary, iterations),
            "generated": _dt.datetime.now().isoformat(timespec="seconds")}


def _model_evals(summary: dict, iterations: list[dict]) -> list[dict]:
    """Per model (the base model, SFT baseline, M1, then each M_t+1): its judge accuracy and IFEval metrics, where
    measured."""
    def metrics(value: Any) -> dict | None:
        return value if isinstance(value, dict) else None

    models = []
    if summary.get("base_judge_accuracy") or summary.get("base_ifeval") or summary.get("base_harness"):
        models.append({"model": "base", "judge_accuracy": metrics(summary.get("base_judge_accuracy")),
                       "ifeval": metrics(summary.get("base_ifeval")), "harness": metrics(summary.get("base_harness"))})
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


def _judge_training_steps(data: dict) -> list[dict]:
    """The per-step log of M1's judge training on human pairs (summary `train_judge.per_step`), if the run had it."""
    stats = (data.get("summary") or {}).get("train_judge")
    steps = stats.get("per_step") if isinstance(stats, dict) else None
    return [s for s in steps or [] if isinstance(s.get("loss"), (int, float))]
