"""Pair policies side by side (pairs.policy and pairs.length_control_rho): the quickstart run once per policy.

    .venv/bin/python benchmarks/pair_policies.py [--out runs/pair_policies] [--table-only]

Each policy runs the `quickstart` recipe (embedded SmolLM2-135M-Instruct, M1 -> M3, 16 prompts per iteration) in
its own run directory. The first, `best_worst` (the paper), is the README's quickstart command as it is, and
trains M1; the others start from that same M1 (`loop.m1`), so they differ only in how pairs are made:

- best_worst             the paper: M_t's best vs worst answer
- length_controlled      best vs worst with Meta-Rewarding's length control, pairs.length_control_rho=0.2
- anchored               Temporal Self-Rewarding: rejected from M1's answers (from iteration 2)
- consistency_weighted   CREAM: DPO label smoothing from M_t vs M_t-1 judge consistency (from iteration 2)
- meta_judge             Meta-Rewarding: M_t also judges its two judgements of each answer, and DPO trains on
                         judge pairs beside the actor's (meta.enabled=true meta.method=generate, the paper's written
                         verdict; judge.num_samples=2, so the actor's scores are a mean of two judgements, unlike the
                         other rows')
- meta_judge_direct      the same, the verdict read from p(A) vs p(B) after "Winner: " (meta.method=direct, the
                         quickstart recipe's setting since the written verdict parsed 0%)

Each run is timed and its peak memory read by /usr/bin/time -v. The table shows, for M3: judge accuracy on the
quickstart's 16 held-out HH-RLHF pairs, its win rate against M1 on 8 held-out prompts (graded by M1's judge), its
answers' mean length; for iteration 2 (where the policies differ): the collapse monitors, the DPO loss, what the
policy did; and each run's wall time and peak memory. Those are quickstart samples: their intervals are wide.

The judge-free measure is on a real sample: after its run, each policy's M3 answers the 150 reported IFEval prompts
of ../shared/data/ifeval (`srlm eval ifeval`, greedy, 256 new tokens; the same half as benchmarks/evidence.py, the
other half set apart), and so do the shared M1 and the embedded model it was trained from, once. The table gives M3's prompt-level strict accuracy and two
paired differences over the same prompts (bootstrap): M3 - M1 (did the two iterations help?) and M3 - best_worst's
M3 (did the policy do better than the paper's?). IFEval runs outside the loops, so the wall times do not include it.

Writes <out>/pair_policies.json and benchmarks/results/pair_policies.md. Runs resume like any `srlm run`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from evidence import ifeval_outcomes, split_ifeval
from srlm.evaluation.metrics import paired_difference_by_key

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {
    "best_worst": [],
    "length_controlled": ["pairs.length_control_rho=0.2"],
    "anchored": ["pairs.policy=anchored"],
    "consistency_weighted": ["pairs.policy=consistency_weighted"],
    # two judgements per answer: the meta-judge compares them (the actor's scores are their mean, unlike the others')
    "meta_judge": ["meta.enabled=true", "meta.method=generate", "judge.num_samples=2"],
    "meta_judge_direct": ["meta.enabled=true", "meta.method=direct", "judge.num_samples=2"],
}


def run(out: Path, policy: str) -> None:
    run_dir = out / policy
    if (run_dir / "summary.json").exists() and (run_dir / "report.html").exists():
        print(f"{policy}: done, skipped", flush=True)
        return
    start_from = [] if policy == "best_worst" else [f"loop.m1={out / 'best_worst' / 'models' / 'm1'}"]
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "srlm", "run", "--recipe", "quickstart", "--run-dir",
               str(run_dir), *start_from, *POLICIES[policy]]
    print("+", " ".join(command), flush=True)
    with open(out / f"{policy}.time.txt", "w") as timing:
        subprocess.run(command, check=True, stderr=timing)


IFEVAL_MAX_NEW_TOKENS = 256  # as the evidence recipe's eval.ifeval_max_new_tokens


def ifeval(result: Path, model: str, reported: Path) -> Path:
    """`srlm eval ifeval` for `model` (a model folder, or "embedded"), once: its metrics at `result`."""
    if result.exists():
        return result
    command = [sys.executable, "-m", "srlm", "eval", "ifeval", "--recipe", "quickstart", "--model", model,
               "--data", str(reported), "--out", str(result), "--max-new-tokens", str(IFEVAL_MAX_NEW_TOKENS)]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return result


def _follows(result: Path) -> dict:
    """IFEval outcomes by prompt key, from the items file beside `srlm eval ifeval`'s metrics file `result`."""
    return ifeval_outcomes(result.with_name(result.stem + ".items.jsonl"))


