"""`srlm eval judge`: judge scores vs human ranks, with a scripted judge whose metrics can be worked out by hand."""

import json
import re

import pytest

from srlm.backends import make_backend
from srlm.cli import main
from srlm.config import JudgeConfig
from srlm.errors import DataError
from srlm.evaluation.human_data import RankedGroup, read_oasst_trees
from srlm.evaluation.judge_eval import (
    conversation_as_prompt,
    detect_human_data_format,
    evaluate_judge,
    items_path_for,
    read_human_groups,
)

# The reply text carries the score the scripted judge will give it: "[s=4] ..." -> "Score: 4".
_RESPONSE = re.compile(r"<response>(.*)</response>", re.DOTALL)


def reply_score_script(request, index):
    """Sample 0 and 1 give the score written in the reply; sample 2 fails to parse (so means ignore it)."""
    response = _RESPONSE.search(request.messages[-1]["content"]).group(1)
    match = re.search(r"\[s=(\d)\]", response)
    if index == 2 or match is None:
        return "I cannot decide."
    return f"Looks fine.\nScore: {match.group(1)}"


def group(gid, context, replies):
    return RankedGroup(
        group_id=gid, context=context,
        replies=[{"text": text, "rank": rank, "reply_id": f"{gid}-r{i}"} for i, (text, rank) in enumerate(replies)],
    )


def user(text):
    return [{"role": "user", "content": text}]


GROUPS = [
    # Scores 5 > 3 > 1 follow the human order: 3 of 3 pairs right, an exact match, a 5 that is the human best.
    group("g1", user("Q1"), [("[s=5] best", 0), ("[s=3] middle", 1), ("[s=1] worst", 2)]),
    # Scores 2 < 4 against the human order: 0 of 1 pair right.
    group("g2", user("Q2"), [("[s=2] human best", 0), ("[s=4] human worst", 1)]),
    # Equal scores on a human-ordered pair: half credit.
    group("g3", user("Q3"), [("[s=3] a", 0), ("[s=3] b", 1)]),
]


def test_metrics_by_hand():
    cfg = JudgeConfig(num_samples=3)
    metrics, items = evaluate_judge(GROUPS, make_backend("fake", None, script=reply_score_script), cfg, seed=0,
                                    bootstrap_samples=50)
    assert metrics["n"] == 3 and metrics["n_replies"] == 7
    assert metrics["n_pairs"] == 5
    assert metrics["pairwise_accuracy"] == pytest.approx((3 + 0 + 0.5) / 5)
    assert metrics["pairs_judge_tied"] == 1
    assert metrics["five_best"] == 1.0 and metrics["n_five"] == 1
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["parse_failure_rate"] == 0.0  # every reply had a parsable sample
    assert metrics["sample_parse_rate"] == pytest.approx(2 / 3)  # sample 2 of 3 never parses
    assert metrics["judgements"] == 21
    assert "half credit" in metrics["tie_policy"] and metrics["score_policy"]
    assert metrics["judge"]["num_samples"] == 3
    # Length split: g1's best is its shortest reply; g2's human best is shorter; g3's replies have equal lengths.
    split = metrics["length_split"]
    assert split["n_longer"] == 1 and split["preferred_longer_accuracy"] == 1.0
    assert split["n_shorter"] == 3 and split["preferred_shorter_accuracy"] == pytest.approx(2 / 3)
    assert split["length_balanced_accuracy"] == pytest.approx(5 / 6)

    assert [it["reply_id"] for it in items] == ["g1-r0", "g1-r1", "g1-r2", "g2-r0", "g2-r1", "g3-r0", "g3-r1"]
    first = items[0]
    assert first["group_id"] == "g1" and first["rank"] == 0
    assert len(first["judgements"]) == 3 and first["scores"] == [5.0, 5.0, None] and first["score"] == 5.0


def test_unparsable_reply_is_missing_not_zero():
    groups = [group("g", user("Q"), [("[s=4] scored", 0), ("no marker", 1)])]
    metrics, items = evaluate_judge(groups, make_backend("fake", None, script=reply_score_script),
                                    JudgeConfig(num_samples=2), seed=0, bootstrap_samples=0)
    assert items[1]["score"] is None and items[1]["scores"] == [None, None]
    assert metrics["pairwise_accuracy"] is None and metrics["pairs_missing_score"] == 1
    assert metrics["parse_failure_rate"] == 0.5


def test_too_long_judge_prompt_is_skipped_and_counted():
    metrics, items = evaluate_judge(GROUPS[:1], make_backend("fake"), JudgeConfig(max_prompt_tokens=8), seed=0,
                                    bootstrap_samples=0)
    assert metrics["replies_skipped_prompt_too_long"] == 3
    assert all(it["skipped"] == "judge_prompt_too_long" and it["score"] is None for it in items)
    assert metrics["judgements"] == 0 and metrics["sample_parse_rate"] is None


