"""Tests of srlm.data.oasst: the real 100-tree OpenAssistant sample, and tiny hand-made trees for each edge case.

Expected counts on the real file are recomputed here from the raw JSON by a separate, deliberately naive walk,
so that the builder is checked against an independent reading of the data rather than against itself.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from srlm.cli.data import add_data_commands
from srlm.data.oasst import build_from_oasst, normalise_prompt
from srlm.errors import DataError
from srlm.io import read_jsonl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TREES = DATA / "oasst" / "en_100_tree.jsonl"
needs_data = pytest.mark.skipif(not TREES.exists(), reason=f"shared test data not found at {TREES}")


# --------------------------------------------------------------------------------------------------------------
# Helpers


def read_outputs(out: Path) -> tuple[list[dict], list[dict], list[dict]]:
    def read(name: str) -> list[dict]:
        text = (out / name).read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    return read("ift.jsonl"), read("eft_source_train.jsonl"), read("eft_source_eval.jsonl")


def tree_rows(path: Path) -> list[dict]:
    """The tree export converted to flat message-table rows, as the oasst1 Hub dataset stores them."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tree = json.loads(line)
        stack = [(tree["prompt"], None)]
        while stack:
            message, parent = stack.pop()
            row = {key: value for key, value in message.items() if key not in ("replies", "emojis")}
            row["parent_id"] = parent
            row["message_tree_id"] = tree["message_tree_id"]
            row.setdefault("rank", None)
            rows.append(row)
            stack.extend((reply, message["message_id"]) for reply in message["replies"])
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def msg(message_id: str, parent: str | None, text: str = "", *, rank: int | None = None, **fields) -> dict:
    """One flat row; the role follows from having a parent (roots are user turns)."""
    row = {
        "message_id": message_id,
        "parent_id": parent,
        "text": text or f"text of {message_id}",
        "role": "assistant" if parent else "prompter",
        "lang": "en",
        "rank": rank,
        "deleted": False,
        "synthetic": False,
        "review_result": True,
    }
    row.update(fields)
    return row


def ranked_tree(root_id: str, prompt: str, ranks: list[int | None], **reply_fields) -> list[dict]:
    rows = [msg(root_id, None, prompt)]
    rows += [msg(f"{root_id}-r{i}", root_id, f"reply {i} to {prompt}", rank=rank, **reply_fields) for i, rank in enumerate(ranks)]
    return rows


def build(tmp_path: Path, rows: list[dict], **kwargs) -> tuple[dict, list[dict], list[dict], list[dict]]:
    source = write_rows(tmp_path / "rows.jsonl", rows)
    counts = build_from_oasst(source, tmp_path / "out", **kwargs)
    return (counts, *read_outputs(tmp_path / "out"))


# --------------------------------------------------------------------------------------------------------------
# The real 100-tree sample, against an independent computation


def independent_expectations(include_synthetic: bool = False) -> dict:
    trees = [json.loads(line) for line in TREES.read_text(encoding="utf-8").splitlines()]

    def n_messages(message: dict) -> int:
        return 1 + sum(n_messages(reply) for reply in message["replies"])

    def usable(message: dict) -> bool:
        return (
            not message["deleted"]
            and message.get("review_result") is not False
            and message["text"].strip() != ""
            and (include_synthetic or not message["synthetic"])
        )

    roots = [tree["prompt"] for tree in trees]
    kept_roots = [root for root in roots if root["lang"] == "en" and usable(root)]
    ranked = {
        root["message_id"]: [r for r in root["replies"] if usable(r) and r.get("rank") is not None] for root in kept_roots
    }
    ift_able = {normalise_prompt(root["text"]) for root in kept_roots if any(r["rank"] == 0 for r in ranked[root["message_id"]])}
    eft_able = {
        normalise_prompt(root["text"])
        for root in kept_roots
        if len(ranked[root["message_id"]]) >= 2 and len({r["rank"] for r in ranked[root["message_id"]]}) >= 2
    }
    return {
        "messages": sum(n_messages(root) for root in roots),
        "roots": len(roots),
        "synthetic_roots": sum(root["synthetic"] for root in roots),
        "kept_roots": kept_roots,
        "replies_seen": sum(len(root["replies"]) for root in kept_roots),
        "unranked": sum(1 for root in kept_roots for r in root["replies"] if usable(r) and r.get("rank") is None),
        "ift_able": ift_able,
        "eft_able": eft_able,
        "ranked": ranked,
    }


