"""Reading instruction data in the formats people publish it in, normalised to srlm's two schemas.

srlm's stages read only two record shapes:
- IFT: `{"prompt": str, "response": str}` plus optional metadata (`id`, `source`, `lang`);
- prompt-only: `{"prompt": str}` (plus `id` when the source has one, so evaluation prompts stay traceable).

`load_records` turns the common public formats into those shapes, so that a user can bring their own seed or
evaluation data without writing a converter:

- `srlm`: `prompt`, `response`, taken as they are.
- `alpaca`: `instruction`, optional `input`, `output`; the prompt is the instruction, a blank line, the input.
- `alpaca_eval`: `instruction`, `output` and `generator`/`dataset` (AlpacaEval's outputs files).
- `sharegpt`: `conversations: [{from: human|gpt|system, value}]`; the first human turn and the turn after it.
- `openai`: `messages: [{role, content}]`; the first user message and the assistant message after it.
- `prompts`: `prompt` or `instruction` alone, or a bare JSON string per line; prompts only.
- `self_instruct`: `instruction`, `instances: [{input, output}]` (Self-Instruct's seed tasks); the first instance.
- `mt_bench`: `turns: [str, ...]` (MT-Bench's question.jsonl); the first turn, prompts only.

Containers are chosen by the path, independently of the record format: `*.parquet` (or a folder of them),
a `.json` file holding an array, JSON Lines (optionally `.gz`), or a Hugging Face Hub id such as
`tatsu-lab/alpaca` (read through `datasets.load_dataset`, for users who are online).

With `format="auto"` the format is detected from the first record's keys (`detect_format`); every later record
must be of the same format, and a record that is not, or that lacks a field its format needs, is a `DataError`
naming where it is and which field. Texts are stripped of surrounding whitespace. A prompt or response that is
empty after stripping is not a schema error but a data-quality one that real data sets have (AlpacaEval's
reference outputs include an empty one): such records are skipped, counted, and logged.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from srlm.errors import DataError
from srlm.io import iter_json_lines

FORMATS = ("srlm", "alpaca", "alpaca_eval", "sharegpt", "openai", "prompts", "self_instruct", "mt_bench")
KINDS = ("ift", "prompts")
# Formats that carry no response: they can only be loaded as prompts.
PROMPT_ONLY_FORMATS = frozenset({"prompts", "mt_bench"})

# Formats that differ only in optional keys; records of one may sit in a file of the other.
_FAMILY = {
    "srlm": "prompt",
    "prompts": "prompt",
    "alpaca": "instruction",
    "alpaca_eval": "instruction",
    "self_instruct": "self_instruct",
    "sharegpt": "sharegpt",
    "openai": "openai",
    "mt_bench": "mt_bench",
}

_log = logging.getLogger(__name__)

_HUMAN_SPEAKERS = {"human", "user"}
_SYSTEM_SPEAKERS = {"system"}


# --------------------------------------------------------------------------------------------------------------
# Format detection


def _detect(record: Any) -> str | None:
    """The format a record's keys identify, or None. Container-level keys are checked before generic ones."""
    if isinstance(record, str):
        return "prompts"
    if not isinstance(record, dict):
        return None
    keys = record.keys()
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "openai"
    if "turns" in keys:
        return "mt_bench"
    if "instruction" in keys and "instances" in keys:
        return "self_instruct"
    if "instruction" in keys and "output" in keys:
        # AlpacaEval output files carry `generator` and `dataset` and never `input`; Alpaca files carry `input`.
        if "input" not in keys and ("generator" in keys or "dataset" in keys):
            return "alpaca_eval"
        return "alpaca"
    if "prompt" in keys and "response" in keys:
        return "srlm"
    if "prompt" in keys or "instruction" in keys:
        return "prompts"
    return None


def detect_format(record: Any) -> str:
    """The name (one of `FORMATS`) of the format a single record is in; `DataError` if none fits."""
    found = _detect(record)
    if found is None:
        if isinstance(record, dict):
            shown = ", ".join(sorted(record)[:12]) or "none"
            raise DataError(
                f"record has no keys of a known format (keys: {shown}); expected one of {', '.join(FORMATS)}"
            )
        raise DataError(f"record is a JSON {type(record).__name__}, expected an object or a string")
    return found


# --------------------------------------------------------------------------------------------------------------
# Field access with located errors


class _EmptyText(DataError):
    """A text field that is present but blank: the record is skipped and counted, not fatal."""


