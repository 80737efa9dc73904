"""An iteration's health, as the loop prints it after each iteration and writes it into summary.json: its row
(`iteration_row`: the stage stats that matter, judge accuracy, DPO curve, evaluations), the collapse monitors
computed from that row with their warnings, and the table on the terminal."""

from __future__ import annotations

from srlm.evaluation.judge_eval import format_accuracy
from srlm.evaluation.metrics import format_with_interval, sample_size


# Collapse monitors (failure modes measured by later self-rewarding work): a warning is printed when one crosses its
# threshold. A judge that gives (nearly) every answer the top score cannot rank them; a chosen-minus-rejected score gap
# far below iteration 1's means the pairs carry less and less preference; DPO reward accuracy at 1.0 within the first
# tenth of the steps means the pairs are fitted at once, typically by something trivial such as length.
TOP_SCORE_SHARE_WARN = 0.5
SCORE_GAP_FRACTION_WARN = 1 / 3
EARLY_REWARD_ACCURACY_FRACTION = 0.1


def collapse_monitors(row: dict) -> dict:
    """top_score_share, tie_rate, pair_yield, score_gap_mean and the first step where DPO reward accuracy hit 1.0."""
    hist = row.get("score_histogram") or {}
    scored = sum(hist.values())
    prompts = row.get("prompts") or 0
    steps = row.get("dpo_steps") or []
    first_perfect = next((s["step"] for s in steps if s.get("reward_accuracy") == 1.0), None)
    gap = (row["chosen_score_mean"] - row["rejected_score_mean"]
           if isinstance(row.get("chosen_score_mean"), (int, float)) and isinstance(row.get("rejected_score_mean"), (int, float))
           else None)
    return {
        "top_score_share": round(hist.get("5", 0) / scored, 4) if scored else None,
        "tie_rate": round((row.get("pairs_dropped") or {}).get("tie", 0) / prompts, 4) if prompts else None,
        "pair_yield": round(row["pairs"] / prompts, 4) if prompts else None,
        "score_gap_mean": round(gap, 4) if gap is not None else None,
        "dpo_first_step_reward_accuracy_1": first_perfect,
        "dpo_steps_total": len(steps),
    }


def collapse_warnings(monitors: dict, first: dict | None) -> list[str]:
    """Plain-language warnings for the monitors of one iteration; `first` = iteration 1's monitors."""
    warnings = []
    if (monitors.get("top_score_share") or 0) > TOP_SCORE_SHARE_WARN:
        warnings.append(f"{monitors['top_score_share']:.0%} of candidates got the top score (threshold "
                        f"{TOP_SCORE_SHARE_WARN:.0%}): the judge is close to giving every answer full marks")
    gap, first_gap = monitors.get("score_gap_mean"), (first or {}).get("score_gap_mean")
    if gap is not None and first_gap and first is not monitors and gap < first_gap * SCORE_GAP_FRACTION_WARN:
        warnings.append(f"the chosen-rejected score gap {gap:.3f} is below a third of iteration 1's ({first_gap:.3f}): "
                        "the pairs carry less and less preference")
    first_perfect, total = monitors.get("dpo_first_step_reward_accuracy_1"), monitors.get("dpo_steps_total") or 0
    if first_perfect is not None and total >= 10 and first_perfect <= max(1, EARLY_REWARD_ACCURACY_FRACTION * total):
        warnings.append(f"DPO reward accuracy reached 1.0 at step {first_perfect} of {total}: the pairs were "
                        "separated at once, often by something trivial such as length")
    return warnings


# What a pair policy (pairs.policy) adds to the pairs stage's stats, carried into the row (srlm.stages.pairs).
POLICY_FIELDS = ("policy", "anchored", "consistency_rate", "prompts_compared", "dpo_label_smoothing")


# The meta-judge's figures (meta.enabled; srlm.stages.metajudge) carried into the row.
META_FIELDS = ("comparisons", "meta_parse_rate", "meta_tie_rate", "position_bias_rate", "judge_pairs",
               "pairs_with_equal_scores", "meta_preference_margin_mean")


