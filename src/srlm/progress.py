"""Progress bars and chunking: what every long stage shows and how it splits its work (the unit of resume)."""

from __future__ import annotations

import sys
from typing import Iterator, Sequence


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def progress(total: int, desc: str, initial: int = 0, unit: str = "prompt"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)