@needs_data
def test_real_sample_counts_match_an_independent_reading(tmp_path):
    expected = independent_expectations()
    counts = build_from_oasst(TREES, tmp_path)
    ift, eft_train, eft_eval = read_outputs(tmp_path)

    assert counts["messages_read"] == expected["messages"] == 1167  # the data README's figure
    assert counts["trees"] == expected["roots"] == 100
    assert counts["skipped_cycle"] == counts["skipped_missing_parent"] == counts["skipped_duplicate_id"] == 0
    assert counts["prompt_dropped_synthetic"] == expected["synthetic_roots"]
    assert counts["prompts_kept"] == len(expected["kept_roots"])
    assert counts["replies_seen"] == expected["replies_seen"]
    assert counts["reply_dropped_unranked"] == expected["unranked"]

    either = expected["ift_able"] & expected["eft_able"]
    assert counts["prompts_either"] == len(either)
    assert counts["prompts_ift_only"] == len(expected["ift_able"] - expected["eft_able"])
    assert counts["prompts_eft_only"] == len(expected["eft_able"] - expected["ift_able"])
    n_ift = len(expected["ift_able"] - expected["eft_able"]) + round(0.6 * len(either))
    n_eft = len(expected["ift_able"] | expected["eft_able"]) - n_ift
    assert counts["ift"] == len(ift) == n_ift
    assert counts["eft_eval"] == len(eft_eval) == round(0.25 * n_eft)
    assert counts["eft_train"] == len(eft_train) == n_eft - round(0.25 * n_eft)
    assert counts["eft_train_replies"] == sum(len(g["replies"]) for g in eft_train)
    assert counts["eft_eval_replies"] == sum(len(g["replies"]) for g in eft_eval)
    assert json.loads((tmp_path / "counts.json").read_text()) == counts

    # The concrete numbers, for the report and as a tripwire for unintended changes.
    assert (counts["prompts_kept"], counts["ift"], counts["eft_train"], counts["eft_eval"]) == (95, 56, 28, 10)


@needs_data
def test_real_sample_records_carry_the_right_texts(tmp_path):
    expected = independent_expectations()
    build_from_oasst(TREES, tmp_path)
    ift, eft_train, eft_eval = read_outputs(tmp_path)
    by_prompt = {root["text"].strip(): root for root in expected["kept_roots"]}

    for record in ift:
        root = by_prompt[record["prompt"]]
        rank0 = [r["text"].strip() for r in expected["ranked"][root["message_id"]] if r["rank"] == 0]
        assert record["response"] in rank0
        assert record["source"] == "oasst" and record["lang"] == "en" and record["id"]

    for group in eft_train + eft_eval:
        root = by_prompt[group["prompt"]]
        raw = {r["message_id"]: r for r in expected["ranked"][root["message_id"]]}
        assert {reply["reply_id"] for reply in group["replies"]} == set(raw)
        assert group["replies"][0]["rank"] == 0
        # Same order as the human ranks; texts unchanged apart from surrounding whitespace.
        for better, worse in zip(group["replies"], group["replies"][1:]):
            assert better["rank"] <= worse["rank"]
            assert raw[better["reply_id"]]["rank"] <= raw[worse["reply_id"]]["rank"]
        for reply in group["replies"]:
            assert reply["text"] == raw[reply["reply_id"]]["text"].strip()

    # The paper keeps the sets disjoint: no prompt in two of them.
    ift_prompts = {normalise_prompt(r["prompt"]) for r in ift}
    train_prompts = {normalise_prompt(g["prompt"]) for g in eft_train}
    eval_prompts = {normalise_prompt(g["prompt"]) for g in eft_eval}
    assert not ift_prompts & train_prompts and not ift_prompts & eval_prompts and not train_prompts & eval_prompts


@needs_data
def test_real_sample_with_synthetic_messages_matches_the_data_readme(tmp_path):
    counts = build_from_oasst(TREES, tmp_path, include_synthetic=True)
    # README: "99 groups [of ranked assistant siblings] answer the first user turn".
    assert counts["prompts_either"] + counts["prompts_eft_only"] == 99
    assert counts["prompt_dropped_synthetic"] == 0


