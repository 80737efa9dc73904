"""Does the loop work? Runs the `evidence` recipe (SFT baseline, M1, M2, M3 on the embedded model) and prints one
table of what each model measured on data no model was trained on, every figure with its 95% interval.

    .venv/bin/python benchmarks/evidence.py [--run-dir runs/evidence] [--shared ../shared/data] [--table-only]

- judge accuracy: pairwise agreement with human preferences on 300 HH-RLHF pairs (builtin:hh_test), beside the
  length baseline on the same pairs; M1 vs the SFT baseline as a paired bootstrap difference;
- IFEval prompt-level strict accuracy on 150 of the 300 IFEval prompts in ../shared/data (the other 150, by the
  sha256 of their key, are set apart for choosing settings and are never reported); M3 vs M1 paired;
- win rate vs M1 on 100 OpenAssistant prompts (builtin:oasst_prompts), every answer graded alone by M1's judge
  (fixed for the run), ties half; with --baseline-winrate the SFT baseline's answers are graded too, after the run;
- mean length (characters) of the greedy answers to those prompts;
- DPO loss at the first and last step of the iteration that made the model, and its mean over each of the two
  passes (the first pass is a held-out check: every pair is new when it is trained on).

The run directory resumes like any `srlm run`: run the script again after an interruption. The table goes to
stdout, `<run-dir>/evidence.json` and `benchmarks/results/<recipe>.md` (`evidence.md` for the default recipe;
`--name` names it otherwise, for a run with overrides).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IFEVAL_REPORTED = 150


def split_ifeval(shared: Path, out_dir: Path) -> tuple[Path, Path]:
    """(reported, set apart): the 300 dev prompts in two halves by the sha256 of their key."""
    lines = [line for line in (shared / "ifeval" / "input_data_dev300.jsonl").read_text().splitlines() if line.strip()]
    ordered = sorted(lines, key=lambda line: hashlib.sha256(str(json.loads(line)["key"]).encode()).hexdigest())
    out_dir.mkdir(parents=True, exist_ok=True)
    reported, apart = out_dir / "ifeval_reported.jsonl", out_dir / "ifeval_set_apart.jsonl"
    reported.write_text("\n".join(ordered[:IFEVAL_REPORTED]) + "\n")
    apart.write_text("\n".join(ordered[IFEVAL_REPORTED:]) + "\n")
    return reported, apart


def run_loop(run_dir: Path, ifeval: Path, overrides: list[str], recipe: str = "evidence") -> None:
    command = [sys.executable, "-m", "srlm", "run", "--recipe", recipe, "--run-dir", str(run_dir),
               f"eval.ifeval_prompts={ifeval}", *overrides]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def baseline_winrate(run_dir: Path) -> dict:
    """The SFT baseline vs M1 on the same held-out prompts and by the same judge (M1) as the loop's win rates."""
    from srlm.config import load_config
    from srlm.stages.evaluate import winrate

    out = run_dir / "eval_sft_baseline" / "winrate_vs_m1.json"
    if out.exists():
        return json.loads(out.read_text())
    cfg = load_config(config_file=run_dir / "config.yaml")
    models = run_dir / "models"
    return winrate(cfg, str(models / "sft_baseline"), str(models / "m1"), str(models / "m1"), out,
                   run_dir / "eval_answers")


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def ifeval_outcomes(items: Path) -> dict:
    """IFEval outcomes by prompt key (1.0 = every instruction followed, strict) from an `.items.jsonl` file; {} when
    there is none. What a paired IFEval difference is computed over."""
    return {r["key"]: float(r["follow_all_instructions_strict"]) for r in _items(items)}


def _ci(metrics: dict | None, key: str, digits: int = 3) -> str:
    if not metrics or metrics.get(key) is None:
        return "n/a"
    interval = metrics.get(f"{key}_ci")
    shown = f"{metrics[key]:.{digits}f}"
    return shown + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")


def _length(answers_file: Path) -> dict | None:
    import numpy as np

    saved = _read(answers_file)
    if not saved:
        return None
    lengths = np.array([len(a) for a in saved["answers"]], dtype=float)
    rng = np.random.default_rng(0)
    means = [lengths[rng.integers(0, len(lengths), len(lengths))].mean() for _ in range(2000)]
    return {"mean_len": float(lengths.mean()), "mean_len_ci": [float(np.quantile(means, 0.025)),
                                                               float(np.quantile(means, 0.975))]}