def iteration_row(stats: dict, seconds: float) -> dict:
    p, r, j, pr, dpo = (stats[k] for k in ("prompts_stage", "respond_stage", "judge_stage", "pairs_stage", "dpo_stage"))
    return {
        "iteration": stats["iteration"],
        "model": stats["model"],
        "prompts": p["kept"],
        "prompt_attempts": p["attempts"],
        "prompts_rejected": p["rejected"],
        "responses": r["responses"],
        "response_tokens_mean": r["response_tokens_mean"],
        "judge_parse_rate": j["judge_parse_rate"],
        "score_mean": j["score_mean"],
        "score_histogram": j["score_histogram"],
        "pairs": pr["pairs"],
        "pairs_dropped": pr["dropped"],
        "chosen_len_mean": pr["chosen_len_mean"],
        "rejected_len_mean": pr["rejected_len_mean"],
        "chosen_score_mean": pr["chosen_score_mean"],
        "rejected_score_mean": pr["rejected_score_mean"],
        **{key: pr[key] for key in POLICY_FIELDS if key in pr},
        "dpo_reward_accuracy": dpo.get("reward_accuracy_last"),
        "dpo_reward_margin": dpo.get("reward_margin_last"),
        "dpo_loss_first": dpo.get("loss_first"),
        "dpo_loss_last": dpo.get("loss_last"),
        "dpo_steps": dpo.get("per_step", []),
        **({"judge_accuracy": _accuracy_row(stats["judge_accuracy"])} if stats.get("judge_accuracy") else {}),
        **({"meta": {key: stats["metajudge_stage"].get(key) for key in META_FIELDS}}
           if stats.get("metajudge_stage") else {}),
        "dpo_pairs": dpo.get("pairs"),
        "seconds": seconds,
        **({"eval": stats["eval"]} if stats.get("eval") else {}),
        **({"selection": _selection_row(stats["selection"])} if stats.get("selection") else {}),
    }


def _accuracy_row(metrics: dict) -> dict:
    """The judge's accuracy for summary.json's iteration row (the full metrics are in the eval folders)."""
    keep = ("pairwise_accuracy", "pairwise_accuracy_ci", "n_pairs", "judge_signal", "length_baseline", "data")
    return {k: metrics.get(k) for k in keep}


def _selection_row(table: dict) -> dict:
    """The selection table for summary.json: the winner and each candidate's numbers (texts stay in iter_t/)."""
    keep = ("candidate", "step", "final", "selected", "win", "tie", "loss", "win_rate", "n", "n_unparsed")
    return {"selected": table["selected"], "selected_step": table["selected_step"],
            "final_step": table["final_step"], "judge": table["judge"], "n_prompts": table["n_prompts"],
            "candidates": [{k: c.get(k) for k in keep} for c in table["candidates"]]}


