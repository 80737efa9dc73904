"""Reading and writing the JSONL files that flow between stages.

Three promises, relied on everywhere:
- a bad file fails with a message naming the file, the line and the field (never a bare KeyError); a file that
  ends inside a line (no final newline, and the line does not parse) is named as truncated;
- an output file either exists complete or not at all (written to a temporary name, then renamed), with the
  permissions a plain `open()` would give it (the process umask, or the mode of the file it replaces); a path
  that cannot be written is a `SrlmError` naming it (`check_output_path` says so before any work is done);
- long stages append finished records to `<name>.partial` and, when restarted, skip the ids already there,
  so that a killed run neither loses nor repeats a record.

Lines have no length limit. A record is one JSON value, which cannot be parsed in pieces, so a line is read whole:
in time linear in its length (a 10 MB line takes about 0.05 s) and about three times its size in memory while it
is parsed. Whether a long *prompt* is usable is decided where tokens are known, not here: `respond` and `judge` skip
prompts over their `max_prompt_tokens` and count them, and `prompts` does not show seed prompts of more than
`prompts.max_words` words as demonstrations. A final line without a newline is read like any other when it parses.

Everything srlm writes lands inside the folder it was told to write to (a run directory, an `--out-dir`): names
are composed with `safe_child`, which refuses absolute names, `..` and symbolic links that lead outside.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import secrets
import stat
import zlib
from pathlib import Path, PurePath
from typing import Any, Iterable, Iterator

from srlm.errors import DataError, SrlmError

_TYPE_NAMES = {str: "string", int: "integer", float: "number", list: "list", dict: "object", bool: "boolean"}


class UnsafePathError(SrlmError):
    """A file srlm was about to write would land outside the folder it writes to."""


def safe_child(base: str | Path, name: str | PurePath) -> Path:
    """`base / name`, checked to stay inside `base`; raises `UnsafePathError` otherwise.

    `name` is relative and may have several parts ("models/m1"), but neither an absolute name nor a `..` part is
    accepted, even one that would come back inside ("a/../b"): srlm composes its names itself, so either is a bug or
    an attack. Symbolic links are followed, at every level below `base` and the name itself, dangling ones too; one
    that leads outside `base` is refused, since files would be written through it. `base` itself may be a link:
    where a run lives is the user's choice. Nothing is created; the path is returned as composed, not resolved.
    """
    base = Path(base)
    text = os.fspath(name)
    if "\x00" in text:
        raise UnsafePathError(f"{base}: refusing to write {text!r}: the name contains a NUL byte")
    rel = PurePath(text)
    if rel.is_absolute() or rel.anchor:
        raise UnsafePathError(f"{base}: refusing to write '{text}': an absolute name would leave this folder")
    if ".." in rel.parts:
        raise UnsafePathError(f"{base}: refusing to write '{text}': names with '..' parts are not accepted")
    if not rel.parts:
        raise UnsafePathError(f"{base}: refusing to write an empty name")
    target = base / rel
    try:
        root, real = base.resolve(), target.resolve()
    except (OSError, RuntimeError) as exc:  # a loop of symbolic links (RuntimeError before Python 3.13)
        raise UnsafePathError(f"{target}: cannot tell where it leads ({exc})") from None
    if real != root and root not in real.parents:
        raise UnsafePathError(
            f"{target}: refusing to write through a symbolic link to {real}, outside {root}; srlm writes only "
            "inside the folder it was given (replace the link by a real folder, or point srlm at the other place)"
        )
    return target


def ensure_inside(base: str | Path, path: str | Path) -> Path:
    """`path`, which must be `base / something`, checked like `safe_child(base, something)`."""
    try:
        rel = Path(path).relative_to(Path(base))
    except ValueError:
        raise UnsafePathError(f"{path}: refusing to write outside {base}") from None
    return safe_child(base, rel)


def stable_id(*parts: object, length: int = 16) -> str:
    """A short id from the content and position of a record. sha256, not hash(): it must not change between runs."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return digest[:length]


def stable_seed(*parts: object) -> int:
    """A 31-bit seed derived like `stable_id`, so a resumed run samples what an uninterrupted one would."""
    return int(stable_id(*parts, length=8), 16) & 0x7FFFFFFF


class MaybeEmpty:
    """Schema marker: a string field that may be empty or only whitespace (a model's answer can be).

    `{"response": MaybeEmpty}` checks that the field is present and a string, but not that it has text; a plain
    `str` in a schema refuses an empty string."""


def _check_field(path: Path, line_no: int, record: dict, field: str, expected: type | tuple[type, ...]) -> None:
    where = f"{path}:{line_no}"
    if field not in record:
        raise DataError(f"{where}: missing field '{field}'")
    value = record[field]
    if expected is MaybeEmpty:
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__} "
                            f"{json.dumps(value)[:60]}")
        return
    types = expected if isinstance(expected, tuple) else (expected,)
    # bool is an int in Python; a JSON true where a number is expected is still wrong.
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types) or (float in types and isinstance(value, int))
    if not ok:
        names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise DataError(f"{where}: field '{field}' must be a {names}, got {type(value).__name__} {json.dumps(value)[:60]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{where}: field '{field}' is {value}, expected a finite number")
    if isinstance(value, str) and str in types and not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")


