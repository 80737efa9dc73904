"""Tests of srlm.data.decontaminate, on the real AlpacaEval, MT-Bench and HH-RLHF files and on hand-made cases."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srlm.cli.data import add_data_commands
from srlm.data.decontaminate import (DecontaminationIndex, Match, _prompt_of, rouge_l_scorer, _tokens,
                                     decontaminate, normalise, tokenize)
from srlm.data.formats import load_records
from srlm.errors import DataError
from srlm.io import read_json, read_jsonl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPACA_EVAL = DATA / "alpaca_eval" / "text_davinci_003_outputs.json"
MT_BENCH = DATA / "mt_bench" / "question.jsonl"
HH_TEST = DATA / "hh_rlhf" / "helpful-base-test.jsonl.gz"
PROMPT_LOTTERY = DATA / "oasst" / "prompt_lottery_en_250_text.jsonl"
SEED_TASKS = DATA / "self_instruct" / "seed_tasks.jsonl"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"shared test data not found at {DATA}")


def hh_first_turns() -> list[dict]:
    """The first human turn of each HH helpful-base test dialogue, as a prompt record."""
    records = []
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            dialogue = json.loads(line)["chosen"]
            first = re.search(r"\n\nHuman: (.*?)\n\nAssistant:", dialogue, re.S)
            records.append({"id": f"hh-{index}", "prompt": first.group(1).strip()})
    return records


# --------------------------------------------------------------------------------------------------------------
# Real data


@needs_data
def test_hh_first_turns_in_alpaca_eval_are_all_removed():
    eval_prompts = load_records(ALPACA_EVAL, kind="prompts")
    records = hh_first_turns()
    kept, report = decontaminate(records, eval_prompts)

    alpaca_helpful_base = {
        normalise(r["instruction"]) for r in json.loads(ALPACA_EVAL.read_text()) if r["dataset"] == "helpful_base"
    }
    assert len(alpaca_helpful_base) == 129  # the data README's figure
    shared = [r for r in records if normalise(r["prompt"]) in alpaca_helpful_base]
    assert len({normalise(r["prompt"]) for r in shared}) == 129
    removed_ids = {entry["id"] for entry in report["removed"]}
    assert {r["id"] for r in shared} <= removed_ids
    assert not any(normalise(r["prompt"]) in alpaca_helpful_base for r in kept)
    assert report["exact"] >= len(shared)
    assert report["records"] == len(records) and report["kept"] == len(kept) == len(records) - len(removed_ids)
    assert report["exact"] + report["near"] == len(report["removed"])
    for entry in report["removed"]:
        assert entry["eval_prompt"] == eval_prompts[entry["eval_index"]]["prompt"]
        if entry["match"] == "exact":
            assert normalise(entry["prompt"]) == normalise(entry["eval_prompt"])
        elif entry["match"] == "rouge_l":
            assert entry["score"] >= 0.8


@needs_data
def test_mt_bench_variants_are_removed_and_unrelated_prompts_kept():
    questions = load_records(MT_BENCH, kind="prompts")
    variants = [
        {"prompt": questions[0]["prompt"].upper() + " !!"},  # case and punctuation only
        {"prompt": "  ".join(questions[1]["prompt"].split())},  # spacing only
        {"prompt": questions[2]["prompt"].replace("a ", "the ", 1)},  # one word changed: ROUGE-L near 1
        {"prompt": "Context: please answer carefully and in detail. " + questions[3]["prompt"] + " Thanks!"},
        {"prompt": "What is the capital of France?"},
    ]
    kept, report = decontaminate(variants, questions)
    by_index = {entry["index"]: entry for entry in report["removed"]}
    assert by_index[0]["match"] == by_index[1]["match"] == "exact"
    assert by_index[2]["match"] == "rouge_l" and by_index[2]["eval_index"] == 2
    assert by_index[3]["match"] in ("rouge_l", "ngram") and by_index[3]["eval_index"] == 3
    assert kept == [variants[4]]


@needs_data
def test_speed_800_eval_prompts_against_thousands_of_records():
    eval_prompts = load_records(ALPACA_EVAL, kind="prompts") + load_records(MT_BENCH, kind="prompts")
    hh = hh_first_turns()
    # Near-duplicates make the ROUGE-L stage do real work: every HH prompt also appears with a word appended.
    records = hh + [{"prompt": r["prompt"] + " please"} for r in hh]
    start = time.perf_counter()
    kept, report = decontaminate(records, eval_prompts)
    elapsed = time.perf_counter() - start
    assert len(eval_prompts) == 885 and len(records) == 4708
    assert elapsed < 10, f"decontamination took {elapsed:.1f} s"  # about 0.5 s here; generous for slow CI
    assert report["near_rouge_l"] > 0


# --------------------------------------------------------------------------------------------------------------
# The prefix filter loses nothing: same result as scoring every pair


def brute_force(records: list[str], evals: list[str], threshold: float) -> set[int]:
    from rouge_score import rouge_scorer

    from srlm.data.decontaminate import _Tokenizer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    removed = set()
    for i, text in enumerate(records):
        if any(normalise(text) == normalise(e) and normalise(text) for e in evals):
            removed.add(i)
        elif any(scorer.score(e, text)["rougeL"].fmeasure >= threshold for e in evals):
            removed.add(i)
    return removed


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.95])
def test_prefix_filter_matches_brute_force(threshold):
    rng = random.Random(threshold)
    vocab = [f"w{i}" for i in range(12)]  # a small vocabulary makes many near matches

    def sentence() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 9)))

    evals = [sentence() for _ in range(60)]
    records = [sentence() for _ in range(150)]
    records += [e + " " + rng.choice(vocab) for e in evals[:20]]
    _, report = decontaminate([{"prompt": r} for r in records], evals, near_threshold=threshold, ngram_size=None)
    expected = brute_force(records, evals, threshold)
    assert 5 <= len(expected) < len(records)  # the case is not trivial either way
    assert {entry["index"] for entry in report["removed"]} == expected


# --------------------------------------------------------------------------------------------------------------
# Hand-made cases


def test_exact_match_ignores_case_spacing_and_punctuation():
    kept, report = decontaminate([{"prompt": "  WHAT is 2+2 ??", "id": "r1"}], ["what is 2 2"])
    assert kept == []
    assert report["removed"] == [
        {"index": 0, "id": "r1", "prompt": "  WHAT is 2+2 ??", "match": "exact", "score": 1.0, "eval_index": 0, "eval_prompt": "what is 2 2"}
    ]


def test_embedded_eval_prompt_is_caught_by_the_ngram_check():
    eval_prompt = "Explain why the sky appears blue during the day but red and orange at sunset"
    record = {"prompt": "I have a question for my physics homework that I could not solve. " + eval_prompt + ". Please be brief."}
    kept, report = decontaminate([record], [eval_prompt])
    assert kept == [] and report["near_ngram"] == 1
    kept, report = decontaminate([record], [eval_prompt], ngram_size=None)
    assert kept == [record]


def test_records_are_kept_untouched_and_other_fields_can_be_used():
    records = [{"question": "Tell me a joke", "replies": [1, 2]}, {"question": "Plan a trip to Rome"}]
    kept, report = decontaminate(records, [{"prompt": "tell me a joke."}], field="question")
    assert kept == [records[1]] and kept[0] is records[1]
    assert report["exact"] == 1 and report["kept"] == 1


def test_cjk_text_is_split_per_character():
    assert tokenize("今天天气很好") == ["今", "天", "天", "气", "很", "好"]
    assert tokenize("Café, naïve!") == ["café", "naïve"]
    kept, report = decontaminate([{"prompt": "今天天气很好吗"}], ["今天天气很好"])
    assert report["near_rouge_l"] == 1


def test_bad_input():
    with pytest.raises(DataError, match=r"records\[1\]: missing field 'prompt'"):
        decontaminate([{"prompt": "a"}, {"text": "b"}], ["x"])
    with pytest.raises(DataError, match=r"eval_prompts\[0\]: field 'prompt' must be a string"):
        decontaminate([{"prompt": "a"}], [{"prompt": 3}])
    with pytest.raises(ValueError):
        decontaminate([], [], near_threshold=0)
    kept, report = decontaminate([{"prompt": "?!"}], ["?!"])  # no words: cannot match anything
    assert len(kept) == 1


# --------------------------------------------------------------------------------------------------------------
# The index gives what the implementation before it gave. `reference_decontaminate` is that implementation, frozen
# (one function that rebuilt every table per call, as the prompts stage once did per candidate); only the tokenizer
# and the rouge-score adapter are shared with the module, since they define what is compared.


def reference_decontaminate(
    records: Iterable[dict],
    eval_prompts: Iterable[str | dict],
    *,
    field: str = "prompt",
    near_threshold: float = 0.8,
    ngram_size: int | None = 13,
) -> tuple[list[dict], dict]:
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
        return sorted(_ref_bag(tokens), key=lambda item: (doc_freq[item[0]], item[0], item[1]))

    eval_counts = [Counter(tokens) for tokens in eval_tokens]
    prefix_index: dict[tuple[str, int], list[int]] = defaultdict(list)
    for j, tokens in enumerate(eval_tokens):
        bag = ordered(tokens)
        for item in bag[: _ref_prefix_length(len(bag), share)]:
            prefix_index[item].append(j)

    scorer = None
    kept: list[dict] = []
    removed: list[dict] = []
    counts = Counter()
    for i, (record, text) in enumerate(zip(records, record_texts)):
        tokens = _tokens(text)
        match = _ref_exact_match(tokens, exact_index)
        if match is None:
            candidates: set[int] = set()
            bag = ordered(tokens)
            for item in bag[: _ref_prefix_length(len(bag), share)]:
                candidates.update(prefix_index.get(item, ()))
            length = len(tokens)
            candidates = {j for j in candidates if share * length <= len(eval_tokens[j]) <= length / share}
            if candidates:
                # LCS <= bag overlap, so F1 <= 2·overlap/(la+lb): a cheap bound that skips most quadratic LCS
                # computations. Candidates are scored best bound first, stopping once no bound can beat the best.
                bag_counts = Counter(tokens)
                bounds = (
                    (2 * _ref_overlap(bag_counts, eval_counts[j]) / (length + len(eval_tokens[j])), -j)
                    for j in candidates
                )
                best_score, best_j = 0.0, -1
                for bound, neg_j in sorted(bounds, reverse=True):
                    if bound < near_threshold - 1e-9 or bound <= best_score:
                        break
                    scorer = scorer or rouge_l_scorer()
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


def _ref_bag(tokens):
    seen = Counter()
    out = []
    for token in tokens:
        seen[token] += 1
        out.append((token, seen[token]))
    return out


def _ref_prefix_length(length, share):
    return length - math.ceil(share * length - 1e-9) + 1


def _ref_overlap(a, b):
    if len(a) > len(b):
        a, b = b, a
    return sum(min(count, b[token]) for token, count in a.items() if token in b)


def _ref_exact_match(tokens, exact_index):
    if not tokens:
        return None
    j = exact_index.get(" ".join(tokens))
    return None if j is None else {"match": "exact", "score": 1.0, "eval_index": j}


def candidates_from_real_data(eval_prompts: list[dict]) -> list[dict]:
    """OpenAssistant's prompt lottery and Self-Instruct's seed tasks, plus edited copies of every 7th evaluation
    prompt, so that all three kinds of match occur: a case change (exact), one word added (ROUGE-L) and the
    prompt pasted inside a longer request (13-gram)."""
    records = load_records(PROMPT_LOTTERY, kind="prompts") + load_records(SEED_TASKS, kind="prompts")
    for j, item in enumerate(eval_prompts[::7]):
        text = item["prompt"]
        records.append({"id": f"upper-{j}", "prompt": text.upper()})
        records.append({"id": f"plus-{j}", "prompt": text + " Thanks."})
        records.append({"id": f"inside-{j}", "prompt": "My teacher set this and I am stuck, so please help me with "
                        "the following task in full detail and explain every step you take. " + text})
    return records


@needs_data
def test_index_gives_the_reports_of_the_implementation_before_it_on_real_data():
    eval_prompts = load_records(ALPACA_EVAL, kind="prompts") + load_records(MT_BENCH, kind="prompts")
    records = candidates_from_real_data(eval_prompts)
    old_kept, old_report = reference_decontaminate(records, eval_prompts)
    kept, report = decontaminate(records, eval_prompts)
    assert report == old_report and kept == old_kept
    assert json.dumps(report) == json.dumps(old_report)  # the same key order: the written report is byte-identical
    assert min(report["exact"], report["near_rouge_l"], report["near_ngram"]) > 0  # every kind was exercised
    assert report["kept"] > 400  # the real prompts are mostly not evaluation prompts

    # One index, one candidate at a time (the prompts stage's way) against one old call per candidate.
    index = DecontaminationIndex(eval_prompts)
    by_index = {entry["index"]: entry for entry in report["removed"]}
    for i, record in enumerate(records):
        found = index.match(record["prompt"])
        if i not in by_index:
            assert found is None, record
            continue
        entry = {key: value for key, value in by_index[i].items() if key not in ("index", "id", "prompt")}
        assert found.report_fields() == entry
    sample = random.Random(0).sample(range(len(records)), 12) + sorted(by_index)[:: max(1, len(by_index) // 12)]
    for i in sample:
        _, single = reference_decontaminate([records[i]], eval_prompts)
        found = index.match(records[i]["prompt"])
        assert (found.report_fields() if found else None) == (
            {k: v for k, v in single["removed"][0].items() if k not in ("index", "id", "prompt")}
            if single["removed"] else None
        )


_WORDS = ["a", "b", "c", "ab", "Ab", "B", "é", "今", "天", "x1"]
_SEPARATORS = [" ", "  ", ", ", "!", "\n", "-", "?"]
_texts = st.one_of(
    st.lists(st.tuples(st.sampled_from(_WORDS), st.sampled_from(_SEPARATORS)), max_size=10).map(
        lambda parts: "".join(word + sep for word, sep in parts)
    ),
    st.text(max_size=12),
)


def brute_force_match(text: str, evals: list[str], threshold: float, ngram_size: int | None) -> tuple | None:
    """(kind, best ROUGE-L F1 or None) by checking every pair with no index at all."""
    tokens = _tokens(text)
    if tokens and any(_tokens(e) == tokens for e in evals):
        return ("exact", None)
    scorer = rouge_l_scorer()
    scores = [scorer.score(e, text)["rougeL"].fmeasure for e in evals]
    if scores and max(scores) >= threshold:
        return ("rouge_l", round(max(scores), 4))
    if ngram_size:
        grams = {tokens[k : k + ngram_size] for k in range(len(tokens) - ngram_size + 1)}
        for e in evals:
            e_tokens = _tokens(e)
            if grams & {e_tokens[k : k + ngram_size] for k in range(len(e_tokens) - ngram_size + 1)}:
                return ("ngram", None)
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    evals=st.lists(_texts, max_size=8),
    texts=st.lists(_texts, max_size=8),
    threshold=st.sampled_from([0.3, 0.5, 2 / 3, 0.8, 1.0]),
    ngram_size=st.sampled_from([None, 1, 2, 3, 13]),
)
def test_index_matches_the_old_implementation_and_brute_force_on_random_strings(evals, texts, threshold, ngram_size):
    records = [{"prompt": text} for text in texts]
    kw = dict(near_threshold=threshold, ngram_size=ngram_size)
    kept, report = decontaminate(records, evals, **kw)
    assert (kept, report) == reference_decontaminate(records, evals, **kw)

    index = DecontaminationIndex(evals, **kw)
    for text in texts:
        found = index.match(text)
        expected = brute_force_match(text, evals, threshold, ngram_size)
        assert (found.reason if found else None) == (expected[0] if expected else None), text
        if found is None:
            continue
        assert found.eval_prompt == evals[found.eval_index]
        if found.reason == "rouge_l":
            assert found.score == expected[1]  # the best pair, although not every pair was scored
        elif found.reason == "exact":
            assert normalise(found.eval_prompt) == normalise(text)
        else:
            assert found.ngram in normalise(found.eval_prompt) and found.ngram in normalise(text)


def test_match_reports_reason_and_the_evaluation_prompt():
    evals = ["What is the capital of France?", {"prompt": "Name three primary colours."}]
    index = DecontaminationIndex(evals, ngram_size=3)
    assert len(index) == 2
    assert index.match("what is the CAPITAL of france") == Match("exact", 0, evals[0], score=1.0)
    near = index.match("Name three primary colours, please.")
    assert near.reason == "rouge_l" and near.eval_index == 1 and near.eval_prompt == "Name three primary colours."
    assert near.score == round(2 * 4 / (4 + 5), 4)
    inside = index.match("For my art class: name three primary colours and say why they are called primary.")
    assert inside == Match("ngram", 1, "Name three primary colours.", ngram="name three primary")
    assert index.match("Recommend a board game for four.") is None
    assert DecontaminationIndex([]).match("anything") is None
    with pytest.raises(ValueError, match="near_threshold"):
        DecontaminationIndex(evals, near_threshold=1.5)
    with pytest.raises(ValueError, match="ngram_size"):
        DecontaminationIndex(evals, ngram_size=0)


def test_prompts_stage_builds_the_index_once(tmp_path, monkeypatch):
    from srlm.backends import make_backend
    from srlm.config import PromptsConfig
    from srlm.data import decontaminate as module
    from srlm.stages.prompts import run_prompts

    seeds = ["Explain how a rainbow forms after a storm.", "Give three tips for staying focused while studying.",
             "Suggest a name for a bakery that sells vegan bread.", "List the planets in order from the sun."]
    first = run_prompts(seeds, [], tmp_path / "a.jsonl", make_backend("fake"), PromptsConfig(num_prompts=6), seed=0)
    generated = [r["prompt"] for r in read_jsonl(tmp_path / "a.jsonl")]
    assert first["kept"] == len(generated) > 0
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in generated[:3]), encoding="utf-8")

    built = []
    original_init = module.DecontaminationIndex.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(module.DecontaminationIndex, "__init__", counting_init)
    cfg = PromptsConfig(num_prompts=6, decontaminate_against=[str(eval_file)])
    stats = run_prompts(seeds, [], tmp_path / "b.jsonl", make_backend("fake"), cfg, seed=0)
    assert built == [1]
    assert stats["rejected"]["contaminated"] >= 3
    kept = {r["prompt"] for r in read_jsonl(tmp_path / "b.jsonl")}
    assert not kept & set(generated[:3])


# --------------------------------------------------------------------------------------------------------------
# CLI


@needs_data
def test_cli_decontaminate(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="srlm")
    add_data_commands(parser.add_subparsers(dest="command"))
    source = tmp_path / "hh_prompts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in hh_first_turns()[:300]), encoding="utf-8")
    out = tmp_path / "clean.jsonl"
    args = parser.parse_args(
        ["data", "decontaminate", str(source), "--eval", str(ALPACA_EVAL), "--eval", str(MT_BENCH), "--out", str(out)]
    )
    assert args.func(args) == 0
    report = read_json(tmp_path / "clean.decontamination.json")
    assert report["eval_prompts"] == 885 and report["exact"] > 0
    assert len(read_jsonl(out)) == report["kept"] == 300 - len(report["removed"])
    printed = capsys.readouterr().out
    assert "removed: exact" in printed and str(report["kept"]) in printed

    with pytest.raises(SystemExit):
        parser.parse_args(["data", "decontaminate", str(source), "--out", str(out)])  # --eval is required
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["data", "decontaminate", "--help"])
    assert exit_info.value.code == 0
