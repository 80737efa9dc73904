"""Does pairwise judge training give M1 a judge that agrees with humans? (issue: evidence, part 2)

    python benchmarks/judge_training.py --m1 runs/evidence/models/m1 --out runs/judge_training

What it does, on the embedded SmolLM2-135M-Instruct, 2 CPU cores:
1. trains the IFT-only SFT baseline (the evidence recipe's SFT settings, no EFT), unless --sft-baseline is given;
2. trains M1's judge on the 688 human pairs of builtin:hh_eft with `srlm train-judge` (Bradley-Terry on the
   expected score of the direct judge prompt; the settings below, chosen before any figure here was seen);
3. measures every judge with `srlm eval judge` (judge.method=direct) on builtin:hh_val (300 pairs: the split for
   checking settings) and on the first 300 pairs of builtin:hh_test (the reported split, the evidence run's pairs),
   beside the length baseline on the same pairs;
4. prints paired bootstrap differences on hh_test: trained judge - M1, trained judge - SFT baseline, and trained
   judge - M1 as the evidence run judged (with its justification, judge.method=expected), when that run's items
   file is there;
5. with --variant NAME (VARIANTS below), also trains and measures that variant of the trained judge, e.g.
   `length_balanced` (judge_training.length_balance=true: as many pairs where humans preferred the shorter reply
   as the longer). A variant is measured on both splits; a recipe takes the one that does best on hh_val: the
   higher pairwise accuracy there, and within 0.01 of each other the higher length-balanced accuracy (the rule was
   written down before the length_balanced variant's first figure).

Splits: hh_eft, hh_val and hh_test are disjoint by question (scripts/build_builtin_data.py). Nothing here is chosen
on hh_test. Every step is skipped when its output exists, so a killed run continues.
Writes <out>/judge_training.json and prints a markdown table (benchmarks/results/judge_training.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_JUDGE = ["judge_training.learning_rate=2e-4", "judge_training.learning_rate_end=2e-5",
               "judge_training.batch_size=8", "judge_training.micro_batch_size=4", "judge_training.epochs=1",
               "judge_training.save_every_steps=20"]
# Variants of the trained judge (--variant NAME): each is trained with TRAIN_JUDGE plus these keys into
# <out>/m1_judge_NAME and measured like the first; which one a recipe uses is chosen on hh_val.
VARIANTS = {"length_balanced": ["judge_training.length_balance=true"]}
SFT_BASELINE = ["--recipe", "evidence"]  # its sft section: LoRA r16, lr 1e-3 -> 1e-4, one epoch
DIRECT = ["judge.method=direct", "judge.num_samples=1", "backend.max_batch_tokens=32768"]


def srlm(*argv: str) -> None:
    from srlm.cli import main

    print("$ srlm " + " ".join(argv), flush=True)
    start = time.perf_counter()
    code = main(list(argv))
    if code != 0:
        sys.exit(f"srlm {argv[0]} failed ({code})")
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def judge_eval(model: Path, data: str, limit: int, out: Path, extra: list[str]) -> None:
    if not out.exists():
        srlm("eval", "judge", "--model", str(model), "--data", data, "--limit", str(limit), "--out", str(out), *extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m1", type=Path, required=True, help="M1 (IFT + EFT), e.g. runs/evidence/models/m1")
    parser.add_argument("--sft-baseline", type=Path, help="an IFT-only model; default: trained here")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "judge_training")
    parser.add_argument("--evidence-items", type=Path, default=ROOT / "runs" / "evidence" / "eval_m1" /
                        "judge_accuracy.items.jsonl", help="the evidence run's M1 judge items on hh_test")
    parser.add_argument("--val-limit", type=int, default=300)
    parser.add_argument("--test-limit", type=int, default=300)
    parser.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS),
                        help="also train and measure this variant of the trained judge (repeatable)")
    parser.add_argument("--table-only", action="store_true", help="print the table from what is on disk")
    parser.add_argument("--skip-val", action="store_true", help="do not measure on hh_val (the check of the settings)")
    parser.add_argument("--skip-m1-direct", action="store_true",
                        help="do not measure M1 itself with the direct prompt (an ablation: the prompt without training)")
    parser.add_argument("--test-from", type=Path, help="a folder holding judge_accuracy.json and its items for the "
                        "trained judge on the same hh_test pairs with the same settings (e.g. runs/evidence_tj/eval_m1, "
                        "where the loop measured the same model): copied instead of measured again")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    trained = out / "m1_judge_trained"
    baseline = args.sft_baseline or out / "sft_baseline"
    if not args.table_only:
        if not trained.exists():
            srlm("train-judge", "--model", str(args.m1), "--pairs", "builtin:hh_eft", "--out", str(trained),
                 "--stats-out", str(out / "train_judge_stats.json"), *TRAIN_JUDGE)
        if not baseline.exists():
            srlm("sft", "--no-eft", "--model", "embedded", "--out", str(baseline), *SFT_BASELINE)
        if args.test_from and not (out / "test_m1_judge_trained.json").exists():
            import shutil

            shutil.copy(args.test_from / "judge_accuracy.json", out / "test_m1_judge_trained.json")
            shutil.copy(args.test_from / "judge_accuracy.items.jsonl", out / "test_m1_judge_trained.items.jsonl")
            print(f"hh_test figures of the trained judge copied from {args.test_from}", flush=True)
        for variant in args.variant:
            if not (out / f"m1_judge_{variant}").exists():
                srlm("train-judge", "--model", str(args.m1), "--pairs", "builtin:hh_eft", "--out",
                     str(out / f"m1_judge_{variant}"), "--stats-out", str(out / f"train_judge_stats_{variant}.json"),
                     *TRAIN_JUDGE, *VARIANTS[variant])
        models = ([("m1_judge_trained", trained)] + [(f"m1_judge_{v}", out / f"m1_judge_{v}") for v in args.variant]
                  + ([] if args.skip_m1_direct else [("m1", args.m1)]))
        for name, model in [] if args.skip_val else [("sft_baseline", baseline)] + models:
            judge_eval(model, "builtin:hh_val", args.val_limit, out / f"val_{name}.json", DIRECT)
        for name, model in [("sft_baseline", baseline)] + models:
            judge_eval(model, "builtin:hh_test", args.test_limit, out / f"test_{name}.json", DIRECT)
    result = collect(out, args.evidence_items)
    (out / "judge_training.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    (ROOT / "benchmarks" / "results" / "judge_training.md").write_text(table + "\n")
    print(table)


JUDGES = ("sft_baseline", "m1", "m1_judge_trained", *(f"m1_judge_{v}" for v in VARIANTS))


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def collect(out: Path, evidence_items: Path) -> dict:
    from srlm.evaluation.metrics import pair_credits, paired_difference_by_key

    from srlm.evaluation.judge_eval import length_split, read_human_groups
    from srlm.seed import resolve_data_path

    rows = {}
    for split in ("val", "test"):
        groups = read_human_groups(resolve_data_path(f"builtin:hh_{split}"))[0]
        for name in JUDGES:
            metrics = _read(out / f"{split}_{name}.json")
            if metrics:
                items = _items(out / f"{split}_{name}.items.jsonl")
                metrics["length_split"] = length_split(groups, items)  # also for files written before srlm had it
                rows[f"{split} {name}"] = metrics
    comparisons = {}
    for split in ("test", "val", "test+val"):
        # test+val: both held-out splits pooled (600 pairs; neither was used to train or choose any judge here)
        credits = {name: {g: c for part in split.split("+")
                          for g, c in pair_credits(_items(out / f"{part}_{name}.items.jsonl")).items()}
                   for name in JUDGES}
        if evidence_items.exists() and split == "test":
            credits["m1 (evidence run, with justification)"] = pair_credits(_items(evidence_items))
        for name in [n for n in JUDGES if n.startswith("m1_judge_")]:
            for other in ("m1", "sft_baseline", "m1 (evidence run, with justification)"):
                if credits.get(name) and credits.get(other):
                    comparisons[f"{split}: {name} - {other}"] = paired_difference_by_key(credits[name], credits[other])
    train_judge = {"m1_judge_trained": _read(out / "train_judge_stats.json")}
    train_judge.update({f"m1_judge_{v}": _read(out / f"train_judge_stats_{v}.json") for v in VARIANTS})
    return {"rows": rows, "comparisons": comparisons,
            "train_judge": {name: stats for name, stats in train_judge.items() if stats},
            "settings": {"train_judge": TRAIN_JUDGE, "variants": VARIANTS, "judge": DIRECT}}


def render(result: dict) -> str:
    from srlm.evaluation.metrics import format_with_interval

    from srlm.evaluation.judge_eval import format_accuracy

    lines = ["| split | judge (judge.method=direct) | pairwise accuracy [95% CI], pairs | length baseline, same pairs "
             "| length-balanced accuracy (preferred longer / shorter) |",
             "|---|---|---|---|---|"]
    for key, m in result["rows"].items():
        split, name = key.split(" ", 1)
        split = {"val": "hh_val (settings)", "test": "hh_test (reported)"}[split]
        ls = m["length_split"]
        balanced = (f"{format_with_interval(ls, 'length_balanced_accuracy')} ({ls['preferred_longer_accuracy']:.3f} n="
                    f"{ls['n_longer']} / {ls['preferred_shorter_accuracy']:.3f} n={ls['n_shorter']})"
                    if ls.get("length_balanced_accuracy") is not None else "n/a")
        lines.append(f"| {split} | {name} | {format_accuracy(m)} "
                     f"| {format_with_interval(m['length_baseline'], 'pairwise_accuracy')} | {balanced} |")
    for key, c in result["comparisons"].items():
        split, name = key.split(": ", 1)
        if c["difference"] is not None:
            low, high = c["difference_ci"]
            where = "hh_test and hh_val pooled" if split == "test+val" else f"hh_{split}"
            lines.append(f"\n{name} on {where}: {c['difference']:+.3f} [{low:+.3f}, {high:+.3f}] "
                         f"(paired bootstrap over {c['n']} pairs; a missing score counts as a tie)")
    for name, stats in result.get("train_judge", {}).items():
        lines.append(f"\ntrain-judge ({name}): {stats['pairs_trained']} pairs of builtin:hh_eft, {stats['steps']} steps, loss "
                     f"{stats.get('loss_first')} -> {stats.get('loss_last')}, held-out pair accuracy during the first "
                     f"pass {stats.get('pair_accuracy_first_epoch')} ({stats.get('pairs_first_epoch')} pairs, each "
                     f"scored before it was learnt from), {stats.get('train_seconds')} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