def _judge_groups(run_dir: Path) -> list:
    """The human pairs the run's judge accuracy was measured on (eval.judge_data, its first eval.judge_limit)."""
    from srlm.config import load_config
    from srlm.evaluation.judge_eval import read_human_groups
    from srlm.seed import resolve_data_path

    cfg = load_config(config_file=run_dir / "config.yaml")
    if not cfg.eval.judge_data:
        return []
    groups = read_human_groups(resolve_data_path(cfg.eval.judge_data))[0]
    return groups[: cfg.eval.judge_limit] if cfg.eval.judge_limit else groups


def _length_split(groups: list, items_path: Path) -> dict | None:
    """Accuracy where humans preferred the longer reply, the shorter, and their mean (computed from the items file,
    so runs measured before srlm reported it get it too)."""
    from srlm.evaluation.judge_eval import length_split

    items = _items(items_path)
    return length_split(groups, items) if items and groups else None


def collect(run_dir: Path, reference_run: Path | None = None) -> dict:
    from srlm.evaluation.metrics import pair_credits, paired_difference_by_key

    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"iterations": []}
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    folders = {"sft_baseline": run_dir / "eval_sft_baseline", "m1": run_dir / "eval_m1"}
    if (run_dir / "eval_base").is_dir():  # loop.eval_base: the model the loop started from
        folders = {"base": run_dir / "eval_base", **folders}
    dpo = {}
    t = 1
    while (stages.get(f"iter_{t}/dpo") or {}).get("status") == "done":  # every trained M_t+1, summarised or not
        stats = stages[f"iter_{t}/dpo"]["stats"]
        losses = [step["loss"] for step in stats.get("per_step") or []]
        half = len(losses) // 2  # two passes over the pairs: the first half of the steps is the first pass
        passes = (round(sum(losses[:half]) / half, 3), round(sum(losses[half:]) / (len(losses) - half), 3)) if half else None
        dpo[f"m{t + 1}"] = (stats.get("loss_first"), stats.get("loss_last"), passes)
        folders[f"m{t + 1}"] = run_dir / f"iter_{t}" / "eval"
        t += 1
    groups = _judge_groups(run_dir)
    table = {}
    for model, folder in folders.items():
        vs_m1 = {"sft_baseline": folder / "winrate_vs_m1.json", "m2": folder / "winrate_vs_previous.json"}.get(
            model, folder / "winrate_vs_m1.json")
        table[model] = {
            "judge_accuracy": _read(folder / "judge_accuracy.json"),
            "ifeval": _read(folder / "ifeval.json"),
            "winrate_vs_m1": None if model in ("m1", "base") else _read(vs_m1),
            # beside the win rate vs M1, where that is not already the comparison with the previous model (M2's)
            "winrate_vs_previous": None if vs_m1.name == "winrate_vs_previous.json"
            else _read(folder / "winrate_vs_previous.json"),
            "length": _length(run_dir / "eval_answers" / f"{model}.json"),
            "dpo_loss": dpo.get(model),
            "length_split": _length_split(groups, folder / "judge_accuracy.items.jsonl"),
        }
    # Paired differences: M1's judge vs the baseline's on the same human pairs; M3's IFEval vs M1's on the same prompts.
    comparisons = {}
    base_items = _items(folders["sft_baseline"] / "judge_accuracy.items.jsonl")
    m1_items = _items(folders["m1"] / "judge_accuracy.items.jsonl")
    if base_items and m1_items:
        comparisons["judge_accuracy m1 - sft_baseline"] = paired_difference_by_key(pair_credits(m1_items),
                                                                                   pair_credits(base_items))
    if reference_run is not None:  # the same human pairs judged by another run's M1 (e.g. the paper's EFT-only M1)
        other = _items(reference_run / "eval_m1" / "judge_accuracy.items.jsonl")
        if other and m1_items:
            comparisons[f"judge_accuracy m1 - m1 of {reference_run}"] = paired_difference_by_key(
                pair_credits(m1_items), pair_credits(other))
    start_items = _items(folders.get("base", Path("/nonexistent")) / "judge_accuracy.items.jsonl")
    if start_items and m1_items:
        comparisons["judge_accuracy m1 - base"] = paired_difference_by_key(pair_credits(m1_items),
                                                                           pair_credits(start_items))
    # IFEval, paired over the same prompts: every M_t+1 against M_t and M1, M3 against M1 first, and everything
    # against the base model the loop started from (loop.eval_base).
    last = f"m{t}"
    outcomes = {name: ifeval_outcomes(folder / "ifeval.items.jsonl") for name, folder in folders.items()}
    trained = [f"m{k}" for k in range(2, t + 1)]
    order = [(last, "m1"), *((f"m{k}", f"m{k - 1}") for k in range(2, t + 1)),
             *((m, "m1") for m in trained if m != last), ("m1", "base"), *((m, "base") for m in trained),
             ("sft_baseline", "base")]
    for newer, older in dict.fromkeys(order):
        if newer != older and outcomes.get(newer) and outcomes.get(older):
            comparisons[f"ifeval prompt strict {newer} - {older}"] = paired_difference_by_key(outcomes[newer],
                                                                                              outcomes[older])
    outside = {name: _read(folder / "finished_outside_the_loop.json") for name, folder in folders.items()
               if (folder / "finished_outside_the_loop.json").exists()}
    return {"run_dir": str(run_dir), "seconds": summary.get("seconds"), "models": table, "comparisons": comparisons,
            "stage_seconds": {k: v.get("seconds") for k, v in stages.items()}, "finished_outside_the_loop": outside,
            "iterations": [{key: it.get(key) for key in ("pairs", "chosen_len_mean", "rejected_len_mean")}
                           for it in summary["iterations"]]}


