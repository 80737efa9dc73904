"""The backend interface: requests in, completions out. Nothing here depends on torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete `sampling.n` times. Exactly one of `messages` (chat) and `text` (raw) is set."""

    request_id: str
    sampling: Sampling
    seed: int
    messages: list[dict] | None = None
    text: str | None = None

    def __post_init__(self):
        if (self.messages is None) == (self.text is None):
            raise ValueError("a GenerationRequest needs exactly one of messages and text")


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop": the model ended it; "length": cut at max_new_tokens


@dataclass
class GenerationStats:
    sequences: int = 0
    new_tokens: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Backend(Protocol):
    name: str
    stats: GenerationStats

    def generate(
        self, requests: list[GenerationRequest], on_done: Callable[[int], None] | None = None
    ) -> list[list[Completion]]:
        """Completions for each request, in request order. `on_done(k)` is called as k more requests finish."""

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Tokens the request's prompt takes, after the chat template: used to skip prompts that cannot fit."""

    def close(self) -> None:
        """Free the memory the backend holds (GPU memory before training)."""
