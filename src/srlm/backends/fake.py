"""A deterministic scripted backend for tests and dry runs: no model, instant, same output for the same request.

By default it plays every role of the loop well enough to exercise it: it continues a Self-Instruct task list with
new numbered tasks, answers a chat prompt with a text whose length depends on the request, and answers a judge
prompt with a short justification ending in `Score: N`, and a meta-judge prompt with `Winner: A|B|tie`. A test can pass its own `script(request, index) -> str`. The environment variable `SRLM_FAKE_DELAY_SECONDS`
makes each request take that long, so that tests can kill a run in the middle of a generation stage.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from srlm.backends.base import CandidateProbs, Completion, GenerationRequest, GenerationStats
from srlm.io import stable_id, stable_seed

_TOPICS = [
    "the water cycle", "compound interest", "a healthy breakfast", "the French revolution", "binary search",
    "photosynthesis", "a job interview", "time zones", "recycling plastics", "the Pythagorean theorem",
    "learning a language", "a budget for students", "volcanoes", "password security", "a rainy weekend",
    "the stock market", "jet lag", "a vegetable garden", "electric cars", "public speaking",
]
_VERBS = ["Explain", "Describe", "Summarize", "List three facts about", "Give advice on", "Compare two views of"]


def default_script(request: GenerationRequest, index: int) -> str:
    key = stable_seed(request.request_id, request.seed, index)
    if request.text is not None:  # raw completion: a Self-Instruct few-shot prompt ending in "N."
        tasks = []
        for j in range(3):
            k = stable_seed(key, j)
            tasks.append(f"{_VERBS[k % len(_VERBS)]} {_TOPICS[(k // 7) % len(_TOPICS)]} for reader {k % 997}.")
        return f" {tasks[0]}\n10. {tasks[1]}\n11. {tasks[2]}\n"
    last = request.messages[-1]["content"]
    if "# Judgement (a)" in last:  # the built-in meta-judge template: a verdict between two judgements
        return f"Judgement ({'ab'[key % 2]}) follows the rubric more closely.\nWinner: {('A', 'B', 'tie')[key % 3]}"
    if "Score: <total points>" in last:  # the built-in judge template's output instruction
        return f"The response is on topic and partly useful; clarity could improve.\nScore: {key % 6}"
    words = ["word"] * (5 + key % 40)
    return f"Answer {stable_id(request.request_id, index, length=6)}: " + " ".join(words) + "."


class FakeBackend:
    name = "fake"

    def __init__(self, script: Callable[[GenerationRequest, int], str] = default_script):
        self.script = script
        self.stats = GenerationStats()

    @classmethod
    def from_config(cls, model_path: str, backend, model, *, seed: int) -> "FakeBackend":
        return cls.create(None)

    @classmethod
    def create(cls, loaded_model=None, script: Callable | None = None, **_options):
        return cls(script or default_script)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        text = request.text if request.text is not None else " ".join(m["content"] for m in request.messages)
        return len(text.split())

    def generate(self, requests, on_done=None):
        start = time.perf_counter()
        delay = float(os.environ.get("SRLM_FAKE_DELAY_SECONDS", "0"))
        results = []
        for request in requests:
            time.sleep(delay)
            completions = []
            for i in range(request.sampling.n):
                text = self.script(request, i)
                tokens = len(text.split())
                cut = tokens > request.sampling.max_new_tokens
                if cut:
                    text = " ".join(text.split()[: request.sampling.max_new_tokens])
                completions.append(Completion(text, min(tokens, request.sampling.max_new_tokens), "length" if cut else "stop"))
                self.stats.new_tokens += completions[-1].num_tokens
            self.stats.sequences += request.sampling.n
            results.append(completions)
            if on_done:
                on_done(1)
        self.stats.seconds += time.perf_counter() - start
        return results

    def score_token_probs(self, items, candidates):
        """Deterministic made-up probabilities, the same for the same (request, continuation): a smooth bump over
        the candidates centred on a point picked by a hash, so that expected values spread over the range."""
        results = []
        for request, continuation in items:
            key = stable_seed(request.request_id, request.seed, continuation)
            centre = (key % 1000) / 999 * (len(candidates) - 1)
            weights = [1.0 / (1.0 + (i - centre) ** 2) for i in range(len(candidates))]
            total = sum(weights)
            results.append(CandidateProbs([w / total for w in weights], 0.5 + (key % 500) / 1000))
        self.stats.extra["scored_sequences"] = self.stats.extra.get("scored_sequences", 0) + len(items)
        return results

    def close(self) -> None:
        pass