def finish_outside_the_loop(run_dir: Path, judge_limit: int) -> None:
    """The last model's evaluation when the loop's own was cut short (a session's time ran out): the same library
    calls as the loop's eval stage (M_t+1 vs M1 judged by M1, IFEval, judge accuracy), the judge measured on the
    first `judge_limit` pairs of the same data. Recorded in finished_outside_the_loop.json beside the results."""
    from srlm.config import load_config
    from srlm.io import write_json
    from srlm.stages.evaluate import ifeval_accuracy, judge_accuracy, winrate

    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    t = max(int(k.split("/")[0][5:]) for k, v in stages.items() if k.endswith("/dpo") and v["status"] == "done")
    cfg = load_config(config_file=run_dir / "config.yaml", overrides=[f"eval.judge_limit={judge_limit}"])
    models, out = run_dir / "models", run_dir / f"iter_{t}" / "eval"
    out.mkdir(parents=True, exist_ok=True)
    new, m1 = str(models / f"m{t + 1}"), str(models / "m1")
    if not (out / "winrate_vs_m1.json").exists():
        winrate(cfg, new, m1, m1, out / "winrate_vs_m1.json", run_dir / "eval_answers")
    if not (out / "ifeval.json").exists():
        ifeval_accuracy(cfg, new, out)
    if not (out / "judge_accuracy.json").exists():
        judge_accuracy(cfg, new, out)
    write_json(out / "finished_outside_the_loop.json", {
        "why": "the loop's eval stage for this model was stopped before it finished (session time); these files "
               "come from the same functions, called by benchmarks/evidence.py --finish-outside-the-loop",
        "judge_limit": judge_limit, "model": f"m{t + 1}"})


