"""Stage `metajudge`: the model judges its own judgements, and the better and worse judgement of a response become
a preference pair for the judge (Meta-Rewarding, Wu et al. 2024; not in the paper).

    srlm metajudge --responses responses.jsonl --judgements judgements.jsonl --out judge_pairs.jsonl [key=value ...]

For each prompt, the meta-judge looks at one response, as in the paper: the one whose judgements disagree most (the
highest variance of their scores; a prompt where every response's judgements agree, or none has two parsed ones,
gives no judge pair and is counted). Of that response's parsed judgements (at most `meta.max_judgements`, the first
ones), every ordered pair is shown to the meta-judge (`templates/meta_judge.txt`: the judging task as the judge saw it, then
judgement (a) and judgement (b); our own wording of the paper's prompt), so each pair is seen in both orders. The
verdict is read as `Winner: A / B / tie` (`srlm.evaluation.winrate.parse_verdict`). With `meta.method=direct` (not in
the paper) nothing is written: the verdict is whichever of "A" and "B" has the higher next-token probability after
"Winner: " (`templates/meta_judge_direct.txt` asks for the verdict alone), and both probabilities are recorded; a
135M model that never writes the verdict line (0% parsed at the quickstart's size) still decides every comparison.
Its judgements are then ranked by the probability of winning averaged over both orders (`balanced_preferences`),
not by weighted argmax wins: the 135M model's p(A) was about 0.8 whichever judgement came first, so every argmax
verdict followed the position and weighting left no judgement ahead.

Position bias, weighted out as the paper does: over all the stage's verdicts, let w1 and w2 be the wins taken in
the first and the second position; a win in the first position counts w2 / (w1 + w2) and one in the second
w1 / (w1 + w2), so a meta-judge that favours a position gains nothing from it. A judgement's score is its weighted
wins (the paper ranks by Elo over the same battle matrix; with four judgements or fewer per response the two orders
agree almost always, and wins need no fitting). The judgement with the highest score is chosen, the lowest rejected;
a response whose top and bottom scores are equal gives no pair (`tie`), nor do two judgements of the same text.

Output: TRL's conversational preference format, as the actor's pairs: `prompt` is the judge prompt, `chosen` and
`rejected` the two judgements; plus the response id, both judgements' scores, and `kind: judge`. Each verdict is
kept in `<out>.verdicts.jsonl` (resumable), and the stats give the meta-judge's parse rate and position-bias rate
(the share of pairs seen in both orders where the same position won both times).
"""

from __future__ import annotations

from collections import Counter
from itertools import permutations
from pathlib import Path

from srlm.backends.base import GenerationRequest, Sampling
from srlm.config import JudgeConfig, MetaConfig
from srlm.errors import DataError
from srlm.evaluation.winrate import parse_verdict
from srlm.io import ResumableJsonlWriter, iter_jsonl, iter_jsonl_numbered, stable_id, stable_seed, write_jsonl
from srlm.judge import check_meta_method, fill_slots, load_template, read_template_file, render, shipped_template
from srlm.progress import chunks, progress
from srlm.stages.judge import read_responses

META_SLOTS = ("{judge_prompt}", "{judgement_a}", "{judgement_b}")
VERDICT_PREFIX = "Winner: "  # meta.method=direct: the verdict token is read right after this
VERDICT_TOKENS = ("A", "B")


def load_meta_template(template_file: str | None = None, method: str = "generate") -> str:
    if template_file is None:
        return shipped_template("meta_judge_direct.txt" if method == "direct" else "meta_judge.txt")
    return read_template_file(template_file, META_SLOTS, "meta-judge template")


def render_meta(template: str, judge_prompt: str, judgement_a: str, judgement_b: str) -> str:
    """The slots filled in one pass, so that a slot name inside a judgement stays text."""
    return fill_slots(template, {"judge_prompt": judge_prompt, "judgement_a": judgement_a, "judgement_b": judgement_b})