def _ifeval_figures(out: Path, policy: str) -> dict:
    m3 = out / policy / "ifeval_m3.json"
    if not m3.exists():
        return {}
    figures = {"ifeval_m3": json.loads(m3.read_text())}
    m3_follows = _follows(m3)
    for name, other in (("m1", out / "best_worst" / "ifeval_m1.json"),
                        ("best_worst_m3", out / "best_worst" / "ifeval_m3.json")):
        if other.exists() and other != m3:
            figures[f"ifeval_m3_minus_{name}"] = paired_difference_by_key(m3_follows, _follows(other))
    return figures


def _timing(path: Path) -> dict:
    text = path.read_text() if path.exists() else ""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = None
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return {"wall_seconds": seconds, "max_rss_gib": round(int(rss.group(1)) / 2**20, 2) if rss else None}


def _mean_length(answers: Path) -> float | None:
    if not answers.exists():
        return None
    texts = json.loads(answers.read_text())["answers"]
    return round(sum(len(t) for t in texts) / len(texts), 1) if texts else None


def collect(out: Path) -> dict:
    rows = {}
    for policy in POLICIES:
        summary_path = out / policy / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        last = summary["iterations"][-1]
        evaluation = last.get("eval", {})
        rows[policy] = {
            "judge_accuracy_m3": evaluation.get("judge_accuracy"),
            "winrate_m3_vs_m1": evaluation.get("winrate_vs_m1"),
            "mean_length_m3": _mean_length(out / policy / "eval_answers" / "m3.json"),
            "mean_length_m1": _mean_length(out / policy / "eval_answers" / "m1.json"),
            "iterations": [{key: it.get(key) for key in ("iteration", "pairs", "dpo_loss_first", "dpo_loss_last",
                                                         "monitors", "policy", "anchored", "consistency_rate",
                                                         "dpo_label_smoothing", "seconds", "warnings", "meta",
                                                         "dpo_pairs")}
                           for it in summary["iterations"]],
            **_timing(out / f"{policy}.time.txt"),
            **_ifeval_figures(out, policy),
        }
    m1, base = out / "best_worst" / "ifeval_m1.json", out / "ifeval_base.json"
    if m1.exists() and "best_worst" in rows:  # shared by every row: M1 and the model it was trained from
        rows["best_worst"]["ifeval_m1"] = json.loads(m1.read_text())
        if base.exists():
            rows["best_worst"]["ifeval_base"] = json.loads(base.read_text())
            rows["best_worst"]["ifeval_m1_minus_base"] = paired_difference_by_key(_follows(m1), _follows(base))
    return rows


def _interval(metrics: dict | None, key: str, n_key: str) -> str:
    if not metrics or metrics.get(key) is None:
        return "n/a"
    low, high = metrics.get(f"{key}_ci") or (None, None)
    shown = f"{metrics[key]:.2f}"
    return f"{shown} [{low:.2f}, {high:.2f}] n={metrics.get(n_key)}" if low is not None else f"{shown} n={metrics.get(n_key)}"


def _difference(d: dict | None) -> str:
    if not d or d.get("difference") is None:
        return "n/a"
    low, high = d["difference_ci"]
    return f"{d['difference']:+.3f} [{low:+.3f}, {high:+.3f}] n={d['n']}"