def _text(record: dict, field: str, where: str, *, label: str | None = None) -> str:
    """`record[field]` as a stripped non-empty string; otherwise a DataError naming `where` and the field."""
    name = label or field
    if field not in record or record[field] is None:
        raise DataError(f"{where}: missing field '{name}'")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise _EmptyText(f"{where}: field '{name}' is empty")
    return value


def _optional_text(record: dict, field: str, where: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    return value.strip()


def _list(record: dict, field: str, where: str) -> list:
    value = record.get(field)
    if value is None:
        raise DataError(f"{where}: missing field '{field}'")
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}' must be a non-empty list")
    return value


def _join(instruction: str, extra_input: str) -> str:
    # Alpaca's own convention: the input is a separate paragraph after the instruction.
    return f"{instruction}\n\n{extra_input}" if extra_input else instruction


def _metadata(record: dict, *, id_field: str = "id", source_field: str = "source") -> dict:
    meta: dict[str, str] = {}
    for out_key, in_key in (("id", id_field), ("source", source_field), ("lang", "lang")):
        value = record.get(in_key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip():
            meta[out_key] = str(value)
    return meta


# --------------------------------------------------------------------------------------------------------------
# One extractor per format: (record, where, want_response) -> (prompt, response or None, metadata)

Extracted = tuple[str, "str | None", dict]


def _from_srlm(record: Any, where: str, want_response: bool) -> Extracted:
    prompt = _text(record, "prompt", where)
    response = _text(record, "response", where) if want_response else None
    return prompt, response, _metadata(record)


def _from_alpaca(record: Any, where: str, want_response: bool) -> Extracted:
    prompt = _join(_text(record, "instruction", where), _optional_text(record, "input", where))
    response = _text(record, "output", where) if want_response else None
    return prompt, response, _metadata(record)


def _from_alpaca_eval(record: Any, where: str, want_response: bool) -> Extracted:
    prompt = _text(record, "instruction", where)
    response = _text(record, "output", where) if want_response else None
    return prompt, response, _metadata(record, source_field="dataset")


def _speaker_turns(record: dict, where: str, field: str, who_key: str, text_key: str) -> list[tuple[str, dict, str]]:
    turns = _list(record, field, where)
    out = []
    for index, turn in enumerate(turns):
        label = f"{field}[{index}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field '{label}' must be an object with '{who_key}' and '{text_key}'")
        who = turn.get(who_key)
        if not isinstance(who, str):
            raise DataError(f"{where}: missing field '{label}.{who_key}'")
        out.append((who.strip().lower(), turn, label))
    return out


def _first_exchange(
    record: dict, where: str, want_response: bool, *, field: str, who_key: str, text_key: str, human: set[str]
) -> tuple[str, str | None]:
    """The first human turn and, if wanted, the model turn right after it. System turns are ignored:
    srlm's prompts carry no system prompt, and the chat template adds its own."""
    turns = _speaker_turns(record, where, field, who_key, text_key)
    for position, (who, turn, label) in enumerate(turns):
        if who not in human:
            continue
        prompt = _text(turn, text_key, where, label=f"{label}.{text_key}")
        if not want_response:
            return prompt, None
        following = turns[position + 1] if position + 1 < len(turns) else None
        if following is None or following[0] in human or following[0] in _SYSTEM_SPEAKERS:
            raise DataError(f"{where}: field '{field}': the first {'/'.join(sorted(human))} turn has no reply after it")
        return prompt, _text(following[1], text_key, where, label=f"{following[2]}.{text_key}")
    raise DataError(f"{where}: field '{field}' has no {'/'.join(sorted(human))} turn")


def _from_sharegpt(record: Any, where: str, want_response: bool) -> Extracted:
    prompt, response = _first_exchange(
        record, where, want_response, field="conversations", who_key="from", text_key="value", human=_HUMAN_SPEAKERS
    )
    return prompt, response, _metadata(record)


def _from_openai(record: Any, where: str, want_response: bool) -> Extracted:
    prompt, response = _first_exchange(
        record, where, want_response, field="messages", who_key="role", text_key="content", human={"user"}
    )
    return prompt, response, _metadata(record)


def _from_prompts(record: Any, where: str, want_response: bool) -> Extracted:
    if isinstance(record, str):
        prompt = record.strip()
        if not prompt:
            raise _EmptyText(f"{where}: the prompt string is empty")
        return prompt, None, {}
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object or string, got {type(record).__name__}")
    field = "prompt" if "prompt" in record else "instruction"
    if field not in record:
        raise DataError(f"{where}: missing field 'prompt' (or 'instruction')")
    return _text(record, field, where), None, _metadata(record)


