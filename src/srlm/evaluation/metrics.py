"""Evaluation metrics: judge agreement with human rankings, head-to-head win rates (paper-spec sections 6.1, 6.5),
and IFEval accuracies.

Pure functions on plain Python data (numpy and scipy only, no model code), so that they can be tested by hand and
reused by any stage that has scores or verdicts in hand.

- `judge_agreement`: how well a judge's 0-5 scores reproduce human rankings of sibling replies (Table 4 of the
  paper: pairwise accuracy, 5-best, exact match, Spearman, Kendall tau), plus the judge's parse-failure rate.
- `winrate_from_verdicts`: win / tie / loss of model A against model B when a judge saw each pair in both orders
  (a win counts only when both orders agree), with a simplified length-controlled win rate.
- `score_histogram`: how the judge's scores are distributed.
- `instruction_following`: IFEval's prompt- and instruction-level accuracies from the checkers' verdicts.

The paper leaves several choices open (tie handling, pooled vs per-prompt correlations); each choice made here is
written into the returned dict, so that a results file says how its numbers were computed.

Every metric that cannot be computed (no eligible pairs, groups or items) is None, never 0, and so is its interval.
Intervals are 95% percentile bootstraps over groups (or items), drawn from `numpy.random.Generator(seed)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
from scipy import optimize, special, stats

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
WINRATE_RULE = (
    "Each pair is judged in both orders; model A wins (or loses) only when both orders agree, a disagreement is a "
    "tie, and a missing verdict in either order is a tie counted in n_unparsed. win_rate = win + 0.5 * tie."
)

_CONFIDENCE = 0.95
# Bootstrap weights are drawn in blocks so that memory stays bounded (about this many cells per block).
_BOOTSTRAP_BLOCK_CELLS = 2_000_000
# A fitted length slope steeper than this (log-odds per standard deviation of the length difference) means the
# outcomes are (almost) perfectly separated by length, where the maximum-likelihood fit diverges.
_MAX_LENGTH_SLOPE = 10.0


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------------------------


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> float | None:
    total = float(denominator.sum())
    return float(numerator.sum()) / total if total > 0 else None


def _bootstrap_ratio_intervals(
    ratios: Mapping[str, tuple[np.ndarray, np.ndarray]], n_units: int, samples: int, seed: int
) -> dict[str, list[float] | None]:
    """95% percentile intervals for metrics of the form sum(numerator) / sum(denominator) over units.

    Every metric here is such a ratio of per-unit (per-group or per-item) sums, so resampling units with
    replacement is a matter of weighting each unit by how often it was drawn: the multinomial counts of one
    resample. All metrics share the same resamples. A resample whose denominator is 0 (it drew no eligible unit)
    has no value and is left out of the percentiles.
    """
    intervals: dict[str, list[float] | None] = {name: None for name in ratios}
    if samples <= 0 or n_units == 0:
        return intervals
    rng = np.random.Generator(np.random.PCG64(seed))
    uniform = np.full(n_units, 1.0 / n_units)
    values: dict[str, list[np.ndarray]] = {name: [] for name in ratios}
    block = max(1, _BOOTSTRAP_BLOCK_CELLS // n_units)
    for start in range(0, samples, block):
        weights = rng.multinomial(n_units, uniform, size=min(block, samples - start)).astype(float)
        for name, (numerator, denominator) in ratios.items():
            num, den = weights @ numerator, weights @ denominator
            defined = den > 0
            values[name].append(num[defined] / den[defined])
    tail = (1.0 - _CONFIDENCE) / 2.0 * 100.0
    for name, chunks in values.items():
        drawn = np.concatenate(chunks)
        if drawn.size and float(ratios[name][1].sum()) > 0:
            low, high = np.percentile(drawn, [tail, 100.0 - tail])
            intervals[name] = [float(low), float(high)]
    return intervals


# ----------------------------------------------------------------------------------------------------------------
# Judge agreement with human rankings
# ----------------------------------------------------------------------------------------------------------------


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


def _require_fields(record: Any, fields: Sequence[str], where: str) -> None:
    """`record` is a mapping that holds every one of `fields`, or a ValueError says what is wrong `where`."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(record).__name__}")
    for field in fields:
        if field not in record:
            raise ValueError(f"{where}: missing '{field}'")


def _rank_and_score(reply: Any, where: str) -> tuple[int, float | None]:
    """A reply is a mapping with "rank" and "score" (None = the judge's output could not be parsed), or a pair."""
    if isinstance(reply, Mapping):
        _require_fields(reply, ("rank", "score"), where)
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
    intervals = _bootstrap_ratio_intervals(ratios, len(per_group), bootstrap_samples, seed)

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
        result[name] = _ratio(numerator, denominator)
        result[f"{name}_ci"] = intervals[name]
        result.update(counts[name])
    result.update(JUDGE_METRIC_POLICIES, bootstrap_samples=bootstrap_samples, seed=seed)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Head-to-head win rates
