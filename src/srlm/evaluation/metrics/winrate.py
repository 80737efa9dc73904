"""Head-to-head win rates from verdicts given in both orders (paper section 6.1), with a simplified
length-controlled win rate."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any

import numpy as np
from scipy import optimize, special

from srlm.evaluation.metrics.intervals import bootstrap_ratio_intervals, ratio, require_fields

WINRATE_RULE = (
    "Each pair is judged in both orders; model A wins (or loses) only when both orders agree, a disagreement is a "
    "tie, and a missing verdict in either order is a tie counted in n_unparsed. win_rate = win + 0.5 * tie."
)
# A fitted length slope steeper than this (log-odds per standard deviation of the length difference) means the
# outcomes are (almost) perfectly separated by length, where the maximum-likelihood fit diverges.
_MAX_LENGTH_SLOPE = 10.0

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
        require_fields(item, ("first_order", "second_order"), where)
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
    intervals = bootstrap_ratio_intervals(ratios, len(outcome), bootstrap_samples, seed)
    result: dict[str, Any] = {"n": len(outcome)}
    for name, (numerator, denominator) in ratios.items():
        result[name] = ratio(numerator, denominator)
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
