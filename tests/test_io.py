import json

import pytest

from srlm.errors import DataError
from srlm.io import ResumableJsonlWriter, read_jsonl, stable_id, stable_seed, write_jsonl


def test_read_jsonl_names_file_line_and_field(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    with pytest.raises(DataError, match=r"data.jsonl:2: field 'prompt' must be a string"):
        read_jsonl(path, {"prompt": str})
    path.write_text('{"prompt": "a"}\n\n{"other": "b"}\n')
    with pytest.raises(DataError, match=r"data.jsonl:3: missing field 'prompt'"):
        read_jsonl(path, {"prompt": str})


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"prompt": "a"}\n{"prompt": ', r"data.jsonl:2: malformed JSON"),
        (b'{"prompt": "\xff"}\n', r"data.jsonl:1: not valid UTF-8"),
        (b'["a"]\n', r"data.jsonl:1: expected a JSON object"),
        (b'{"prompt": "   "}\n', r"data.jsonl:1: field 'prompt' is empty"),
        (b"", r"data.jsonl: no records"),
        (b'{"prompt": "a", "score": NaN}\n', r"data.jsonl:1: non-finite number NaN"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_jsonl(path, {"prompt": str, **({"score": float} if b"NaN" in content else {})})


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_write_is_atomic_and_refuses_nan(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])
    with pytest.raises(ValueError):
        write_jsonl(path, [{"a": 2}, {"a": float("nan")}])
    assert read_jsonl(path) == [{"a": 1}]  # the old file is untouched, no half-written file
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_stable_ids_do_not_depend_on_the_process():
    assert stable_id("prompt", "hello") == stable_id("prompt", "hello")
    assert stable_id("prompt", "hello") != stable_id("prompt", "hello!")
    # sha256-based: a fixed value, unlike hash(), which changes with PYTHONHASHSEED
    assert stable_id("x") == "2d711642b726b044"
    assert 0 <= stable_seed("x") < 2**31


def test_resumable_writer_recovers_from_a_torn_line(tmp_path):
    path = tmp_path / "out.jsonl"
    writer = ResumableJsonlWriter(path, "id")
    writer.append([{"id": "a"}, {"id": "b"}])
    with writer.partial_path.open("a") as handle:  # the process died in the middle of a write
        handle.write('{"id": "c", "te')
    resumed = ResumableJsonlWriter(path, "id")
    assert resumed.done_ids == {"a", "b"}
    resumed.append([{"id": "c"}])
    with pytest.raises(DataError, match="produced twice"):
        resumed.append([{"id": "a"}])
    records = resumed.finish(order_key=lambda r: r["id"])
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    assert not resumed.partial_path.exists()


def test_a_ten_megabyte_line_is_read_and_a_broken_one_is_named(tmp_path):
    path = tmp_path / "big.jsonl"
    big = "x" * (10 * 2**20)
    path.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": big}) + "\n")
    records = read_jsonl(path, {"prompt": str})
    assert len(records[1]["prompt"]) == 10 * 2**20
    path.write_text(json.dumps({"prompt": "short"}) + "\n" + '{"prompt": "' + big + "\n")
    with pytest.raises(DataError, match=r"big.jsonl:2: malformed JSON"):
        read_jsonl(path)


def test_gzip_files_are_read_and_corrupt_ones_named(tmp_path):
    import gzip

    from srlm.io import iter_json_lines

    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write('{"a": 1}\n"text"\n')
    assert list(iter_json_lines(path, allow_strings=True)) == [(1, {"a": 1}), (2, "text")]
    with pytest.raises(DataError, match=r"d.jsonl.gz:2: expected a JSON object, got str"):
        list(iter_json_lines(path))
    path.write_bytes(path.read_bytes()[:-8])  # cut the gzip trailer
    with pytest.raises(DataError, match="corrupt or truncated gzip data"):
        list(iter_json_lines(path, allow_strings=True))
