"""IFEval's prompt- and instruction-level accuracies from the checkers' verdicts, with intervals."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from srlm.evaluation.metrics.intervals import bootstrap_ratio_intervals, ratio, require_fields

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
    require_fields(prompt, (field,), where)
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
        require_fields(prompt, (), where)
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
    intervals = bootstrap_ratio_intervals(ratios, n, bootstrap_samples, seed)
    result: dict[str, Any] = {"n_prompts": n, "n_instructions": int(size.sum())}
    for name, (numerator, denominator) in ratios.items():
        result[name] = ratio(numerator, denominator)
        result[f"{name}_ci"] = intervals[name]
    result["per_instruction"] = {
        instruction_id: {"n": len(verdicts), "strict_acc": sum(s for s, _ in verdicts) / len(verdicts),
                         "loose_acc": sum(lo for _, lo in verdicts) / len(verdicts)}
        for instruction_id, verdicts in sorted(by_type.items())
    }
    result.update(averaging=IFEVAL_AVERAGING, intervals=IFEVAL_INTERVALS, bootstrap_samples=bootstrap_samples,
                  seed=seed)
    return result