def _from_self_instruct(record: Any, where: str, want_response: bool) -> Extracted:
    instruction = _text(record, "instruction", where)
    first = _list(record, "instances", where)[0]
    if not isinstance(first, dict):
        raise DataError(f"{where}: field 'instances[0]' must be an object with 'input' and 'output'")
    # Only the first instance is used: the seed tasks have one each, and a task is one prompt, not several.
    prompt = _join(instruction, _optional_text(first, "input", where))
    response = _text(first, "output", where, label="instances[0].output") if want_response else None
    return prompt, response, _metadata(record)


def _from_mt_bench(record: Any, where: str, want_response: bool) -> Extracted:
    turns = _list(record, "turns", where)
    # The later turns refer to the model's first answer, so only the first stands alone as a prompt.
    prompt = _text({"turns[0]": turns[0]}, "turns[0]", where)
    return prompt, None, _metadata(record, id_field="question_id" if "question_id" in record else "id")


_EXTRACTORS: dict[str, Callable[[Any, str, bool], Extracted]] = {
    "srlm": _from_srlm,
    "alpaca": _from_alpaca,
    "alpaca_eval": _from_alpaca_eval,
    "sharegpt": _from_sharegpt,
    "openai": _from_openai,
    "prompts": _from_prompts,
    "self_instruct": _from_self_instruct,
    "mt_bench": _from_mt_bench,
}


# --------------------------------------------------------------------------------------------------------------
# Containers: where records come from. Each reader yields (where, record); `where` goes into every error message.


def looks_like_hub_id(source: str | Path) -> bool:
    """True for a string that is not an existing path but has the shape of a Hub dataset id (`owner/name`)."""
    text = str(source)
    if Path(text).exists() or text.count("/") != 1 or text.startswith((".", "/")):
        return False
    if text.endswith((".json", ".jsonl", ".gz", ".parquet")):
        return False
    return all(part and all(ch.isalnum() or ch in "-_." for ch in part) for part in text.split("/"))


def _iter_json_lines(path: Path, *, allow_strings: bool) -> Iterator[tuple[str, Any]]:
    for line_no, record in iter_json_lines(path, allow_strings=allow_strings):
        yield f"{path}:{line_no}", record


