"""Head-to-head win rates with a pairwise LLM judge, each pair judged in both orders (paper-spec 6.1, 6.3).

    srlm eval winrate --prompts prompts.jsonl --model-a runs/x/models/m3 --model-b runs/x/models/m2 \
        --judge-model JUDGE --out m3_vs_m2.json

The paper compares models head to head with GPT-4 and the AlpacaEval comparison prompt: every pair is judged
twice, once with each model's answer shown first, and a model wins only when both orders agree; a disagreement
is a tie (position bias must not decide a result). Our pairwise template (`templates/pairwise_judge.txt`, our own
wording in the AlpacaEval style) shows an instruction and outputs (a) and (b) and asks for a final line
`Winner: A`, `Winner: B` or `Winner: tie`; `parse_verdict` reads it.

The verdicts go to `srlm.evaluation.metrics.winrate_from_verdicts`, which also reports mean lengths and a
length-controlled win rate (the paper notes that answers grow longer across iterations; AlpacaEval 2.0 later
introduced length control for that reason). Lengths are in characters, AlpacaEval's convention.

The judge decodes greedily (temperature 0) by default, as AlpacaEval's GPT-4 annotators do: the verdict of a
fixed pair should not depend on a sampling seed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from srlm.backends import GenerationRequest, Sampling
from srlm.errors import SrlmError
from srlm.evaluation.metrics import winrate_from_verdicts
from srlm.judge import fill_slots, read_template_file, shipped_template
from srlm.io import stable_id, stable_seed
from srlm.progress import chunks, progress

PAIRWISE_SLOTS = ("{instruction}", "{output_a}", "{output_b}")
# "Winner:" then the verdict, allowing markdown emphasis, "Output (a)" / "(a)" / "[[A]]" spellings.
_VERDICT_LINE = re.compile(r"winner\s*[:=]\s*(.+)$", re.IGNORECASE)
_VERDICT_VALUE = re.compile(
    r"^[\s*_`\"'\[(]*(?:output|response|answer|assistant)?\s*[\s\[(]*(a|b|tie|draw)[\s\])*_`\"'.!]*$",
    re.IGNORECASE,
)
_CHUNK_REQUESTS = 64


def builtin_pairwise_template() -> str:
    return shipped_template("pairwise_judge.txt")


def load_pairwise_template(template_file: str | Path | None = None) -> str:
    """The pairwise template (built-in when None); a custom one must keep the three slots."""
    if template_file is None:
        return builtin_pairwise_template()
    return read_template_file(template_file, PAIRWISE_SLOTS, "pairwise judge template")


def render_pairwise(template: str, instruction: str, output_a: str, output_b: str) -> str:
    """Fill the slots in one pass, so that a slot name inside the instruction or an output is left as text."""
    return fill_slots(template, {"instruction": instruction, "output_a": output_a, "output_b": output_b})


def parse_verdict(judgement: str) -> str | None:
    """'A', 'B' or 'tie' from the judge's last `Winner: ...` line; None when there is none or it says neither.

    Only the last "Winner:" line counts (it is the conclusion, as for scores in `srlm.judge`), and its value must
    be one verdict and nothing else: "Winner: A" and "**Winner:** Output (b)" parse, "Winner: A or B" does not.
    "draw" is read as a tie.
    """
    verdict = None
    for line in judgement.splitlines():
        match = _VERDICT_LINE.search(line.strip().strip("*_#` "))
        if match:
            verdict = match.group(1)
    if verdict is None:
        return None
    value = _VERDICT_VALUE.match(verdict.strip())
    if value is None:
        return None
    word = value.group(1).lower()
    return {"a": "A", "b": "B", "tie": "tie", "draw": "tie"}[word]


def pairwise_winrate(
    prompts: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    judge_backend,
    *,
    seed: int,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    template: str | None = None,
    bootstrap_samples: int = 1000,
    max_prompt_tokens: int = 2048,
) -> dict[str, Any]:
    """Judge every (prompt, answer A, answer B) in both orders and compute the win rate of A against B.

    A pair whose judge prompt (either order) is longer than `max_prompt_tokens` is not sent: both verdicts are
    missing (unparsed, a tie), and it is counted in `pairs_skipped_prompt_too_long`.

    Returns {"metrics": winrate_from_verdicts(...) (win/tie/loss/win_rate with intervals, n_unparsed,
    n_order_disagreements, mean_len_a/b in characters, length_controlled_win_rate, rule) plus "judge" settings,
    "items": one record per prompt with both answers, both judgement texts and both verdicts}.
    In the first order answer A is output (a); in the second answer B is.
    """
    _check_inputs(prompts, answers_a, answers_b)
    template = template if template is not None else builtin_pairwise_template()
    sampling = Sampling(n=1, temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens)

    requests, too_long = [], set()
    for index, (prompt, a, b) in enumerate(zip(prompts, answers_a, answers_b)):
        if a == b:
            continue  # the same text: a tie, whatever a judge would say about positions
        pair_id = stable_id("pair", index, prompt, a, b)
        both = [GenerationRequest(
            f"{pair_id}/{order}", sampling, stable_seed(seed, "winrate", pair_id, order),
            messages=[{"role": "user", "content": render_pairwise(template, prompt, first, second)}],
        ) for order, (first, second) in (("first_order", (a, b)), ("second_order", (b, a)))]
        if any(judge_backend.count_prompt_tokens(r) > max_prompt_tokens for r in both):
            too_long.add(index)
        else:
            requests += both

    judgements: list[str] = []
    with progress(len(requests), "eval winrate", unit="judgement") as bar:
        for chunk in chunks(requests, _CHUNK_REQUESTS):
            judgements.extend(outs[0].text for outs in judge_backend.generate(list(chunk), on_done=bar.update))

    items = []
    texts = iter(judgements)
    for index, (prompt, a, b) in enumerate(zip(prompts, answers_a, answers_b)):
        if a == b:
            items.append(_identical_item(index, prompt, a))
            continue
        first_text, second_text = ("", "") if index in too_long else (next(texts), next(texts))
        items.append({
            "index": index,
            "prompt": prompt,
            "answer_a": a,
            "answer_b": b,
            "len_a": len(a),
            "len_b": len(b),
            "first_order_judgement": first_text,
            "second_order_judgement": second_text,
            "first_order": parse_verdict(first_text),
            "second_order": parse_verdict(second_text),
            **({"skipped": "judge_prompt_too_long"} if index in too_long else {}),
        })
    metrics = _metrics(items, bootstrap_samples, seed)
    metrics["pairs_skipped_prompt_too_long"] = len(too_long)
    metrics["judge"] = {"method": "pairwise", "temperature": temperature, "max_new_tokens": max_new_tokens,
                        "orders": "A first, then B first; letters name positions",
                        "identical_answers": "a tie, not judged"}
    return {"metrics": metrics, "items": items}


def _check_inputs(prompts, answers_a, answers_b) -> None:
    if not (len(prompts) == len(answers_a) == len(answers_b)):
        raise ValueError(f"prompts, answers_a and answers_b differ in length: {len(prompts)}, {len(answers_a)}, "
                         f"{len(answers_b)}")
    if not prompts:
        raise SrlmError("no prompts to compare on")


def _metrics(items: list[dict], bootstrap_samples: int, seed: int) -> dict:
    """Win/tie/loss from the items' verdicts (`winrate_from_verdicts`), with the length unit and identical pairs."""
    metrics = winrate_from_verdicts(items, bootstrap_samples=bootstrap_samples, seed=seed)
    metrics["length_unit"] = "characters"
    metrics["n_identical"] = sum(1 for item in items if item.get("identical"))
    return metrics