@needs_data
def test_flat_table_jsonl_and_parquet_give_the_same_data_as_the_tree_export(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = tree_rows(TREES)
    random.Random(1).shuffle(rows)  # children before parents, trees interleaved: order must not matter
    flat = write_rows(tmp_path / "flat.jsonl", rows)
    parquet = tmp_path / "flat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)

    build_from_oasst(TREES, tmp_path / "from_trees")
    results = {}
    for name, source in (("jsonl", flat), ("parquet", parquet)):
        counts = build_from_oasst(source, tmp_path / name)
        assert counts["messages_read"] == 1167 and counts["trees"] == 100
        results[name] = read_outputs(tmp_path / name)
    reference = read_outputs(tmp_path / "from_trees")

    def as_sets(outputs):
        return tuple(sorted(json.dumps(record, sort_keys=True) for record in part) for part in outputs)

    assert as_sets(results["jsonl"]) == as_sets(results["parquet"]) == as_sets(reference)


@needs_data
def test_hub_id_is_read_through_datasets_load_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = tree_rows(TREES)
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(rows[:600]), "validation": datasets.Dataset.from_list(rows[600:])}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    counts = build_from_oasst("OpenAssistant/oasst1", tmp_path)
    assert calls == [("OpenAssistant/oasst1", None)]  # all splits by default
    assert counts["messages_read"] == 1167 and counts["ift"] == 56