# ----------------------------------------------------------------------------------------------------------------

_VERDICTS = ("A", "B", "tie", None)


def _outcome_for_a(first_order: Any, second_order: Any, where: str) -> tuple[float, bool]:
    """(outcome for model A: 1 win, 0.5 tie, 0 loss; whether a verdict was missing).

    In the first order model A was shown in position A; in the second the positions were swapped, so there a
    verdict "B" means model A won.
    """
    for name, verdict in (("first_order", first_order), ("second_order", second_order)):
        if verdict not in _VERDICTS:
            raise ValueError(f"{where}: {name} must be one of 'A', 'B', 'tie' or None, got {verdict!r}")
    if first_order is None or second_order is None:
        return 0.5, True
    as_a_first = {"A": 1.0, "B": 0.0, "tie": 0.5}[first_order]
    as_a_second = {"B": 1.0, "A": 0.0, "tie": 0.5}[second_order]
    # Agreement on a win or a loss counts; anything else (a tie in either order, or opposite winners) is a tie.
    return (as_a_first if as_a_first == as_a_second else 0.5), False


def _length(item: Mapping, field: str, where: str) -> float | None:
    value = item.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"{where}: {field} must be a non-negative number, got {value!r}")
    return float(value)


def _length_controlled_win_rate(outcomes: np.ndarray, length_diff: np.ndarray) -> tuple[float | None, float | None, str]:
    """Predicted win rate at equal lengths from a logistic fit of the outcome on the length difference.

    Returns (win rate, slope per standard deviation of the length difference, note). This is the idea behind
    AlpacaEval's length-controlled win rate, simplified: AlpacaEval 2.0 also models instruction difficulty and
    squashes the length term with tanh; here it is a plain logistic regression
        P(A wins) = sigmoid(b0 + b1 * (len_a - len_b) / sd(len_a - len_b))
    fitted by maximum likelihood with the tie as a fractional label (1 win, 0.5 tie, 0 loss: the Bernoulli
    log-likelihood accepts soft labels). The difference is scaled but not centred, so zero still means "equal
    lengths" and the answer is sigmoid(b0). In the degenerate cases the fit is undefined and the raw win rate is
    returned instead, with the reason in the note.
    """
    raw = float(outcomes.mean())
    if np.ptp(outcomes) == 0:
        return raw, None, "all outcomes are the same, so length cannot explain them: raw win rate reported"
    spread = float(length_diff.std())
    if spread == 0:
        return raw, None, "the length difference does not vary, so its effect cannot be fitted: raw win rate reported"
    scaled = length_diff / spread

    def negative_log_likelihood(coefficients: np.ndarray) -> tuple[float, np.ndarray]:
        logits = coefficients[0] + coefficients[1] * scaled
        # log(1 + e^z) - y*z is the Bernoulli negative log-likelihood written so that it cannot overflow.
        loss = float(np.sum(np.logaddexp(0.0, logits) - outcomes * logits))
        residual = special.expit(logits) - outcomes
        return loss, np.array([residual.sum(), (residual * scaled).sum()])

    start = np.array([special.logit(np.clip(raw, 0.01, 0.99)), 0.0])
    fit = optimize.minimize(negative_log_likelihood, start, jac=True, method="BFGS")
    intercept, slope = (float(c) for c in fit.x)
    if not np.all(np.isfinite(fit.x)) or abs(slope) > _MAX_LENGTH_SLOPE:
        return raw, None, "the outcomes are (almost) perfectly separated by length, so the fit diverges: raw win rate reported"
    if not fit.success and fit.status != 2:  # status 2 = precision loss at the optimum, which is harmless here
        return raw, None, f"the logistic fit did not converge ({fit.message}): raw win rate reported"
    return float(special.expit(intercept)), slope, (
        "logistic fit of the outcome (win 1, tie 0.5, loss 0) on (len_a - len_b) / sd; value predicted at equal lengths"
    )


