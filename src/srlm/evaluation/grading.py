"""Grade answers one at a time with a local judge: the paper's additive 5-point judge (the one the loop trains)
or an MT-Bench-style 1-10 grader ending in `Rating: [[N]]` (`templates/mt_bench_judge.txt`), averaged per turn, per
category and overall (`srlm eval grade`). With a small local judge these are proxies, not the paper's GPT-4 numbers.

MT-Bench grades its math, reasoning and coding questions against a reference answer (FastChat's reference answer
JSONL, `load_reference_answers`): those turns use `templates/mt_bench_reference_judge.txt`, which shows the
reference beside the answer; at turn 2 the judge sees the whole conversation and the references of turns 1 and 2.
Every graded item records which template it used and whether a reference was shown.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from srlm.backends import GenerationRequest, Sampling
from srlm.errors import DataError, SrlmError
from srlm.evaluation.prompt_sets import MT_BENCH_TEMPERATURE, read_source_records, run_requests
from srlm.io import stable_seed
from srlm.judge import fill_slots, shipped_template

GRADERS = ("additive", "mtbench")
# The two columns of the paper's MT-Bench Table 2 (paper-spec 6.4).
MT_BENCH_GROUPS = {
    "math_coding_reasoning": ("math", "coding", "reasoning"),
    "humanities_extraction_stem_roleplay_writing": ("humanities", "extraction", "stem", "roleplay", "writing"),
}
# The categories FastChat grades against a reference answer (NEED_REF_CATS in fastchat/llm_judge/common.py).
REFERENCE_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")

_RATING_BRACKETS = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_PLAIN = re.compile(r"rating\s*[:=]\s*\**\s*\[?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_rating(judgement: str) -> float | None:
    """The 1-10 rating a judgement concludes with: the last `[[N]]`, else the last `Rating: N`; None if absent or
    outside [1, 10] (a missing value, never a low score)."""
    matches = _RATING_BRACKETS.findall(judgement) or _RATING_PLAIN.findall(judgement)
    if not matches:
        return None
    value = float(matches[-1])
    return value if math.isfinite(value) and 1.0 <= value <= 10.0 else None


MT_BENCH_TEMPLATE = "mt_bench_judge.txt"
MT_BENCH_REFERENCE_TEMPLATE = "mt_bench_reference_judge.txt"


def mt_bench_template() -> str:
    return shipped_template(MT_BENCH_TEMPLATE)


def _render_mt_bench(template: str, question: str, answer: str) -> str:
    return fill_slots(template, {"question": question, "answer": answer})


def format_reference(turns: Sequence[str]) -> str:
    """The reference slot: the one reference answer at turn 1; at turn k, the references of turns 1..k, numbered,
    as the question slot then holds the conversation up to question k."""
    if len(turns) == 1:
        return turns[0]
    return "\n\n".join(f"Turn {number}: {text}" for number, text in enumerate(turns, start=1))


@dataclass
class Grader:
    """A single-answer judge as data: how to build its prompt, parse its output, and its scale.

    `render_reference(question, reference, answer)` is the reference-guided prompt, for graders that have one.
    `template` and `reference_template` name the templates, for the graded records.
    """

    name: str
    render: Callable[[str, str], str]
    parse: Callable[[str], float | None]
    scale: tuple[float, float]
    template: str = ""
    render_reference: Callable[[str, str, str], str] | None = None
    reference_template: str | None = None


def make_grader(name: str, judge_template_file: str | None = None) -> Grader:
    """'additive': the loop's judge (`judge.template_file` or the built-in rubric), 0-5; 'mtbench': 1-10, with a
    reference-guided variant for questions that have a reference answer."""
    if name == "additive":
        from srlm.judge import load_template, parse_score, render

        template = load_template(judge_template_file)
        return Grader("additive", lambda q, a: render(template, q, a), parse_score, (0.0, 5.0),
                      template=str(judge_template_file) if judge_template_file else "additive_judge.txt")
    if name == "mtbench":
        template, reference_template = mt_bench_template(), shipped_template(MT_BENCH_REFERENCE_TEMPLATE)
        return Grader(
            "mtbench", lambda q, a: _render_mt_bench(template, q, a), parse_rating, (1.0, 10.0),
            template=MT_BENCH_TEMPLATE,
            render_reference=lambda q, r, a: fill_slots(reference_template, {"question": q, "reference": r,
                                                                                "answer": a}),
            reference_template=MT_BENCH_REFERENCE_TEMPLATE,
        )
    raise SrlmError(f"unknown grader '{name}'; available: {', '.join(GRADERS)}")


# ----------------------------------------------------------------------------------------------------------------
# Reference answers (MT-Bench's math, reasoning and coding questions)


@dataclass
class ReferenceAnswer:
    question_id: str
    turns: list[str]
    where: str  # "file:line" of the record, for messages about it


def load_reference_answers(path: str | Path) -> dict[str, ReferenceAnswer]:
    """FastChat's reference answer JSONL ({question_id, choices: [{turns: [str, ...]}], ...}), by question id."""
    references: dict[str, ReferenceAnswer] = {}
    for where, record in read_source_records(path):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "question_id" not in record:
            raise DataError(f"{where}: missing field 'question_id'")
        question_id = record["question_id"]
        if isinstance(question_id, bool) or not isinstance(question_id, (int, str)) or not str(question_id).strip():
            raise DataError(f"{where}: field 'question_id' must be an integer or a non-empty string")
        choices = record.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise DataError(f"{where}: field 'choices' must be a non-empty list of objects with 'turns'")
        turns = choices[0].get("turns")
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: field 'choices[0].turns' must be a non-empty list of strings")
        for index, text in enumerate(turns):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: field 'choices[0].turns[{index}]' must be a non-empty string")
        key = str(question_id)
        if key in references:
            raise DataError(f"{where}: field 'question_id': {question_id} already has a reference answer at "
                            f"{references[key].where}")
        references[key] = ReferenceAnswer(key, list(turns), where)
    if not references:
        raise DataError(f"{path}: no reference answers")
    return references


