"""Stage `judge`: M_t scores each candidate with the additive 5-point judge, K samples averaged (paper 4.3, 5).

    srlm judge --responses responses.jsonl --out judgements.jsonl --model DIR [key=value ...]

Each response gets `judge.num_samples` judgements (default 3, sampled at T 0.7, top-p 0.9 like the responses).
Every judgement text is kept with its parsed score; the response's score is the mean of the parsable ones, or
None when none parsed (a missing value, never 0). The parse rate is reported: after EFT training it should be
high, and a falling parse rate is the first sign of a judge that has lost its format.

With `judge.method=direct` nothing is generated: each response gets one judgement, "Score: <expected score>", read
from the digits' probabilities right after the reply's opening "Score: ", with the same fields as below.
With `judge.method=expected`, each judgement also gets `score_probs` (the judge's probabilities of 0..5 right
after its last "Score:", renormalised), `score_token_mass` and `expected_score` (sum_k k * p(k)); the response's
`scores` are then the expected scores and `score` their mean (see `srlm.judge`).

Every file `srlm respond` writes is accepted, whatever the model answered:
- an empty or whitespace-only answer is not judged: its record has no judgements, `score` None and
  `"skipped": "empty_response"`, and it is counted (`skipped_empty_response`). `srlm pairs` sees it as unscored,
  so it is never chosen or rejected; a prompt left with fewer than 2 scored answers is dropped there and counted;
- an answer whose judge prompt exceeds `judge.max_prompt_tokens` (a very long answer) is skipped the same way
  (`"skipped": "judge_prompt_too_long"`, counted in `skipped_judge_prompt_too_long`) and a warning is printed;
- answers cut at max_new_tokens and non-ASCII answers are judged like any other.
Two responses sharing a `response_id` are refused before anything is judged, naming the responses file.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from srlm.config import JudgeConfig
from srlm.errors import DataError
from srlm.io import MaybeEmpty, ResumableJsonlWriter, iter_jsonl_numbered, stable_seed
from srlm.judge import Judge, Judged, average_score
from srlm.progress import chunks, progress

# `response` may be empty: a model can answer with nothing, and respond writes what it answered.
RESPONSE_SCHEMA = {"prompt_id": str, "response_id": str, "prompt": str, "response": MaybeEmpty}
EMPTY_RESPONSE = "empty_response"
JUDGE_PROMPT_TOO_LONG = "judge_prompt_too_long"


def read_responses(path: Path) -> list[dict]:
    """The records of a responses file, checked, with no `response_id` used twice (named with both lines)."""
    responses, first_line = [], {}
    for line_no, record in iter_jsonl_numbered(path, RESPONSE_SCHEMA):
        rid = record["response_id"]
        if rid in first_line:
            raise DataError(f"{path}:{line_no}: field 'response_id' {rid!r} is also used at line {first_line[rid]}; "
                            "each response needs its own id")
        first_line[rid] = line_no
        responses.append(record)
    if not responses:
        raise DataError(f"{path}: no records")
    return responses


def run_judge(responses_path: Path, out_path: Path, backend, cfg: JudgeConfig, *, seed: int, chunk_prompts: int = 16) -> dict:
    judge = Judge.from_config(cfg, backend)
    responses = read_responses(responses_path)
    by_id = {r["response_id"]: r for r in responses}
    requests, too_long = [], []
    empty = [r for r in responses if not r["response"].strip()]
    for r in responses:
        if not r["response"].strip():
            continue  # nothing to judge: recorded below as skipped, unscored
        request = judge.request(r["response_id"], r["prompt"], r["response"], stable_seed(seed, "judge", r["response_id"]))
        (requests if judge.fits(backend, request) else too_long).append(request)

    writer = ResumableJsonlWriter(out_path, id_field="response_id")
    todo = [r for r in requests if r.request_id not in writer.done_ids]
    # A chunk holds the responses of about `chunk_prompts` prompts, so resume granularity matches `respond`.
    chunk_size = chunk_prompts * max(1, len(responses) // max(1, len({r["prompt_id"] for r in responses})))
    with progress(len(requests), "judge", initial=len(requests) - len(todo), unit="response") as bar:
        for chunk in chunks(todo, chunk_size):
            judged = judge.judge(backend, list(chunk), on_done=bar.update)
            writer.append(_record(by_id[req.request_id], j) for req, j in zip(chunk, judged))
    writer.append(
        {**_record(by_id[req.request_id], Judged([], [], None, [])), "skipped": JUDGE_PROMPT_TOO_LONG}
        for req in too_long if req.request_id not in writer.done_ids
    )
    writer.append(
        {**_record(r, Judged([], [], None, [])), "skipped": EMPTY_RESPONSE}
        for r in empty if r["response_id"] not in writer.done_ids
    )
    order = {r["response_id"]: i for i, r in enumerate(responses)}
    records = writer.finish(order_key=lambda r: order[r["response_id"]])
    stats = summarize_judgements(records, cfg.method)
    if too_long:
        print(f"srlm: warning: {len(too_long)} of {len(responses)} responses skipped, unjudged: their judge prompt is "
              f"longer than judge.max_prompt_tokens={cfg.max_prompt_tokens} tokens", file=sys.stderr, flush=True)
    if empty:
        print(f"srlm: warning: {len(empty)} of {len(responses)} responses are empty; left unjudged (unscored)",
              file=sys.stderr, flush=True)
    return stats


def _record(response: dict, judged: Judged) -> dict:
    """The response's record: each judgement's text, parsed score and finish reason (and, with judge.method=expected,
    its expected-score fields), and the mean of the scores."""
    judgements = [{"text": c.text, "score": parsed, "finish_reason": c.finish_reason}
                  for c, parsed in zip(judged.completions, judged.parsed)]
    if judged.expected is not None:
        for judgement, fields in zip(judgements, judged.expected):
            judgement.update(fields)
    scores = judged.scores
    return {
        "prompt_id": response["prompt_id"],
        "response_id": response["response_id"],
        "judgements": judgements,
        "scores": scores,
        "score": average_score(scores),
    }


def summarize_judgements(records: list[dict], method: str = "sample_mean") -> dict:
    """Counts and score statistics of a judgements file; `method` is judge.method ("expected" and "direct" records
    carry the expected-score fields)."""
    total = sum(len(r["judgements"]) for r in records)
    parsed = sum(1 for r in records for j in r["judgements"] if j["score"] is not None)
    scored = [r["score"] for r in records if r["score"] is not None]
    histogram = Counter(str(round(s)) for s in scored)
    expected = [j for r in records for j in r["judgements"] if "expected_score" in j]
    masses = [j["score_token_mass"] for j in expected if j["score_token_mass"] is not None]
    method_stats = {
        "score_method": method,
        # parsed, but the backend could not read the digits' probabilities (an openai server that listed none)
        "expected_missing": sum(1 for j in expected if j["score"] is not None and j["expected_score"] is None),
        "score_token_mass_mean": round(sum(masses) / len(masses), 4) if masses else None,
        # responses sharing a score with another response of the same prompt: what expected scoring reduces
        "responses_tied_within_prompt": _tied_within_prompt(records),
    } if expected else {"score_method": "sample_mean", "responses_tied_within_prompt": _tied_within_prompt(records)}
    return {
        "responses": len(records),
        "judgements": total,
        "judge_parse_rate": round(parsed / total, 4) if total else None,
        "responses_scored": len(scored),
        "responses_unscored": len(records) - len(scored),
        "skipped_judge_prompt_too_long": sum(1 for r in records if r.get("skipped") == JUDGE_PROMPT_TOO_LONG),
        "skipped_empty_response": sum(1 for r in records if r.get("skipped") == EMPTY_RESPONSE),
        "score_mean": round(sum(scored) / len(scored), 3) if scored else None,
        "score_histogram": {str(k): histogram.get(str(k), 0) for k in range(6)},
        **method_stats,
    }


def _tied_within_prompt(records: list[dict]) -> int:
    by_prompt: dict[str, Counter] = {}
    for r in records:
        if r["score"] is not None:
            by_prompt.setdefault(r["prompt_id"], Counter())[r["score"]] += 1
    return sum(n for counts in by_prompt.values() for n in counts.values() if n > 1)
