"""Stage `pairs`: one preference pair per prompt, highest vs lowest average judge score (paper section 4.4).

    srlm pairs --responses responses.jsonl --judgements judgements.jsonl --out pairs.jsonl [key=value ...]

Rules, each drop counted by reason:
- responses without a score (every judgement failed to parse, or the judge skipped them: an empty answer, a judge
  prompt over its token limit) take no part, nor does an empty or whitespace-only answer whatever its score;
- a prompt with fewer than 2 scored responses is dropped (`fewer_than_2_scored`);
- a prompt whose best and worst scores are equal is dropped (`tie`), as in the paper;
- optionally, a prompt whose best-worst gap is below `pairs.min_score_gap` is dropped (`gap_below_min`);
- a pair whose chosen and rejected answers are the same text (two samples can be, judged differently) is dropped
  (`identical_texts`): it teaches nothing, and `srlm dpo` refuses it.
Equal maxima (or minima) are broken at random with a seed derived from the prompt id (the paper leaves this open).

Length control (Meta-Rewarding, Wu et al. 2024), with rho in [0, 1]: chosen is the *shortest* response whose score is
in [(1-rho) S_max + rho S_min, S_max], rejected the *longest* in [S_min, (1-rho) S_min + rho S_max]. rho = 0 is the
plain rule above (ties still broken at random).

Policies (`pairs.policy`; off the paper's path, each measured in benchmarks/README.md):
- `best_worst` (the paper): as above.
- `anchored` (Temporal Self-Rewarding, Wang et al. 2025, its "anchored rejection"): the rejected answer is the
  worst of M1's answers to the same prompt (`anchor_responses.jsonl`, judged by M_t), the chosen the best of M_t's;
  a prompt where M_t's best does not beat M1's worst is dropped (`anchor_not_worse`). In iteration 1 M_t is M1,
  and the pairs are best_worst's.
- `consistency_weighted` (CREAM, Wang et al. 2025): best_worst pairs, and M_t-1 judges the same candidates; the
  Kendall tau of the two judges' scores per prompt, as (tau + 1) / 2 averaged, is the consistency C, and DPO trains
  with TRL's label smoothing 1 - C (CREAM's C * DPO(chosen, rejected) + (1 - C) * DPO(rejected, chosen)). In
  iteration 1 there is no M_0: C = 1, plain DPO.

Output: TRL's conversational preference format (`prompt`, `chosen`, `rejected` as message lists), so DPO reads it as
it is, plus ids, scores and lengths (characters) for the report.

Inputs are checked before anything is written: every judgement needs a `score` (a number in [0, 5] or null), so a
responses file given as `--judgements` is named as such instead of giving 0 pairs. `read_pair_file` checks a pair
file whole (message lists, roles, `content`, chosen != rejected) for `srlm dpo`, before any model is loaded.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

from srlm.config import PairsConfig
from srlm.errors import DataError
from srlm.io import iter_jsonl_numbered, stable_id, stable_seed, write_jsonl
from srlm.judge import MAX_SCORE
from srlm.stages.judge import read_responses


def select_pair(candidates: list[dict], cfg: PairsConfig, rng: random.Random) -> tuple[dict, dict] | str:
    """(chosen, rejected) from candidates with `score` and `response`, or the reason for dropping the prompt."""
    scored = [c for c in candidates if c["score"] is not None]
    if len(scored) < 2:
        return "fewer_than_2_scored"
    high = max(c["score"] for c in scored)
    low = min(c["score"] for c in scored)
    if high == low:
        return "tie"
    if high - low < cfg.min_score_gap:
        return "gap_below_min"
    rho = cfg.length_control_rho
    top_band = [c for c in scored if c["score"] >= (1 - rho) * high + rho * low]
    bottom_band = [c for c in scored if c["score"] <= (1 - rho) * low + rho * high]
    if rho > 0:
        shortest = min(len(c["response"]) for c in top_band)
        longest = max(len(c["response"]) for c in bottom_band)
        top_band = [c for c in top_band if len(c["response"]) == shortest]
        bottom_band = [c for c in bottom_band if len(c["response"]) == longest]
    else:
        top_band = [c for c in top_band if c["score"] == high]
        bottom_band = [c for c in bottom_band if c["score"] == low]
    chosen = rng.choice(top_band)
    rejected = rng.choice([c for c in bottom_band if c is not chosen] or bottom_band)
    if chosen["score"] <= rejected["score"]:
        # With rho near 1 the two bands overlap; a pair must still prefer the higher score.
        return "tie"
    return chosen, rejected


def read_scores(judgements_path: Path) -> dict[str, float | None]:
    """response_id -> score from a judgements file: each record needs `response_id` and `score` (a number in
    [0, 5], or null when the judge gave none); a response judged twice is an error."""
    score_of: dict[str, float | None] = {}
    line_of: dict[str, int] = {}
    for line, j in iter_jsonl_numbered(judgements_path, {"response_id": str}):
        where = f"{judgements_path}:{line}"
        if "score" not in j:
            hint = (" (this looks like a responses file: pass the output of `srlm judge` as --judgements)"
                    if "response" in j else " (expected the output of `srlm judge`)")
            raise DataError(f"{where}: missing field 'score'{hint}")
        score = j["score"]
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise DataError(f"{where}: field 'score' must be a number or null, got {type(score).__name__}")
        if score is not None and not 0 <= score <= MAX_SCORE:
            raise DataError(f"{where}: field 'score' is {score}, outside the judge's range 0 to {MAX_SCORE:g}")
        rid = j["response_id"]
        if rid in score_of:
            raise DataError(f"{where}: response '{rid}' is judged twice (also at line {line_of[rid]})")
        score_of[rid], line_of[rid] = score, line
    if not score_of:
        raise DataError(f"{judgements_path}: no records")
    return score_of


def select_anchored_pair(candidates: list[dict], anchors: list[dict], cfg: PairsConfig,
                         rng: random.Random) -> tuple[dict, dict] | str:
    """Temporal Self-Rewarding's anchored rejection: chosen is the best-scored of M_t's candidates, rejected the
    worst-scored of the anchor model's (M1's) answers to the same prompt, both scored by M_t's judge; or the reason
    for dropping the prompt. Keeps the rejected side as bad as M1's answers, so the pairs' gap does not shrink as
    M_t's own answers grow alike."""
    scored = [c for c in candidates if c["score"] is not None]
    anchored = [a for a in anchors if a["score"] is not None]
    if not scored:
        return "no_scored_response"
    if not anchored:
        return "no_scored_anchor"
    high, low = max(c["score"] for c in scored), min(a["score"] for a in anchored)
    if high <= low:
        return "anchor_not_worse"
    if high - low < cfg.min_score_gap:
        return "gap_below_min"
    chosen = rng.choice([c for c in scored if c["score"] == high])
    return chosen, rng.choice([a for a in anchored if a["score"] == low])


