import json
import random

import pytest

from srlm.config import PairsConfig
from srlm.errors import DataError
from srlm.io import read_jsonl, write_jsonl
from srlm.stages.pairs import run_pairs, select_pair


def cand(cid, score, text="x"):
    return {"response_id": cid, "score": score, "response": text}


def pick(cands, **cfg):
    result = select_pair(cands, PairsConfig(**cfg), random.Random(0))
    return result if isinstance(result, str) else (result[0]["response_id"], result[1]["response_id"])


def test_highest_vs_lowest():
    assert pick([cand("a", 3.0), cand("b", 4.67), cand("c", 1.33), cand("d", 2.0)]) == ("b", "c")


def test_ties_and_unscored_are_dropped():
    assert pick([cand("a", 4.0), cand("b", 4.0), cand("c", 4.0)]) == "tie"
    assert pick([cand("a", 4.0), cand("b", None), cand("c", None)]) == "fewer_than_2_scored"
    # unscored candidates take no part: they are not treated as 0
    assert pick([cand("a", 2.0), cand("b", None), cand("c", 3.0)]) == ("c", "a")
    assert pick([cand("a", 3.0), cand("b", 3.5)], min_score_gap=1.0) == "gap_below_min"


def test_equal_maxima_are_broken_at_random_but_reproducibly():
    cands = [cand("a", 5.0), cand("b", 5.0), cand("c", 1.0)]
    seen = {select_pair(cands, PairsConfig(), random.Random(s))[0]["response_id"] for s in range(20)}
    assert seen == {"a", "b"}
    assert select_pair(cands, PairsConfig(), random.Random(7)) == select_pair(cands, PairsConfig(), random.Random(7))


def test_length_control_picks_short_good_and_long_bad():
    cands = [cand("long_best", 5.0, "x" * 300), cand("short_good", 4.5, "x" * 50),
             cand("long_bad", 1.5, "x" * 400), cand("short_worst", 1.0, "x" * 20)]
    assert pick(cands) == ("long_best", "short_worst")
    # rho 0.2: top band [4.2, 5], bottom band [1, 1.8]
    assert pick(cands, length_control_rho=0.2) == ("short_good", "long_bad")


def test_run_pairs_writes_trl_format_and_counts_drops(tmp_path):
    responses, judgements = [], []
    scores = {"p1": [4.0, 2.0, 3.0, 1.0], "p2": [3.0, 3.0, 3.0, 3.0], "p3": [None, None, 2.0, None]}
    for pid, vals in scores.items():
        for k, score in enumerate(vals):
            rid = f"{pid}-{k}"
            responses.append({"prompt_id": pid, "response_id": rid, "prompt": f"question {pid}", "response": "a" * (k + 1)})
            judgements.append({"response_id": rid, "score": score})
    write_jsonl(tmp_path / "r.jsonl", responses)
    write_jsonl(tmp_path / "j.jsonl", judgements)
    stats = run_pairs(tmp_path / "r.jsonl", tmp_path / "j.jsonl", tmp_path / "pairs.jsonl", PairsConfig(), seed=0)
    assert stats["pairs"] == 1 and stats["dropped"] == {"fewer_than_2_scored": 1, "tie": 1}
    (pair,) = read_jsonl(tmp_path / "pairs.jsonl")
    assert pair["prompt"] == [{"role": "user", "content": "question p1"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "a"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "aaaa"}]
    assert (pair["chosen_score"], pair["rejected_score"], pair["chosen_len"], pair["rejected_len"]) == (4.0, 1.0, 1, 4)


def test_run_pairs_rejects_missing_judgements(tmp_path):
    write_jsonl(tmp_path / "r.jsonl", [{"prompt_id": "p", "response_id": "r1", "prompt": "q", "response": "a"}])
    (tmp_path / "j.jsonl").write_text(json.dumps({"response_id": "other", "score": 1}) + "\n")
    with pytest.raises(DataError, match="no judgement for 1 response"):
        run_pairs(tmp_path / "r.jsonl", tmp_path / "j.jsonl", tmp_path / "p.jsonl", PairsConfig(), seed=0)
    (tmp_path / "j.jsonl").write_text(json.dumps({"response_id": "r1", "score": "high"}) + "\n")
    with pytest.raises(DataError, match=r"j.jsonl:1: field 'score' must be a number or null"):
        run_pairs(tmp_path / "r.jsonl", tmp_path / "j.jsonl", tmp_path / "p.jsonl", PairsConfig(), seed=0)
    assert not (tmp_path / "p.jsonl").exists()


# -- pair policies -------------------------------------------------------------------------------------------------