def _refuse_constant(name: str):
    # Python's json accepts NaN and Infinity, which are not JSON; a NaN score would poison every mean downstream.
    raise ValueError(f"non-finite number {name} is not valid JSON")


def iter_json_lines(path: str | Path, *, allow_strings: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSONL file, plain or gzip (by the ".gz" suffix).

    The one place where srlm reads JSON lines: every reader gets the same checks and the same messages, each naming
    the file and line. Values must be JSON objects (or strings, with `allow_strings`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a JSONL file")
    opener = gzip.open if path.suffix == ".gz" else open
    line_no = 0
    try:
        with opener(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                # Only the last line of a file can lack its newline; if it also fails to parse, the file was most
                # likely cut off (a copy or a write that did not finish), and the message says so.
                cut = "" if raw.endswith(b"\n") else "; the file ends inside this line (no final newline): truncated?"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path}:{line_no}: not valid UTF-8 ({exc.reason} at byte {exc.start}){cut}"
                    ) from None
                if not line.strip():
                    continue
                try:
                    value = json.loads(line, parse_constant=_refuse_constant)
                except json.JSONDecodeError as exc:
                    message = exc.msg.removesuffix(" at")  # "Unterminated string starting at" + " at column N"
                    raise DataError(
                        f"{path}:{line_no}: malformed JSON ({message} at column {exc.colno}){cut}"
                    ) from None
                except RecursionError:
                    raise DataError(f"{path}:{line_no}: JSON nested too deeply to read") from None
                except ValueError as exc:
                    raise DataError(f"{path}:{line_no}: {exc}") from None
                if not (isinstance(value, dict) or (allow_strings and isinstance(value, str))):
                    expected = "a JSON object or string" if allow_strings else "a JSON object"
                    raise DataError(f"{path}:{line_no}: expected {expected}, got {type(value).__name__}")
                yield line_no, value
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}:{line_no + 1}: corrupt or truncated gzip data ({exc})") from None


def iter_jsonl(path: str | Path, schema: dict[str, type | tuple[type, ...]] | None = None) -> Iterator[dict]:
    """Yield the records of a JSONL file, checking each against `schema` (field -> type). Blank lines are skipped."""
    for _line_no, record in iter_jsonl_numbered(path, schema):
        yield record


def iter_jsonl_numbered(path: str | Path, schema: dict[str, type | tuple[type, ...]] | None = None
                        ) -> Iterator[tuple[int, dict]]:
    """Like `iter_jsonl`, with each record's line number, for checks that name the line."""
    path = Path(path)
    for line_no, record in iter_json_lines(path):
        for field, expected in (schema or {}).items():
            _check_field(path, line_no, record, field, expected)
        yield line_no, record


def read_jsonl(path: str | Path, schema: dict[str, type | tuple[type, ...]] | None = None) -> list[dict]:
    """All records of a JSONL file (see `iter_jsonl`). An empty file is an error: no stage can do anything with it."""
    records = list(iter_jsonl(path, schema))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _dumps(record: Any) -> str:
    # allow_nan=False: a NaN score written to disk would be read back as a number by other tools.
    return json.dumps(record, ensure_ascii=False, allow_nan=False, sort_keys=False)


