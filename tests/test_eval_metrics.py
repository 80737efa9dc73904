"""Evaluation metrics against values computed by hand (in the comments), plus property tests.

Convention in every case below: human rank 0 = best, a higher judge score = better, None = unparsed score.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srlm.evaluation.metrics import judge_agreement, score_histogram, winrate_from_verdicts


def group(*rank_score_pairs):
    return {"replies": [{"rank": rank, "score": score} for rank, score in rank_score_pairs]}


# ----------------------------------------------------------------------------------------------------------------
# judge_agreement
# ----------------------------------------------------------------------------------------------------------------


def test_perfect_judge():
    # Scores fall as the human rank rises: every pair agrees, both rankings match, correlations are 1.
    # The only 5 goes to a rank-0 reply: five_best = 1/1.
    result = judge_agreement([group((0, 5), (1, 4), (2, 3)), group((0, 4), (1, 2))], bootstrap_samples=200)
    assert result["pairwise_accuracy"] == 1.0 and result["n_pairs"] == 3 + 1
    assert result["exact_match"] == 1.0 and result["n_groups_exact_match"] == 2
    assert result["spearman"] == pytest.approx(1.0) and result["kendall_tau"] == pytest.approx(1.0)
    assert result["n_groups_correlation"] == 2
    assert result["five_best"] == 1.0 and result["n_five"] == 1
    assert result["parse_failure_rate"] == 0.0
    assert result["n"] == 2 and result["n_replies"] == 5


def test_inverted_judge():
    # Scores rise with the human rank: every pair is wrong, correlations are -1, the only 5 is on rank 2.
    result = judge_agreement([group((0, 3), (1, 4), (2, 5)), group((0, 2), (1, 4))], bootstrap_samples=200)
    assert result["pairwise_accuracy"] == 0.0
    assert result["exact_match"] == 0.0
    assert result["spearman"] == pytest.approx(-1.0) and result["kendall_tau"] == pytest.approx(-1.0)
    assert result["five_best"] == 0.0 and result["n_five"] == 1


def test_all_equal_judge():
    # Every pair is a judge tie: 3 + 1 pairs at half credit = 0.5. The human ranks differ, so no exact match.
    # Constant scores have no rank correlation: None (not 0). No reply scored 5: five_best None.
    result = judge_agreement([group((0, 3), (1, 3), (2, 3)), group((0, 3), (1, 3))], bootstrap_samples=200)
    assert result["pairwise_accuracy"] == 0.5
    assert result["pairs_judge_tied"] == 4
    assert result["exact_match"] == 0.0
    assert result["spearman"] is None and result["spearman_ci"] is None
    assert result["kendall_tau"] is None and result["kendall_tau_ci"] is None
    assert result["n_groups_correlation"] == 0
    assert result["five_best"] is None and result["five_best_ci"] is None and result["n_five"] == 0


def test_human_ties():
    # Group 1: ranks [0, 0, 1], scores [4, 4, 2]. Pairs with different human ranks: (r0, r2), (r1, r2): both agree.
    #   The human-tied pair (r0, r1) is not scored. Rank vectors (min method): judge [1, 1, 3], human [1, 1, 3]: equal.
    # Group 2: ranks [0, 0, 1], scores [4, 3, 2]. Both scored pairs agree, but judge [1, 2, 3] != human [1, 1, 3].
    # pairwise = 4/4, exact = 1/2.
    result = judge_agreement([group((0, 4), (0, 4), (1, 2)), group((0, 4), (0, 3), (1, 2))], bootstrap_samples=0)
    assert result["pairwise_accuracy"] == 1.0 and result["n_pairs"] == 4
    assert result["exact_match"] == 0.5
    # Group 1: Spearman of [4, 4, 2] with -rank [0, 0, -1] = 1 (same tie pattern).
    # Group 2: score ranks [3, 2, 1], -rank ranks [2.5, 2.5, 1]: deviations [1, 0, -1] and [.5, .5, -1],
    #   r = 1.5 / sqrt(2 * 1.5) = 0.8660. Mean = (1 + 0.8660) / 2 = 0.9330.
    assert result["spearman"] == pytest.approx((1 + math.sqrt(3) / 2) / 2)
    # Kendall tau-b, group 2: concordant 2, discordant 0, 3 pairs, ties only in -rank (1 pair):
    #   2 / sqrt(3 * 2) = 0.8165. Mean = (1 + 0.8165) / 2.
    assert result["kendall_tau"] == pytest.approx((1 + 2 / math.sqrt(6)) / 2)


def test_five_best_with_tied_top_and_averaged_scores():
    # Ranks [0, 0, 1] scored [5, 4.9995, 1]: two "fives" (4.9995 >= 4.999), both tied for best: 2/2.
    # Ranks [0, 1] scored [4.99, 5]: 4.99 is not a five; the five is on rank 1: 0/1. Total 2/3.
    result = judge_agreement([group((0, 5), (0, 4.9995), (1, 1)), group((0, 4.99), (1, 5))], bootstrap_samples=0)
    assert result["n_five"] == 3
    assert result["five_best"] == pytest.approx(2 / 3)


def test_missing_scores_and_groups_of_one():
    # Group 1: ranks [0, 1, 2], scores [5, None, 1]: pairs (0,1) and (1,2) lack a score, (0,2) agrees: 1/1;
    #   no exact match or correlation (a score is missing); the 5 is on rank 0.
    # Group 2: one reply, scored 5: no pairs, and left out of 5-best (it is trivially the best).
    # Group 3: one reply, unparsed.
    # Parse failures: 2 of 5 replies.
    groups = [group((0, 5), (1, None), (2, 1)), group((0, 5)), group((0, None))]
    result = judge_agreement(groups, bootstrap_samples=200)
    assert result["pairwise_accuracy"] == 1.0
    assert result["n_pairs"] == 1 and result["pairs_missing_score"] == 2
    assert result["five_best"] == 1.0 and result["n_five"] == 1
    assert result["exact_match"] is None and result["exact_match_ci"] is None
    assert result["spearman"] is None and result["n_groups_correlation"] == 0
    assert result["parse_failure_rate"] == pytest.approx(2 / 5)
    assert result["n"] == 3 and result["n_replies"] == 5


def test_only_groups_of_one_give_none_never_zero():
    result = judge_agreement([group((0, 4)), group((0, None))], bootstrap_samples=100)
    for name in ("pairwise_accuracy", "five_best", "exact_match", "spearman", "kendall_tau"):
        assert result[name] is None and result[f"{name}_ci"] is None, name
    assert result["n_pairs"] == 0
    assert result["parse_failure_rate"] == 0.5


def test_mixed_case_by_hand():
    # Group 1: ranks [0, 1, 2], scores [5, 3, 3]: (0,1) ok, (0,2) ok, (1,2) judge tie: 2.5 of 3.
    # Group 2: ranks [0, 1], scores [4, None]: 1 pair missing.
    # Group 3: one reply.
    # Group 4: ranks [0, 1, 1], scores [1, 2, 2]: (0,1) wrong, (0,2) wrong, (1,2) human tie: 0 of 2.
    # pairwise = 2.5 / 5 = 0.5.
    # Spearman: group 1 = 0.8660 (score ranks [3, 1.5, 1.5] vs [3, 2, 1]); group 4 = -1; mean = -0.0670.
    # Kendall tau-b: group 1 = 2 / sqrt(2 * 3) = 0.8165; group 4 = -2 / sqrt(2 * 2) = -1; mean = -0.0918.
    groups = [group((0, 5), (1, 3), (2, 3)), group((0, 4), (1, None)), group((0, 2)), group((0, 1), (1, 2), (1, 2))]
    result = judge_agreement(groups, bootstrap_samples=0)
    assert result["pairwise_accuracy"] == 0.5
    assert (result["n_pairs"], result["pairs_missing_score"], result["pairs_judge_tied"]) == (5, 1, 1)
    assert result["exact_match"] == 0.0 and result["n_groups_exact_match"] == 2
    assert result["spearman"] == pytest.approx((math.sqrt(3) / 2 - 1) / 2)
    assert result["kendall_tau"] == pytest.approx((2 / math.sqrt(6) - 1) / 2)
    assert result["parse_failure_rate"] == pytest.approx(1 / 9)
    assert result["pairwise_accuracy_ci"] is None  # bootstrap_samples=0


def test_accepts_pairs_and_objects():
    class Group:
        def __init__(self, replies):
            self.replies = replies

    as_dicts = judge_agreement([group((0, 5), (1, 2))], bootstrap_samples=0)
    as_pairs = judge_agreement([[(0, 5), (1, 2)]], bootstrap_samples=0)
    as_objects = judge_agreement([Group([{"rank": 0, "score": 5}, {"rank": 1, "score": 2}])], bootstrap_samples=0)
    assert as_dicts == as_pairs == as_objects


@pytest.mark.parametrize(
    "bad, message",
    [
        ([group((0.5, 3), (1, 2))], "rank must be an integer"),
        ([group((True, 3), (1, 2))], "rank must be an integer"),
        ([group((0, float("nan")), (1, 2))], "finite number"),
        ([group((0, "5"), (1, 2))], "finite number"),
        ([{"replies": []}], "no replies"),
        ([{"replies": [{"rank": 0}]}], "missing 'score'"),
    ],
)
def test_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        judge_agreement(bad)


def test_no_groups():
    result = judge_agreement([])
    assert result["n"] == 0 and result["pairwise_accuracy"] is None and result["parse_failure_rate"] is None


def _random_groups(seed: int, n_groups: int = 60):
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_groups):
        size = int(rng.integers(1, 6))
        ranks = rng.permutation(size)
        # A noisy judge: right more often than not, ties and parse failures included.
        scores = [None if rng.random() < 0.05 else int(np.clip(round(5 - r + rng.normal(0, 1.5)), 0, 5)) for r in ranks]
        groups.append(group(*zip(ranks.tolist(), scores)))
    return groups


def test_bootstrap_intervals_contain_estimate_and_are_reproducible():
    groups = _random_groups(seed=1)
    result = judge_agreement(groups, bootstrap_samples=500, seed=7)
    for name in ("pairwise_accuracy", "five_best", "exact_match", "spearman", "kendall_tau", "parse_failure_rate"):
        low, high = result[f"{name}_ci"]
        assert low - 1e-12 <= result[name] <= high + 1e-12, name
        bound = -1.0 if name in ("spearman", "kendall_tau") else 0.0
        assert bound <= low <= high <= 1.0, name
    assert judge_agreement(groups, bootstrap_samples=500, seed=7) == result
    assert judge_agreement(groups, bootstrap_samples=500, seed=8)["pairwise_accuracy_ci"] != result["pairwise_accuracy_ci"]


def test_policies_are_documented_in_the_result():
    result = judge_agreement([group((0, 5), (1, 2))], bootstrap_samples=0)
    assert "half credit" in result["tie_policy"]
    assert "per-group mean" in result["correlation_averaging"]
    assert result["five_best_threshold"] == 4.999


# Property: half credit for judge ties is symmetric, so negating every score turns accuracy a into 1 - a
# (with or without judge ties), and flips the sign of both correlations.
scores_or_none = st.one_of(st.none(), st.integers(0, 5), st.floats(0, 5, allow_nan=False))
random_group = st.lists(st.tuples(st.integers(0, 4), scores_or_none), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.lists(random_group, min_size=1, max_size=8))
def test_property_bounds_and_inverted_judge(groups):
    result = judge_agreement([group(*g) for g in groups], bootstrap_samples=0)
    inverted = judge_agreement(
        [group(*[(rank, None if score is None else -score) for rank, score in g]) for g in groups],
        bootstrap_samples=0,
    )
    for name in ("pairwise_accuracy", "five_best", "exact_match", "parse_failure_rate"):
        assert result[name] is None or 0.0 <= result[name] <= 1.0
    for name in ("spearman", "kendall_tau"):
        assert result[name] is None or -1.0 - 1e-9 <= result[name] <= 1.0 + 1e-9
    assert inverted["n_pairs"] == result["n_pairs"]
    if result["n_pairs"]:
        assert inverted["pairwise_accuracy"] == pytest.approx(1.0 - result["pairwise_accuracy"])
    else:
        assert result["pairwise_accuracy"] is None
    if result["spearman"] is not None:
        assert inverted["spearman"] == pytest.approx(-result["spearman"])
        assert inverted["kendall_tau"] == pytest.approx(-result["kendall_tau"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=2, max_size=6), min_size=1, max_size=6), st.randoms())
def test_property_inverted_judge_without_ties(rank_lists, random):
    # Distinct scores within each group: no judge ties, so every scored pair is a plain right or wrong.
    groups, inverted = [], []
    for ranks in rank_lists:
        scores = random.sample(range(100), len(ranks))
        groups.append(group(*zip(ranks, scores)))
        inverted.append(group(*zip(ranks, [-s for s in scores])))
    result = judge_agreement(groups, bootstrap_samples=0)
    assert result["pairs_judge_tied"] == 0
    if result["n_pairs"]:
        assert judge_agreement(inverted, bootstrap_samples=0)["pairwise_accuracy"] == pytest.approx(
            1.0 - result["pairwise_accuracy"]
        )


# ----------------------------------------------------------------------------------------------------------------
# winrate_from_verdicts
# ----------------------------------------------------------------------------------------------------------------


def verdict(first, second, len_a=100, len_b=100):
    return {"first_order": first, "second_order": second, "len_a": len_a, "len_b": len_b}


def test_winrate_both_orders_by_hand():
    items = [
        verdict("A", "B"),  # A first and chosen; swapped, position B (= model A) chosen: win
        verdict("B", "A"),  # loss in both orders: loss
        verdict("A", "A"),  # position A wins both times (position bias): disagreement, tie
        verdict("tie", "B"),  # tie in one order: tie
        verdict(None, "B"),  # unparsed: tie, counted in n_unparsed
    ]
    result = winrate_from_verdicts(items, bootstrap_samples=300)
    # win 1/5, loss 1/5, tie 3/5, win_rate = 0.2 + 0.5 * 0.6 = 0.5
    assert (result["win"], result["tie"], result["loss"]) == pytest.approx((0.2, 0.6, 0.2))
    assert result["win_rate"] == pytest.approx(0.5)
    assert result["n"] == 5 and result["n_unparsed"] == 1 and result["n_order_disagreements"] == 1
    for name in ("win", "tie", "loss", "win_rate"):
        low, high = result[f"{name}_ci"]
        assert 0.0 <= low <= result[name] <= high <= 1.0
    assert result["mean_len_a"] == result["mean_len_b"] == 100.0


def test_length_controlled_win_rate_removes_a_length_advantage():
    # The judge prefers the longer reply: when A is 10 longer it wins 3/4, when 10 shorter 1/4 (losses otherwise).
    # A is longer in 8 of 12 items, so its raw win rate is (6 + 1) / 12 = 0.5833.
    # With two length values, the logistic fit reproduces the two rates: logit(3/4) = -logit(1/4), so the
    # intercept is 0 and the predicted win rate at equal length is exactly 0.5.
    items = [verdict("A", "B", 110, 100)] * 6 + [verdict("B", "A", 110, 100)] * 2
    items += [verdict("A", "B", 90, 100)] + [verdict("B", "A", 90, 100)] * 3
    result = winrate_from_verdicts(items, bootstrap_samples=0)
    assert result["win_rate"] == pytest.approx(7 / 12)
    assert result["length_controlled_win_rate"] == pytest.approx(0.5, abs=1e-5)
    # Slope per standard deviation: sd of (8 x +10, 4 x -10) = sqrt(100 - (10/3)^2) = 9.428;
    # logit(0.75) / (10 / 9.428) = 1.0986 / 1.0607 = 1.0357.
    assert result["length_coef"] == pytest.approx(1.0357, abs=1e-3)
    assert "equal lengths" in result["length_control_note"]
    assert result["mean_len_a"] == pytest.approx((8 * 110 + 4 * 90) / 12)


def test_length_control_with_no_length_effect_equals_raw():
    # The same outcomes at both length differences: slope 0, so the controlled rate is the raw one.
    outcomes = [("A", "B"), ("B", "A"), ("tie", "tie"), ("A", "B")]
    items = [verdict(f, s, 120, 100) for f, s in outcomes] + [verdict(f, s, 80, 100) for f, s in outcomes]
    result = winrate_from_verdicts(items, bootstrap_samples=0)
    assert result["length_controlled_win_rate"] == pytest.approx(result["win_rate"], abs=1e-5)


@pytest.mark.parametrize(
    "items, note",
    [
        ([verdict("A", "B", 100 + i, 100) for i in range(5)], "same"),  # all wins
        ([verdict("A", "B"), verdict("B", "A"), verdict("tie", "tie")], "does not vary"),  # equal lengths
        ([verdict("A", "B", 200, 100)] * 3 + [verdict("B", "A", 100, 200)] * 3, "separated"),  # longer always wins
        ([verdict("A", "B", 200, 100)], "same"),  # a single item
    ],
)
def test_length_control_degenerate_cases_fall_back_to_raw(items, note):
    result = winrate_from_verdicts(items, bootstrap_samples=50)
    assert result["length_controlled_win_rate"] == pytest.approx(result["win_rate"])
    assert note in result["length_control_note"] and "raw win rate" in result["length_control_note"]
    assert result["length_coef"] is None


def test_winrate_without_lengths_or_items():
    result = winrate_from_verdicts([{"first_order": "A", "second_order": "B"}], bootstrap_samples=10)
    assert result["win"] == 1.0 and result["length_controlled_win_rate"] is None and result["mean_len_a"] is None
    empty = winrate_from_verdicts([])
    assert empty["n"] == 0 and empty["win_rate"] is None and empty["win_rate_ci"] is None


def test_winrate_rejects_unknown_verdicts():
    with pytest.raises(ValueError, match="item 0: first_order"):
        winrate_from_verdicts([verdict("a", "B")])
    with pytest.raises(ValueError, match="missing 'second_order'"):
        winrate_from_verdicts([{"first_order": "A"}])


# ----------------------------------------------------------------------------------------------------------------
# score_histogram
# ----------------------------------------------------------------------------------------------------------------


def test_score_histogram_rounds_half_up():
    # 0.4 -> 0, 0.5 -> 1, 2.49 -> 2, 4.5 -> 5, 5 -> 5, 7 -> out of range, None -> missing.
    result = score_histogram([0.4, 0.5, 2.49, 4.5, 5, 7, None])
    assert result["counts"] == {0: 1, 1: 1, 2: 1, 3: 0, 4: 0, 5: 2}
    assert (result["missing"], result["out_of_range"], result["n"]) == (1, 1, 7)


def test_length_split_accuracy_separates_a_length_judge_from_a_content_judge():
    from srlm.evaluation.metrics import length_split_accuracy

    # (rank, score, length): humans prefer the longer reply in the first two groups, the shorter in the last two.
    groups = [[(0, 4.0, 100), (1, 2.0, 10)], [(0, 3.0, 90), (1, 1.0, 20)],
              [(0, 1.0, 10), (1, 3.0, 100)], [(0, 2.0, 30), (1, 2.0, 80)]]
    length_judge = length_split_accuracy(groups, bootstrap_samples=200)
    assert length_judge["preferred_longer_accuracy"] == 1.0 and length_judge["preferred_shorter_accuracy"] == 0.25
    assert length_judge["length_balanced_accuracy"] == pytest.approx(0.625)
    assert length_judge["n_longer"] == 2 and length_judge["n_shorter"] == 2
    low, high = length_judge["length_balanced_accuracy_ci"]
    assert 0 <= low <= 0.625 <= high <= 1
    same_length = length_split_accuracy([[(0, 4.0, 10), (1, 2.0, 10)]])
    assert same_length["length_balanced_accuracy"] is None and same_length["n_longer"] == 0
    ties_skipped = length_split_accuracy([[(0, 4.0, 10), (0, 2.0, 90)]])
    assert ties_skipped["n_longer"] + ties_skipped["n_shorter"] == 0


def test_paired_difference_by_key_pairs_the_items_both_sides_measured():
    from srlm.evaluation.metrics import paired_difference, paired_difference_by_key

    a = {"g3": 1.0, "g1": 0.5, "g2": 0.0, "only_a": 1.0}
    b = {"g2": 1.0, "g1": 0.5, "g3": 0.0, "only_b": 0.0}
    keyed = paired_difference_by_key(a, b, seed=3)
    assert keyed == paired_difference([0.5, 0.0, 1.0], [0.5, 1.0, 0.0], seed=3)
    assert keyed["n"] == 3 and keyed["difference"] == 0.0


def test_a_sample_under_100_items_is_printed_as_a_demonstration_wherever_a_figure_is_shown():
    from srlm.evaluation.judge_eval import format_accuracy
    from srlm.evaluation.metrics import sample_size
    from srlm.health import _ifeval_cell, _rate_cell

    assert sample_size(300, "pairs") == "300 pairs" and sample_size(100, "prompts") == "100 prompts"
    assert sample_size(12, "pairs") == "12 pairs: a demonstration (under 100)"
    small = {"pairwise_accuracy": 0.5, "pairwise_accuracy_ci": [0.23, 0.8], "n_pairs": 12}
    assert format_accuracy(small) == "0.500 [0.230, 0.800], 12 pairs: a demonstration (under 100)"
    assert format_accuracy({**small, "n_pairs": 300}) == "0.500 [0.230, 0.800], 300 pairs"
    assert _rate_cell({"win_rate": 0.62, "win_rate_ci": [0.25, 1.0], "n": 8}) == \
        "0.62 [0.25, 1.00], 8 prompts: a demonstration (under 100)"
    assert _ifeval_cell({"prompt_level_strict_acc": 0.2, "n_prompts": 150}) == "0.200, 150 prompts"