def _iter_json_array(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got a JSON {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"{path}: record {index + 1}", record


def _clean(value: Any) -> Any:
    # pandas-written Parquet stores a missing number as NaN; every consumer here reads that as "absent".
    return None if isinstance(value, float) and math.isnan(value) else value


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq  # imported here: slow, and only Parquet users pay for it

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    for file in files:
        try:
            table = pq.read_table(file)
        except Exception as exc:  # pyarrow raises several unrelated exception types for a bad file
            raise DataError(f"{file}: cannot read as Parquet ({exc})") from None
        for index, row in enumerate(table.to_pylist()):
            yield f"{file}: row {index + 1}", {key: _clean(value) for key, value in row.items()}


def _iter_hub(dataset_id: str, split: str | None) -> Iterator[tuple[str, dict]]:
    from srlm.hub import check_hub_dataset, offline_dataset_hint

    check_hub_dataset(dataset_id)  # an unreachable Hub fails now, not after datasets' retries
    import datasets  # imported here: slow, and offline users never need it

    try:
        loaded = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # network, authentication, unknown id or split: all for the user to fix
        raise DataError(f"{dataset_id}: cannot load from the Hugging Face Hub ({type(exc).__name__}: {exc})"
                        f"{offline_dataset_hint(dataset_id)}") from None
    parts = list(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [(split, loaded)]
    for split_name, part in parts:
        for index, row in enumerate(part):
            yield f"hub {dataset_id} [{split_name}] row {index + 1}", {key: _clean(value) for key, value in row.items()}


def _starts_with_array(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def iter_source(
    source: str | Path, *, split: str | None = "train", allow_strings: bool = True
) -> Iterator[tuple[str, Any]]:
    """`(where, record)` for every record of a local file or folder, or of a Hub dataset (`split=None`: all splits).

    Records come back as stored; validating them is the caller's job. Also used by `srlm.data.oasst`.
    """
    path = Path(source)
    if not path.exists():
        if looks_like_hub_id(source):
            yield from _iter_hub(str(source), split)
            return
        raise DataError(f"{path}: file not found (and not a Hugging Face Hub id of the form owner/name)")
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise DataError(f"{path}: is a directory without .parquet files; pass a data file")
        yield from _iter_parquet(path)
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path)
    elif path.suffix == ".json" and _starts_with_array(path):
        yield from _iter_json_array(path)
    else:
        # .jsonl, .jsonl.gz, and the many .json files that are really JSON Lines.
        yield from _iter_json_lines(path, allow_strings=allow_strings)


# --------------------------------------------------------------------------------------------------------------
# Public entry points


@dataclass
class LoadResult:
    """What `read_records` found: the normalised records, the format used, and what was skipped and why."""

    records: list[dict]
    format: str
    skipped_empty: int = 0
    first_skipped: str = ""  # the message for the first skipped record, to show the user an example


def read_records(path_or_id: str | Path, *, kind: str, format: str = "auto", split: str = "train") -> LoadResult:
    """Like `load_records`, also telling which format was used and how many records were skipped as empty."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {', '.join(FORMATS)}, got {format!r}")
    want_response = kind == "ift"

    chosen: str | None = None if format == "auto" else format
    detected_at = ""
    result = LoadResult(records=[], format="")
    for where, record in iter_source(path_or_id, split=split):
        if chosen is None:
            chosen = _detect(record)
            detected_at = where
            if chosen is None:
                keys = ", ".join(sorted(record)[:12]) if isinstance(record, dict) else type(record).__name__
                raise DataError(
                    f"{where}: cannot tell the format from the keys ({keys}); name it with --format (`srlm data "
                    f"convert`; format= from Python), one of {', '.join(FORMATS)}"
                )
        if want_response and chosen in PROMPT_ONLY_FORMATS:
            raise DataError(f"{where}: format '{chosen}' holds prompts only, no responses; read it with --kind prompts "
                            "(kind='prompts' from Python)")
        if chosen != "prompts" and not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object ('{chosen}' format), got a JSON {type(record).__name__}")
        try:
            prompt, response, meta = _EXTRACTORS[chosen](record, where, want_response)
        except _EmptyText as exc:
            result.skipped_empty += 1
            result.first_skipped = result.first_skipped or str(exc)
            continue
        except DataError as exc:
            other = _detect(record) if format == "auto" else None
            if other is not None and other != chosen:
                raise DataError(
                    f"{exc} (the record looks like '{other}', but the file is '{chosen}', detected at {detected_at})"
                ) from None
            raise
        if format == "auto":
            _check_same_format(record, where, chosen, detected_at)
        if want_response:
            out = {"prompt": prompt, "response": response, **meta}
        else:
            out = {"prompt": prompt, **({"id": meta["id"]} if "id" in meta else {})}
        result.records.append(out)
    if not result.records:
        example = f" ({result.first_skipped})" if result.first_skipped else ""
        raise DataError(f"{path_or_id}: no usable records{example}")
    assert chosen is not None
    result.format = chosen
    if result.skipped_empty:
        _log.warning(
            "%s: skipped %d record(s) with an empty text, e.g. %s",
            path_or_id, result.skipped_empty, result.first_skipped,
        )
    return result


def _check_same_format(record: Any, where: str, chosen: str, detected_at: str) -> None:
    """A record that has its format's fields but whose keys say it is of another format: the file mixes formats."""
    other = _detect(record)
    if other is None or _FAMILY[other] == _FAMILY[chosen]:
        return  # unknown shapes fall through to the extractor, which names the missing field
    telltale = {"sharegpt": "conversations", "openai": "messages", "mt_bench": "turns", "self_instruct": "instances"}
    field = telltale.get(other) or telltale.get(chosen) or ("output" if _FAMILY[other] == "instruction" else "prompt")
    raise DataError(
        f"{where}: field '{field}': this record is in '{other}' format but the file is '{chosen}' "
        f"(detected at {detected_at}); a file must not mix formats"
    )


def load_records(path_or_id: str | Path, *, kind: str, format: str = "auto", split: str = "train") -> list[dict]:
    """Records of a file or Hub dataset normalised to srlm's IFT schema (`kind="ift"`) or prompt-only schema.

    `format`: one of `FORMATS`, or "auto" to detect it from the first record. `split` is used for Hub ids only.
    Records with an empty prompt or response are skipped (and logged); any other bad record raises `DataError`
    naming its location and field.
    """
    return read_records(path_or_id, kind=kind, format=format, split=split).records
