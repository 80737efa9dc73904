"""Shared pieces of the benchmarks: the embedded model, prompts written for the benchmarks, machine facts."""

from __future__ import annotations

import contextlib
import json
import platform
import time

PROMPTS = [
    "Explain why the sky looks blue during the day.",
    "Give three tips for a good night's sleep.",
    "What is the difference between weather and climate?",
    "Write a short poem about a lighthouse.",
    "How do I make a simple tomato sauce?",
    "Summarize the plot of a heist story in three sentences.",
    "What are the main causes of inflation?",
    "Describe how a bicycle gear system works.",
    "Suggest a weekend itinerary for a rainy city.",
    "How can I start learning to play the guitar?",
    "Explain recursion to a ten-year-old.",
    "What should I pack for a two-day hike?",
    "Why do leaves change colour in autumn?",
    "Compare renting and buying a home.",
    "How does a vaccine train the immune system?",
    "Write a polite email asking to reschedule a meeting.",
]


def prompts(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" (variant {i // len(PROMPTS)})") for i in range(n)]


def machine() -> dict:
    """What a figure was measured on: CPU model and the vector extensions that set fp32/bf16 speed, torch's threads."""
    import torch

    from bound import cpu_facts

    return {**cpu_facts(), "platform": platform.platform(), "cuda": torch.cuda.is_available()}


@contextlib.contextmanager
def trl_head_at_every_position():
    """srlm's training with TRL's own output head on CPU, which scores every position: the baseline arm of sft.py
    and dpo.py against `srlm.stages.training.head_on_labelled_positions_only`, put back afterwards."""
    from srlm.stages import training

    compact = training.head_on_labelled_positions_only
    training.head_on_labelled_positions_only = contextlib.nullcontext
    try:
        yield
    finally:
        training.head_on_labelled_positions_only = compact


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def report(name: str, rows: list[tuple[str, float, str]], result: dict, as_json: bool) -> None:
    print(f"\n{name}")
    for label, value, unit in rows:
        print(f"  {label:44s} {value:10.2f} {unit}")
    print(f"  machine: {machine()}")
    if as_json:
        print(json.dumps(result))
