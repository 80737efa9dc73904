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

from srlm.evaluation.metrics.ifeval import IFEVAL_AVERAGING, IFEVAL_INTERVALS, instruction_following
from srlm.evaluation.metrics.intervals import (
    DEMONSTRATION_BELOW, format_with_interval, paired_difference, paired_difference_by_key, sample_size,
)
from srlm.evaluation.metrics.judge import (
    CORRELATION_AVERAGING, FIVE_BEST_POLICY, FIVE_THRESHOLD, JUDGE_METRIC_POLICIES, TIE_POLICY, judge_agreement,
    length_split_accuracy, pair_credits, score_histogram,
)
from srlm.evaluation.metrics.winrate import WINRATE_RULE, winrate_from_verdicts

__all__ = [
    "CORRELATION_AVERAGING", "DEMONSTRATION_BELOW", "FIVE_BEST_POLICY", "FIVE_THRESHOLD", "IFEVAL_AVERAGING", "IFEVAL_INTERVALS",
    "JUDGE_METRIC_POLICIES", "TIE_POLICY", "WINRATE_RULE", "format_with_interval", "instruction_following",
    "judge_agreement", "length_split_accuracy", "pair_credits", "paired_difference",
    "paired_difference_by_key", "sample_size", "score_histogram",
    "winrate_from_verdicts",
]
