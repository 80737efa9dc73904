"""Data sets shipped with srlm, addressed as `builtin:NAME`.

Written for the project (no third-party text):

- `ift`: 64 instruction/response examples (IFT);
- `eft`: 60 judge demonstrations in the additive 5-point format (EFT);
- `heldout`: 16 prompts never trained on, for M_t+1 vs M_t win rates inside `srlm run`;
- `judge_pairs`: 12 preference pairs (a clearly better and a clearly worse reply, chosen by the project's authors)
  for a quick check of the judge's agreement with human preference. A demonstration, not a benchmark: real
  measurements use OpenAssistant's ranked replies or HH-RLHF (see `srlm eval judge`).

Derived from Anthropic's HH-RLHF test files (helpful subsets; MIT licence, HH_RLHF_LICENSE beside this file), built
by `scripts/build_hh_splits.py`, which says how: single-turn human preference pairs, split by question so that no
question is in two splits:
- `hh_test`: 400 pairs, the held-out set every run reports its judge accuracy on (`eval.judge_data`);
- `hh_val`: 300 pairs, for choosing settings (never the reported figure);
- `hh_eft`: 688 pairs, the only split a judge may be trained on (EFT construction, `sft.judge_pairs`).
Also built there, from OpenAssistant (Apache-2.0, OASST_LICENSE beside this file):
- `oasst_prompts`: 250 real user prompts (OpenAssistant's prompt lottery), never trained on: held-out prompts for
  win rates (`eval.heldout_prompts`).
In the three HH sets the human-preferred reply is the longer one in about 60% of pairs: a judge that only counts
characters scores about 0.6, and srlm reports that length baseline beside every judge accuracy.
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