def consistency_rate(by_prompt: dict[str, list[dict]], previous: dict[str, float | None]) -> dict:
    """CREAM's consistency of two judges (M_t now, M_t-1 before) over the same candidates: for each prompt the
    Kendall tau (tau-b, scipy) between the two judges' scores of its answers, mapped to [0, 1] as (tau + 1) / 2 and
    averaged over the prompts where it is defined (two or more answers scored by both, neither judge giving them all
    one score). 1 = the two judges rank every prompt's answers alike."""
    from scipy.stats import kendalltau

    rates, undefined = [], 0
    for candidates in by_prompt.values():
        both = [(c["score"], previous.get(c["response_id"])) for c in candidates]
        both = [(now, before) for now, before in both if now is not None and before is not None]
        tau = kendalltau(*zip(*both)).statistic if len(both) >= 2 else float("nan")
        if tau != tau:  # NaN: fewer than two answers, or a judge gave them all one score
            undefined += 1
            continue
        rates.append((tau + 1) / 2)
    rate = sum(rates) / len(rates) if rates else None
    return {"consistency_rate": None if rate is None else round(rate, 4), "prompts_compared": len(rates),
            "prompts_undefined": undefined}


def scored_candidates(responses_path: Path, judgements_path: Path) -> tuple[dict[str, list[dict]], int]:
    """(prompt_id -> its responses, each with its `score`; the number of empty responses, whose score is None)."""
    responses = read_responses(responses_path)
    score_of = read_scores(judgements_path)
    missing = [r["response_id"] for r in responses if r["response_id"] not in score_of]
    if missing:
        raise DataError(
            f"{judgements_path}: no judgement for {len(missing)} response(s) of {responses_path}, e.g. {missing[0]}"
        )
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    empty = 0
    for r in responses:
        score = score_of[r["response_id"]]
        if not r["response"].strip():
            empty += 1
            score = None  # an empty answer is never a pair's chosen or rejected text
        by_prompt[r["prompt_id"]].append({**r, "score": score})
    return by_prompt, empty