def render(rows: dict) -> str:
    shared = rows.get("best_worst", {})
    m1, base = shared.get("ifeval_m1"), shared.get("ifeval_base")
    lines = [f"M1 (shared by every row): IFEval prompt strict {_interval(m1, 'prompt_level_strict_acc', 'n_prompts')}"
             + (f"; the embedded model before SFT: {_interval(base, 'prompt_level_strict_acc', 'n_prompts')}, M1 - it "
                f"{_difference(shared.get('ifeval_m1_minus_base'))} (paired)" if base else "")
             if m1 else "", "",
             "| policy | M3 IFEval prompt strict (150 prompts) | M3 - M1 (paired) | M3 - best_worst's M3 (paired) | "
             "M3 judge acc. (16 hh_test pairs) | M3 vs M1 win rate (8 prompts) | M3 / M1 mean length | "
             "iteration 2: pairs, top-score share, tie rate, score gap | iteration 2 DPO loss first -> last | "
             "what the policy did in iteration 2 | wall time, peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for policy, r in rows.items():
        it = r["iterations"][-1]
        m = it.get("monitors") or {}
        did = {"anchored": "rejected from M1's answers" if it.get("anchored") else "n/a",
               "consistency_weighted": f"consistency {it.get('consistency_rate')}, label smoothing "
                                       f"{it.get('dpo_label_smoothing')}"}.get(policy, "")
        if it.get("meta"):  # every iteration's: the meta-judge runs in each
            metas = [i.get("meta") or {} for i in r["iterations"]]
            each = lambda key: " / ".join(str(m.get(key)) for m in metas)  # noqa: E731
            did = (f"judge pairs {each('judge_pairs')} (iterations 1 / 2; {it.get('dpo_pairs')} DPO pairs in "
                   f"iteration 2); meta-judge parse rate {each('meta_parse_rate')}, position bias "
                   f"{each('position_bias_rate')}"
                   + (f", preference margin {each('meta_preference_margin_mean')}"
                      if metas[-1].get("meta_preference_margin_mean") is not None else ""))
        wall = f"{r['wall_seconds'] / 60:.1f} min" if r.get("wall_seconds") else "n/a"
        lines.append(
            f"| {policy} | {_interval(r.get('ifeval_m3'), 'prompt_level_strict_acc', 'n_prompts')} "
            f"| {_difference(r.get('ifeval_m3_minus_m1'))} | {_difference(r.get('ifeval_m3_minus_best_worst_m3'))} "
            f"| {_interval(r['judge_accuracy_m3'], 'pairwise_accuracy', 'n_pairs')} "
            f"| {_interval(r['winrate_m3_vs_m1'], 'win_rate', 'n')} | {r['mean_length_m3']} / {r['mean_length_m1']} "
            f"| {it.get('pairs')}, {m.get('top_score_share')}, {m.get('tie_rate')}, {m.get('score_gap_mean')} "
            f"| {it.get('dpo_loss_first')} -> {it.get('dpo_loss_last')} | {did} | {wall}, {r.get('max_rss_gib')} GiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pair_policies")
    parser.add_argument("--policy", action="append", choices=sorted(POLICIES), help="run only these (repeatable)")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="the shared data folder (IFEval)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        reported, _set_apart = split_ifeval(Path(args.shared), args.out / "data")
        ifeval(args.out / "ifeval_base.json", "embedded", reported)  # where every run started, before SFT
        for policy in args.policy or POLICIES:
            run(args.out, policy)
            runs = args.out / policy
            if policy == "best_worst":
                ifeval(runs / "ifeval_m1.json", str(runs / "models" / "m1"), reported)
            ifeval(runs / "ifeval_m3.json", str(runs / "models" / "m3"), reported)
    rows = collect(args.out)
    (args.out / "pair_policies.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = render(rows)
    if rows:
        (ROOT / "benchmarks" / "results" / "pair_policies.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
