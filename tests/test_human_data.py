"""Readers of human-ranked data: on the real files in ../shared/data, and on small malformed files made here."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from srlm.errors import DataError
from srlm.evaluation.human_data import RankedGroup, read_oasst_trees, read_preference_pairs

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OASST_TREES = SHARED_DATA / "oasst" / "en_100_tree.jsonl"
HH_HELPFUL_TEST = SHARED_DATA / "hh_rlhf" / "helpful-base-test.jsonl.gz"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA}: ../shared/data not found")
    return SHARED_DATA


def check_group_shape(group: RankedGroup) -> None:
    roles = [m["role"] for m in group.context]
    assert roles[-1] == "user" and roles[0] == "user"
    assert all(a != b for a, b in zip(roles, roles[1:])), "roles alternate"
    ranks = [r["rank"] for r in group.replies]
    assert min(ranks) == 0
    assert len({r["reply_id"] for r in group.replies}) == len(group.replies)
    assert all(isinstance(r["text"], str) for r in group.replies)


# ----------------------------------------------------------------------------------------------------------------
# OpenAssistant trees, real file
# ----------------------------------------------------------------------------------------------------------------


def test_oasst_matches_the_data_readme_when_synthetic_replies_are_kept(shared_data):
    # shared/data/README.md: 212 groups of ranked assistant siblings (754 ordered pairs); 99 answer the first
    # user turn; 1,167 messages, 22 of them synthetic.
    groups, counts = read_oasst_trees(OASST_TREES, include_synthetic=True)
    assert len(groups) == counts["groups"] == 212
    assert sum(g.n_ordered_pairs for g in groups) == counts["ordered_pairs"] == 754
    assert sum(len(g.context) == 1 for g in groups) == counts["first_turn_groups"] == 99
    assert counts["trees"] == 100 and counts["messages"] == 1167 and counts["synthetic_messages"] == 22


def test_oasst_human_only_by_default(shared_data):
    # The 22 synthetic messages are 5 synthetic first prompts and their 17 synthetic replies, so filtering drops
    # exactly those 5 (first-turn) groups: 207 groups, 732 ordered pairs, 94 first-turn groups.
    groups, counts = read_oasst_trees(OASST_TREES)
    assert counts["groups"] == len(groups) == 207
    assert counts["ordered_pairs"] == 732
    assert counts["first_turn_groups"] == 94
    assert counts["skipped_synthetic_context"] == 5
    # 46 assistant replies have no rank; the 42 user turns they answer have no ranked replies at all.
    assert counts["skipped_unranked"] == 46 and counts["skipped_too_few_replies"] == 42
    assert counts["replies"] == sum(len(g.replies) for g in groups) == 624
    for group in groups:
        check_group_shape(group)
    # Groups at every depth, not just the first turn; the context keeps the whole conversation.
    assert max(len(g.context) for g in groups) >= 3
    assert len({g.group_id for g in groups}) == len(groups)
    # Reproducible ids: a second read gives the same ones.
    assert [g.group_id for g in read_oasst_trees(OASST_TREES).groups] == [g.group_id for g in groups]


# ----------------------------------------------------------------------------------------------------------------
# OpenAssistant trees, small files made here
# ----------------------------------------------------------------------------------------------------------------


def message(text, role, replies=(), **fields):
    return {"text": text, "role": role, "replies": list(replies), "synthetic": False, **fields}


def write_trees(tmp_path: Path, *roots: dict) -> Path:
    path = tmp_path / "trees.jsonl"
    path.write_text("".join(json.dumps({"message_tree_id": f"t{i}", "prompt": r}) + "\n" for i, r in enumerate(roots)))
    return path


def test_oasst_filters_and_renumbers_ranks(tmp_path):
    root = message(
        "Q1",
        "prompter",
        [
            message("synthetic best", "assistant", rank=0, synthetic=True),
            message("human second", "assistant", rank=1, message_id="m2"),
            message("human third", "assistant", rank=2, message_id="m3",
                    replies=[message("Q2", "prompter", [message("x", "assistant", rank=0), message("y", "assistant", rank=1)])]),
            message("unranked", "assistant"),
        ],
    )
    groups, counts = read_oasst_trees(write_trees(tmp_path, root))
    assert counts["skipped_synthetic"] == 1 and counts["skipped_unranked"] == 1
    first, second = groups
    # Ranks 1 and 2 are renumbered 0 and 1 once the synthetic rank-0 reply is gone.
    assert [(r["text"], r["rank"], r["reply_id"]) for r in first.replies] == [("human second", 0, "m2"), ("human third", 1, "m3")]
    assert first.context == [{"role": "user", "content": "Q1"}]
    # The second-turn group carries the conversation, the parent's path included.
    assert second.context == [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "human third"}, {"role": "user", "content": "Q2"},
    ]
    assert [r["rank"] for r in second.replies] == [0, 1]

    with_synthetic, counts = read_oasst_trees(write_trees(tmp_path, root), include_synthetic=True)
    assert [r["rank"] for r in with_synthetic[0].replies] == [0, 1, 2] and counts["skipped_synthetic"] == 0


def test_oasst_min_replies(tmp_path):
    root = message("Q", "prompter", [message("only", "assistant", rank=0)])
    groups, counts = read_oasst_trees(write_trees(tmp_path, root))
    assert groups == [] and counts["skipped_too_few_replies"] == 1
    groups, _ = read_oasst_trees(write_trees(tmp_path, root), min_replies=1)
    assert len(groups) == 1


@pytest.mark.parametrize(
    "root, field",
    [
        (message("Q", "prompter", [{"role": "assistant", "rank": 0, "replies": []}]), "prompt.replies[0]: missing field 'text'"),
        (message("Q", "prompter", [message("a", "assistant", rank="1")]), "prompt.replies[0].rank"),
        (message("Q", "prompter", [message("a", "assistant", rank=1.5)]), "prompt.replies[0].rank"),
        (message("Q", "prompter", [message("a", "assistant", rank=-1)]), "prompt.replies[0].rank"),
        (message("Q", "moderator"), "prompt.role"),
        (message("Q", "prompter", [message("a", "assistant", rank=0, message_id="m0")], message_id="m0"),
         "prompt.replies[0].message_id"),
        (message("Q", "prompter", [message("a", "assistant", parent_id="other")], message_id="root"),
         "prompt.replies[0].parent_id"),
        (message("Q", "prompter", "not a list"), "prompt.replies"),
    ],
)
def test_oasst_malformed_trees_name_file_line_and_field(tmp_path, root, field):
    good = message("fine", "prompter")
    path = write_trees(tmp_path, good, root)  # the bad tree is on line 2
    with pytest.raises(DataError) as error:
        read_oasst_trees(path)
    assert f"{path}:2: {field}" in str(error.value)


def test_oasst_cycle_is_reported(tmp_path):
    # JSON cannot nest a message inside itself, so a cycle shows up as an ancestor's id reappearing below it.
    root = message("Q", "prompter", [message("a", "assistant", rank=0, message_id="m1",
                                             replies=[message("Q again", "prompter", message_id="m0")])], message_id="m0")
    with pytest.raises(DataError, match="appears twice in the tree"):
        read_oasst_trees(write_trees(tmp_path, root))


def test_oasst_missing_prompt_and_empty_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"message_tree_id": "t"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'prompt'"):
        read_oasst_trees(path)
    path.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_oasst_trees(path)


# ----------------------------------------------------------------------------------------------------------------
# Preference pairs
# ----------------------------------------------------------------------------------------------------------------


def test_hh_rlhf_helpful_base_test(shared_data):
    # 2,354 records, 2 with identical chosen and rejected strings.
    groups, counts = read_preference_pairs(HH_HELPFUL_TEST)
    assert counts["records"] == 2354
    assert counts["skipped_identical"] == 2
    assert counts["skipped_not_final_turn"] == 0
    assert counts["groups"] == len(groups) == 2352
    assert counts["first_turn_groups"] == 700
    for group in groups:
        check_group_shape(group)
        assert [r["rank"] for r in group.replies] == [0, 1]
    first = groups[0]
    assert first.context == [{"role": "user", "content": "Do you know why turkeys became the official food of thanksgiving?"}]
    assert first.replies[0]["text"].startswith("To be honest, I don’t know anything about that.")
    assert first.replies[1]["text"].startswith("I know that the American Indians")
    # Line 1167 has two "Assistant:" turns in a row in `chosen`: they are merged into one reply.
    solar = next(g for g in groups if g.source.endswith(":1167"))
    assert solar.replies[0]["text"].startswith("Umm. Just a second...\n\nA solar panel should cost")


def hh(*turns: str) -> str:
    return "".join(f"\n\n{turn}" for turn in turns)


def write_lines(path: Path, records: list) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_generic_and_hh_records(tmp_path, name):
    records = [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
        {"chosen": hh("Human: Q1", "Assistant: A1", "Human: Q2", "Assistant: good"),
         "rejected": hh("Human: Q1", "Assistant: A1", "Human: Q2", "Assistant: bad")},
        {"prompt": "Same", "chosen": "x", "rejected": "x"},
        # Diverges before the final turn: the replies answer different contexts.
        {"chosen": hh("Human: Q", "Assistant: a", "Human: more?", "Assistant: b"), "rejected": hh("Human: Q", "Assistant: c")},
        # Only whitespace differs: the same reply once turns are stripped.
        {"chosen": hh("Human: Q", "Assistant: same"), "rejected": hh("Human: Q", "Assistant:  same ")},
    ]
    groups, counts = read_preference_pairs(write_lines(tmp_path / name, records))
    assert counts["records"] == 5 and counts["groups"] == 2
    assert counts["skipped_identical"] == 2 and counts["skipped_not_final_turn"] == 1
    generic, dialogue = groups
    assert generic.context == [{"role": "user", "content": "Say hi"}]
    assert [(r["text"], r["rank"]) for r in generic.replies] == [("Hi!", 0), ("No.", 1)]
    assert dialogue.context == [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
    ]
    assert [(r["text"], r["rank"]) for r in dialogue.replies] == [("good", 0), ("bad", 1)]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "p", "chosen": "c"}, r":2: missing field 'rejected'"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, r":2: field 'chosen' must be a string"),
        ({"chosen": "no speaker markers", "rejected": "x"}, r":2: field 'chosen': not an HH-RLHF dialogue"),
    ],
)
def test_preference_pairs_malformed(tmp_path, record, message):
    path = write_lines(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(DataError, match=message):
        read_preference_pairs(path)


def test_malformed_json_and_truncated_gzip(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{not json\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:2: malformed JSON"):
        read_preference_pairs(path)
    gz = tmp_path / "pairs.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 50)[:-20])
    with pytest.raises(DataError, match="gzip"):
        read_preference_pairs(gz)
    with pytest.raises(DataError, match="file not found"):
        read_preference_pairs(tmp_path / "missing.jsonl")