def test_same_seed_same_judgements_and_prompt_is_the_configured_template(tmp_path):
    seen = []

    def script(request, index):
        seen.append(request)
        return f"Score: {request.seed % 6}"

    template = tmp_path / "judge.txt"
    template.write_text("MY RUBRIC\nQ: {prompt}\nA: {response}\nScore: <total points>")
    cfg = JudgeConfig(num_samples=1, template_file=str(template))
    first = evaluate_judge(GROUPS, make_backend("fake", None, script=script), cfg, seed=7, bootstrap_samples=0)
    second = evaluate_judge(GROUPS, make_backend("fake", None, script=script), cfg, seed=7, bootstrap_samples=0)
    assert first[1] == second[1]
    assert seen[0].messages[0]["content"] == "MY RUBRIC\nQ: Q1\nA: [s=5] best\nScore: <total points>"
    assert len({r.seed for r in seen[:7]}) == 7  # every reply gets its own seed
    assert first[0]["judge"]["template_file"] == str(template)


def test_conversation_as_prompt():
    assert conversation_as_prompt(user("Hi")) == "Hi"
    context = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
               {"role": "user", "content": "Q2"}]
    assert conversation_as_prompt(context) == "Q1\n\nAssistant: A1\n\nUser: Q2"


def _write_pairs(path, n=3):
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"prompt": f"Question {i}?", "chosen": f"Good answer {i}.",
                                     "rejected": f"Bad {i}."}) + "\n")


def test_detect_format(tmp_path, shared_data):
    pairs = tmp_path / "pairs.jsonl"
    _write_pairs(pairs)
    assert detect_human_data_format(pairs) == "pairs"
    assert detect_human_data_format(shared_data / "oasst" / "en_100_tree.jsonl") == "oasst"
    assert detect_human_data_format(shared_data / "hh_rlhf" / "helpful-base-test.jsonl.gz") == "pairs"
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "hi"}\n')
    with pytest.raises(DataError, match="cannot tell the format"):
        detect_human_data_format(other)


def test_cli_writes_metrics_items_and_table(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=4)
    out = tmp_path / "eval" / "judge.json"
    rc = main(["eval", "judge", "--data", str(data), "--out", str(out), "--bootstrap-samples", "20",
               "backend.name=fake", "judge.num_samples=2"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 4 and metrics["n_pairs"] == 4 and metrics["tie_policy"]
    assert metrics["data"]["format"] == "pairs" and metrics["items_file"] == "judge.items.jsonl"
    items = [json.loads(line) for line in items_path_for(out).read_text().splitlines()]
    assert len(items) == 8 and all(len(it["judgements"]) == 2 for it in items)
    # Anyone can recompute the accuracy from the items file.
    by_group = {}
    for it in items:
        by_group.setdefault(it["group_id"], {})[it["rank"]] = it["score"]
    credit = sum(1.0 if s[0] > s[1] else 0.5 if s[0] == s[1] else 0.0 for s in by_group.values())
    assert metrics["pairwise_accuracy"] == pytest.approx(credit / 4)
    assert "pairwise accuracy" in capsys.readouterr().out


def test_cli_limit_on_real_oasst(tmp_path, shared_data):
    path = shared_data / "oasst" / "en_100_tree.jsonl"
    out = tmp_path / "j.json"
    rc = main(["eval", "judge", "--data", str(path), "--out", str(out), "--limit", "5", "--bootstrap-samples", "0",
               "backend.name=fake", "judge.num_samples=1"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    groups, counts = read_oasst_trees(path)
    assert metrics["n"] == 5 and metrics["data"]["reader_counts"] == counts
    assert metrics["n_replies"] == sum(len(g.replies) for g in groups[:5])


def test_cli_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "x"}\n')
    assert main(["eval", "judge", "--data", str(bad), "--out", str(tmp_path / "o.json"), "backend.name=fake"]) == 2
    assert "missing field 'rejected'" in capsys.readouterr().err
    assert main(["eval", "judge", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o.json")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_read_human_groups_rejects_unknown_format(tmp_path):
    data = tmp_path / "p.jsonl"
    _write_pairs(data)
    groups, counts, fmt = read_human_groups(data)
    assert fmt == "pairs" and len(groups) == 3 and counts["groups"] == 3
    with pytest.raises(ValueError):
        read_human_groups(data, "csv")


def test_ranked_groups_from_srlm_data_oasst_are_read(tmp_path):
    from srlm.evaluation.judge_eval import read_human_groups

    path = tmp_path / "eft_source_eval.jsonl"
    path.write_text(json.dumps({"group_id": "g1", "prompt": "Why?", "replies": [
        {"text": "Because.", "rank": 1, "reply_id": "r1"}, {"text": "A full answer.", "rank": 0, "reply_id": "r0"}]}) + "\n")
    groups, counts, fmt = read_human_groups(path)
    assert fmt == "groups" and counts == {"groups": 1}
    assert groups[0].context == [{"role": "user", "content": "Why?"}]
    assert sorted((r["reply_id"], r["rank"]) for r in groups[0].replies) == [("r0", 0), ("r1", 1)]
