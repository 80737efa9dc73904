import json

import pytest

from srlm.errors import DataError, SrlmError
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


TEN_MB = 10 * 2**20


def ten_mb_prompt() -> str:
    return ("lorem ipsum dolor sit amet " * (TEN_MB // 27 + 1))[:TEN_MB]


def test_a_ten_megabyte_line_is_read_and_a_broken_one_is_named(tmp_path):
    path = tmp_path / "big.jsonl"
    big = "x" * TEN_MB
    path.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": big}) + "\n")
    records = read_jsonl(path, {"prompt": str})
    assert len(records[1]["prompt"]) == TEN_MB
    path.write_text(json.dumps({"prompt": "short"}) + "\n" + '{"prompt": "' + big + "\n")
    # The newline ends the line inside the string: the parser stops at it, 10 MB in.
    message = rf"big.jsonl:2: malformed JSON \(Invalid control character at column {TEN_MB + 13}\)$"
    with pytest.raises(DataError, match=message):
        read_jsonl(path)
    path.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": big})[:-1] + ", 3]}\n")
    with pytest.raises(DataError, match=r"big.jsonl:2: malformed JSON") as info:
        read_jsonl(path)
    assert len(str(info.value)) < 300  # the message names the place; it never quotes the 10 MB line


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_ten_megabyte_last_line_without_a_newline(tmp_path, suffix):
    import gzip

    path = tmp_path / f"big{suffix}"
    write = (lambda data: gzip.open(path, "wb").write(data)) if suffix.endswith(".gz") else path.write_bytes
    line = json.dumps({"prompt": ten_mb_prompt() + " \u00e9"}, ensure_ascii=False).encode("utf-8")
    head = b'{"prompt": "short"}\n'
    write(head + line)  # complete, only the final newline is missing: an ordinary file
    assert len(read_jsonl(path, {"prompt": str})[1]["prompt"]) == TEN_MB + 2
    write(head + line[: len(line) // 2])  # cut in the middle: named as truncated, with its line
    with pytest.raises(DataError, match=rf"big{suffix}:2: malformed JSON \(Unterminated string starting at column 12\);"
                                        r" the file ends inside this line "
                                        r"\(no final newline\): truncated\?"):
        read_jsonl(path)
    cut = line.index("\u00e9".encode()) + 1  # in the middle of the two bytes of "é"
    write(head + line[:cut])
    with pytest.raises(DataError, match=rf"big{suffix}:2: not valid UTF-8 \(unexpected end of data at byte {cut - 1}\);"
                                        r" the file ends inside this line"):
        read_jsonl(path)
    write(head + line[:-1] + b"\n")  # a broken line that does end in a newline is not called truncated
    with pytest.raises(DataError, match=rf"big{suffix}:2: malformed JSON") as info:
        read_jsonl(path)
    assert "truncated" not in str(info.value)


def test_a_ten_megabyte_prompt_is_read_then_skipped_by_the_stages_and_counted(tmp_path):
    from srlm.backends import make_backend
    from srlm.config import PromptsConfig, RespondConfig
    from srlm.stages.prompts import run_prompts
    from srlm.stages.respond import run_respond

    big = ten_mb_prompt()
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": "Name a colour."}, {"prompt": big}, {"prompt": "Name a fruit."}])
    stats = run_respond(prompts, tmp_path / "responses.jsonl", make_backend("fake"), RespondConfig(num_samples=2),
                        seed=0)
    assert stats["skipped_prompt_too_long"] == 1 and stats["prompts"] == 2 and stats["responses"] == 4
    assert {r["prompt"] for r in read_jsonl(tmp_path / "responses.jsonl")} == {"Name a colour.", "Name a fruit."}

    # As a seed prompt it is no demonstration: never shown to the generator, never compared against, counted.
    seeds = ["Explain how a rainbow forms after a storm.", big, "Give three tips for staying focused while studying."]
    backend = make_backend("fake")
    shown = []
    generate = backend.generate

    def recording_generate(requests, on_done=None):
        shown.extend(request.text for request in requests)
        return generate(requests, on_done)

    backend.generate = recording_generate
    stats = run_prompts(seeds, [], tmp_path / "new.jsonl", backend, PromptsConfig(num_prompts=4), seed=0)
    assert stats["seed_prompts_skipped_too_long"] == 1 and stats["kept"] == 4
    assert shown and max(len(text) for text in shown) < 10_000
    with pytest.raises(SrlmError, match="all 1 seed prompts are longer than prompts.max_words"):
        run_prompts([big], [], tmp_path / "none.jsonl", backend, PromptsConfig(num_prompts=4), seed=0)


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


def test_maybe_empty_fields_take_empty_strings_but_not_other_types(tmp_path):
    from srlm.io import MaybeEmpty

    path = tmp_path / "r.jsonl"
    path.write_text('{"response": ""}\n{"response": " \\n"}\n')
    assert [r["response"] for r in read_jsonl(path, {"response": MaybeEmpty})] == ["", " \n"]
    path.write_text('{"response": ""}\n{"response": null}\n')
    with pytest.raises(DataError, match=r"r.jsonl:2: field 'response' must be a string, got NoneType"):
        read_jsonl(path, {"response": MaybeEmpty})
    path.write_text('{"other": ""}\n')
    with pytest.raises(DataError, match=r"r.jsonl:1: missing field 'response'"):
        read_jsonl(path, {"response": MaybeEmpty})


def test_writes_that_cannot_happen_are_errors_naming_the_path(tmp_path):
    from srlm.io import check_output_path, write_json

    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SrlmError, match=r"folder: is a directory"):
        write_jsonl(tmp_path / "folder", [{"a": 1}])
    with pytest.raises(SrlmError, match=r"file/out.json: cannot be created: .*file is a file, not a folder"):
        write_json(tmp_path / "file" / "out.json", {})
    with pytest.raises(SrlmError, match=r"folder: is a directory"):
        ResumableJsonlWriter(tmp_path / "folder", id_field="id")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]  # no .partial, no temporary file
    assert check_output_path(tmp_path / "new" / "deeper" / "out.jsonl") == tmp_path / "new" / "deeper" / "out.jsonl"
    with pytest.raises(SrlmError, match=r"--out is empty"):
        check_output_path("", what="--out")
    with pytest.raises(SrlmError, match=r"file: exists and is not a directory"):
        check_output_path(tmp_path / "file", kind="dir")
