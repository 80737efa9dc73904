"""Intervals and the checks every metric shares: 95% percentile bootstraps (of ratio metrics, of paired
differences), the one format of a figure with its interval, and the field check of an input record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np

CONFIDENCE = 0.95
# A rate over fewer items than this is printed as a demonstration, not a result: its 95% interval is wider than
# about +-0.1, too wide to tell two models or settings apart at the differences this loop makes.
DEMONSTRATION_BELOW = 100
# Bootstrap weights are drawn in blocks so that memory stays bounded (about this many cells per block).
BOOTSTRAP_BLOCK_CELLS = 2_000_000


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> float | None:
    total = float(denominator.sum())
    return float(numerator.sum()) / total if total > 0 else None


def bootstrap_ratio_intervals(
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
    block = max(1, BOOTSTRAP_BLOCK_CELLS // n_units)
    for start in range(0, samples, block):
        weights = rng.multinomial(n_units, uniform, size=min(block, samples - start)).astype(float)
        for name, (numerator, denominator) in ratios.items():
            num, den = weights @ numerator, weights @ denominator
            defined = den > 0
            values[name].append(num[defined] / den[defined])
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    for name, chunks in values.items():
        drawn = np.concatenate(chunks)
        if drawn.size and float(ratios[name][1].sum()) > 0:
            low, high = np.percentile(drawn, [tail, 100.0 - tail])
            intervals[name] = [float(low), float(high)]
    return intervals


def require_fields(record: Any, fields: Sequence[str], where: str) -> None:
    """`record` is a mapping that holds every one of `fields`, or a ValueError says what is wrong `where`."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(record).__name__}")
    for field in fields:
        if field not in record:
            raise ValueError(f"{where}: missing '{field}'")


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
    low, high = np.quantile(means, [(1 - CONFIDENCE) / 2, 1 - (1 - CONFIDENCE) / 2])
    return {"difference": float(diff.mean()), "difference_ci": [float(low), float(high)], "n": n,
            "method": f"paired percentile bootstrap over items, {bootstrap_samples} resamples"}


def paired_difference_by_key(a: Mapping[Any, float], b: Mapping[Any, float], **options) -> dict[str, Any]:
    """`paired_difference` over the items both mappings measured (item key -> outcome), in sorted key order: e.g.
    two judges' `pair_credits`, or two models' IFEval outcomes by prompt key."""
    common = sorted(set(a) & set(b))
    return paired_difference([a[k] for k in common], [b[k] for k in common], **options)


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


def sample_size(n: Any, unit: str) -> str:
    """'300 pairs', or '12 pairs: a demonstration (under 100)' where the sample is too small to be a result."""
    shown = f"{n} {unit}"
    if isinstance(n, bool) or not isinstance(n, int) or n >= DEMONSTRATION_BELOW:
        return shown
    return f"{shown}: a demonstration (under {DEMONSTRATION_BELOW})"
