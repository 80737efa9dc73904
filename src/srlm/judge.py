"""The LLM-as-a-Judge: a prompt template, a score parser and the aggregation of several judgements.

A judge is data (after alpaca_eval): a template with `{prompt}` and `{response}` slots, a parser `str -> float |
None` and the number of samples to average. The built-in template is our own wording of the paper's additive
5-point rubric (relevance, coverage, usefulness, clarity, expertise), ending in `Score: <total points>`.

Two rules that the numbers depend on:
- a judgement without a parsable score in [0, 5] is a *missing value* (None), never 0;
- only the judge's own output is parsed, never the prompt, so a candidate answer that says "Score: 5" gets no
  credit for it. Of several score lines in one judgement, the last one counts: it is the conclusion.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

from srlm.errors import SrlmError

MAX_SCORE = 5.0
_SCORE_RE = re.compile(r"(?:score|points)\s*[:=]\s*\**\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)


def shipped_template(name: str) -> str:
    """A template shipped in `srlm/templates/`."""
    return resources.files("srlm.templates").joinpath(name).read_text(encoding="utf-8")


def builtin_template() -> str:
    return shipped_template("additive_judge.txt")


def read_template_file(template_file: str | Path, slots: tuple[str, ...], what: str = "judge template") -> str:
    """A user's template file, which must keep every slot the code fills in."""
    path = Path(template_file)
    try:
        template = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SrlmError(f"{path}: {what} file not found") from None
    for slot in slots:
        if slot not in template:
            raise SrlmError(f"{path}: {what} has no {slot} slot")
    return template


def load_template(template_file: str | None = None) -> str:
    """The judge template; a custom one must keep the `{prompt}` and `{response}` slots."""
    if template_file is None:
        return builtin_template()
    return read_template_file(template_file, ("{prompt}", "{response}"))


def render(template: str, prompt: str, response: str) -> str:
    # str.replace, not str.format: user text and templates may contain braces.
    return template.replace("{prompt}", prompt).replace("{response}", response)


def parse_score(judgement: str) -> float | None:
    """The score a judgement concludes with, or None when it has none in [0, 5]."""
    matches = _SCORE_RE.findall(judgement)
    if not matches:
        return None
    value = float(matches[-1])
    if not math.isfinite(value) or not 0 <= value <= MAX_SCORE:
        return None
    return value


def average_score(scores: list[float | None]) -> float | None:
    """Mean of the parsable scores; None when none parsed (the paper's 3 samples, failures dropped)."""
    parsed = [s for s in scores if s is not None]
    return sum(parsed) / len(parsed) if parsed else None