def match_references(
    answered: Sequence[dict], references: dict[str, ReferenceAnswer], *, categories: Sequence[str] | None,
    answers_source: str = "the answers",
) -> tuple[dict[str, list[str]], list[str]]:
    """The reference turns to grade each answered question against, and the ids of questions that should have one
    (their category is in `categories`; None = every category) but have none.

    Every reference must belong to an answered question (a reference for an unknown id means the wrong file), and
    must have a turn for every answered turn of its question.
    """
    by_id = {record["id"]: record for record in answered}
    for reference in references.values():
        if reference.question_id not in by_id:
            raise DataError(f"{reference.where}: field 'question_id': {reference.question_id} is not a question in "
                            f"{answers_source}; is this the reference file of another question set?")
    matched, missing = {}, []
    for record in answered:
        if categories is not None and record.get("category") not in categories:
            continue
        reference = references.get(record["id"])
        if reference is None:
            missing.append(record["id"])
            continue
        if len(reference.turns) < len(record["answers"]):
            raise DataError(f"{reference.where}: field 'choices[0].turns' has {len(reference.turns)} turn(s), but "
                            f"question {record['id']} has {len(record['answers'])} answered turns to grade")
        matched[record["id"]] = reference.turns
    return matched, missing


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def grade_answers(
    answered: Sequence[dict], backend, grader: Grader, *, seed: int, sampling: Sampling,
    references: dict[str, list[str]] | None = None,
) -> tuple[dict[str, Any], list[dict]]:
    """Score every turn's answer alone, `sampling.n` judgements averaged over the parsable ones.

    Turn k is judged with the conversation up to question k as the question (see `conversation_as_prompt`) and
    answer k as the answer. A question with reference turns in `references` (by id, see `match_references`) is
    judged with the grader's reference-guided template, turn k seeing the references of turns 1..k. Returns
    (metrics, items): metrics has the overall mean over all graded turns (as FastChat averages MT-Bench), per-turn
    and per-category means, the paper's two MT-Bench groups when the categories are MT-Bench's, and parse rates;
    items has one record per (question, turn) with every judgement, the template used and `reference_used`.
    """
    from srlm.evaluation.judge_eval import conversation_as_prompt
    from srlm.judge import average_score

    references = references or {}
    if references and grader.render_reference is None:
        raise SrlmError(f"the {grader.name} grader has no reference-guided template; grade with the mtbench grader")
    items, requests = [], []
    for record in answered:
        conversation: list[dict] = []
        reference = references.get(record["id"])
        for turn, (question, answer) in enumerate(zip(record["questions"], record["answers"])):
            conversation.append({"role": "user", "content": question})
            shown = conversation_as_prompt(conversation)
            if reference is not None:
                content = grader.render_reference(shown, format_reference(reference[: turn + 1]), answer)
            else:
                content = grader.render(shown, answer)
            items.append({"id": record["id"], "category": record.get("category"), "turn": turn + 1,
                          "template": grader.reference_template if reference is not None else grader.template,
                          "reference_used": reference is not None})
            requests.append(GenerationRequest(
                f"{record['id']}/turn{turn + 1}", sampling, stable_seed(seed, "eval-grade", record["id"], turn),
                messages=[{"role": "user", "content": content}],
            ))
            conversation.append({"role": "assistant", "content": answer})
    if not requests:
        raise SrlmError("no answers to grade")
    for item, completions in zip(items, run_requests(backend, requests, f"grade ({grader.name})")):
        item["judgements"] = [c.text for c in completions]
        item["scores"] = [grader.parse(c.text) for c in completions]
        item["score"] = average_score(item["scores"])

    scored = [it for it in items if it["score"] is not None]
    by_turn, by_category = defaultdict(list), defaultdict(list)
    for it in scored:
        by_turn[str(it["turn"])].append(it["score"])
        if it["category"] is not None:
            by_category[str(it["category"])].append(it["score"])
    per_category = {c: _mean(v) for c, v in sorted(by_category.items())}
    metrics: dict[str, Any] = {
        "grader": grader.name,
        "scale": list(grader.scale),
        "n_questions": len(answered),
        "n_graded_turns": len(items),
        "n_scored_turns": len(scored),
        "score_mean": _mean([it["score"] for it in scored]),
        "per_turn": {t: _mean(v) for t, v in sorted(by_turn.items())},
        "per_category": per_category,
        "per_category_n": {c: len(v) for c, v in sorted(by_category.items())},
        "sample_parse_rate": _mean([float(s is not None) for it in items for s in it["scores"]]),
        "n_reference_turns": sum(it["reference_used"] for it in items),
        "judge": {"num_samples": sampling.n, "temperature": sampling.temperature,
                  "max_new_tokens": sampling.max_new_tokens},
        "averaging": "a turn's score is the mean of its parsable judgements; score_mean and per_category average "
                     "over every scored turn (FastChat's MT-Bench convention); unparsable turns are left out and "
                     "counted as n_graded_turns - n_scored_turns",
    }
    if set(by_category) and set(by_category) <= set(MT_BENCH_TEMPERATURE):
        metrics["mt_bench_groups"] = {
            group: _mean([s for c in cats for s in by_category.get(c, [])]) for group, cats in MT_BENCH_GROUPS.items()
        }
    return metrics, items


def format_grade_table(metrics: dict) -> str:
    def show(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    low, high = metrics["scale"]
    lines = [f"  grader {metrics['grader']} (scale {low:g}-{high:g}), {metrics['n_scored_turns']} of "
             f"{metrics['n_graded_turns']} turns scored, parse rate {show(metrics['sample_parse_rate'])}",
             f"  {'overall':<44} {show(metrics['score_mean'])}"]
    lines += [f"  {'turn ' + t:<44} {show(v)}" for t, v in metrics["per_turn"].items()]
    lines += [f"  {c:<44} {show(v)}" for c, v in metrics["per_category"].items()]
    lines += [f"  {g:<44} {show(v)}" for g, v in metrics.get("mt_bench_groups", {}).items()]
    reference = metrics.get("reference")
    if reference:
        missing = reference["questions_missing_reference"]
        lines.append(f"  {metrics['n_reference_turns']} of {metrics['n_graded_turns']} turns graded against a "
                     f"reference answer ({reference['file']})"
                     + (f"; no reference for {len(missing)} questions in those categories: {', '.join(missing[:10])}"
                        if missing else ""))
    return "\n".join(lines)