def _identical_item(index: int, prompt: str, answer: str) -> dict:
    return {"index": index, "prompt": prompt, "answer_a": answer, "answer_b": answer, "len_a": len(answer),
            "len_b": len(answer), "identical": True, "first_order": "tie", "second_order": "tie"}


def _distinct_answers(prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]) -> dict:
    """answer id -> (prompt, answer) for every distinct (prompt, answer) that additive grading judges, in order;
    identical answers to a prompt are a tie and are not judged."""
    distinct = {}
    for prompt, a, b in zip(prompts, answers_a, answers_b):
        if a != b:
            for answer in (a, b):
                distinct.setdefault(stable_id("answer", prompt, answer), (prompt, answer))
    return distinct


def ungraded_answers(prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str],
                     grades: dict[str, dict]) -> int:
    """How many distinct answers `additive_winrate` would send to the judge, given the earlier `grades`: with 0 the
    judge model need not be loaded at all."""
    return len(_distinct_answers(prompts, answers_a, answers_b).keys() - grades.keys())


def additive_winrate(
    prompts: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    judge_backend,
    judge_cfg,
    *,
    seed: int,
    bootstrap_samples: int = 1000,
    grades: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """A against B by single-answer grading: the additive 5-point judge (judge.* settings: template, samples,
    method) scores every answer on its own, and the higher score wins; equal scores are a tie, and an answer
    without a parsable score makes the pair unparsed (counted as a tie, as in pairwise judging).

    Why offer this beside the pairwise judge: a model trained on EFT demonstrations has learned the additive
    format, not the pairwise one. Judging itself in the loop (eval.winrate_judge=next) a small model writes
    parsable scores but rarely a parsable `Winner:` line. Each answer is shown alone, so there is no position to be
    biased by and no second order to judge: both verdict fields of an item hold the same verdict. Identical
    answers are a tie and are not judged.

    `grades`: earlier grades by the same judge with the same settings and seed (answer id -> grade), e.g. of M1's
    answers in an earlier iteration. An answer found there is not judged again, and every new grade is added to it,
    so a run's fixed judge grades each distinct answer once, however many comparisons it appears in.
    `judge_backend` may be None when every answer is graded there (`ungraded_answers` is 0).
    """
    from srlm.judge import Judge, average_score

    _check_inputs(prompts, answers_a, answers_b)
    judge = Judge.from_config(judge_cfg, judge_backend)
    requests, graded_before = [], 0
    graded: dict[str, dict] = grades if grades is not None else {}
    used = _distinct_answers(prompts, answers_a, answers_b)  # one judgement per distinct (prompt, answer)
    for answer_id, (prompt, answer) in used.items():
        if answer_id in graded:
            graded_before += 1
            continue
        request = judge.request(answer_id, prompt, answer, stable_seed(seed, "winrate-additive", answer_id))
        if judge.fits(judge_backend, request):
            requests.append(request)
        else:  # not sent: a missing score, so the pair counts as unparsed (a tie), like a failed parse
            graded[answer_id] = {"judgements": [], "score": None, "skipped": "judge_prompt_too_long"}

    with progress(len(requests), "eval winrate (additive)", unit="answer") as bar:
        for chunk in chunks(requests, _CHUNK_REQUESTS):
            for request, j in zip(chunk, judge.judge(judge_backend, list(chunk), bar.update)):
                graded[request.request_id] = {"judgements": j.texts, "score": average_score(j.scores)}

    items = []
    for index, (prompt, a, b) in enumerate(zip(prompts, answers_a, answers_b)):
        if a == b:
            items.append(_identical_item(index, prompt, a))
            continue
        grade_a, grade_b = graded[stable_id("answer", prompt, a)], graded[stable_id("answer", prompt, b)]
        score_a, score_b = grade_a["score"], grade_b["score"]
        if score_a is None or score_b is None:
            verdict = None
        else:
            verdict = "A" if score_a > score_b else "B" if score_b > score_a else "tie"
        items.append({"index": index, "prompt": prompt, "answer_a": a, "answer_b": b, "len_a": len(a), "len_b": len(b),
                      "score_a": score_a, "score_b": score_b, "judgements_a": grade_a["judgements"],
                      "judgements_b": grade_b["judgements"],
                      # one verdict, stored in both order fields: for metrics that read pairwise items
                      "first_order": verdict, "second_order": {"A": "B", "B": "A"}.get(verdict, verdict)})
    metrics = _metrics(items, bootstrap_samples, seed)
    metrics["answers_skipped_prompt_too_long"] = sum(1 for answer_id in used if graded[answer_id].get("skipped"))
    metrics["answers_graded_before"] = graded_before
    metrics["judge"] = {"method": "additive", "num_samples": judge_cfg.num_samples, "score_method": judge_cfg.method,
                        "temperature": judge_cfg.temperature, "max_new_tokens": judge_cfg.max_new_tokens,
                        "rule": "higher additive score wins; equal scores tie; identical answers are a tie, not judged"}
    return {"metrics": metrics, "items": items}


def format_winrate_table(metrics: dict, name_a: str = "A", name_b: str = "B") -> str:
    """A small text table: win / tie / loss of A, win rate, length-controlled win rate, mean lengths."""

    def pct(key: str) -> str:
        value, interval = metrics.get(key), metrics.get(f"{key}_ci")
        if value is None:
            return "n/a"
        return f"{value:6.1%}" + (f"  [{interval[0]:.1%}, {interval[1]:.1%}]" if interval else "")

    lc = metrics.get("length_controlled_win_rate")
    rows = [
        (f"{name_a} wins", pct("win")),
        ("ties", pct("tie")),
        (f"{name_b} wins", pct("loss")),
        ("win rate (win + tie/2)", pct("win_rate")),
        ("length-controlled", "n/a" if lc is None else f"{lc:6.1%}"),
        ("mean length a / b", f"{_num(metrics.get('mean_len_a'))} / {_num(metrics.get('mean_len_b'))} chars"),
        ("pairs (unparsed, order disagreements)",
         f"{metrics['n']} ({metrics['n_unparsed']}, {metrics['n_order_disagreements']})"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.0f}"
