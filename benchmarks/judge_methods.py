"""Judge methods: the paper's K-sample mean (judge.method=sample_mean, K=3) vs expected-score judging
(judge.method=expected, K=1), on judge accuracy against human ranks and on cost, through `srlm eval judge`'s
machinery (`evaluate_judge`) on the same ranked groups with the same model.

    python benchmarks/judge_methods.py [--limit 12] [--model DIR] [--data FILE] [--max-new-tokens 160] [--json]

Both arms sample at the config's defaults (T 0.7, top-p 0.9, 160 tokens) with the same seeds, so the single
judgement of the expected arm is the same text as the first of the three samples of the sample_mean arm; a third
row, sample_mean K=1, scores those first samples by their integers (no extra run: it shows how much of a
difference comes from reading the probabilities rather than from using one sample instead of three).

Cost: judgements per second of backend time (generation, plus the scoring pass for expected), tokens generated,
prefill tokens, and model forward passes (every call of the model, counted by a hook). The pairwise accuracy
difference between the two arms gets a paired bootstrap interval over groups.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import machine

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "oasst" / "en_100_tree.jsonl"
DEFAULT_MODEL = HERE.parent / "runs" / "q3" / "models" / "m1"


def pair_credits(items: list[dict], groups, field: str = "score") -> list[tuple[float, int]]:
    """(credit, pairs) per group, by judge_agreement's tie policy: pairs with different human ranks and both scores
    present; 1 when the judge orders them as humans do, 0.5 when it scores them equally."""
    out, start = [], 0
    for group in groups:
        replies = items[start:start + len(group.replies)]
        start += len(group.replies)
        credit, count = 0.0, 0
        for a in range(len(replies)):
            for b in range(a + 1, len(replies)):
                ra, rb, sa, sb = replies[a]["rank"], replies[b]["rank"], replies[a][field], replies[b][field]
                if ra == rb or sa is None or sb is None:
                    continue
                count += 1
                credit += 0.5 if sa == sb else float((sa > sb) == (ra < rb))
        out.append((credit, count))
    return out


def paired_difference(first, second, samples: int = 2000, seed: int = 0) -> tuple[float | None, list[float] | None]:
    """Pairwise accuracy of `first` minus `second` ((credit, pairs) per group), with a 95% bootstrap interval
    resampling groups (the same groups for both, so the interval is of the paired difference)."""
    c1, n1 = np.array([c for c, _ in first]), np.array([n for _, n in first])
    c2, n2 = np.array([c for c, _ in second]), np.array([n for _, n in second])
    if not n1.sum() or not n2.sum():
        return None, None
    value = c1.sum() / n1.sum() - c2.sum() / n2.sum()
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(c1), size=(samples, len(c1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = c1[draws].sum(1) / n1[draws].sum(1) - c2[draws].sum(1) / n2[draws].sum(1)
    diffs = diffs[np.isfinite(diffs)]
    return float(value), [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default=None, help=f"judge model (default {DEFAULT_MODEL}, else the embedded model)")
    parser.add_argument("--limit", type=int, default=12, help="ranked groups used")
    parser.add_argument("--samples", type=int, default=3, help="K of the sample_mean arm")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="judgement length limit (judge default 160)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import json

    from srlm.backends import make_backend
    from srlm.config import GenerationBackendConfig, JudgeConfig
    from srlm.evaluation.judge_eval import evaluate_judge, read_human_groups
    from srlm.evaluation.metrics import judge_agreement
    from srlm.models import load_model

    model = args.model or (str(DEFAULT_MODEL) if DEFAULT_MODEL.exists() else "embedded")
    lm = load_model(model)
    calls = [0]
    lm.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    groups, _, _ = read_human_groups(args.data)
    groups = groups[: args.limit]
    backend_cfg = GenerationBackendConfig()

    arms, items_of = {}, {}
    for name, cfg in [(f"sample_mean K={args.samples}", JudgeConfig(method="sample_mean", num_samples=args.samples,
                                                                  max_new_tokens=args.max_new_tokens)),
                      ("expected K=1", JudgeConfig(method="expected", num_samples=1, max_new_tokens=args.max_new_tokens))]:
        backend = make_backend("hf", lm, max_batch_tokens=backend_cfg.max_batch_tokens,
                               max_batch_size=backend_cfg.max_batch_size)
        calls[0] = 0
        metrics, items = evaluate_judge(groups, backend, cfg, seed=0, bootstrap_samples=2000)
        stats = backend.stats
        items_of[name] = items
        arms[name] = {
            "metrics": {k: metrics[k] for k in ("pairwise_accuracy", "pairwise_accuracy_ci", "n_pairs", "spearman",
                                                "spearman_ci", "kendall_tau", "kendall_tau_ci", "exact_match",
                                                "exact_match_ci", "five_best", "parse_failure_rate",
                                                "pairs_judge_tied")},
            "judgements": metrics["judgements"],
            "backend_seconds": round(stats.seconds, 1),
            "judgements_per_s": round(metrics["judgements"] / stats.seconds, 3),
            "generated_tokens": stats.new_tokens,
            "prefill_tokens": stats.extra["prefill_tokens"] + stats.extra["score_prefill_tokens"],
            "score_prefill_tokens": stats.extra["score_prefill_tokens"],
            "forward_passes": calls[0],
            "score_passes": stats.extra["score_batches"],
        }
        if cfg.method == "expected":
            masses = [m for it in items for m in it.get("score_token_mass", []) if m is not None]
            arms[name]["score_token_mass_mean"] = round(sum(masses) / len(masses), 4) if masses else None

    # sample_mean K=1: the first sample of the K-sample arm, scored by its integer (the same text the expected arm saw).
    sm_name = f"sample_mean K={args.samples}"
    first = [{**it, "score": it["scores"][0] if it["scores"] else None} for it in items_of[sm_name]]
    same_text = all(a["judgements"][:1] == b["judgements"][:1] for a, b in zip(items_of[sm_name], items_of["expected K=1"]))
    start, score_groups = 0, []
    for group in groups:
        score_groups.append([{"rank": it["rank"], "score": it["score"]} for it in first[start:start + len(group.replies)]])
        start += len(group.replies)
    k1 = judge_agreement(score_groups, bootstrap_samples=2000, seed=0)
    arms["sample_mean K=1 (first sample of the K arm)"] = {"metrics": {
        k: k1[k] for k in ("pairwise_accuracy", "pairwise_accuracy_ci", "n_pairs", "spearman", "spearman_ci",
                           "kendall_tau", "kendall_tau_ci", "exact_match", "exact_match_ci", "five_best",
                           "parse_failure_rate", "pairs_judge_tied")}}

    diff_k = paired_difference(pair_credits(items_of["expected K=1"], groups), pair_credits(items_of[sm_name], groups))
    diff_1 = paired_difference(pair_credits(items_of["expected K=1"], groups), pair_credits(first, groups))
    result = {"benchmark": "judge_methods", "model": model, "data": args.data, "groups": len(groups),
              "replies": sum(len(g.replies) for g in groups), "arms": arms, "same_first_texts": same_text,
              "pairwise_accuracy_expected_minus_sample_mean_K": diff_k,
              "pairwise_accuracy_expected_minus_sample_mean_K1": diff_1, "machine": machine()}

    def fmt(value, ci=None):
        if value is None:
            return "n/a"
        return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    print(f"\njudge methods on {len(groups)} groups / {result['replies']} replies of {args.data}, model {model}")
    for name, arm in arms.items():
        m = arm["metrics"]
        print(f"  {name}")
        print(f"    pairwise acc {fmt(m['pairwise_accuracy'], m['pairwise_accuracy_ci'])} (n={m['n_pairs']}, "
              f"judged-equal {m['pairs_judge_tied']}), Spearman {fmt(m['spearman'], m['spearman_ci'])}, "
              f"Kendall {fmt(m['kendall_tau'], m['kendall_tau_ci'])}, exact {fmt(m['exact_match'])}, "
              f"parse failures {fmt(m['parse_failure_rate'])}")
        if "judgements" in arm:
            print(f"    {arm['judgements']} judgements in {arm['backend_seconds']} s = {arm['judgements_per_s']}/s, "
                  f"{arm['generated_tokens']} generated tokens, {arm['prefill_tokens']} prefill tokens "
                  f"({arm['score_prefill_tokens']} for scoring), {arm['forward_passes']} forward passes")
    print(f"  pairwise acc, expected K=1 minus sample_mean K={args.samples}: {fmt(diff_k[0], diff_k[1])}; "
          f"minus sample_mean K=1: {fmt(diff_1[0], diff_1[1])} (paired bootstrap over groups)")
    print(f"  same first judgement texts in both arms: {same_text}")
    print(f"  machine: {machine()}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
