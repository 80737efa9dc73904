"""Drop training records whose prompt is, or nearly is, an evaluation prompt.

Training on a benchmark's prompts inflates its score, and public data sets overlap more than one expects (all 129
Anthropic HH helpful-base test first turns are among AlpacaEval's 805 prompts). A record is removed when its prompt

1. **exactly** matches an evaluation prompt after normalisation (Unicode NFKC, case-folded, punctuation and
   whitespace ignored: both reduce to the same word sequence), or
2. **nearly** matches one: ROUGE-L F1 >= `near_threshold` (the `rouge-score` package, the measure Self-Instruct
   uses for its novelty filter), or a shared run of `ngram_size` words, which catches an evaluation prompt pasted
   inside a longer training prompt, where ROUGE-L F1 is low because the lengths differ. The default run is 13
   words (GPT-3's contamination test): with 8, stock openings of the "could you please help me work out how
   to ..." kind flagged unrelated HH-RLHF prompts against AlpacaEval.

At 0.8, ROUGE-L also removes short prompts that differ in one content word ("How do I bake a pie?" vs "How do I
bake a cake?"). That errs on the safe side: a lost training prompt costs little, a leaked evaluation prompt
invalidates a result. Raise `near_threshold` to keep more.

ROUGE-L on every pair is too slow in Python (800 x 5,000 pairs of ~30-word prompts is minutes), so candidates are
found first with a *prefix filter* (as in set-similarity joins), which loses no match:

- ROUGE-L F1 = 2·LCS/(la+lb) >= t needs LCS >= t·max(la, lb)/(2-t) =: s·max(la, lb), since LCS <= min(la, lb).
  The LCS is at most the multiset overlap O of the two token bags, so O >= s·la and O >= s·lb.
- Order all tokens globally (rarest first). If O >= ceil(s·la), the smallest common token lies within the first
  la - ceil(s·la) + 1 tokens of the record's sorted bag, and likewise for the evaluation prompt. So indexing only
  those prefixes, and comparing only pairs whose prefixes share a token, finds every pair with F1 >= t.
- Pairs whose lengths differ by more than the factor s cannot reach t either and are skipped.

Tokens are `\\w+` runs (Unicode-aware, unlike rouge-score's default tokenizer, which deletes non-ASCII letters),
with every CJK character a token of its own, since those scripts do not separate words by spaces. The same
tokenizer feeds rouge-score, so the prefix filter's guarantee holds for the scores it computes.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from functools import lru_cache
from typing import Any, Iterable, Sequence

from srlm.errors import DataError

# CJK ideographs, kana and hangul: one token per character. Everything else: runs of word characters.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")


@lru_cache(maxsize=65536)
def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(unicodedata.normalize("NFKC", text).casefold()))


def tokenize(text: str) -> list[str]:
    """The words of `text` as compared here: NFKC, case-folded, punctuation dropped, CJK split per character."""
    return list(_tokens(text))


def normalise(text: str) -> str:
    """The exact-match key: the tokens joined by single spaces. Differences in case, spacing and punctuation vanish."""
    return " ".join(_tokens(text))


class _Tokenizer:
    """Adapter giving rouge-score our tokenizer (it calls `.tokenize(text)`)."""

    def tokenize(self, text: str) -> list[str]:
        return list(_tokens(text))


def _rouge_scorer():
    from rouge_score import rouge_scorer  # imported here: it pulls in nltk and absl, slow to import

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def _prompt_of(item: Any, index: int, field: str, what: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        if field not in item:
            raise DataError(f"{what}[{index}]: missing field '{field}'")
        value = item[field]
        if isinstance(value, str):
            return value
        raise DataError(f"{what}[{index}]: field '{field}' must be a string, got {type(value).__name__}")
    raise DataError(f"{what}[{index}]: expected a record or a string, got {type(item).__name__}")


def _bag(tokens: Sequence[str]) -> list[tuple[str, int]]:
    """The token multiset as a set of (token, occurrence number) pairs, so that set overlap = multiset overlap."""
    seen: Counter[str] = Counter()
    out = []
    for token in tokens:
        seen[token] += 1
        out.append((token, seen[token]))
    return out


def _prefix_length(length: int, share: float) -> int:
    # The 1e-9 guards against 0.666...7 * 3 = 2.0000000001 turning ceil() into 3 and shortening the prefix.
    return length - math.ceil(share * length - 1e-9) + 1


def decontaminate(
    records: Iterable[dict],
    eval_prompts: Iterable[str | dict],
    *,
    field: str = "prompt",
    near_threshold: float = 0.8,
    ngram_size: int | None = 13,
) -> tuple[list[dict], dict]:
    """Split `records` into those kept and a report on those removed for matching an evaluation prompt.

    `records`: dicts whose `field` holds the prompt (any other keys are kept untouched).
    `eval_prompts`: strings, or dicts with a `prompt` key (what `srlm.data.formats.load_records` returns).
    `near_threshold`: ROUGE-L F1 at or above which a prompt is a near match, in (0, 1].
    `ngram_size`: a shared run of this many words is also a near match; None turns the check off.

    The report holds the counts (`records`, `eval_prompts`, `exact`, `near`, `near_rouge_l`, `near_ngram`, `kept`)
    and `removed`: for each removed record its index, id (if any), prompt, how it matched (`exact`, `rouge_l` or
    `ngram`), the ROUGE-L score or shared n-gram, and the evaluation prompt matched (text and index).
    """
    if not 0.0 < near_threshold <= 1.0:
        raise ValueError(f"near_threshold must be in (0, 1], got {near_threshold}")
    if ngram_size is not None and ngram_size < 1:
        raise ValueError(f"ngram_size must be a positive number of words or None, got {ngram_size}")
    records = list(records)
    eval_texts = [_prompt_of(item, i, "prompt", "eval_prompts") for i, item in enumerate(eval_prompts)]
    record_texts = [_prompt_of(record, i, field, "records") for i, record in enumerate(records)]

    share = near_threshold / (2.0 - near_threshold)
    eval_tokens = [_tokens(text) for text in eval_texts]

    # Exact matches and shared n-grams: plain dictionary lookups. The first evaluation prompt wins on repeats.
    exact_index: dict[str, int] = {}
    ngram_index: dict[tuple[str, ...], int] = {}
    for j, tokens in enumerate(eval_tokens):
        if tokens:
            exact_index.setdefault(" ".join(tokens), j)
        if ngram_size:
            for start in range(len(tokens) - ngram_size + 1):
                ngram_index.setdefault(tokens[start : start + ngram_size], j)

    # Prefix index of the evaluation prompts, under a global order: rarest token first (by document frequency
    # among the evaluation prompts), so prefixes hold rare tokens and candidate lists stay short.
    doc_freq: Counter[str] = Counter()
    for tokens in eval_tokens:
        doc_freq.update(set(tokens))

    def ordered(tokens: Sequence[str]) -> list[tuple[str, int]]:
        return sorted(_bag(tokens), key=lambda item: (doc_freq[item[0]], item[0], item[1]))

    eval_counts = [Counter(tokens) for tokens in eval_tokens]
    prefix_index: dict[tuple[str, int], list[int]] = defaultdict(list)
    for j, tokens in enumerate(eval_tokens):
        bag = ordered(tokens)
        for item in bag[: _prefix_length(len(bag), share)]:
            prefix_index[item].append(j)

    scorer = None
    kept: list[dict] = []
    removed: list[dict] = []
    counts = Counter()
    for i, (record, text) in enumerate(zip(records, record_texts)):
        tokens = _tokens(text)
        match = _exact_match(tokens, exact_index)
        if match is None:
            candidates: set[int] = set()
            bag = ordered(tokens)
            for item in bag[: _prefix_length(len(bag), share)]:
                candidates.update(prefix_index.get(item, ()))
            length = len(tokens)
            candidates = {j for j in candidates if share * length <= len(eval_tokens[j]) <= length / share}
            if candidates:
                # LCS <= bag overlap, so F1 <= 2·overlap/(la+lb): a cheap bound that skips most quadratic LCS
                # computations. Candidates are scored best bound first, stopping once no bound can beat the best.
                bag_counts = Counter(tokens)
                bounds = (
                    (2 * _overlap(bag_counts, eval_counts[j]) / (length + len(eval_tokens[j])), -j) for j in candidates
                )
                best_score, best_j = 0.0, -1
                for bound, neg_j in sorted(bounds, reverse=True):
                    if bound < near_threshold - 1e-9 or bound <= best_score:
                        break
                    scorer = scorer or _rouge_scorer()
                    score = scorer.score(eval_texts[-neg_j], text)["rougeL"].fmeasure
                    if score > best_score:
                        best_score, best_j = score, -neg_j
                if best_score >= near_threshold:
                    match = {"match": "rouge_l", "score": round(best_score, 4), "eval_index": best_j}
        if match is None and ngram_size:
            for start in range(len(tokens) - ngram_size + 1):
                gram = tokens[start : start + ngram_size]
                if gram in ngram_index:
                    match = {"match": "ngram", "ngram": " ".join(gram), "eval_index": ngram_index[gram]}
                    break
        if match is None:
            kept.append(record)
            continue
        counts[match["match"]] += 1
        entry = {"index": i}
        if isinstance(record, dict) and record.get("id") is not None:
            entry["id"] = record["id"]
        entry["prompt"] = text
        entry.update(match)
        entry["eval_prompt"] = eval_texts[match["eval_index"]]
        removed.append(entry)

    report = {
        "records": len(records),
        "eval_prompts": len(eval_texts),
        "exact": counts["exact"],
        "near": counts["rouge_l"] + counts["ngram"],
        "near_rouge_l": counts["rouge_l"],
        "near_ngram": counts["ngram"],
        "kept": len(kept),
        "near_threshold": near_threshold,
        "ngram_size": ngram_size,
        "removed": removed,
    }
    return kept, report


def _overlap(a: Counter, b: Counter) -> int:
    if len(a) > len(b):
        a, b = b, a
    return sum(min(count, b[token]) for token, count in a.items() if token in b)


def _exact_match(tokens: tuple[str, ...], exact_index: dict[str, int]) -> dict | None:
    if not tokens:
        return None  # a prompt of punctuation only cannot be told apart from any other such prompt
    j = exact_index.get(" ".join(tokens))
    return None if j is None else {"match": "exact", "score": 1.0, "eval_index": j}