def _files(tmp_path, name, scores, text=lambda pid, k: f"answer {k} to {pid}"):
    """A responses file and its judgements: scores = {prompt_id: [score per answer]}."""
    responses, judgements = [], []
    for pid, vals in scores.items():
        for k, score in enumerate(vals):
            rid = f"{pid}-{k}"  # the same ids in every file, as respond makes them from prompt and sample index
            responses.append({"prompt_id": pid, "response_id": rid, "prompt": f"question {pid}", "response": text(pid, k)})
            judgements.append({"response_id": rid, "score": score})
    write_jsonl(tmp_path / f"{name}_r.jsonl", responses)
    write_jsonl(tmp_path / f"{name}_j.jsonl", judgements)
    return tmp_path / f"{name}_r.jsonl", tmp_path / f"{name}_j.jsonl"


def test_anchored_rejects_the_worst_anchor_answer(tmp_path):
    current = _files(tmp_path, "now", {"p1": [3.0, 4.0], "p2": [2.0, 2.5], "p3": [4.0, 4.0], "p4": [None, None]})
    anchor = _files(tmp_path, "m1", {"p1": [1.0, 2.0], "p2": [3.0, 2.5], "p3": [2.0, 2.0], "p4": [1.0, 1.0]},
                    text=lambda pid, k: f"M1's answer {k} to {pid}")
    cfg = PairsConfig(policy="anchored")
    stats = run_pairs(*current, tmp_path / "pairs.jsonl", cfg, seed=0, anchor_responses=anchor[0],
                      anchor_judgements=anchor[1])
    pairs = {p["prompt_id"]: p for p in read_jsonl(tmp_path / "pairs.jsonl")}
    # p1: M_t's best (4.0) against M1's worst (1.0); p2: M_t's best 2.5 does not beat M1's worst 2.5: dropped
    assert pairs["p1"]["chosen"][0]["content"] == "answer 1 to p1"
    assert pairs["p1"]["rejected"][0]["content"] == "M1's answer 0 to p1"
    assert pairs["p1"]["rejected_from"] == "anchor" and pairs["p1"]["rejected_id"] == "anchor/p1-0"
    assert (pairs["p1"]["chosen_score"], pairs["p1"]["rejected_score"]) == (4.0, 1.0)
    assert set(pairs) == {"p1", "p3"}  # p3: 4.0 over M1's 2.0, although M_t's own answers tie
    assert stats["dropped"] == {"anchor_not_worse": 1, "no_scored_response": 1}
    assert stats["policy"] == "anchored" and stats["anchored"] is True
    # without anchor files (iteration 1, where M_t is M1): the paper's pairs
    plain = run_pairs(*current, tmp_path / "plain.jsonl", cfg, seed=0)
    assert plain["anchored"] is False and plain["dropped"] == {"tie": 1, "fewer_than_2_scored": 1}


def test_consistency_weighted_sets_label_smoothing_from_kendall_tau(tmp_path):
    from scipy.stats import kendalltau

    current = _files(tmp_path, "now", {"p1": [1.0, 2.0, 3.0], "p2": [3.0, 1.0, 2.0], "p3": [2.0, 2.0, 2.0]})
    _, previous = _files(tmp_path, "before", {"p1": [1.0, 2.0, 3.0], "p2": [2.0, 1.0, 3.0], "p3": [1.0, 2.0, 3.0]})
    stats = run_pairs(*current, tmp_path / "pairs.jsonl", PairsConfig(policy="consistency_weighted"), seed=0,
                      previous_judgements=previous)
    tau_p2 = kendalltau([3.0, 1.0, 2.0], [2.0, 1.0, 3.0]).statistic  # the two judges disagree on one order of p2
    expected = ((1.0 + 1) / 2 + (tau_p2 + 1) / 2) / 2  # p3 is left out: M_t gave its answers one score
    assert stats["prompts_compared"] == 2 and stats["prompts_undefined"] == 1
    assert stats["consistency_rate"] == pytest.approx(expected, abs=1e-4)
    assert stats["dpo_label_smoothing"] == pytest.approx(1 - expected, abs=1e-4)
    assert stats["pairs"] == 2  # the pairs themselves are best_worst's
    agree = run_pairs(*current, tmp_path / "pairs2.jsonl", PairsConfig(policy="consistency_weighted"), seed=0,
                      previous_judgements=current[1])
    assert agree["consistency_rate"] == 1.0 and agree["dpo_label_smoothing"] == 0.0
    _, opposite = _files(tmp_path, "opposite", {"p1": [3.0, 2.0, 1.0], "p2": [1.0, 3.0, 2.0], "p3": [3.0, 2.0, 1.0]})
    flipped = run_pairs(*current, tmp_path / "pairs4.jsonl", PairsConfig(policy="consistency_weighted"), seed=0,
                        previous_judgements=opposite)
    assert flipped["consistency_rate"] == 0.0 and flipped["dpo_label_smoothing"] == 0.49  # Robust DPO needs < 0.5
    first = run_pairs(*current, tmp_path / "pairs3.jsonl", PairsConfig(policy="consistency_weighted"), seed=0)
    assert first["consistency_rate"] is None and first["dpo_label_smoothing"] == 0.0  # iteration 1: no M_0
