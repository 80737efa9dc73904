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
- The survivors are scored in order of the bound 2·O/(la+lb) >= F1, best first, stopping once no bound can reach
  t or beat the best score so far. The result is the pair with the highest F1, as scoring all of them would give.

Everything about the evaluation prompts (exact-match keys, n-gram table, token order, prefix index) is built once,
in a `DecontaminationIndex`; `match(text)` then costs a tokenisation, a few lookups and rarely an LCS. The
`prompts` stage keeps one index for all its candidates, and `decontaminate` builds one per call.

Tokens are `\\w+` runs (Unicode-aware, unlike rouge-score's default tokenizer, which deletes non-ASCII letters),
with every CJK character a token of its own, since those scripts do not separate words by spaces. The same
tokenizer feeds rouge-score, so the prefix filter's guarantee holds for the scores it computes.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
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


def rouge_l_scorer():
    """rouge-score's ROUGE-L with this module's tokenizer (Unicode-aware; the same words as `normalise`)."""
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


@dataclass(frozen=True)
class Match:
    """Why a prompt counts as an evaluation prompt, and which one it matched."""

    reason: str  # "exact", "rouge_l" or "ngram"
    eval_index: int  # position among the evaluation prompts the index was built from
    eval_prompt: str
    score: float | None = None  # ROUGE-L F1, rounded to 4 decimals (1.0 for an exact match); None for "ngram"
    ngram: str | None = None  # the shared run of words, for "ngram"

    def report_fields(self) -> dict:
        """The fields of this match in a decontamination report entry (in the report's key order)."""
        fields: dict[str, Any] = {"match": self.reason}
        if self.reason == "ngram":
            fields["ngram"] = self.ngram
        else:
            fields["score"] = self.score
        fields["eval_index"] = self.eval_index
        fields["eval_prompt"] = self.eval_prompt
        return fields


class DecontaminationIndex:
    """The evaluation prompts, indexed once; `match(text)` then checks one prompt against all of them.

    Building the index (tokenising every evaluation prompt, the exact-match and n-gram tables, the prefix index)
    takes 0.1-0.2 s for AlpacaEval + MT-Bench's 885 prompts on 2 CPU cores, and one `match` about 0.2 ms: a
    stage that checks its candidates one at a time builds it once and keeps it (benchmarks/decontaminate.py).

    `eval_prompts`: strings, or dicts with a `prompt` key (what `srlm.data.formats.load_records` returns).
    `near_threshold`: ROUGE-L F1 at or above which a prompt is a near match, in (0, 1].
    `ngram_size`: a shared run of this many words is also a near match; None turns the check off.
    """

    def __init__(
        self, eval_prompts: Iterable[str | dict], *, near_threshold: float = 0.8, ngram_size: int | None = 13
    ):
        if not 0.0 < near_threshold <= 1.0:
            raise ValueError(f"near_threshold must be in (0, 1], got {near_threshold}")
        if ngram_size is not None and ngram_size < 1:
            raise ValueError(f"ngram_size must be a positive number of words or None, got {ngram_size}")
        self.near_threshold = near_threshold
        self.ngram_size = ngram_size
        self.eval_texts = [_prompt_of(item, i, "prompt", "eval_prompts") for i, item in enumerate(eval_prompts)]
        self._share = near_threshold / (2.0 - near_threshold)
        self._eval_tokens = [_tokens(text) for text in self.eval_texts]

        # Exact matches and shared n-grams: plain dictionary lookups. The first evaluation prompt wins on repeats.
        self._exact: dict[str, int] = {}
        self._ngrams: dict[tuple[str, ...], int] = {}
        for j, tokens in enumerate(self._eval_tokens):
            if tokens:
                self._exact.setdefault(" ".join(tokens), j)
            if ngram_size:
                for start in range(len(tokens) - ngram_size + 1):
                    self._ngrams.setdefault(tokens[start : start + ngram_size], j)

        # Prefix index of the evaluation prompts, under a global order: rarest token first (by document frequency
        # among the evaluation prompts), so prefixes hold rare tokens and candidate lists stay short.
        self._doc_freq: Counter[str] = Counter()
        for tokens in self._eval_tokens:
            self._doc_freq.update(set(tokens))
        self._eval_counts = [Counter(tokens) for tokens in self._eval_tokens]
        self._prefix_index: dict[tuple[str, int], list[int]] = defaultdict(list)
        for j, tokens in enumerate(self._eval_tokens):
            bag = self._ordered(tokens)
            for item in bag[: _prefix_length(len(bag), self._share)]:
                self._prefix_index[item].append(j)
        self._scorer = None  # rouge-score is imported only when a pair needs scoring

    def __len__(self) -> int:
        return len(self.eval_texts)

    def _ordered(self, tokens: Sequence[str]) -> list[tuple[str, int]]:
        doc_freq = self._doc_freq
        return sorted(_bag(tokens), key=lambda item: (doc_freq[item[0]], item[0], item[1]))

    def match(self, text: str) -> Match | None:
        """The evaluation prompt `text` matches, exactly, by ROUGE-L or by a shared n-gram (tried in that order,
        the first kind that matches wins); None when it matches none."""
        tokens = _tokens(text)
        found = _exact_match(tokens, self._exact)
        if found is None:
            found = self._rouge_l_match(tokens, text)
        if found is None and self.ngram_size:
            n = self.ngram_size
            for start in range(len(tokens) - n + 1):
                gram = tokens[start : start + n]
                if gram in self._ngrams:
                    found = {"match": "ngram", "ngram": " ".join(gram), "eval_index": self._ngrams[gram]}
                    break
        if found is None:
            return None
        j = found["eval_index"]
        return Match(found["match"], j, self.eval_texts[j], score=found.get("score"), ngram=found.get("ngram"))

    def _rouge_l_match(self, tokens: tuple[str, ...], text: str) -> dict | None:
        share, eval_tokens = self._share, self._eval_tokens
        candidates: set[int] = set()
        bag = self._ordered(tokens)
        for item in bag[: _prefix_length(len(bag), share)]:
            candidates.update(self._prefix_index.get(item, ()))
        length = len(tokens)
        candidates = {j for j in candidates if share * length <= len(eval_tokens[j]) <= length / share}
        if not candidates:
            return None
        # LCS <= bag overlap, so F1 <= 2·overlap/(la+lb): a cheap bound that skips most quadratic LCS
        # computations. Candidates are scored best bound first, stopping once no bound can beat the best.
        bag_counts = Counter(tokens)
        bounds = (
            (2 * _overlap(bag_counts, self._eval_counts[j]) / (length + len(eval_tokens[j])), -j) for j in candidates
        )
        best_score, best_j = 0.0, -1
        for bound, neg_j in sorted(bounds, reverse=True):
            if bound < self.near_threshold - 1e-9 or bound <= best_score:
                break
            self._scorer = self._scorer or rouge_l_scorer()
            score = self._scorer.score(self.eval_texts[-neg_j], text)["rougeL"].fmeasure
            if score > best_score:
                best_score, best_j = score, -neg_j
        if best_score >= self.near_threshold:
            return {"match": "rouge_l", "score": round(best_score, 4), "eval_index": best_j}
        return None

    def filter(self, records: Iterable[dict], *, field: str = "prompt") -> tuple[list[dict], dict]:
        """Split `records` into those kept and a report on those removed (see `decontaminate`)."""
        records = list(records)
        # Every record is checked for its field before any is matched: a bad record fails fast, naming its index.
        record_texts = [_prompt_of(record, i, field, "records") for i, record in enumerate(records)]
        kept: list[dict] = []
        removed: list[dict] = []
        counts: Counter[str] = Counter()
        for i, (record, text) in enumerate(zip(records, record_texts)):
            found = self.match(text)
            if found is None:
                kept.append(record)
                continue
            counts[found.reason] += 1
            entry: dict[str, Any] = {"index": i}
            if isinstance(record, dict) and record.get("id") is not None:
                entry["id"] = record["id"]
            entry["prompt"] = text
            entry.update(found.report_fields())
            removed.append(entry)
        report = {
            "records": len(records),
            "eval_prompts": len(self.eval_texts),
            "exact": counts["exact"],
            "near": counts["rouge_l"] + counts["ngram"],
            "near_rouge_l": counts["rouge_l"],
            "near_ngram": counts["ngram"],
            "kept": len(kept),
            "near_threshold": self.near_threshold,
            "ngram_size": self.ngram_size,
            "removed": removed,
        }
        return kept, report


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
    `eval_prompts`, `near_threshold`, `ngram_size`: as for `DecontaminationIndex`, which this builds once.

    The report holds the counts (`records`, `eval_prompts`, `exact`, `near`, `near_rouge_l`, `near_ngram`, `kept`)
    and `removed`: for each removed record its index, id (if any), prompt, how it matched (`exact`, `rouge_l` or
    `ngram`), the ROUGE-L score or shared n-gram, and the evaluation prompt matched (text and index).
    """
    index = DecontaminationIndex(eval_prompts, near_threshold=near_threshold, ngram_size=ngram_size)
    return index.filter(records, field=field)


def _overlap(a: Counter, b: Counter) -> int:
    if len(a) > len(b):
        a, b = b, a
    return sum(min(count, b[token]) for token, count in a.items() if token in b)


def _exact_match(tokens: tuple[str, ...], exact_index: dict[str, int]) -> dict | None:
    if not tokens:
        return None  # a prompt of punctuation only cannot be told apart from any other such prompt
    j = exact_index.get(" ".join(tokens))
    return None if j is None else {"match": "exact", "score": 1.0, "eval_index": j}
