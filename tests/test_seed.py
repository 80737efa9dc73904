"""The data sets shipped with srlm (`builtin:NAME`): each resolves, reads with the reader its config key uses, and
has the size its documentation states."""

import pytest

from srlm.errors import SrlmError
from srlm.io import read_jsonl
from srlm.seed import builtin_names, resolve_data_path


def test_every_builtin_reads_and_has_its_documented_size():
    from srlm.evaluation.judge_eval import read_human_groups
    from srlm.stages.sft import read_eft, read_ift

    assert builtin_names() == ["eft", "heldout", "hh_eft", "hh_test", "hh_val", "ift", "judge_pairs", "oasst_prompts"]
    assert len(read_ift(resolve_data_path("builtin:ift"))) == 64
    assert len(read_eft(resolve_data_path("builtin:eft"))) == 60
    heldout = read_jsonl(resolve_data_path("builtin:heldout"), {"prompt": str})
    assert len(heldout) == 16 and len({r["prompt"] for r in heldout}) == 16
    groups, _counts, _fmt = read_human_groups(resolve_data_path("builtin:judge_pairs"))
    assert len(groups) == 12
    for name, size in (("hh_eft", 688), ("hh_val", 300), ("hh_test", 400)):
        groups, counts, fmt = read_human_groups(resolve_data_path(f"builtin:{name}"))
        assert fmt == "pairs" and len(groups) == size and counts["skipped_identical"] == 0
    prompts = read_jsonl(resolve_data_path("builtin:oasst_prompts"), {"prompt": str})
    assert len(prompts) == 250


def test_the_hh_splits_share_no_question():
    questions = {name: {r["prompt"] for r in read_jsonl(resolve_data_path(f"builtin:{name}"))}
                 for name in ("hh_eft", "hh_val", "hh_test")}
    assert not questions["hh_eft"] & questions["hh_val"]
    assert not questions["hh_eft"] & questions["hh_test"]
    assert not questions["hh_val"] & questions["hh_test"]


def test_heldout_prompts_are_not_training_prompts():
    train = {r["prompt"].strip().lower() for name in ("ift", "eft") for r in read_jsonl(resolve_data_path(f"builtin:{name}"))}
    heldout = {r["prompt"].strip().lower() for r in read_jsonl(resolve_data_path("builtin:heldout"))}
    assert not train & heldout


def test_unknown_builtin_and_missing_file_are_named():
    with pytest.raises(SrlmError, match=r"unknown built-in data set 'builtin:nope' \(available: builtin:eft, builtin:heldout"):
        resolve_data_path("builtin:nope")
    with pytest.raises(SrlmError, match="no/such.jsonl: data file not found"):
        resolve_data_path("no/such.jsonl")
    assert resolve_data_path(None) is None