def winrate_from_verdicts(verdicts: Iterable[Mapping], *, bootstrap_samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win / tie / loss of model A against model B, from a judge that saw every pair in both orders (spec 6.1).

    Each item is a mapping with `first_order` and `second_order`, each "A", "B", "tie" or None (unparsed). In
    the first order model A is shown in position A; in the second the positions are swapped and the letters still
    name positions, so "B" there means model A won. Optional `len_a`, `len_b`: the lengths of the two replies (any
    unit, e.g. characters), used for the mean lengths and the length-controlled win rate.

    Returns win, tie, loss (fractions of items, from model A's side) and win_rate = win + 0.5 * tie, each with a
    95% bootstrap interval over items (`<name>_ci`); n, n_unparsed (items with a missing verdict, counted as ties),
    n_order_disagreements (both verdicts parsed but not agreeing on a winner: position bias shows up here);
    mean_len_a, mean_len_b; length_controlled_win_rate, length_coef (log-odds per standard deviation of
    len_a - len_b) and length_control_note (see `_length_controlled_win_rate`); the rule used, in `rule`.
    The length fields are None when any item lacks a length.
    """
    if bootstrap_samples < 0:
        raise ValueError(f"bootstrap_samples must be >= 0, got {bootstrap_samples}")
    outcomes: list[float] = []
    lengths_a: list[float | None] = []
    lengths_b: list[float | None] = []
    n_unparsed = n_disagreements = 0
    for index, item in enumerate(verdicts):
        where = f"item {index}"
        _require_fields(item, ("first_order", "second_order"), where)
        outcome, unparsed = _outcome_for_a(item["first_order"], item["second_order"], where)
        n_unparsed += unparsed
        # A tie that came from opposite winners (not from a "tie" verdict) is the signature of position bias.
        n_disagreements += (not unparsed) and {item["first_order"], item["second_order"]} in ({"A"}, {"B"})
        outcomes.append(outcome)
        lengths_a.append(_length(item, "len_a", where))
        lengths_b.append(_length(item, "len_b", where))

    outcome = np.array(outcomes, dtype=float)
    ones = np.ones_like(outcome)
    ratios = {
        "win": ((outcome == 1.0).astype(float), ones),
        "tie": ((outcome == 0.5).astype(float), ones),
        "loss": ((outcome == 0.0).astype(float), ones),
        "win_rate": (outcome, ones),
    }
    intervals = _bootstrap_ratio_intervals(ratios, len(outcome), bootstrap_samples, seed)
    result: dict[str, Any] = {"n": len(outcome)}
    for name, (numerator, denominator) in ratios.items():
        result[name] = _ratio(numerator, denominator)
        result[f"{name}_ci"] = intervals[name]
    result.update(n_unparsed=n_unparsed, n_order_disagreements=int(n_disagreements))

    have_lengths = bool(outcomes) and all(v is not None for v in lengths_a + lengths_b)
    if have_lengths:
        len_a, len_b = np.array(lengths_a), np.array(lengths_b)
        lc_rate, slope, note = _length_controlled_win_rate(outcome, len_a - len_b)
        result.update(mean_len_a=float(len_a.mean()), mean_len_b=float(len_b.mean()),
                      length_controlled_win_rate=lc_rate, length_coef=slope, length_control_note=note)
    else:
        note = "no items" if not outcomes else "some items lack len_a or len_b"
        result.update(mean_len_a=None, mean_len_b=None, length_controlled_win_rate=None, length_coef=None,
                      length_control_note=f"{note}: no length-controlled win rate")
    result.update(rule=WINRATE_RULE, bootstrap_samples=bootstrap_samples, seed=seed)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Score distribution
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Instruction following (IFEval)
# ----------------------------------------------------------------------------------------------------------------

IFEVAL_INTERVALS = (
    "95% percentile bootstrap over prompts for all four accuracies. The instruction-level ones resample prompts "
    "too, not instructions: the instructions of one prompt are checked on one response and succeed or fail "
    "together, so treating them as independent would make the intervals too narrow."
)
IFEVAL_AVERAGING = (
    "prompt_level_*: the share of prompts whose response follows every one of its instructions; inst_level_*: "
    "followed instructions over all instructions, pooled over prompts (lm-evaluation-harness's agg_inst_level_acc)."
)


def _follow_list(prompt: Mapping, field: str, n: int, where: str) -> list[bool]:
    _require_fields(prompt, (field,), where)
    values = prompt[field]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != n:
        raise ValueError(f"{where}: '{field}' must be a list of {n} booleans, one per instruction")
    if not all(isinstance(v, bool) for v in values):
        raise ValueError(f"{where}: '{field}' must hold booleans, got {list(values)!r}")
    return list(values)


def instruction_following(
    prompts: Iterable[Mapping], *, bootstrap_samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """IFEval's four accuracies from the checkers' verdicts, each with a 95% bootstrap interval over prompts.

    Each prompt is a mapping with "instruction_id_list" (its instruction ids) and "follow_instruction_list_strict"
    and "follow_instruction_list_loose" (one boolean per instruction: did the response follow it, checked on the
    response as written and on the loose variants, see `srlm.evaluation.ifeval`).

    Returns prompt_level_strict_acc, prompt_level_loose_acc, inst_level_strict_acc, inst_level_loose_acc (each
    with `<metric>_ci`), n_prompts, n_instructions, per_instruction ({instruction id: {n, strict_acc, loose_acc}},
    sorted by id), and how the numbers were computed (averaging, intervals). With no prompts every accuracy and
    interval is None.
    """
    if bootstrap_samples < 0:
        raise ValueError(f"bootstrap_samples must be >= 0, got {bootstrap_samples}")
    strict_all, loose_all, strict_count, loose_count, sizes = [], [], [], [], []
    by_type: dict[str, list[tuple[bool, bool]]] = {}
    for index, prompt in enumerate(prompts):
        where = f"prompt {index}"
        _require_fields(prompt, (), where)
        ids = prompt.get("instruction_id_list")
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not ids:
            raise ValueError(f"{where}: 'instruction_id_list' must be a non-empty list of instruction ids")
        strict = _follow_list(prompt, "follow_instruction_list_strict", len(ids), where)
        loose = _follow_list(prompt, "follow_instruction_list_loose", len(ids), where)
        strict_all.append(float(all(strict)))
        loose_all.append(float(all(loose)))
        strict_count.append(float(sum(strict)))
        loose_count.append(float(sum(loose)))
        sizes.append(float(len(ids)))
        for instruction_id, s, lo in zip(ids, strict, loose):
            by_type.setdefault(str(instruction_id), []).append((s, lo))

    n = len(sizes)
    ones, size = np.ones(n), np.array(sizes)
    ratios = {
        "prompt_level_strict_acc": (np.array(strict_all), ones),
        "prompt_level_loose_acc": (np.array(loose_all), ones),
        "inst_level_strict_acc": (np.array(strict_count), size),
        "inst_level_loose_acc": (np.array(loose_count), size),
    }
    intervals = _bootstrap_ratio_intervals(ratios, n, bootstrap_samples, seed)
    result: dict[str, Any] = {"n_prompts": n, "n_instructions": int(size.sum())}
    for name, (numerator, denominator) in ratios.items():
        result[name] = _ratio(numerator, denominator)
        result[f"{name}_ci"] = intervals[name]
    result["per_instruction"] = {
        instruction_id: {"n": len(verdicts), "strict_acc": sum(s for s, _ in verdicts) / len(verdicts),
                         "loose_acc": sum(lo for _, lo in verdicts) / len(verdicts)}
        for instruction_id, verdicts in sorted(by_type.items())
    }
    result.update(averaging=IFEVAL_AVERAGING, intervals=IFEVAL_INTERVALS, bootstrap_samples=bootstrap_samples,
                  seed=seed)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Paired differences (two models measured on the same items)
# ----------------------------------------------------------------------------------------------------------------


def paired_difference(a: Sequence[float], b: Sequence[float], *, bootstrap_samples: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """mean(a) - mean(b) over items measured for both models, with a 95% paired bootstrap interval.

    `a[i]` and `b[i]` are the two models' outcomes on the same item i (e.g. 1/0.5/0 credit on a human pair, or
    1/0 for an IFEval prompt followed); resampling items keeps each pair together, so the interval is that of the
    difference, narrower than two separate intervals would suggest.
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired outcomes must have the same length, got {len(a_arr)} and {len(b_arr)}")
    n = len(a_arr)
    if n == 0:
        return {"difference": None, "difference_ci": None, "n": 0}
    diff = a_arr - b_arr
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, n, n)].mean() for _ in range(bootstrap_samples)])
    low, high = np.quantile(means, [(1 - _CONFIDENCE) / 2, 1 - (1 - _CONFIDENCE) / 2])
    return {"difference": float(diff.mean()), "difference_ci": [float(low), float(high)], "n": n,
            "method": f"paired percentile bootstrap over items, {bootstrap_samples} resamples"}


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
                (rank_i, score_i, len_i), (rank_j, score_j, len_j) = replies[i], replies[j]
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
        low, high = np.quantile(values, [(1 - _CONFIDENCE) / 2, 1 - (1 - _CONFIDENCE) / 2])
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


def format_with_interval(metrics: Mapping | None, key: str, digits: int = 3) -> str | None:
    """'0.553 [0.504, 0.601]': `metrics[key]` with its `<key>_ci` where there is one; None when there is no value.

    The one way srlm prints a statistic with its 95% interval (iteration table, report, model cards, logs)."""
    if not isinstance(metrics, Mapping) or isinstance(metrics.get(key), bool) or not isinstance(metrics.get(key), Real):
        return None
    interval = metrics.get(f"{key}_ci")
    shown = f"{metrics[key]:.{digits}f}"
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(isinstance(v, Real) for v in interval):
        shown += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return shown