def run_pairs(responses_path: Path, judgements_path: Path, out_path: Path, cfg: PairsConfig, *, seed: int,
              anchor_responses: Path | None = None, anchor_judgements: Path | None = None,
              previous_judgements: Path | None = None) -> dict:
    """Pairs by `cfg.policy`. `anchored` needs the anchor model's responses and M_t's judgements of them (without
    them, in iteration 1 where M_t is the anchor, the pairs are best_worst's); `consistency_weighted` takes the
    previous model's judgements of the same responses (without them: consistency 1, plain DPO)."""
    by_prompt, empty = scored_candidates(responses_path, judgements_path)
    anchors = None
    if cfg.policy == "anchored" and anchor_responses is not None:
        anchors, _ = scored_candidates(anchor_responses, anchor_judgements)
        # The anchor's answers were sampled with the same seeds and prompt ids, so their ids repeat M_t's.
        anchors = {pid: [{**a, "response_id": f"anchor/{a['response_id']}"} for a in answers]
                   for pid, answers in anchors.items()}
    pairs, drops = [], Counter()
    for prompt_id, candidates in by_prompt.items():
        rng = random.Random(stable_seed(seed, "pairs", prompt_id))
        picked = (select_pair(candidates, cfg, rng) if anchors is None
                  else select_anchored_pair(candidates, anchors.get(prompt_id, []), cfg, rng))
        if isinstance(picked, str):
            drops[picked] += 1
            continue
        chosen, rejected = picked
        if chosen["response"] == rejected["response"]:
            drops["identical_texts"] += 1
            continue
        pairs.append(
            {
                "pair_id": stable_id("pair", chosen["response_id"], rejected["response_id"]),
                "prompt_id": prompt_id,
                "prompt": [{"role": "user", "content": chosen["prompt"]}],
                "chosen": [{"role": "assistant", "content": chosen["response"]}],
                "rejected": [{"role": "assistant", "content": rejected["response"]}],
                "chosen_id": chosen["response_id"],
                "rejected_id": rejected["response_id"],
                "chosen_score": chosen["score"],
                "rejected_score": rejected["score"],
                "chosen_len": len(chosen["response"]),
                "rejected_len": len(rejected["response"]),
                **({"rejected_from": "anchor"} if anchors is not None else {}),
            }
        )
    write_jsonl(out_path, pairs)
    def mean(values: list[float], digits: int) -> float | None:
        return round(sum(values) / len(values), digits) if values else None

    policy = {"policy": cfg.policy}
    if cfg.policy == "anchored":
        policy["anchored"] = anchors is not None  # False in iteration 1: M1 is its own anchor
    if cfg.policy == "consistency_weighted":
        consistency = (consistency_rate(by_prompt, read_scores(previous_judgements)) if previous_judgements
                       else {"consistency_rate": None, "prompts_compared": 0, "prompts_undefined": 0})
        rate = consistency["consistency_rate"]
        # CREAM's loss C * DPO(chosen, rejected) + (1 - C) * DPO(rejected, chosen) is TRL's label smoothing 1 - C.
        # Robust DPO's label smoothing must stay below 0.5 (a flip more likely than not is another preference).
        policy.update(consistency, dpo_label_smoothing=0.0 if rate is None else round(min(1 - rate, 0.49), 4))
    return {
        **policy,
        "prompts": len(by_prompt),
        "empty_responses": empty,
        "pairs": len(pairs),
        "dropped": dict(sorted(drops.items())),
        "chosen_len_mean": mean([p["chosen_len"] for p in pairs], 1),
        "rejected_len_mean": mean([p["rejected_len"] for p in pairs], 1),
        "chosen_score_mean": mean([p["chosen_score"] for p in pairs], 3),
        "rejected_score_mean": mean([p["rejected_score"] for p in pairs], 3),
    }


# -- pair files for DPO ------------------------------------------------------------------------------------------

PAIR_FIELDS = ("prompt", "chosen", "rejected")
_PROMPT_ROLES = ("system", "user", "assistant")


def _check_messages(where: str, field: str, messages, roles: tuple[str, ...]) -> None:
    if not isinstance(messages, list):
        raise DataError(f"{where}: field '{field}' must be a list of messages, got {type(messages).__name__}")
    if not messages:
        raise DataError(f"{where}: field '{field}' is an empty list; it needs at least one message")
    for i, message in enumerate(messages):
        at = f"{where}: field '{field}' message {i + 1}"
        if not isinstance(message, dict):
            raise DataError(f"{at} must be an object with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise DataError(f"{at} has no '{key}'")
            if not isinstance(message[key], str):
                raise DataError(f"{at}: '{key}' must be a string, got {type(message[key]).__name__}")
        if message["role"] not in roles:
            if field == "prompt":
                expected = "one of " + ", ".join(roles)
            else:
                expected = "'assistant' (chosen and rejected hold the answer only; the question belongs in 'prompt')"
            raise DataError(f"{at} has role '{message['role']}', expected {expected}")


def read_pair_file(path: Path) -> list[dict]:
    """The `{prompt, chosen, rejected}` of every pair of a DPO pair file, checked whole before any model is loaded.

    TRL's conversational format: each field a non-empty list of `{role, content}` messages with string content;
    chosen and rejected hold assistant messages only, and must differ (a pair of one answer against itself has a
    zero DPO gradient and says the data is wrong). An empty file is refused: a DPO step on nothing would silently
    copy M_t forward as M_t+1. Every problem names the file, line and field.
    """
    pairs = []
    for line, record in iter_jsonl_numbered(path):
        where = f"{path}:{line}"
        for field in PAIR_FIELDS:
            if field not in record:
                raise DataError(f"{where}: missing field '{field}'")
            if not isinstance(record[field], list):
                raise DataError(f"{where}: field '{field}' must be a list of messages, got "
                                f"{type(record[field]).__name__}")
        for field in PAIR_FIELDS:
            _check_messages(where, field, record[field], _PROMPT_ROLES if field == "prompt" else ("assistant",))
        if record["chosen"] == record["rejected"]:
            raise DataError(f"{where}: fields 'chosen' and 'rejected' are the same answer; a pair needs two "
                            "different answers")
        pairs.append({field: record[field] for field in PAIR_FIELDS})
    if not pairs:
        raise DataError(f"{path}: zero preference pairs; refusing to train on nothing (M_t+1 would equal M_t)")
    return pairs