def print_iteration_table(row: dict) -> None:
    hist = " ".join(f"{k}:{v}" for k, v in row["score_histogram"].items())
    lines = [
        ("prompts kept / attempts", f"{row['prompts']} / {row['prompt_attempts']}"),
        ("prompt rejections", ", ".join(f"{k} {v}" for k, v in row["prompts_rejected"].items()) or "none"),
        ("candidates", row["responses"]),
        ("judge parse rate", f"{row['judge_parse_rate']:.1%}" if row["judge_parse_rate"] is not None else "n/a"),
        ("score histogram", hist),
        ("pairs (dropped)", f"{row['pairs']} ({', '.join(f'{k} {v}' for k, v in row['pairs_dropped'].items()) or 'none'})"),
        ("chosen / rejected length", f"{row['chosen_len_mean']} / {row['rejected_len_mean']} chars"),
        ("chosen / rejected score", f"{row['chosen_score_mean']} / {row['rejected_score_mean']}"),
        (f"judge (m{row['iteration']}) pairwise acc.", _accuracy_cell(row.get("judge_accuracy"))),
        ("DPO loss first -> last", f"{row['dpo_loss_first']} -> {row['dpo_loss_last']}"),
        ("DPO reward accuracy (last step)", row["dpo_reward_accuracy"]),
        ("DPO reward margin (last step)", row["dpo_reward_margin"]),
        ("seconds", row["seconds"]),
    ]
    if row.get("policy", "best_worst") != "best_worst":
        lines.insert(7, ("pair policy", _policy_cell(row)))
    if row.get("meta"):
        m = row["meta"]
        lines.insert(7, ("meta-judge", f"{m['judge_pairs']} judge pairs from {m['comparisons']} comparisons; parse "
                                       f"rate {_pct(m['meta_parse_rate'])}, position bias {_pct(m['position_bias_rate'])}; "
                                       + (f"preference margin {m['meta_preference_margin_mean']}; "
                                          if m.get("meta_preference_margin_mean") is not None else "")
                                       + f"DPO on {row.get('dpo_pairs')} pairs"))
    evaluation = row.get("eval", {})
    for key, other in (("winrate_vs_previous", row["iteration"]), ("winrate_vs_m1", 1)):
        if key in evaluation:
            w = evaluation[key]
            lines.append((f"m{row['iteration'] + 1} vs m{other} (win/tie/loss)",
                          f"{w['win']:.0%} / {w['tie']:.0%} / {w['loss']:.0%}, win rate {_rate_cell(w)}  "
                          f"judge: {w['judge']}"))
    if "selection" in row:
        s = row["selection"]
        won = next(c for c in s["candidates"] if c["selected"])
        lines.append((f"checkpoint selected (vs m{row['iteration']})",
                      f"{s['selected']} of {len(s['candidates'])}, win rate {won['win_rate']:.0%}"
                      + (" (final)" if won["final"] else f" (final step {s['final_step']})")))
    if "judge_accuracy" in evaluation:
        lines.append((f"m{row['iteration'] + 1} judge pairwise acc.", _accuracy_cell(evaluation["judge_accuracy"])))
    if "ifeval" in evaluation:
        lines.append((f"m{row['iteration'] + 1} IFEval prompt strict", _ifeval_cell(evaluation["ifeval"])))
    for task, figures in ((evaluation.get("harness") or {}).get("tasks") or {}).items():
        lines.append((f"m{row['iteration'] + 1} lm-eval {task}", _harness_cell(figures)))
    width = max(len(k) for k, _ in lines)
    monitors = row.get("monitors") or {}
    if monitors:
        lines.append(("top-score share / tie rate / pair yield",
                      f"{_pct(monitors.get('top_score_share'))} / {_pct(monitors.get('tie_rate'))} / "
                      f"{monitors.get('pair_yield')} pairs per prompt"))
    for warning in row.get("warnings") or []:
        lines.append(("warning", warning))
    accuracy = row.get("judge_accuracy")
    if accuracy and accuracy.get("judge_signal") != "above chance":
        lines.append(("warning", f"m{row['iteration']}'s judge is no better than chance on this evidence: so are "
                                 "this iteration's pairs"))
    title = f" iteration {row['iteration']}: {row['model']} -> m{row['iteration'] + 1} "
    print("\n" + title.center(width + 40, "="), flush=True)
    for key, value in lines:
        print(f"  {key.ljust(width)}  {value}")
    print("=" * (width + 40) + "\n", flush=True)


def _policy_cell(row: dict) -> str:
    if row["policy"] == "anchored":
        return "anchored: rejected from M1's answers" if row.get("anchored") else "anchored (iteration 1: M1 is the anchor)"
    rate = row.get("consistency_rate")
    if rate is None:
        return "consistency_weighted (no previous judge: plain DPO)"
    return (f"consistency_weighted: M_t vs M_t-1 consistency {rate} over {row.get('prompts_compared')} prompts, "
            f"DPO label smoothing {row.get('dpo_label_smoothing')}")


def _accuracy_cell(metrics: dict | None) -> str:
    if not metrics:
        return "not measured (eval.judge_data)"
    cell = format_accuracy(metrics)
    length = metrics.get("length_baseline") or {}
    if length.get("pairwise_accuracy") is not None:
        cell += f"; length baseline {length['pairwise_accuracy']:.3f}"
    split = metrics.get("length_split") or {}
    if split.get("length_balanced_accuracy") is not None:  # how much of it is "longer is better"
        cell += (f"; length-balanced {split['length_balanced_accuracy']:.3f} (preferred longer "
                 f"{split['preferred_longer_accuracy']:.2f}, shorter {split['preferred_shorter_accuracy']:.2f})")
    return cell


def _rate_cell(metrics: dict) -> str:
    shown = format_with_interval(metrics, "win_rate", digits=2)
    return "n/a" if shown is None else f"{shown}, {sample_size(metrics.get('n'), 'prompts')}"


def _ifeval_cell(metrics: dict) -> str:
    shown = format_with_interval(metrics, "prompt_level_strict_acc")
    return "n/a" if shown is None else f"{shown}, {sample_size(metrics.get('n_prompts'), 'prompts')}"


def _harness_cell(figures: dict) -> str:
    """The first metric of one lm-eval task, e.g. 'acc 0.6000 ± 0.2449, 5 items: a demonstration (under 100)'."""
    from srlm.evaluation.harness import format_value

    metric = next((k for k in figures if k != "n" and not k.endswith("_stderr")), None)
    if metric is None:
        return "n/a"
    return f"{metric} {format_value(figures[metric], figures.get(f'{metric}_stderr'))}, {sample_size(figures.get('n'), 'items')}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"