def os_error_message(path: str | Path, exc: OSError, doing: str = "cannot write") -> str:
    """`PATH: cannot write (Permission denied: PARENT)`: an OSError told as a user-facing message about `path`."""
    reason = exc.strerror or str(exc)
    other = exc.filename if exc.filename not in (None, os.fspath(path)) else None
    return f"{path}: {doing} ({reason}{f': {other}' if other else ''})"


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def check_output_path(path: str | Path, *, what: str = "the output", kind: str = "file") -> Path:
    """Refuse, before any work is done, an output that cannot be written; returns it as a Path.

    kind "file": a file written whole (or `<file>.partial` appended to); it must not be an existing directory.
    kind "dir": a folder that is replaced whole when complete (a model checkpoint); it must not be an existing file.
    kind "workdir": a folder that files are written into (a run directory); it must be writable itself.
    In each case the folder the output goes into must exist or be creatable (no regular file where a folder must
    be) and be writable. The message names the path and `what` (the option, e.g. "--out"). Root passes the
    permission checks wherever the filesystem itself is writable, as it would pass the writes.
    """
    text = os.fspath(path)
    noun = "file" if kind == "file" else "folder"
    if not text.strip():
        raise SrlmError(f"{what} is empty: give a {noun} name")
    path = Path(text)
    if kind == "file" and path.is_dir():
        raise SrlmError(f"{path}: is a directory; {what} must name a file to write, not a folder")
    if kind != "file" and path.exists() and not path.is_dir():
        raise SrlmError(f"{path}: exists and is not a directory; {what} must name a folder")
    if text.endswith(os.sep) and kind == "file":
        raise SrlmError(f"{path}{os.sep}: ends in '{os.sep}'; {what} must name a file to write, not a folder")
    writes_into = path if kind == "workdir" else path.parent
    existing = _nearest_existing(writes_into)
    if not existing.is_dir():
        raise SrlmError(f"{path}: cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SrlmError(f"{path}: cannot write: folder {existing} is not writable (permission denied or read-only)")
    return path


def make_parent_dirs(path: Path) -> None:
    """`path.parent`, created if missing; a failure is a `SrlmError` naming the path and why."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        existing = _nearest_existing(path.parent)
        if not existing.is_dir():
            raise SrlmError(f"{path}: cannot be created: {existing} is a file, not a folder") from None
        raise SrlmError(os_error_message(path, exc, "cannot create its folder")) from None


def _new_file_mode(path: Path) -> int | None:
    """The mode a plain `open(path, "w")` would leave: the replaced file's own, else None (0666 less the umask)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def atomic_write_text(path: Path, text: str, newline: str | None = None) -> None:
    """Write `text` to `path` whole or not at all: into a temporary file beside it, renamed into place.

    The file gets the permissions a plain `open(path, "w")` would give it: those of the file it replaces, or 0666
    less the process umask for a new one (a run directory is often shared by a team). A path that cannot be written
    (a read-only folder, a file where a folder should be, an existing directory, a full disk) is a `SrlmError`
    naming it, and no temporary file is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise SrlmError(f"{path}: is a directory; cannot write a file there")
    make_parent_dirs(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        # os.open applies the umask to 0o666 itself, as open() does; O_EXCL: never through someone else's file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise SrlmError(os_error_message(path, exc)) from None
    try:
        mode = _new_file_mode(path)
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SrlmError(os_error_message(path, exc)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records atomically; returns how many were written."""
    lines = [_dumps(r) for r in records]
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
    return len(lines)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically, UTF-8, with its newlines as given (no translation to the platform's)."""
    atomic_write_text(Path(path), text, newline="")


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None


class ResumableJsonlWriter:
    """Appends finished records to `<path>.partial`; `finish()` renames it to `path`.

    On construction, records already in the partial file (from a run that was killed) are loaded, and a torn last
    line (the process died mid-write) is cut off, so `done_ids` tells the stage exactly what is left to do.
    """

    def __init__(self, path: str | Path, id_field: str):
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.id_field = id_field
        self.records: list[dict] = []
        if self.path.is_dir():  # refused before `<dir>.partial` is created beside it
            raise SrlmError(f"{self.path}: is a directory; cannot write a file there")
        make_parent_dirs(self.path)
        if self.partial_path.is_symlink():
            # Appending (and cutting a torn line) would go through the link, wherever it points.
            raise UnsafePathError(f"{self.partial_path}: is a symbolic link; srlm appends only to a file of its own")
        if self.partial_path.exists():
            self._recover()
        self.done_ids = {r[id_field] for r in self.records}

    def _recover(self) -> None:
        data = self.partial_path.read_bytes()
        good_end = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn write: the rest is dropped and will be produced again
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            self.records.append(record)
            good_end += len(line)
        if good_end != len(data):
            with self.partial_path.open("r+b") as handle:
                handle.truncate(good_end)

    def append(self, records: Iterable[dict]) -> None:
        lines = []
        for record in records:
            if record[self.id_field] in self.done_ids:
                raise DataError(f"{self.path}: record {record[self.id_field]} produced twice")
            self.done_ids.add(record[self.id_field])
            self.records.append(record)
            lines.append(_dumps(record) + "\n")
        try:
            with self.partial_path.open("a", encoding="utf-8") as handle:
                handle.write("".join(lines))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise SrlmError(os_error_message(self.partial_path, exc)) from None

    def finish(self, order_key=None) -> list[dict]:
        """Write the final file (optionally sorted, so output order never depends on where a run was resumed)."""
        records = sorted(self.records, key=order_key) if order_key else self.records
        write_jsonl(self.path, records)
        self.partial_path.unlink(missing_ok=True)
        return records


def load_prompts(path: str | Path) -> tuple[list[dict], dict]:
    """Prompt records `{prompt_id, prompt}` from a JSONL file with a `prompt` field (`prompt_id` optional).

    Exact duplicate prompts are dropped and counted; two different prompts claiming one id is an error.
    """
    records, seen_text, by_id = [], set(), {}
    counts = {"read": 0, "duplicate_prompt": 0}
    for index, record in enumerate(iter_jsonl(path, {"prompt": str})):
        counts["read"] += 1
        prompt = record["prompt"].strip()
        if prompt in seen_text:
            counts["duplicate_prompt"] += 1
            continue
        prompt_id = record.get("prompt_id") or stable_id("prompt", prompt)
        if not isinstance(prompt_id, str):
            raise DataError(f"{path}:{index + 1}: field 'prompt_id' must be a string")
        if prompt_id in by_id:
            raise DataError(f"{path}: prompt_id '{prompt_id}' used by two different prompts")
        seen_text.add(prompt)
        by_id[prompt_id] = prompt
        records.append({"prompt_id": prompt_id, "prompt": prompt})
    if not records:
        raise DataError(f"{path}: no prompts")
    return records, counts