def render(result: dict) -> str:
    rows = [("model", "judge acc. (hh_test)", "length baseline", "judge acc., length-balanced", "IFEval prompt strict",
             "win rate vs M1",
             "mean length (chars)", "DPO loss first -> last", "DPO loss, pass 1 -> pass 2 (mean)")]
    for model, m in result["models"].items():
        judge = m["judge_accuracy"]
        length_base = (judge or {}).get("length_baseline")
        rows.append((
            model,
            _ci(judge, "pairwise_accuracy") + (f" n={judge['n_pairs']}" if judge else ""),
            _ci(length_base, "pairwise_accuracy") if length_base else "n/a",
            (_ci(m["length_split"], "length_balanced_accuracy")
             + f" ({m['length_split']['preferred_longer_accuracy']:.2f} / {m['length_split']['preferred_shorter_accuracy']:.2f})"
             if m.get("length_split") and m["length_split"]["length_balanced_accuracy"] is not None else "n/a"),
            _ci(m["ifeval"], "prompt_level_strict_acc") + (f" n={m['ifeval']['n_prompts']}" if m["ifeval"] else ""),
            "(the reference)" if model == "m1" else "n/a" if model == "base" else (
                _ci(m["winrate_vs_m1"], "win_rate", 2) + f" n={m['winrate_vs_m1']['n']}" if m["winrate_vs_m1"] else "n/a"),
            _ci(m["length"], "mean_len", 0),
            "n/a" if not m["dpo_loss"] else f"{m['dpo_loss'][0]} -> {m['dpo_loss'][1]}",
            "n/a" if not m["dpo_loss"] or not m["dpo_loss"][2] else f"{m['dpo_loss'][2][0]} -> {m['dpo_loss'][2][1]}",
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for name, c in result["comparisons"].items():
        if c.get("difference") is not None:
            low, high = c["difference_ci"]
            lines.append(f"\n{name}: {c['difference']:+.3f} [{low:+.3f}, {high:+.3f}] (paired bootstrap, n={c['n']})")
    for model, m in result["models"].items():
        for against, metrics in (("m1", m.get("winrate_vs_m1")), ("the previous model", m.get("winrate_vs_previous"))):
            if metrics:
                lc = metrics.get("length_controlled_win_rate")
                lines.append(f"\n{model} vs {against} (judge {metrics.get('judge', '?')}): win / tie / loss "
                             f"{metrics['win']:.0%} / {metrics['tie']:.0%} / {metrics['loss']:.0%}, win rate "
                             f"{_ci(metrics, 'win_rate', 2)}" + (f", length-controlled {lc:.2f}" if lc is not None else "")
                             + f", n={metrics['n']}")
    for name, note in result.get("finished_outside_the_loop", {}).items():
        lines.append(f"\n{name}: evaluated outside the loop, judge on the first {note['judge_limit']} pairs: {note['why']}")
    for t, it in enumerate(result.get("iterations") or [], start=1):
        lines.append(f"\niteration {t} pairs: {it.get('pairs')}, chosen / rejected length "
                     f"{it.get('chosen_len_mean')} / {it.get('rejected_len_mean')} chars")
    if result.get("recipe"):
        lines.append(f"\nrecipe: {result['recipe']}" + (f", overrides: {' '.join(result['overrides'])}"
                                                         if result.get("overrides") else ""))
    lines.append(f"\nrun: {result['run_dir']}; stage seconds: {json.dumps(result['stage_seconds'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "evidence"))
    parser.add_argument("--recipe", default="evidence",
                        help="evidence (the paper's M1), evidence-trained-judge or evidence-base (no SFT)")
    parser.add_argument("--reference-run", type=Path, help="another run whose M1 judged the same pairs: their paired "
                        "difference is printed (e.g. runs/evidence beside runs/evidence_tj)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--table-only", action="store_true", help="only read an existing run directory")
    parser.add_argument("--finish-outside-the-loop", type=int, metavar="JUDGE_PAIRS",
                        help="evaluate the last trained model outside the loop (see finish_outside_the_loop)")
    parser.add_argument("--baseline-winrate", action="store_true",
                        help="also grade the SFT baseline's answers against M1's (about 5 more minutes)")
    parser.add_argument("--name", help="the results file's name, benchmarks/results/<name>.md (default: the recipe's "
                        "name; give one when overrides make it a different run)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the recipe")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    if args.finish_outside_the_loop:
        finish_outside_the_loop(run_dir, args.finish_outside_the_loop)
    elif not args.table_only:
        reported, _apart = split_ifeval(Path(args.shared), run_dir.parent / f"{run_dir.name}_data")
        run_loop(run_dir, reported, args.overrides, args.recipe)
        if args.baseline_winrate:
            baseline_winrate(run_dir)
    result = collect(run_dir, args.reference_run)
    result["recipe"], result["overrides"] = args.recipe, args.overrides
    (run_dir / "evidence.json").write_text(json.dumps(result, indent=1))
    table = render(result)
    name = args.name or ("evidence" if args.recipe == "evidence" else args.recipe)
    out = ROOT / "benchmarks" / "results" / f"{name}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
