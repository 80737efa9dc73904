"""The backend interface: requests in, completions out. Nothing here depends on torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence


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


@dataclass(frozen=True)
class CandidateProbs:
    """The model's next-token distribution restricted to a few candidate strings (e.g. the score digits 0-5).

    `probs[i]` is the probability of `candidates[i]` renormalised over the candidates (they sum to 1); `mass` is
    how much of the whole next-token distribution the candidates held before renormalising (1.0 means the model
    was certain one of them comes next; a small mass means the renormalised numbers rest on little).
    """

    probs: list[float]
    mass: float


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


class ScoresNextTokens(Protocol):
    """Optional backend capability: the next-token distribution over candidate strings after a given continuation.

    Expected-score judging (`judge.method=expected`) needs it; a backend without it cannot judge that way, and the
    judge stage says so before generating anything (see `supports_score_probs`).
    """

    def score_token_probs(
        self, items: Sequence[tuple[GenerationRequest, str]], candidates: Sequence[str]
    ) -> list[CandidateProbs | None]:
        """For each (request, continuation): the distribution over `candidates` of the token that follows the
        request's prompt (after the chat template, as `generate` would build it) continued by `continuation`.

        `continuation` is text the assistant wrote, cut just before the value to score (e.g. ending in "Score: ").
        A candidate must be ONE token right there; whitespace at the end of the continuation may be moved into
        the candidate token where the tokenizer writes " 4" as one token. None for an item the backend could not
        score (e.g. a server that returned none of the candidates); a tokenizer that cannot write every candidate
        as one token is an error, not None."""


def prompt_token_ids(tokenizer, request: GenerationRequest) -> list[int]:
    """The token ids an in-process backend feeds the model for `request`: chat messages through the tokenizer's chat
    template with the assistant turn opened (the template already holds any special tokens), raw text as is."""
    if request.messages is not None:
        text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(request.text)["input_ids"]


def supports_score_probs(backend) -> bool:
    return callable(getattr(backend, "score_token_probs", None))
