"""Small pieces shared by the stages: reading prompt files, chunking, progress bars."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, Sequence

from srlm.errors import DataError
from srlm.io import iter_jsonl, stable_id


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


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def progress(total: int, desc: str, initial: int = 0, unit: str = "prompt"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)
