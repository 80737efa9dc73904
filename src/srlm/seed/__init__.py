"""Data sets shipped with srlm, all written for the project (no third-party text), addressed as `builtin:NAME`:

- `ift`: 64 instruction/response examples (IFT);
- `eft`: 60 judge demonstrations in the additive 5-point format (EFT);
- `heldout`: 16 prompts never trained on, for M_t+1 vs M_t win rates inside `srlm run`;
- `judge_pairs`: 12 preference pairs (a clearly better and a clearly worse reply, chosen by the project's authors)
  for a quick check of the judge's agreement with human preference. A demonstration, not a benchmark: real
  measurements use OpenAssistant's ranked replies or HH-RLHF (see `srlm eval judge`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from srlm.errors import SrlmError

BUILTIN_PREFIX = "builtin:"


def builtin_names() -> list[str]:
    return sorted(e.name[: -len(".jsonl")] for e in resources.files(__name__).iterdir() if e.name.endswith(".jsonl"))


def resolve_data_path(value: str | None) -> str | None:
    """'builtin:NAME' -> the shipped file NAME.jsonl; anything else is a path, checked to exist."""
    if value is None:
        return None
    if value.startswith(BUILTIN_PREFIX):
        entry = resources.files(__name__).joinpath(value[len(BUILTIN_PREFIX):] + ".jsonl")
        if not entry.is_file():
            available = ", ".join(BUILTIN_PREFIX + n for n in builtin_names())
            raise SrlmError(f"unknown built-in data set '{value}' (available: {available})")
        return str(entry)
    if not Path(value).exists():
        raise SrlmError(f"{value}: data file not found")
    return value
