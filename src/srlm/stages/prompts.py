"""Stage `prompts`: new instructions by few-shot self-instruction (paper section 4.1, after Self-Instruct).

    srlm prompts --seed-prompts seed.jsonl --out prompts.jsonl --model DIR [--pool earlier.jsonl ...] [key=value ...]

Each attempt shows the generator a numbered list "Come up with a series of tasks:" of 8 instructions (6 from the
seed prompts, 2 from prompts generated earlier, when there are any) and lets it continue the list at T 0.6,
top-p 0.9. Every new item goes through Self-Instruct's filters, in this order, and each rejection is counted:
  length       fewer than `min_words` or more than `max_words` words
  keyword      mentions what a text model cannot do (image, graph, file, map, draw, plot, go to, ...) or starts
               with "Write a program"
  punctuation  starts with punctuation;  non_ascii  starts with a non-ASCII character
  duplicate    the same text (case and spacing aside) as a pool prompt
  similar      ROUGE-L F above `rouge_l_max` (0.7) against any pool prompt (a near duplicate)
  contaminated matches a prompt of an evaluation set in `decontaminate_against`, exactly or nearly
  over_budget  a valid item that came after `num_prompts` were already kept
The pool is the seed prompts, earlier generated prompts and the ones kept so far. Seed prompts of more than
`max_words` words are neither shown nor pooled (counted as `seed_prompts_skipped_too_long`). Attempts stop when
`num_prompts` are kept or `max_attempts` are spent.

Every raw attempt and the fate of each item are logged to `prompts.attempts.jsonl` as they finish; a resumed run
replays that log, so the kept prompts are the same as an uninterrupted run's.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from pathlib import Path

from srlm.backends import GenerationRequest, Sampling
from srlm.config import PromptsConfig
from srlm.data.decontaminate import normalise, rouge_l_scorer
from srlm.errors import SrlmError
from srlm.io import ResumableJsonlWriter, stable_id, stable_seed, write_jsonl
from srlm.progress import progress

HEADER = "Come up with a series of tasks:\n"
BLOCKED_WORDS = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                 "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]
_BLOCKED_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLOCKED_WORDS) + r")\b", re.IGNORECASE)
_ITEM_SPLIT_RE = re.compile(r"\n\s*\d+\s*[.)]\s+")
ATTEMPTS_PER_REQUEST_BATCH = 8


def few_shot_prompt(demos: list[str]) -> str:
    """The Self-Instruct prompt: a numbered list of the demos, ending with the next number for the model to fill."""
    lines = [f"{i}. {' '.join(d.split())}" for i, d in enumerate(demos, start=1)]
    return HEADER + "\n".join(lines) + f"\n{len(demos) + 1}."


def split_items(completion: str, cut_at_length: bool) -> list[str]:
    """The instructions in a continuation of the list. A list cut by max_new_tokens loses its unfinished last item."""
    items = [item.strip() for item in _ITEM_SPLIT_RE.split("\n" + completion.lstrip(" ")) if item.strip()]
    if cut_at_length and items:
        items = items[:-1]
    # Stop at the first item that runs into something other than a task (a blank line, then prose).
    return [item.split("\n\n")[0].strip() for item in items]


class PromptFilter:
    """Self-Instruct's filters against a growing pool; `check` returns None to keep or the rejection reason."""

    def __init__(self, pool: list[str], cfg: PromptsConfig):
        # The same words as decontamination compares (Unicode-aware: rouge-score's own tokenizer deletes non-ASCII
        # letters, so two prompts in another script would look identical, or empty).
        self.cfg = cfg
        self.scorer = rouge_l_scorer()
        self.pool: list[str] = []
        self.seen: set[str] = set()
        for text in pool:
            self.add(text)

    def add(self, text: str) -> None:
        self.pool.append(text)
        self.seen.add(normalise(text))

    def check(self, text: str) -> str | None:
        words = text.split()
        if len(words) < self.cfg.min_words or len(words) > self.cfg.max_words:
            return "length"
        if _BLOCKED_RE.search(text) or text.lower().startswith("write a program"):
            return "keyword"
        if text[0] in string.punctuation:
            return "punctuation"
        if not text[0].isascii():
            return "non_ascii"
        if normalise(text) in self.seen:
            return "duplicate"
        if any(self.scorer.score(other, text)["rougeL"].fmeasure > self.cfg.rouge_l_max for other in self.pool):
            return "similar"
        return None


def _evaluation_prompts(paths: list[str]) -> list[str]:
    from srlm.data.formats import load_records

    return [r["prompt"] for path in paths for r in load_records(path, kind="prompts")]


def _decontamination_index(paths: list[str]):
    """The evaluation prompts of `decontaminate_against`, indexed once for the whole stage; None when there are none."""
    if not paths:
        return None
    from srlm.data.decontaminate import DecontaminationIndex

    return DecontaminationIndex(_evaluation_prompts(paths))


