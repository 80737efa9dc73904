"""Tests of srlm.data.formats: every supported format, on the real public files where we have them."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srlm.cli.data import add_data_commands
from srlm.data.formats import detect_format, load_records, read_records
from srlm.errors import DataError
from srlm.io import read_jsonl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"shared test data not found at {DATA}")


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------
# detect_format


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"prompt": "p", "response": "r"}, "srlm"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"instruction": "i", "output": "o"}, "alpaca"),
        ({"instruction": "i", "output": "o", "generator": "g", "dataset": "d"}, "alpaca_eval"),
        ({"conversations": [{"from": "human", "value": "v"}]}, "sharegpt"),
        ({"messages": [{"role": "user", "content": "c"}]}, "openai"),
        ({"prompt": "p"}, "prompts"),
        ({"instruction": "i"}, "prompts"),
        ("a bare string", "prompts"),
        ({"id": "x", "instruction": "i", "instances": [{"input": "", "output": "o"}]}, "self_instruct"),
        ({"question_id": 81, "turns": ["t1", "t2"]}, "mt_bench"),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record) == expected


def test_detect_format_unknown_record():
    with pytest.raises(DataError, match="no keys of a known format"):
        detect_format({"question": "q", "answer": "a"})
    with pytest.raises(DataError):
        detect_format(42)


# --------------------------------------------------------------------------------------------------------------
# The real public files


@needs_data
def test_alpaca_eval_outputs(caplog):
    path = DATA / "alpaca_eval" / "text_davinci_003_outputs.json"
    raw = json.loads(path.read_text())
    prompts = load_records(path, kind="prompts")
    assert len(prompts) == len(raw) == 805
    assert prompts[0] == {"prompt": raw[0]["instruction"].strip()}

    result = read_records(path, kind="ift")
    empty = sum(1 for r in raw if not r["output"].strip())
    assert result.format == "alpaca_eval"
    assert result.skipped_empty == empty and len(result.records) == 805 - empty
    assert result.records[0] == {"prompt": raw[0]["instruction"].strip(), "response": raw[0]["output"].strip(), "source": "helpful_base"}


@needs_data
def test_mt_bench_questions_are_prompts_only():
    path = DATA / "mt_bench" / "question.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    prompts = load_records(path, kind="prompts")
    assert [p["prompt"] for p in prompts] == [r["turns"][0].strip() for r in raw]
    assert prompts[0]["id"] == str(raw[0]["question_id"])
    with pytest.raises(DataError, match="question.jsonl:1: format 'mt_bench' holds prompts only"):
        load_records(path, kind="ift")


@needs_data
def test_self_instruct_seed_tasks():
    path = DATA / "self_instruct" / "seed_tasks.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    records = load_records(path, kind="ift")
    assert len(records) == len(raw) == 175
    for record, task in zip(records, raw):
        instance = task["instances"][0]
        expected = task["instruction"].strip()
        if instance["input"].strip():
            expected += "\n\n" + instance["input"].strip()
        assert record == {"prompt": expected, "response": instance["output"].strip(), "id": task["id"]}


@needs_data
def test_prompt_lottery_bare_strings():
    path = DATA / "oasst" / "prompt_lottery_en_250_text.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    prompts = load_records(path, kind="prompts")
    assert [p["prompt"] for p in prompts] == [text.strip() for text in raw]
    assert len(prompts) == 250
    with pytest.raises(DataError, match="holds prompts only"):
        load_records(path, kind="ift")


# --------------------------------------------------------------------------------------------------------------
# Formats from hand-made files


def test_srlm_format_keeps_metadata_only(tmp_path):
    path = write_jsonl(tmp_path / "ift.jsonl", [{"prompt": " P ", "response": "R\n", "id": 7, "lang": "en", "extra": 1}])
    assert load_records(path, kind="ift") == [{"prompt": "P", "response": "R", "id": "7", "lang": "en"}]
    assert load_records(path, kind="prompts") == [{"prompt": "P", "id": "7"}]


def test_alpaca_json_array_and_jsonl(tmp_path):
    records = [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue"},
        {"instruction": "Name a fruit.", "output": "Apple"},  # input is optional
    ]
    array = tmp_path / "alpaca_data.json"
    array.write_text(json.dumps(records, indent=2))
    lines = write_jsonl(tmp_path / "alpaca.jsonl", records)
    expected = [
        {"prompt": "Translate to French.\n\nGood morning", "response": "Bonjour"},
        {"prompt": "Name a colour.", "response": "Blue"},
        {"prompt": "Name a fruit.", "response": "Apple"},
    ]
    assert load_records(array, kind="ift") == load_records(lines, kind="ift") == expected
    assert load_records(array, kind="prompts")[0] == {"prompt": "Translate to French.\n\nGood morning"}


def test_json_file_that_is_really_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "data.json", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
    assert len(load_records(path, kind="ift")) == 2


def test_sharegpt_first_exchange(tmp_path):
    record = {
        "id": "conv1",
        "conversations": [
            {"from": "system", "value": "You are helpful."},
            {"from": "human", "value": "Hi there"},
            {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "Second question"},
            {"from": "gpt", "value": "Second answer"},
        ],
    }
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [record])
    assert load_records(path, kind="ift") == [{"prompt": "Hi there", "response": "Hello!", "id": "conv1"}]

    no_reply = {"conversations": [{"from": "human", "value": "Anyone?"}]}
    path = write_jsonl(tmp_path / "no_reply.jsonl", [record, no_reply])
    with pytest.raises(DataError, match=r"no_reply\.jsonl:2: field 'conversations'.*no reply"):
        load_records(path, kind="ift")
    assert load_records(path, kind="prompts")[1] == {"prompt": "Anyone?"}

    bad = {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}
    path = write_jsonl(tmp_path / "bad.jsonl", [bad])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: missing field 'conversations\[0\]\.value'"):
        load_records(path, kind="ift")


def test_openai_messages(tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    path = write_jsonl(tmp_path / "chat.jsonl", [record])
    assert load_records(path, kind="ift") == [{"prompt": "2+2?", "response": "4"}]
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "x"}]}
    path = write_jsonl(tmp_path / "parts.jsonl", [parts])
    with pytest.raises(DataError, match=r"parts\.jsonl:1: field 'messages\[0\]\.content' must be a string"):
        load_records(path, kind="ift")


def test_prompt_only_objects(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "one", "id": "a"}, "two", {"prompt": "three"}])
    assert load_records(path, kind="prompts") == [{"prompt": "one", "id": "a"}, {"prompt": "two"}, {"prompt": "three"}]
    path = write_jsonl(tmp_path / "instructions.jsonl", [{"instruction": "do x"}, {"instruction": "do y"}])
    assert [r["prompt"] for r in load_records(path, kind="prompts")] == ["do x", "do y"]


def test_gzipped_jsonl(tmp_path):
    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    assert load_records(path, kind="ift") == [{"prompt": "p", "response": "r"}]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"instruction": "Say hi.", "input": None, "output": "Hi"}, {"instruction": "Add.", "input": "1+1", "output": "2"}]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_records(path, kind="ift") == [
        {"prompt": "Say hi.", "response": "Hi"},
        {"prompt": "Add.\n\n1+1", "response": "2"},
    ]
    # A folder of Parquet files, as a Hub snapshot stores them.
    assert len(load_records(tmp_path, kind="prompts")) == 2


def test_hub_id_goes_through_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"instruction": "Say hi.", "input": "", "output": "Hi"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_records("tatsu-lab/alpaca", kind="ift") == [{"prompt": "Say hi.", "response": "Hi"}]
    assert calls == [("tatsu-lab/alpaca", "train")]


def test_hub_failure_is_a_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(name, split=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="some-org/some-data: cannot load from the Hugging Face Hub"):
        load_records("some-org/some-data", kind="ift")


# --------------------------------------------------------------------------------------------------------------
# Errors name the line and the field


def test_mixed_formats_are_an_error(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [{"instruction": "a", "input": "", "output": "b"}, {"conversations": [{"from": "human", "value": "x"}]}],
    )
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: missing field 'instruction'.*looks like 'sharegpt'.*file is 'alpaca'"):
        load_records(path, kind="ift")
    # Records that have all the fields the file's format needs, but are of another format, are also refused.
    path = write_jsonl(tmp_path / "mixed2.jsonl", [{"prompt": "a"}, {"instruction": "b", "output": "c"}])
    with pytest.raises(DataError, match=r"mixed2\.jsonl:2: field 'output': this record is in 'alpaca' format"):
        load_records(path, kind="prompts")


def test_missing_field_of_the_detected_format(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d"}])
    with pytest.raises(DataError, match=r"alpaca\.jsonl:2: missing field 'output'"):
        load_records(path, kind="ift")
    path = write_jsonl(tmp_path / "srlm.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "reply": "d"}])
    with pytest.raises(DataError, match=r"srlm\.jsonl:2: missing field 'response'"):
        load_records(path, kind="ift")


def test_wrong_types_and_bad_files(tmp_path):
    path = write_jsonl(tmp_path / "types.jsonl", [{"prompt": "a", "response": ["b"]}])
    with pytest.raises(DataError, match=r"types\.jsonl:1: field 'response' must be a string, got list"):
        load_records(path, kind="ift")
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl:2: malformed JSON"):
        load_records(path, kind="ift")
    path = write_jsonl(tmp_path / "unknown.jsonl", [{"question": "q"}])
    with pytest.raises(DataError, match=r"unknown\.jsonl:1: cannot tell the format"):
        load_records(path, kind="ift")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no usable records"):
        load_records(empty, kind="prompts")
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "missing.jsonl", kind="ift")
    with pytest.raises(ValueError):
        load_records(path, kind="pairs")


def test_explicit_format_overrides_detection(tmp_path):
    # AlpacaEval-looking records read as plain Alpaca: same prompt and response, no `source` from `dataset`.
    path = write_jsonl(tmp_path / "ae.jsonl", [{"instruction": "i", "output": "o", "dataset": "d", "generator": "g"}])
    assert load_records(path, kind="ift", format="alpaca") == [{"prompt": "i", "response": "o"}]
    with pytest.raises(DataError, match=r"ae\.jsonl:1: missing field 'conversations'"):
        load_records(path, kind="ift", format="sharegpt")


def test_empty_texts_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "some_empty.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "  ", "response": "c"}])
    result = read_records(path, kind="ift")
    assert result.records == [{"prompt": "a", "response": "b"}] and result.skipped_empty == 1
    assert "some_empty.jsonl:2: field 'prompt' is empty" in result.first_skipped


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1).filter(str.strip), st.text(min_size=1).filter(str.strip)), min_size=1, max_size=5
    )
)
def test_srlm_records_round_trip(tmp_path_factory, pairs):
    path = tmp_path_factory.mktemp("rt") / "ift.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs), encoding="utf-8")
    assert load_records(path, kind="ift") == [{"prompt": p.strip(), "response": r.strip()} for p, r in pairs]


# --------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_convert(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="srlm")
    add_data_commands(parser.add_subparsers(dest="command"))
    source = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    out = tmp_path / "out" / "ift.jsonl"
    args = parser.parse_args(["data", "convert", str(source), "--out", str(out), "--kind", "ift"])
    assert args.func(args) == 0
    assert read_jsonl(out) == [{"prompt": "q", "response": "a"}]
    printed = capsys.readouterr().out
    assert "openai" in printed and "written" in printed

    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["data", "convert", "--help"])
    assert exit_info.value.code == 0
    assert "sharegpt" in capsys.readouterr().out