def read_judgements(path: Path) -> dict[str, list[dict]]:
    """response_id -> its parsed judgements [{text, score}] from a judgements file (`srlm judge`'s output)."""
    out = {}
    for line, record in iter_jsonl_numbered(path, {"response_id": str}):
        judgements = record.get("judgements")
        if not isinstance(judgements, list):
            raise DataError(f"{path}:{line}: field 'judgements' must be a list (the output of `srlm judge`)")
        out[record["response_id"]] = [j for j in judgements if isinstance(j, dict) and j.get("score") is not None
                                      and isinstance(j.get("text"), str) and j["text"].strip()]
    if not out:
        raise DataError(f"{path}: no records")
    return out


def pick_responses(responses: list[dict], judged: dict[str, list[dict]], cfg: MetaConfig) -> tuple[list[dict], Counter]:
    """Meta-Rewarding's choice of what to meta-judge: per prompt, the response whose judgements' scores vary most
    (the first on ties); prompts with no response of two parsed judgements, or where they all agree, are counted."""
    from statistics import pvariance

    by_prompt: dict[str, list[dict]] = {}
    for r in responses:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    picked, drops = [], Counter()
    for candidates in by_prompt.values():
        spread = [(pvariance([j["score"] for j in judged.get(r["response_id"], [])[: cfg.max_judgements]]), r)
                  for r in candidates if len(judged.get(r["response_id"], [])) >= 2]
        if not spread:
            drops["fewer_than_2_judgements"] += 1
            continue
        variance, best = max(spread, key=lambda vr: vr[0])  # max keeps the first of equal variances
        if variance == 0:
            drops["judgements_agree"] += 1
            continue
        picked.append(best)
    return picked, drops


def battles(responses: list[dict], judged: dict[str, list[dict]], cfg: MetaConfig, judge_template: str,
            meta_template: str, seed: int) -> list[dict]:
    """One record per ordered pair of a response's judgements: ids, positions, and the meta-judge request text.
    The id names both judgements' texts and the meta-judge's settings, so a resumed run never reuses a verdict
    about other judgements."""
    out = []
    for r in responses:
        judgements = judged.get(r["response_id"], [])[: cfg.max_judgements]
        if len(judgements) < 2:
            continue
        judge_prompt = render(judge_template, r["prompt"], r["response"])
        for a, b in permutations(range(len(judgements)), 2):
            battle_id = stable_id("meta", r["response_id"], a, b, judgements[a]["text"], judgements[b]["text"],
                                  meta_template, cfg.temperature, cfg.max_new_tokens)
            out.append({"battle_id": battle_id, "response_id": r["response_id"], "a": a, "b": b,
                        "judge_prompt": judge_prompt,
                        "text": render_meta(meta_template, judge_prompt, judgements[a]["text"], judgements[b]["text"]),
                        "seed": stable_seed(seed, "meta", battle_id)})
    return out


def direct_verdicts(backend, requests: list[GenerationRequest]) -> list[dict]:
    """meta.method=direct: the likelier of "A" and "B" right after VERDICT_PREFIX, one teacher-forced pass each;
    None where the backend could not read the two tokens' probabilities (counted as unparsed)."""
    out = []
    for result in backend.score_token_probs([(r, VERDICT_PREFIX) for r in requests], list(VERDICT_TOKENS)):
        if result is None:
            out.append({"text": VERDICT_PREFIX.strip(), "verdict": None, "verdict_probs": None})
            continue
        p_a, p_b = result.probs
        verdict = "A" if p_a > p_b else "B" if p_b > p_a else "tie"
        out.append({"text": f"{VERDICT_PREFIX}{verdict}", "verdict": verdict,
                    "verdict_probs": [round(p_a, 6), round(p_b, 6)], "verdict_token_mass": round(result.mass, 6)})
    return out


def position_weights(verdicts: list[dict]) -> tuple[float, float, dict]:
    """(weight of a first-position win, of a second-position win, the counts behind them)."""
    first = sum(1 for v in verdicts if v["verdict"] == "A")
    second = sum(1 for v in verdicts if v["verdict"] == "B")
    if first + second == 0:
        return 0.5, 0.5, {"first_position_wins": 0, "second_position_wins": 0}
    return second / (first + second), first / (first + second), {"first_position_wins": first,
                                                                 "second_position_wins": second}


