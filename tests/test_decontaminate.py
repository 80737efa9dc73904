"""Tests of srlm.data.decontaminate, on the real AlpacaEval, MT-Bench and HH-RLHF files and on hand-made cases."""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import time
from pathlib import Path

import pytest

from srlm.data.cli import add_data_commands
from srlm.data.decontaminate import decontaminate, normalise, tokenize
from srlm.data.formats import load_records
from srlm.errors import DataError
from srlm.io import read_json, read_jsonl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPACA_EVAL = DATA / "alpaca_eval" / "text_davinci_003_outputs.json"
MT_BENCH = DATA / "mt_bench" / "question.jsonl"
HH_TEST = DATA / "hh_rlhf" / "helpful-base-test.jsonl.gz"
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
