"""Stage `pairs`: one preference pair per prompt, highest vs lowest average judge score (paper section 4.4).

    srlm pairs --responses responses.jsonl --judgements judgements.jsonl --out pairs.jsonl [key=value ...]

Rules, each drop counted by reason:
- responses without a score (every judgement failed to parse) take no part;
- a prompt with fewer than 2 scored responses is dropped (`fewer_than_2_scored`);
- a prompt whose best and worst scores are equal is dropped (`tie`), as in the paper;
- optionally, a prompt whose best-worst gap is below `pairs.min_score_gap` is dropped (`gap_below_min`).
Equal maxima (or minima) are broken at random with a seed derived from the prompt id (the paper leaves this open).

Length control (Meta-Rewarding, Wu et al. 2024), with rho in [0, 1]: chosen is the *shortest* response whose score is
in [(1-rho) S_max + rho S_min, S_max], rejected the *longest* in [S_min, (1-rho) S_min + rho S_max]. rho = 0 is the
plain rule above (ties still broken at random).

Output: TRL's conversational preference format (`prompt`, `chosen`, `rejected` as message lists), so DPO reads it as
it is, plus ids, scores and lengths (characters) for the report.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

from srlm.config import PairsConfig
from srlm.errors import DataError
from srlm.io import read_jsonl, stable_id, stable_seed, write_jsonl
from srlm.stages.judge import RESPONSE_SCHEMA


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


def run_pairs(responses_path: Path, judgements_path: Path, out_path: Path, cfg: PairsConfig, *, seed: int) -> dict:
    responses = read_jsonl(responses_path, RESPONSE_SCHEMA)
    judgements = read_jsonl(judgements_path, {"response_id": str})
    score_of = {}
    for line, j in enumerate(judgements, start=1):
        score = j.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise DataError(f"{judgements_path}:{line}: field 'score' must be a number or null")
        score_of[j["response_id"]] = score
    missing = [r["response_id"] for r in responses if r["response_id"] not in score_of]
    if missing:
        raise DataError(
            f"{judgements_path}: no judgement for {len(missing)} response(s) of {responses_path}, e.g. {missing[0]}"
        )
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in responses:
        by_prompt[r["prompt_id"]].append({**r, "score": score_of[r["response_id"]]})

    pairs, drops = [], Counter()
    for prompt_id, candidates in by_prompt.items():
        picked = select_pair(candidates, cfg, random.Random(stable_seed(seed, "pairs", prompt_id)))
        if isinstance(picked, str):
            drops[picked] += 1
            continue
        chosen, rejected = picked
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
            }
        )
    write_jsonl(out_path, pairs)
    def mean(values: list[float], digits: int) -> float | None:
        return round(sum(values) / len(values), digits) if values else None

    return {
        "prompts": len(by_prompt),
        "pairs": len(pairs),
        "dropped": dict(sorted(drops.items())),
        "chosen_len_mean": mean([p["chosen_len"] for p in pairs], 1),
        "rejected_len_mean": mean([p["rejected_len"] for p in pairs], 1),
        "chosen_score_mean": mean([p["chosen_score"] for p in pairs], 3),
        "rejected_score_mean": mean([p["rejected_score"] for p in pairs], 3),
    }