def position_bias_rate(verdicts: list[dict]) -> float | None:
    """Of the judgement pairs seen in both orders with both verdicts decisive, the share where one position won
    both times (the verdict followed the position, not the judgement)."""
    by_order = {(v["response_id"], v["a"], v["b"]): v["verdict"] for v in verdicts}
    both, same_position = 0, 0
    for (rid, a, b), verdict in by_order.items():
        if a < b and verdict in ("A", "B") and by_order.get((rid, b, a)) in ("A", "B"):
            both += 1
            same_position += verdict == by_order[(rid, b, a)]
    return round(same_position / both, 4) if both else None


def weighted_wins(verdicts: list[dict], count: int, w_first: float, w_second: float) -> list[float]:
    """meta.method=generate: each judgement's wins, a first-position win weighted w_first, a second w_second."""
    wins = [0.0] * count
    for v in verdicts:
        if v["verdict"] == "A":
            wins[v["a"]] += w_first
        elif v["verdict"] == "B":
            wins[v["b"]] += w_second
    return wins


def balanced_preferences(verdicts: list[dict]) -> dict[tuple[str, int, int], float]:
    """meta.method=direct: for each judgement pair (a, b) seen in both orders, the probability that a wins averaged
    over the two orders, p(A | a shown first) and p(B | a shown second), each renormalised over {A, B}. A lean
    towards one position adds the same to both orders' first-position probability and cancels out, which the
    argmax verdicts cannot do (at 135M they followed the position every time)."""
    first = {(v["response_id"], v["a"], v["b"]): v["verdict_probs"][0] / sum(v["verdict_probs"])
             for v in verdicts if v.get("verdict_probs")}
    return {(rid, a, b): (p + 1 - first[(rid, b, a)]) / 2 for (rid, a, b), p in first.items()
            if a < b and (rid, b, a) in first}


def balanced_wins(preferences: dict, response_id: str, count: int) -> list[float]:
    wins = [0.0] * count
    for (rid, a, b), p in preferences.items():
        if rid == response_id:
            wins[a] += p
            wins[b] += 1 - p
    return wins


def judge_pairs(responses: list[dict], judged: dict[str, list[dict]], verdicts: list[dict], cfg: MetaConfig,
                w_first: float, w_second: float, preferences: dict,
                judge_prompt_of: dict[str, str]) -> tuple[list[dict], Counter]:
    """The chosen and rejected judgement of each response, by weighted wins (meta.method=generate) or by the
    position-balanced probabilities of winning, `preferences` (direct); drops counted by reason."""
    by_response: dict[str, list[dict]] = {}
    for v in verdicts:
        by_response.setdefault(v["response_id"], []).append(v)
    pairs, drops = [], Counter()
    for r in responses:
        judgements = judged.get(r["response_id"], [])[: cfg.max_judgements]  # two or more: pick_responses
        wins = (balanced_wins(preferences, r["response_id"], len(judgements)) if cfg.method == "direct"
                else weighted_wins(by_response.get(r["response_id"], []), len(judgements), w_first, w_second))
        best, worst = max(range(len(wins)), key=lambda i: (wins[i], -i)), min(range(len(wins)), key=lambda i: (wins[i], i))
        if wins[best] == wins[worst]:
            drops["tie"] += 1
            continue
        chosen, rejected = judgements[best], judgements[worst]
        if chosen["text"] == rejected["text"]:
            drops["identical_texts"] += 1
            continue
        pairs.append({
            "pair_id": stable_id("judge_pair", r["response_id"], best, worst), "kind": "judge",
            "response_id": r["response_id"], "prompt_id": r["prompt_id"],
            "prompt": [{"role": "user", "content": judge_prompt_of[r["response_id"]]}],
            "chosen": [{"role": "assistant", "content": chosen["text"]}],
            "rejected": [{"role": "assistant", "content": rejected["text"]}],
            "chosen_score": chosen["score"], "rejected_score": rejected["score"],
            "chosen_wins": round(wins[best], 4), "rejected_wins": round(wins[worst], 4),
        })
    return pairs, drops


