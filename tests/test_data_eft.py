"""Tests of srlm.data.eft: the paper's EFT construction (teacher judgements, agreement filter, rebalancing).

The teacher is the fake backend with a script whose scores are written into the reply texts: a reply containing
`[s=4]` is judged "Score: 4", `[s=x,3]` is unparsable on the first sample and 3 on the second. So which groups
agree with the human ranks, and every histogram, can be worked out by hand from the fixtures.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from srlm.backends import make_backend
from srlm.config import JudgeConfig
from srlm.cli.data import add_data_commands
from srlm.data.eft import (
    DEFAULT_MAX_PER_SCORE_SHARE,
    agreement,
    build_eft,
    log_path_for,
    read_eft_source,
    rebalance_level,
    run_data_eft,
)
from srlm.data.oasst import build_from_oasst
from srlm.errors import DataError
from srlm.judge import builtin_template, render
from srlm.stages.sft import read_eft

TREES = Path(__file__).resolve().parents[2] / "shared" / "data" / "oasst" / "en_100_tree.jsonl"

_TAG = re.compile(r"\[s=([^\]]*)\]")
_RESPONSE = re.compile(r"<response>(.*?)</response>", re.DOTALL)


# --------------------------------------------------------------------------------------------------------------
# Helpers


def scripted(calls: list[str] | None = None):
    """A teacher that reads its scores from the reply text; records each judged request id in `calls`."""

    def script(request, index):
        if calls is not None and index == 0:
            calls.append(request.request_id)
        response = _RESPONSE.search(request.messages[-1]["content"]).group(1)
        plan = _TAG.search(response).group(1).split(",")
        score = plan[min(index, len(plan) - 1)]
        if score == "x":
            return f"I am not sure how to rate this (sample {index})."
        return f"Judgement of sample {index}: relevant and clear.\nScore: {score}"

    return script


def teacher(calls: list[str] | None = None):
    return make_backend("fake", None, script=scripted(calls))


def group(gid: str, *replies: tuple[int, str], prompt: str | None = None) -> dict:
    """A ranked group; each reply is (human rank, score plan), e.g. (0, "5") or (1, "x,3")."""
    return {
        "group_id": gid,
        "prompt": prompt or f"Question {gid}?",
        "replies": [
            {"text": f"Reply {j} to {gid} [s={plan}]", "rank": rank, "reply_id": f"{gid}-r{j}"}
            for j, (rank, plan) in enumerate(replies)
        ],
    }


def judge_cfg(**changes) -> JudgeConfig:
    return JudgeConfig(**{"num_samples": 2, **changes})


def write_groups(path: Path, groups: list[dict]) -> Path:
    path.write_text("".join(json.dumps(g) + "\n" for g in groups), encoding="utf-8")
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------------------
# Agreement filter


def test_agreement_counts_pairs_and_treats_ties_as_documented():
    assert agreement([0, 1, 2], [5, 3, 1]) == (3, 3)
    assert agreement([0, 1, 2], [5, 1, 3]) == (2, 3)  # ranks 1 and 2 out of order
    assert agreement([0, 1], [3, 3]) == (0, 1)  # equal scores for different human ranks: disagreement
    assert agreement([0, 0, 1], [2, 4, 1]) == (2, 2)  # equal human ranks impose nothing on their scores
    assert agreement([1, 0], [2, 4]) == (1, 1)  # order in the list does not matter, only the ranks


def test_groups_kept_and_dropped_by_reason():
    groups = [
        group("agree", (0, "5"), (1, "3"), (2, "1")),
        group("swap", (0, "2"), (1, "4")),
        group("tied_scores", (0, "3"), (1, "3")),
        group("tied_ranks", (0, "4"), (0, "2"), (1, "1")),  # kept: the rank-0 pair may score anything
        group("unparsable", (0, "5"), (1, "x")),  # no sample of reply 1 parses
        group("second_sample", (0, "x,4"), (1, "2")),  # first parsable sample is used: 4 > 2, kept
        group("all_tied", (0, "5"), (0, "1")),  # no human order to agree with
    ]
    records, counts = build_eft(groups, teacher(), judge_cfg(), seed=0, max_per_score_share=1.0)

    assert counts["groups"] == 7 and counts["replies"] == 16
    assert counts["groups_dropped_disagree"] == 2
    assert counts["groups_dropped_no_score"] == 1
    assert counts["groups_dropped_no_human_order"] == 1
    assert counts["groups_dropped_prompt_too_long"] == 0
    assert counts["groups_kept"] == 3
    assert counts["replies_dropped_disagree"] == 4 and counts["replies_dropped_no_score"] == 2
    assert counts["examples_agreeing"] == counts["examples"] == 8 and counts["dropped_rebalance"] == 0
    assert [r["group_id"] for r in records] == ["agree"] * 3 + ["tied_ranks"] * 3 + ["second_sample"] * 2
    assert [r["score"] for r in records] == [5, 3, 1, 4, 2, 1, 4, 2]
    # The demonstration is the first parsable sample, and it is the score the record claims.
    second = [r for r in records if r["group_id"] == "second_sample"][0]
    assert second["judgement"] == "Judgement of sample 1: relevant and clear.\nScore: 4"
    assert set(records[0]) == {"prompt", "response", "judgement", "score", "group_id", "reply_id"}
    assert records[0]["prompt"] == "Question agree?" and records[0]["response"] == "Reply 0 to agree [s=5]"
    # Teacher pairs, over the 6 fully scored groups: agree 3/3, swap 0/1, tied_scores 0/1, tied_ranks 2/2,
    # second_sample 1/1, all_tied 0/0 -> 6 of 8.
    assert counts["teacher_pair_agreement"] == 0.75
    # 16 replies x 2 samples; unparsable: unparsable r1 (2), second_sample r0 sample 0 (1).
    assert counts["judgements"] == 32 and counts["judge_parse_rate"] == round(29 / 32, 4)
    # First parsable scores of the 15 replies that have one, three of each value from 1 to 5.
    assert counts["score_histogram_judged"] == {"0": 0, "1": 3, "2": 3, "3": 3, "4": 3, "5": 3}
    assert counts["score_histogram_agreeing"] == {"0": 0, "1": 2, "2": 2, "3": 1, "4": 2, "5": 1}


def test_prompt_too_long_drops_the_group_and_is_logged(tmp_path):
    groups = [group("long", (0, "5"), (1, "1"), prompt="word " * 500), group("short", (0, "5"), (1, "1"))]
    log = tmp_path / "log.jsonl"
    records, counts = build_eft(groups, teacher(), judge_cfg(max_prompt_tokens=400), seed=0,
                                max_per_score_share=1.0, log_path=log)
    assert counts["groups_dropped_prompt_too_long"] == 1 and counts["groups_kept"] == 1
    assert {r["group_id"] for r in records} == {"short"}
    skipped = [r for r in read_lines(log) if r.get("skipped")]
    assert len(skipped) == 2 and all(r["judgements"] == [] and r["score"] is None for r in skipped)


# --------------------------------------------------------------------------------------------------------------
# Rebalancing


def test_rebalance_level_by_hand():
    # 10 fours, 2 threes, 2 fives: L fours with L <= 0.4 (4 + L) -> L <= 2.67 -> L = 2 (2 of 6 = 33%).
    assert rebalance_level({"3": 2, "4": 10, "5": 2}, 0.4) == (2, 0.4)
    # 5 fours of 14 kept already <= 40%? 5 / 14 = 36%: nothing to cut.
    assert rebalance_level({"3": 4, "4": 5, "5": 5}, 0.4)[0] is None
    # Two over-common values are cut to one level: 6 + 6 + 1 + 1 -> L with L <= 0.4 (2 + 2L) -> L = 4.
    assert rebalance_level({"2": 1, "3": 6, "4": 6, "5": 1}, 0.4) == (4, 0.4)
    # Two values cannot both be <= 40%: the cap rises to 1/2, equal counts.
    assert rebalance_level({"4": 9, "5": 3}, 0.4) == (3, 0.5)
    # A single value: nothing can be cut usefully, the cap is 1.
    assert rebalance_level({"4": 9}, 0.4) == (None, 1.0)
    assert rebalance_level({}, 0.4) == (None, 0.4)


def test_rebalancing_caps_the_common_score_with_a_stable_seed():
    # 10 agreeing groups of (4, 3) and 2 of (5, 2): scores 4 x10, 3 x10, 5 x2, 2 x2 (24 examples).
    groups = [group(f"g{i}", (0, "4"), (1, "3")) for i in range(10)]
    groups += [group(f"h{i}", (0, "5"), (1, "2")) for i in range(2)]
    records, counts = build_eft(groups, teacher(), judge_cfg(), seed=3, max_per_score_share=0.3)
    # L <= 0.3 (4 + 2L) -> L <= 3 -> 3 fours and 3 threes kept: 10 examples, each of 4 and 3 at 30%.
    assert counts["cap_per_score"] == 3 and counts["capped_scores"] == ["3", "4"]
    assert counts["examples_agreeing"] == 24 and counts["dropped_rebalance"] == 14 and counts["examples"] == 10
    assert counts["score_histogram_agreeing"] == {"0": 0, "1": 0, "2": 2, "3": 10, "4": 10, "5": 2}
    assert counts["score_histogram"] == {"0": 0, "1": 0, "2": 2, "3": 3, "4": 3, "5": 2}
    assert max(counts["score_histogram"].values()) <= 0.3 * counts["examples"]

    again, _ = build_eft(groups, teacher(), judge_cfg(), seed=3, max_per_score_share=0.3)
    other, _ = build_eft(groups, teacher(), judge_cfg(), seed=4, max_per_score_share=0.3)
    assert again == records  # same seed, same choice
    assert {r["reply_id"] for r in other} != {r["reply_id"] for r in records}  # another seed, another choice
    # Kept records stay in source order.
    order = [f"{g['group_id']}-{r['reply_id']}" for g in groups for r in g["replies"]]
    assert sorted(records, key=lambda r: order.index(f"{r['group_id']}-{r['reply_id']}")) == records


def test_share_must_be_a_fraction():
    with pytest.raises(DataError, match="max_per_score_share"):
        build_eft([group("g", (0, "4"), (1, "2"))], teacher(), judge_cfg(), seed=0, max_per_score_share=0)


# --------------------------------------------------------------------------------------------------------------
# Resume


def _groups_for_resume() -> list[dict]:
    return [group(f"g{i}", (0, "5"), (1, str(i % 4))) for i in range(6)]


def test_killed_run_resumes_without_judging_anything_twice(tmp_path):
    groups = _groups_for_resume()
    log = tmp_path / "eft.judgements.jsonl"
    calls: list[str] = []

    def dying(request, index):
        if index == 0 and len(calls) == 5:  # dies while judging the 3rd chunk (2 groups, 4 replies per chunk)
            raise RuntimeError("killed")
        return scripted(calls)(request, index)

    with pytest.raises(RuntimeError, match="killed"):
        build_eft(groups, make_backend("fake", None, script=dying), judge_cfg(), seed=0, log_path=log, chunk_groups=2)
    partial = log.with_name(log.name + ".partial")
    saved = read_lines(partial)
    assert len(saved) == 4 and not log.exists()  # exactly the first chunk was saved

    second: list[str] = []
    records, counts = build_eft(groups, teacher(second), judge_cfg(), seed=0, log_path=log, chunk_groups=2)
    saved_ids = {r["item_id"] for r in saved}
    assert len(second) == 8 and not saved_ids & set(second)  # only what was missing
    assert log.exists() and not partial.exists()
    assert len(read_lines(log)) == 12

    fresh, fresh_counts = build_eft(groups, teacher(), judge_cfg(), seed=0, log_path=tmp_path / "fresh.jsonl")
    assert (records, counts) == (fresh, fresh_counts)  # a resumed run gives what an uninterrupted one would


def test_finished_log_is_reused_and_a_stale_one_refused(tmp_path):
    groups = _groups_for_resume()
    log = tmp_path / "eft.judgements.jsonl"
    build_eft(groups, teacher(), judge_cfg(), seed=0, log_path=log, teacher="m1")
    first = log.read_text()

    calls: list[str] = []
    records, counts = build_eft(groups, teacher(calls), judge_cfg(), seed=0, log_path=log, teacher="m1",
                                max_per_score_share=0.5)
    assert calls == [] and log.read_text() == first and counts["groups"] == 6

    # One more group: only its two replies are judged.
    more = groups + [group("new", (0, "4"), (1, "1"))]
    build_eft(more, teacher(calls), judge_cfg(), seed=0, log_path=log, teacher="m1")
    assert len(calls) == 2 and len(read_lines(log)) == 14

    with pytest.raises(DataError, match="another teacher"):
        build_eft(groups, teacher(), judge_cfg(), seed=0, log_path=log, teacher="m2")
    with pytest.raises(DataError, match="another teacher"):
        build_eft(groups, teacher(), judge_cfg(num_samples=3), seed=0, log_path=log, teacher="m1")
    assert log.exists() and not log.with_name(log.name + ".partial").exists()  # left as it was found


# --------------------------------------------------------------------------------------------------------------
# Files and CLI


def test_read_eft_source_checks_fields_and_limit(tmp_path):
    groups = [group(f"g{i}", (0, "5"), (1, "1")) for i in range(3)]
    assert len(read_eft_source(write_groups(tmp_path / "ok.jsonl", groups), limit=2)) == 2
    bad = json.loads(json.dumps(groups))
    bad[1]["replies"][0]["rank"] = -1
    with pytest.raises(DataError, match=r"bad.jsonl:2: replies\[0\]: field 'rank'"):
        read_eft_source(write_groups(tmp_path / "bad.jsonl", bad))
    with pytest.raises(DataError, match="appears twice"):
        read_eft_source(write_groups(tmp_path / "dup.jsonl", [groups[0], groups[0]]))


def test_run_data_eft_writes_sft_readable_files(tmp_path):
    source = write_groups(tmp_path / "src.jsonl", [group("a", (0, "5"), (1, "2")), group("b", (0, "1"), (1, "3"))])
    out = tmp_path / "eft_train.jsonl"
    counts = run_data_eft(source, out, teacher(), judge_cfg(), seed=0, teacher="fake-teacher")
    assert counts["examples"] == 2 and counts["teacher"] == "fake-teacher"
    assert read_eft(out) == read_lines(out)  # the SFT stage accepts it: every judgement ends in a score
    assert json.loads((tmp_path / "eft_train.counts.json").read_text()) == counts
    assert log_path_for(out) == tmp_path / "eft_train.judgements.jsonl"
    assert len(read_lines(log_path_for(out))) == 4


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srlm")
    add_data_commands(parser.add_subparsers(dest="command"))
    return parser


def test_cli_eft(tmp_path, capsys, monkeypatch):
    import srlm.backends.fake as fake

    monkeypatch.setattr(fake, "default_script", scripted())  # the CLI builds the fake backend from the config
    groups = [group(f"g{i}", (0, "4"), (1, "3")) for i in range(4)] + [group("z", (0, "2"), (1, "5"))]
    source = write_groups(tmp_path / "eft_source_train.jsonl", groups)
    out = tmp_path / "eft_train.jsonl"
    args = make_parser().parse_args([
        "data", "eft", "--source", str(source), "--out", str(out), "--limit", "4", "--max-per-score-share", "0.5",
        "--model", "teacher-dir", "backend.name=fake", "judge.num_samples=1", "seed=5",
    ])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    counts = json.loads((tmp_path / "eft_train.counts.json").read_text())
    assert counts["teacher"] == "teacher-dir" and counts["seed"] == 5 and counts["judge_num_samples"] == 1
    assert counts["groups"] == 4 and counts["examples"] == 8 and counts["dropped_rebalance"] == 0
    assert "groups kept" in printed and "examples written" in printed and "teacher-dir" in printed
    assert len(read_lines(out)) == 8


def test_cli_eft_help_and_default(capsys):
    parser = make_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["data", "eft", "--help"])
    assert exit_info.value.code == 0
    assert "strictly higher score" in capsys.readouterr().out
    args = parser.parse_args(["data", "eft", "--source", "s", "--out", "o"])
    assert args.max_per_score_share == DEFAULT_MAX_PER_SCORE_SHARE and args.overrides == []
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "eft", "--source", "s", "--out", "o", "--max-per-score-share", "0"])
    # The existing commands are still there.
    assert parser.parse_args(["data", "oasst", "x", "--out", "o"]).data_command == "oasst"


def test_oasst_recipe_validates():
    from srlm.config import list_recipes, load_config

    cfg = load_config("oasst")
    assert cfg.data.ift == "data/oasst/ift.jsonl" and cfg.data.eft == "data/oasst/eft_train.jsonl"
    assert cfg.eval.judge_data == "data/oasst/eft_source_eval.jsonl"
    assert "OpenAssistant" in list_recipes()["oasst"]


# --------------------------------------------------------------------------------------------------------------
# The real OpenAssistant sample


@pytest.mark.skipif(not TREES.exists(), reason=f"shared test data not found at {TREES}")
def test_real_oasst_sample_with_a_teacher_that_follows_human_ranks(tmp_path):
    build_from_oasst(TREES, tmp_path)
    groups = read_eft_source(tmp_path / "eft_source_train.jsonl")
    template = builtin_template()
    rank_of = {render(template, g["prompt"], r["text"]): r["rank"] for g in groups for r in g["replies"]}

    def by_rank(request, index):  # 5 for the best human rank, one point less per rank below it
        return f"Ranked by the humans.\nScore: {max(0, 5 - rank_of[request.messages[-1]['content']])}"

    cfg = judge_cfg(max_prompt_tokens=100_000)  # the fake backend counts words; judge every reply
    records, counts = build_eft(groups, make_backend("fake", None, script=by_rank), cfg, seed=0)

    assert counts["groups"] == len(groups) and counts["groups_kept"] == len(groups)
    assert counts["teacher_pair_agreement"] == 1.0 and counts["judge_parse_rate"] == 1.0
    assert all(counts[f"groups_dropped_{reason}"] == 0 for reason in ("disagree", "no_score", "prompt_too_long"))
    assert counts["examples_agreeing"] == counts["replies"]
    assert counts["examples"] == counts["examples_agreeing"] - counts["dropped_rebalance"]
    share = max(0.4, counts["effective_max_share"])
    assert max(counts["score_histogram"].values()) <= share * counts["examples"] + 1e-9
    assert sum(counts["score_histogram"].values()) == len(records)

    # Every kept group still orders its replies as the humans did.
    human = {(g["group_id"], r["reply_id"]): r["rank"] for g in groups for r in g["replies"]}
    by_group: dict[str, list[dict]] = {}
    for record in records:
        by_group.setdefault(record["group_id"], []).append(record)
        assert record["score"] == 5 - human[(record["group_id"], record["reply_id"])]
    for members in by_group.values():
        ranks = [human[(m["group_id"], m["reply_id"])] for m in members]
        agreeing, ordered = agreement(ranks, [m["score"] for m in members])
        assert agreeing == ordered