@needs_data
def test_same_seed_same_files_other_seed_other_split(tmp_path):
    build_from_oasst(TREES, tmp_path / "a", seed=3)
    build_from_oasst(TREES, tmp_path / "b", seed=3)
    build_from_oasst(TREES, tmp_path / "c", seed=4)
    for name in ("ift.jsonl", "eft_source_train.jsonl", "eft_source_eval.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "eft_source_eval.jsonl").read_bytes() != (tmp_path / "c" / "eft_source_eval.jsonl").read_bytes()


@needs_data
def test_limit_uses_the_first_trees(tmp_path):
    counts = build_from_oasst(TREES, tmp_path, limit=10)
    assert counts["trees"] == 100 and counts["trees_used"] == 10
    assert counts["prompts_kept"] + sum(v for k, v in counts.items() if k.startswith("prompt_dropped_")) == 10


# --------------------------------------------------------------------------------------------------------------
# Hand-made trees


def test_cycles_and_missing_parents_are_counted_and_skipped(tmp_path):
    rows = ranked_tree("good", "A fine question?", [0, 1])
    rows += [
        msg("loop-a", "loop-b"),  # a <-> b: a cycle with no root
        msg("loop-b", "loop-a"),
        msg("below-loop", "loop-a"),  # hangs from the cycle
        msg("self", "self"),  # its own parent
        msg("orphan", "no-such-message"),
        msg("orphan-child", "orphan"),
        msg("good", None, "duplicate id of a root"),
    ]
    counts, ift, train, evals = build(tmp_path, rows, ift_share_of_ranked=1.0)
    assert counts["skipped_cycle"] == 4
    assert counts["skipped_missing_parent"] == 2
    assert counts["skipped_duplicate_id"] == 1
    assert counts["trees"] == 1
    assert [r["prompt"] for r in ift] == ["A fine question?"]  # the first copy of a duplicated id wins


def test_unranked_replies_are_dropped_and_counted(tmp_path):
    rows = ranked_tree("p1", "Only unranked replies", [None, None])
    rows += ranked_tree("p2", "Mixed", [0, None, 1])
    counts, ift, train, evals = build(tmp_path, rows, ift_share_of_ranked=0.0, eft_eval_fraction=0.0)
    assert counts["reply_dropped_unranked"] == 3
    assert counts["prompts_dropped_no_rank0_reply"] == 1
    assert ift == [] and evals == []
    assert [len(g["replies"]) for g in train] == [2]


def test_rank_ties_are_kept_and_all_tied_groups_are_not_eft(tmp_path):
    rows = ranked_tree("tie", "Tie inside", [0, 0, 1])
    rows += ranked_tree("flat", "All tied", [0, 0])
    counts, ift, train, evals = build(tmp_path, rows, ift_share_of_ranked=0.0, eft_eval_fraction=0.0)
    assert [[reply["rank"] for reply in g["replies"]] for g in train] == [[0, 0, 1]]
    assert counts["eft_groups_with_rank_ties"] == 1
    # A group whose replies all tie orders nothing; it still has a rank-0 reply, so it serves IFT.
    assert counts["prompts_ift_only"] == 1
    assert ift[0]["prompt"] == "All tied"
    assert ift[0]["response"] == "reply 0 to All tied"  # ties at rank 0: the smallest message id


def test_ranks_are_renumbered_after_dropping_the_best_reply(tmp_path):
    rows = ranked_tree("p", "Best reply was synthetic", [1, 2, 3])
    rows.append(msg("p-best", "p", "a model-written reply", rank=0, synthetic=True))
    counts, ift, train, evals = build(tmp_path, rows, eft_eval_fraction=0.0)
    assert counts["reply_dropped_synthetic"] == 1
    assert counts["prompts_eft_only"] == 1 and ift == []  # no human rank-0 reply left for IFT
    assert [reply["rank"] for reply in train[0]["replies"]] == [0, 1, 2]

    counts, ift, train, evals = build(tmp_path, rows, include_synthetic=True, ift_share_of_ranked=1.0)
    assert ift[0]["response"] == "a model-written reply"


def test_deleted_empty_failed_review_and_synthetic_messages_are_filtered(tmp_path):
    rows = ranked_tree("del", "Deleted prompt", [0, 1])
    rows[0]["deleted"] = True
    rows += ranked_tree("empty", "   ", [0, 1])
    rows[-3]["text"] = "   "
    rows += ranked_tree("spam", "Failed review", [0, 1])
    rows[-3]["review_result"] = False
    rows += ranked_tree("synth", "Synthetic prompt", [0, 1])
    rows[-3]["synthetic"] = True
    rows += ranked_tree("ok", "Fine prompt", [0, 1, 2, 3, 4])
    rows[-5]["deleted"] = True
    rows[-4]["text"] = ""
    rows[-3]["review_result"] = False
    rows[-2]["role"] = "prompter"  # a user turn among the replies
    counts, ift, train, evals = build(tmp_path, rows, ift_share_of_ranked=1.0)
    assert counts["prompt_dropped_deleted"] == 1
    assert counts["prompt_dropped_empty"] == 1
    assert counts["prompt_dropped_review_failed"] == 1
    assert counts["prompt_dropped_synthetic"] == 1
    assert counts["reply_dropped_deleted"] == 1
    assert counts["reply_dropped_empty"] == 1
    assert counts["reply_dropped_review_failed"] == 1
    assert counts["reply_dropped_not_assistant"] == 1
    assert counts["prompts_kept"] == 1 and counts["replies_kept"] == 1
    # rank 0 was deleted and one reply is left: neither IFT nor EFT.
    assert counts["prompts_dropped_no_rank0_reply"] == 1 and ift == train == evals == []


def test_languages(tmp_path):
    rows = ranked_tree("en", "Hello?", [0, 1]) + ranked_tree("de", "Hallo?", [0, 1], lang="de")
    rows[3]["lang"] = "de"
    rows += ranked_tree("none", "No language?", [0, 1])
    rows[6]["lang"] = None
    counts, ift, _, _ = build(tmp_path, rows, ift_share_of_ranked=1.0)
    assert counts["prompt_dropped_lang"] == 2 and [r["prompt"] for r in ift] == ["Hello?"]
    counts, ift, _, _ = build(tmp_path, rows, langs=("en", "de"), ift_share_of_ranked=1.0)
    assert [(r["prompt"], r["lang"]) for r in ift] == [("Hello?", "en"), ("Hallo?", "de")]
    counts, ift, _, _ = build(tmp_path, rows, langs=None, ift_share_of_ranked=1.0)
    assert counts["prompt_dropped_lang"] == 0 and len(ift) == 3 and "lang" not in ift[2]


def test_repeated_questions_stay_on_one_side_and_ift_keeps_one_copy(tmp_path):
    rows = []
    for i in range(20):
        rows += ranked_tree(f"q{i}", f"Question number {i}?", [0, 1])
        rows += ranked_tree(f"q{i}-again", f"  question NUMBER {i}? ", [0, 1])  # same question, other tree
    rows += ranked_tree("single", "Only IFT", [0])
    rows += ranked_tree("single-copy", "only ift", [1, 2])  # a copy that could only serve EFT
    counts, ift, train, evals = build(tmp_path, rows, ift_share_of_ranked=0.5, eft_eval_fraction=0.5)
    sides = [{normalise_prompt(r["prompt"]) for r in part} for part in (ift, train, evals)]
    assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]
    # "only ift" has a copy usable for IFT and one usable for EFT, so as a question it can serve either side;
    # whichever side it lands on, the copy that cannot serve that side is dropped.
    assert counts["prompts_either"] == 21
    assert len(sides[0]) + len(sides[1] | sides[2]) == 21
    assert counts["prompts_dropped_copy_on_other_side"] == 1
    only_ift_in_ift = "only ift" in sides[0]
    assert len(ift) == len(sides[0])  # one record per distinct question...
    assert counts["ift_dropped_duplicate_prompt"] == len(ift) - only_ift_in_ift  # ...the second copies dropped
    # Both copies of each EFT question are kept: they are two separate human rankings.
    assert len(train) + len(evals) == 2 * (20 - (len(ift) - only_ift_in_ift)) + (not only_ift_in_ift)