def run_metajudge(responses_path: Path, judgements_path: Path, out_path: Path, backend, cfg: MetaConfig,
                  judge_cfg: JudgeConfig, *, seed: int, chunk_size: int = 64) -> dict:
    responses = [r for r in read_responses(responses_path) if r["response"].strip()]
    judged = read_judgements(judgements_path)
    prompts = len({r["prompt_id"] for r in responses})
    responses, skipped = pick_responses(responses, judged, cfg)
    sampling = Sampling(n=1, temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens)
    check_meta_method(cfg.method, backend)
    todo_all = battles(responses, judged, cfg, load_template(judge_cfg.template_file, judge_cfg.method),
                       load_meta_template(cfg.template_file, cfg.method), seed)
    requests = {b["battle_id"]: GenerationRequest(b["battle_id"], sampling, b["seed"],
                                                  messages=[{"role": "user", "content": b["text"]}]) for b in todo_all}
    too_long = {bid for bid, req in requests.items() if backend.count_prompt_tokens(req) > cfg.max_prompt_tokens}
    writer = ResumableJsonlWriter(Path(f"{out_path}.verdicts.jsonl"), id_field="battle_id")
    todo = [b for b in todo_all if b["battle_id"] not in writer.done_ids and b["battle_id"] not in too_long]
    with progress(len(todo_all) - len(too_long), "metajudge", initial=len(todo_all) - len(too_long) - len(todo),
                  unit="comparison") as bar:
        for chunk in chunks(todo, chunk_size):
            chunk_requests = [requests[b["battle_id"]] for b in chunk]
            if cfg.method == "direct":
                verdicts = direct_verdicts(backend, chunk_requests)
                bar.update(len(chunk))
            else:
                verdicts = [{"text": outs[0].text, "verdict": parse_verdict(outs[0].text)}
                            for outs in backend.generate(chunk_requests, on_done=bar.update)]
            writer.append({"battle_id": b["battle_id"], "response_id": b["response_id"], "a": b["a"], "b": b["b"],
                           **verdict} for b, verdict in zip(chunk, verdicts))
    verdicts = writer.finish(order_key=lambda v: v["battle_id"])
    w_first, w_second, position_counts = position_weights(verdicts)
    judge_prompt_of = {b["response_id"]: b["judge_prompt"] for b in todo_all}
    preferences = balanced_preferences(verdicts) if cfg.method == "direct" else {}
    pairs, drops = judge_pairs(responses, judged, verdicts, cfg, w_first, w_second, preferences, judge_prompt_of)
    drops.update(skipped)
    write_jsonl(out_path, pairs)
    parsed = sum(1 for v in verdicts if v["verdict"] is not None)
    return {
        "prompts": prompts,
        "responses_compared": len({b["response_id"] for b in todo_all}),
        "comparisons": len(verdicts),
        "skipped_too_long": len(too_long),
        "meta_parse_rate": round(parsed / len(verdicts), 4) if verdicts else None,
        "meta_tie_rate": round(sum(1 for v in verdicts if v["verdict"] == "tie") / len(verdicts), 4) if verdicts else None,
        "position_bias_rate": position_bias_rate(verdicts),
        **position_counts,
        "judge_pairs": len(pairs),
        # direct: how far the position-balanced preferences are from a coin (0 = none, 0.5 = certain)
        "meta_preference_margin_mean": (round(sum(abs(p - 0.5) for p in preferences.values()) / len(preferences), 4)
                                        if preferences else None),
        "dropped": dict(sorted(drops.items())),
        "pairs_with_equal_scores": sum(1 for p in pairs if p["chosen_score"] == p["rejected_score"]),
    }


def mix_pairs(actor_pairs: Path, judge_pairs_path: Path, out_path: Path, share: float, seed: int) -> dict:
    """The DPO pairs of an iteration with meta-judging: every actor pair, and judge pairs up to `share` of the
    whole (a seeded sample when there are more)."""
    import random

    actor = [r for _, r in iter_jsonl_numbered(actor_pairs)]
    judge = list(iter_jsonl(judge_pairs_path))  # may be empty: a meta-judge that never decided gives no judge pair
    most = int(share / (1 - share) * len(actor)) if share > 0 else 0
    if len(judge) > most:
        judge = sorted(random.Random(seed).sample(judge, most), key=lambda p: p["pair_id"])
    write_jsonl(out_path, actor + judge)
    return {"actor_pairs": len(actor), "judge_pairs_trained": len(judge)}