def usable_seed_prompts(seed_prompts: list[str], cfg: PromptsConfig) -> tuple[list[str], int]:
    """(the seed prompts that can serve as demonstrations, how many were too long to). A seed prompt longer than a
    generated one may be (max_words) is no demonstration of a task: one such prompt (a pasted document, a 10 MB
    line) would make every few-shot prompt that shows it too long to generate from."""
    if not seed_prompts:
        raise SrlmError("self-instruction needs at least one seed prompt")
    usable = [text for text in seed_prompts if len(text.split()) <= cfg.max_words]
    if not usable:
        raise SrlmError(f"all {len(seed_prompts)} seed prompts are longer than prompts.max_words ({cfg.max_words} "
                        "words): none can serve as a few-shot demonstration")
    return usable, len(seed_prompts) - len(usable)


def few_shot_request(attempt: int, seed_prompts: list[str], generated: list[str], cfg: PromptsConfig,
                     sampling: Sampling, *, seed: int, iteration: int) -> GenerationRequest:
    """Attempt `attempt`'s few-shot prompt: shots_seed seed demos and up to shots_generated generated ones (seed
    demos fill in while there are fewer generated), in a seeded random order."""
    rng = random.Random(stable_seed(seed, "prompts", iteration, attempt))
    n_generated = min(cfg.shots_generated, len(generated))
    demos = rng.sample(seed_prompts, min(cfg.shots_seed + cfg.shots_generated - n_generated, len(seed_prompts)))
    demos += rng.sample(generated, n_generated)
    rng.shuffle(demos)
    return GenerationRequest(f"{iteration}-{attempt}", sampling, stable_seed(seed, "prompts-sample", iteration, attempt),
                             text=few_shot_prompt(demos))


def run_prompts(
    seed_prompts: list[str],
    earlier_generated: list[str],
    out_path: Path,
    backend,
    cfg: PromptsConfig,
    *,
    seed: int,
    iteration: int = 1,
) -> dict:
    seed_prompts, seeds_too_long = usable_seed_prompts(seed_prompts, cfg)
    max_attempts = cfg.max_attempts or 4 * cfg.num_prompts
    sampling = Sampling(n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    log = ResumableJsonlWriter(out_path.with_name(out_path.stem + ".attempts.jsonl"), id_field="attempt")

    prompt_filter = PromptFilter(seed_prompts + earlier_generated, cfg)
    contamination = _decontamination_index(cfg.decontaminate_against)
    generated = list(earlier_generated)  # demos of the "generated" kind
    kept: list[dict] = []
    rejected: Counter = Counter()

    def absorb(attempt: dict) -> None:
        """Filter the items of one attempt against the pool; the same whether replayed from the log or fresh."""
        for text in attempt["items"]:
            if len(kept) >= cfg.num_prompts:
                rejected["over_budget"] += 1
                continue
            reason = prompt_filter.check(text)
            if reason is None and contamination is not None and contamination.match(text) is not None:
                reason = "contaminated"
            if reason:
                rejected[reason] += 1
                continue
            prompt_filter.add(text)
            generated.append(text)
            kept.append({"prompt_id": stable_id("prompt", text), "prompt": text, "source": "generated",
                         "iteration": iteration, "attempt": attempt["attempt"]})

    for attempt in sorted(log.records, key=lambda a: a["attempt"]):
        absorb(attempt)
    next_attempt = len(log.records)

    with progress(cfg.num_prompts, "prompts", initial=len(kept)) as bar:
        while len(kept) < cfg.num_prompts and next_attempt < max_attempts:
            batch = range(next_attempt, min(max_attempts, next_attempt + ATTEMPTS_PER_REQUEST_BATCH))
            requests = [few_shot_request(a, seed_prompts, generated, cfg, sampling, seed=seed, iteration=iteration)
                        for a in batch]
            outputs = backend.generate(requests)
            attempts = []
            for a, request, (completion,) in zip(batch, requests, outputs):
                attempts.append({"attempt": a, "raw": completion.text,
                                 "items": split_items(completion.text, completion.finish_reason == "length")})
            log.append(attempts)
            before = len(kept)
            for attempt in attempts:
                absorb(attempt)
            bar.update(len(kept) - before)
            next_attempt = batch.stop

    write_jsonl(out_path, kept)
    log.finish(order_key=lambda a: a["attempt"])
    items = sum(len(a["items"]) for a in log.records)
    return {
        "attempts": next_attempt,
        "candidates": items,
        "kept": len(kept),
        "rejected": dict(sorted(rejected.items())),
        "target": cfg.num_prompts,
        "seed_prompts_skipped_too_long": seeds_too_long,
    }
