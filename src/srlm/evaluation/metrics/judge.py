"""Judge agreement with human rankings (Table 4 of the paper: pairwise accuracy, 5-best, exact match,
Spearman, Kendall tau, parse failures), the score histogram, the length split of a judge's accuracy, and the
per-group credits a paired comparison of two judges needs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
from scipy import stats

from srlm.evaluation.metrics.intervals import CONFIDENCE, bootstrap_ratio_intervals, ratio, require_fields

# Averaged judge scores (e.g. the mean of 3 samples) may be 4.9999999 instead of 5.0; anything this high is a "5".
FIVE_THRESHOLD = 4.999

TIE_POLICY = (
    "Only reply pairs whose human ranks differ are scored; a pair the judge scores equally earns half credit (0.5), "
    "and a pair with a missing judge score is left out and counted in pairs_missing_score."
)
FIVE_BEST_POLICY = (
    f"A reply counts as scored 5 when its score is >= {FIVE_THRESHOLD} (so averaged scores count); it is a hit when "
    "its human rank is the best in its group (rank 0; all replies tied for best count). Groups of one reply are "
    "left out, since their only reply is trivially the best."
)
CORRELATION_AVERAGING = (
    "per-group mean: Spearman and Kendall tau-b are computed within each group (>= 2 replies, all scored, neither "
    "the scores nor the human ranks constant) between the judge score and the negated human rank, then averaged "
    "over groups with equal weight."
)
# How the judge metrics are counted, written into every result beside the figures.
JUDGE_METRIC_POLICIES = {"tie_policy": TIE_POLICY, "five_best_policy": FIVE_BEST_POLICY,
                         "five_best_threshold": FIVE_THRESHOLD, "correlation_averaging": CORRELATION_AVERAGING}


def _replies_of(group: Any, group_index: int) -> list:
    """A group is a mapping with "replies", an object with a `.replies` attribute, or the sequence of replies."""
    if isinstance(group, Mapping):
        if "replies" not in group:
            raise ValueError(f"group {group_index}: missing 'replies'")
        replies = group["replies"]
    else:
        replies = getattr(group, "replies", group)
    if isinstance(replies, (str, bytes)) or not isinstance(replies, Sequence):
        raise ValueError(f"group {group_index}: replies must be a list, got {type(replies).__name__}")
    if not replies:
        raise ValueError(f"group {group_index}: has no replies")
    return list(replies)


def _check_score(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{where}: score must be a finite number or None, got {value!r}")
    return float(value)


def _rank_and_score(reply: Any, where: str) -> tuple[int, float | None]:
    """A reply is a mapping with "rank" and "score" (None = the judge's output could not be parsed), or a pair."""
    if isinstance(reply, Mapping):
        require_fields(reply, ("rank", "score"), where)
        rank, score = reply["rank"], reply["score"]
    elif isinstance(reply, Sequence) and not isinstance(reply, (str, bytes)) and len(reply) == 2:
        rank, score = reply
    else:
        raise ValueError(f"{where}: expected a mapping with 'rank' and 'score' or a (rank, score) pair")
    if isinstance(rank, bool) or not isinstance(rank, Integral):
        raise ValueError(f"{where}: rank must be an integer, got {rank!r}")
    return int(rank), _check_score(score, where)


# What `_group_statistics` reports for each group; every agreement metric is a ratio of two of their sums.
_GROUP_STATISTICS = (
    "pair_credit", "pair_count", "pair_missing", "pair_judge_tied", "five_count", "five_hits",
    "exact_eligible", "exact_hits", "corr_eligible", "spearman", "kendall", "replies_missing", "replies",
)


def _group_statistics(ranks: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Per-group numerators and denominators of every agreement metric. `scores` holds NaN for a missing score."""
    n = len(ranks)
    missing = np.isnan(scores)
    out = dict.fromkeys(_GROUP_STATISTICS, 0.0)
    out["replies_missing"] = float(missing.sum())
    out["replies"] = float(n)
    if n < 2:
        return out

    # Pairs (i, j), i < j, whose human ranks differ. A lower rank is better; a higher score is better.
    first, second = np.triu_indices(n, k=1)
    rank_diff = ranks[first] - ranks[second]
    score_diff = scores[first] - scores[second]
    human_ordered = rank_diff != 0
    pair_missing = human_ordered & np.isnan(score_diff)
    scored = human_ordered & ~np.isnan(score_diff)
    judge_tied = scored & (score_diff == 0)
    agrees = scored & (np.sign(score_diff) == -np.sign(rank_diff))
    out["pair_credit"] = float(agrees.sum()) + 0.5 * float(judge_tied.sum())
    out["pair_count"] = float(scored.sum())
    out["pair_missing"] = float(pair_missing.sum())
    out["pair_judge_tied"] = float(judge_tied.sum())

    scored_five = ~missing & (np.nan_to_num(scores, nan=-np.inf) >= FIVE_THRESHOLD)
    out["five_count"] = float(scored_five.sum())
    out["five_hits"] = float((scored_five & (ranks == ranks.min())).sum())

    if missing.any():
        return out
    # Rank vectors with ties kept as ties (method "min"), judge ranked by descending score: equal vectors mean the
    # judge reproduced the human order, including where the humans tied.
    out["exact_eligible"] = 1.0
    judge_order = stats.rankdata(-scores, method="min")
    human_order = stats.rankdata(ranks, method="min")
    out["exact_hits"] = float(np.array_equal(judge_order, human_order))

    if np.ptp(scores) > 0 and np.ptp(ranks) > 0:
        # Rank 0 is the best reply, so a good judge's scores rise as the rank falls: correlate with -rank.
        out["corr_eligible"] = 1.0
        out["spearman"] = float(stats.spearmanr(scores, -ranks).statistic)
        out["kendall"] = float(stats.kendalltau(scores, -ranks, variant="b").statistic)
    return out


def judge_agreement(groups: Iterable[Any], *, bootstrap_samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """How well judge scores agree with human rankings, over groups of sibling replies to one prompt each.

    Each group holds >= 1 replies; each reply has a human `rank` (0 = best, equal ranks = a human tie) and a judge
    `score` (a number, or None when the judge's output could not be parsed). A group is a mapping with "replies",
    an object with `.replies`, or the list itself; a reply is a mapping with "rank" and "score" or a (rank, score)
    pair.

    Returns a dict with, for each metric, the value, `<metric>_ci` ([low, high], 95% percentile bootstrap over
    groups) and the count it rests on:
      pairwise_accuracy (n_pairs, pairs_missing_score, pairs_judge_tied), five_best (n_five),
      exact_match (n_groups_exact_match), spearman and kendall_tau (n_groups_correlation), parse_failure_rate
      (n_replies), plus n (groups) and the policies used (tie_policy, five_best_policy, correlation_averaging).
    A metric with nothing to compute it on is None, and so is its interval.

    Groups of one reply contribute no pairs, no 5-best, no exact match and no correlation, but their replies count
    in the parse-failure rate.
    """
    if bootstrap_samples < 0:
        raise ValueError(f"bootstrap_samples must be >= 0, got {bootstrap_samples}")
    per_group: list[dict[str, float]] = []
    for group_index, group in enumerate(groups):
        pairs = [
            _rank_and_score(reply, f"group {group_index}, reply {reply_index}")
            for reply_index, reply in enumerate(_replies_of(group, group_index))
        ]
        ranks = np.array([rank for rank, _ in pairs], dtype=float)
        scores = np.array([np.nan if score is None else score for _, score in pairs], dtype=float)
        per_group.append(_group_statistics(ranks, scores))

    column = {key: np.array([g[key] for g in per_group], dtype=float) for key in _GROUP_STATISTICS}

    # metric -> (per-group numerator, per-group denominator); each metric is sum(numerator) / sum(denominator).
    # Pairwise accuracy and 5-best pool pairs / replies over groups; exact match and the correlations weigh every
    # eligible group equally.
    ratios = {
        "pairwise_accuracy": (column["pair_credit"], column["pair_count"]),
        "five_best": (column["five_hits"], column["five_count"]),
        "exact_match": (column["exact_hits"], column["exact_eligible"]),
        "spearman": (column["spearman"], column["corr_eligible"]),
        "kendall_tau": (column["kendall"], column["corr_eligible"]),
        "parse_failure_rate": (column["replies_missing"], column["replies"]),
    }
    intervals = bootstrap_ratio_intervals(ratios, len(per_group), bootstrap_samples, seed)

    def total(key: str) -> int:
        return int(column[key].sum())

    result: dict[str, Any] = {"n": len(per_group), "n_replies": total("replies")}
    counts = {
        "pairwise_accuracy": {"n_pairs": total("pair_count"), "pairs_missing_score": total("pair_missing"),
                              "pairs_judge_tied": total("pair_judge_tied")},
        "five_best": {"n_five": total("five_count")},
        "exact_match": {"n_groups_exact_match": total("exact_eligible")},
        "spearman": {"n_groups_correlation": total("corr_eligible")},
        "kendall_tau": {},
        "parse_failure_rate": {"n_replies_missing": total("replies_missing")},
    }
    for name, (numerator, denominator) in ratios.items():
        result[name] = ratio(numerator, denominator)
        result[f"{name}_ci"] = intervals[name]
        result.update(counts[name])
    result.update(JUDGE_METRIC_POLICIES, bootstrap_samples=bootstrap_samples, seed=seed)
    return result


def score_histogram(scores: Iterable[float | None], bins: Sequence[int] = (0, 1, 2, 3, 4, 5)) -> dict[str, Any]:
    """How many scores round to each bin value; None scores are counted as `missing`.

    Rounding is half-up (4.5 -> 5), not Python's round-half-to-even, so that averaged scores land where a reader
    expects. A rounded score outside `bins` is counted in `out_of_range`, never silently dropped.
    Returns {"counts": {bin: count}, "missing": int, "out_of_range": int, "n": total scores}.
    """
    counts = {int(b): 0 for b in bins}
    missing = out_of_range = n = 0
    for index, score in enumerate(scores):
        n += 1
        value = _check_score(score, f"score {index}")
        if value is None:
            missing += 1
            continue
        rounded = math.floor(value + 0.5)
        if rounded in counts:
            counts[rounded] += 1
        else:
            out_of_range += 1
    return {"counts": counts, "missing": missing, "out_of_range": out_of_range, "n": n}


def length_split_accuracy(groups: Sequence[Sequence[tuple[int, float | None, int]]], *,
                          bootstrap_samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """How much of a judge's agreement with humans is only "longer is better".

    `groups`: per group, its replies as (human rank, judge score or None, length). Every pair of replies with
    different ranks and different lengths gets credit 1 (the judge scores the human-preferred one higher), 0.5 (equal
    or missing scores) or 0, and falls in one of two bins: the human-preferred reply is the longer one, or the
    shorter one. A judge that only counts characters scores 1 in the first bin and 0 in the second; a judge that
    ignores length scores the same in both. `length_balanced_accuracy` is the mean of the two bins' accuracies
    (what the judge would score on pairs where the longer reply is preferred exactly half of the time), with a 95%
    percentile bootstrap interval over groups.
    """
    rows = []  # (group index, preferred is longer, credit)
    for g, replies in enumerate(groups):
        for i in range(len(replies)):
            for j in range(i + 1, len(replies)):
                (rank_i, _, len_i), (rank_j, _, len_j) = replies[i], replies[j]
                if rank_i == rank_j or len_i == len_j:
                    continue
                (_, s_best, l_best), (_, s_other, l_other) = ((replies[i], replies[j]) if rank_i < rank_j
                                                              else (replies[j], replies[i]))
                credit = 0.5 if s_best is None or s_other is None or s_best == s_other else float(s_best > s_other)
                rows.append((g, l_best > l_other, credit))
    out: dict[str, Any] = {"policy": "pairs with different human ranks and lengths, split by whether the "
                           "human-preferred reply is the longer; balanced = mean of the two accuracies"}
    if not rows:
        return {**out, "preferred_longer_accuracy": None, "preferred_shorter_accuracy": None,
                "length_balanced_accuracy": None, "length_balanced_accuracy_ci": None, "n_longer": 0, "n_shorter": 0}
    data = np.array(rows, dtype=float)

    def stats_of(block: np.ndarray) -> tuple[float | None, float | None]:
        longer, shorter = block[block[:, 1] == 1, 2], block[block[:, 1] == 0, 2]
        return (float(longer.mean()) if len(longer) else None, float(shorter.mean()) if len(shorter) else None)

    acc_longer, acc_shorter = stats_of(data)
    balanced = None if acc_longer is None or acc_shorter is None else (acc_longer + acc_shorter) / 2
    interval = None
    if balanced is not None and bootstrap_samples:
        rng = np.random.default_rng(seed)
        by_group = [data[data[:, 0] == g] for g in np.unique(data[:, 0])]
        values = []
        for _ in range(bootstrap_samples):
            sample = np.concatenate([by_group[k] for k in rng.integers(0, len(by_group), len(by_group))])
            a, b = stats_of(sample)
            if a is not None and b is not None:
                values.append((a + b) / 2)
        low, high = np.quantile(values, [(1 - CONFIDENCE) / 2, 1 - (1 - CONFIDENCE) / 2])
        interval = [float(low), float(high)]
    return {**out, "preferred_longer_accuracy": acc_longer, "preferred_shorter_accuracy": acc_shorter,
            "length_balanced_accuracy": balanced, "length_balanced_accuracy_ci": interval,
            "n_longer": int((data[:, 1] == 1).sum()), "n_shorter": int((data[:, 1] == 0).sum())}


def pair_credits(items: Iterable[Mapping]) -> dict[str, float]:
    """group_id -> the judge's credit on that group's human-ordered pairs (1 agree, 0.5 tie or missing score, 0
    disagree, averaged over the group's pairs), from `srlm eval judge` / judge_accuracy items files.

    A missing score counts as a tie here (0.5), unlike in `judge_agreement`, which leaves such pairs out: a
    paired comparison needs both models' outcome on every item."""
    by_group: dict[str, list[tuple[int, float | None]]] = {}
    for item in items:
        by_group.setdefault(item["group_id"], []).append((item["rank"], item.get("score")))
    credits = {}
    for group_id, replies in by_group.items():
        total = count = 0.0
        for i in range(len(replies)):
            for j in range(i + 1, len(replies)):
                (rank_i, score_i), (rank_j, score_j) = replies[i], replies[j]
                if rank_i == rank_j:
                    continue
                count += 1
                if score_i is None or score_j is None or score_i == score_j:
                    total += 0.5
                elif (score_i > score_j) == (rank_i < rank_j):
                    total += 1.0
        if count:
            credits[group_id] = total / count
    return credits