def test_shares_at_the_extremes(tmp_path):
    rows = [row for i in range(8) for row in ranked_tree(f"q{i}", f"Q{i}", [0, 1, 2])]
    counts, ift, train, evals = build(tmp_path, rows, ift_share_of_ranked=1.0)
    assert len(ift) == 8 and train == evals == []
    counts, ift, train, evals = build(tmp_path, rows, ift_share_of_ranked=0.0, eft_eval_fraction=1.0)
    assert ift == train == [] and len(evals) == 8
    with pytest.raises(ValueError):
        build(tmp_path, rows, eft_eval_fraction=1.5)


def test_bad_rows_raise_data_error_naming_line_and_field(tmp_path):
    rows = ranked_tree("p", "Q", [0, 1])
    rows[2]["rank"] = "first"
    with pytest.raises(DataError, match=r"rows\.jsonl:3: field 'rank'"):
        build(tmp_path, rows)
    rows = ranked_tree("p", "Q", [0, 1])
    del rows[1]["message_id"]
    with pytest.raises(DataError, match=r"rows\.jsonl:2: field 'message_id' missing"):
        build(tmp_path, rows)
    rows = ranked_tree("p", "Q", [0, 1])
    rows[0]["role"] = "user"
    with pytest.raises(DataError, match=r"rows\.jsonl:1: field 'role'"):
        build(tmp_path, rows)


def test_bad_nested_message_names_its_path_in_the_tree(tmp_path):
    tree = {"message_tree_id": "t", "prompt": msg("t", None, "Q") | {"replies": [msg("a", "t", rank=0) | {"replies": [], "deleted": "no"}]}}
    source = tmp_path / "trees.jsonl"
    source.write_text(json.dumps(tree) + "\n")
    with pytest.raises(DataError, match=r"trees\.jsonl:1: field 'prompt\.replies\[0\]\.deleted'"):
        build_from_oasst(source, tmp_path / "out")


def test_float_ranks_from_parquet_and_empty_parent_ids_are_accepted(tmp_path):
    rows = ranked_tree("p", "Q", [0, 1])
    rows[0]["parent_id"] = ""
    rows[1]["rank"], rows[2]["rank"] = 0.0, 1.0
    counts, ift, train, evals = build(tmp_path, rows, ift_share_of_ranked=1.0)
    assert counts["trees"] == 1 and len(ift) == 1


# --------------------------------------------------------------------------------------------------------------
# CLI


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srlm")
    add_data_commands(parser.add_subparsers(dest="command"))
    return parser


def test_cli_oasst_writes_files_and_prints_counts(tmp_path, capsys):
    rows = [row for i in range(6) for row in ranked_tree(f"q{i}", f"Q{i}", [0, 1])]
    rows += ranked_tree("de", "Auf Deutsch?", [0, 1], lang="de")
    rows[-3]["lang"] = "de"
    source = write_rows(tmp_path / "rows.jsonl", rows)
    args = make_parser().parse_args(
        ["data", "oasst", str(source), "--out", str(tmp_path / "out"), "--langs", "en,de", "--eval-fraction", "0.5", "--seed", "2"]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    counts = json.loads((tmp_path / "out" / "counts.json").read_text())
    assert f"ift  {counts['ift']}".replace("  ", " ") in " ".join(printed.split())
    assert counts["prompts_kept"] == 7
    assert len(read_jsonl(tmp_path / "out" / "eft_source_eval.jsonl")) == counts["eft_eval"]


def test_cli_oasst_help_and_bad_arguments(capsys):
    parser = make_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["data", "oasst", "--help"])
    assert exit_info.value.code == 0
    assert "eft_source_eval.jsonl" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "oasst", "x.jsonl", "--out", "o", "--eval-fraction", "2"])
