"""Prompt sets (MT-Bench, AlpacaEval, prompt files), multi-turn answering, output formats and single-answer grading."""

import json
import re

import pytest

from srlm.backends import Sampling, make_backend
from srlm.cli import main
from srlm.errors import SrlmError
from srlm.evaluation.prompt_sets import (
    PromptItem,
    default_sampling,
    generate_answers,
    grade_answers,
    load_alpaca_eval,
    load_mt_bench,
    load_prompt_set,
    make_grader,
    parse_rating,
    read_answers,
    write_answers,
)


def test_real_mt_bench(shared_data):
    items = load_mt_bench(shared_data / "mt_bench" / "question.jsonl")
    assert len(items) == 80 and all(len(it.turns) == 2 for it in items)
    assert {it.category for it in items} == {"writing", "roleplay", "reasoning", "math", "coding", "extraction",
                                             "stem", "humanities"}
    assert items[0].id == "81" and items[0].meta["question_id"] == 81


def test_real_alpaca_eval(shared_data):
    items = load_alpaca_eval(shared_data / "alpaca_eval" / "text_davinci_003_outputs.json")
    assert len(items) == 805 and all(len(it.turns) == 1 for it in items)
    assert items[0].category == "helpful_base" and items[0].turns[0].startswith("What are the names")


def test_prompt_set_errors(tmp_path):
    with pytest.raises(SrlmError, match="needs --data"):
        load_prompt_set("mtbench")
    with pytest.raises(SrlmError, match="not one of mtbench, alpacaeval"):
        load_prompt_set(str(tmp_path / "missing.jsonl"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one"}\n"two"\n{"instruction": "three"}\n')
    prompt_set = load_prompt_set(str(prompts), limit=2)
    assert prompt_set.name == "file" and [it.turns for it in prompt_set.items] == [["one"], ["two"]]


def test_turn_two_sees_the_models_own_first_answer():
    seen = []

    def script(request, index):
        seen.append(request)
        return f"answer to {request.messages[-1]['content']}"

    items = [PromptItem("q1", ["first?", "second?"], "writing"), PromptItem("q2", ["only?"], "math")]
    records = generate_answers(items, make_backend("fake", None, script=script), seed=0,
                               sampling_for=lambda it: Sampling(n=1, temperature=0.0, max_new_tokens=50))
    assert records[0]["answers"] == ["answer to first?", "answer to second?"]
    assert records[1]["answers"] == ["answer to only?"]
    turn2 = [r for r in seen if r.request_id == "q1/turn2"][0]
    assert turn2.messages == [
        {"role": "user", "content": "first?"},
        {"role": "assistant", "content": "answer to first?"},
        {"role": "user", "content": "second?"},
    ]
    assert records[0]["questions"] == ["first?", "second?"] and records[0]["finish_reasons"] == ["stop", "stop"]


def test_default_sampling():
    mt = default_sampling("mtbench", temperature=None, top_p=0.9, max_new_tokens=64)
    assert mt(PromptItem("1", ["x"], "writing")).temperature == 0.7
    assert mt(PromptItem("1", ["x"], "math")).greedy
    assert mt(PromptItem("1", ["x"], "stem")).temperature == 0.1
    assert default_sampling("alpacaeval", temperature=None, top_p=0.9, max_new_tokens=64)(PromptItem("1", ["x"])).greedy
    assert default_sampling("mtbench", temperature=0.3, top_p=0.9, max_new_tokens=64)(
        PromptItem("1", ["x"], "math")).temperature == 0.3


def test_cli_alpaca_eval_outputs_in_alpaca_eval_format(tmp_path, shared_data):
    out = tmp_path / "model_outputs.json"
    assert main(["eval", "generate", "--set", "alpacaeval", "--data",
                 str(shared_data / "alpaca_eval" / "text_davinci_003_outputs.json"), "--out", str(out),
                 "--limit", "3", "--generator", "srlm-m3", "backend.name=fake"]) == 0
    outputs = json.loads(out.read_text())
    assert len(outputs) == 3
    assert all(set(o) == {"instruction", "output", "generator", "dataset"} for o in outputs)
    assert outputs[0]["generator"] == "srlm-m3" and outputs[0]["dataset"] == "helpful_base"
    assert read_answers(out)[0]["questions"] == [outputs[0]["instruction"]]


def test_cli_mt_bench_answers_fastchat_fields(tmp_path, shared_data):
    out = tmp_path / "mt.jsonl"
    assert main(["eval", "generate", "--set", "mtbench", "--data", str(shared_data / "mt_bench" / "question.jsonl"),
                 "--out", str(out), "--limit", "2", "backend.name=fake"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["question_id"] == 81 and rows[0]["category"] == "writing"
    assert rows[0]["choices"][0]["turns"] == rows[0]["answers"] and len(rows[0]["answers"]) == 2
    assert [len(r["answers"]) for r in read_answers(out)] == [2, 2]


def test_cli_generate_with_a_real_tiny_model(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "What is the capital of France?"}\n{"prompt": "Score: 4"}\n')
    out = tmp_path / "answers.jsonl"
    assert main(["eval", "generate", "--set", str(prompts), "--model", str(tiny_model_dir), "--out", str(out),
                 "--max-new-tokens", "4", "model.device=cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["answers"]) == 1 and r["num_tokens"][0] <= 4 for r in rows)


@pytest.mark.parametrize(
    "text, rating",
    [
        ("Good answer.\nRating: [[8]]", 8.0),
        ("Rating: [[7.5]]", 7.5),
        ("It was [[3]] at first, but\nRating: [[6]]", 6.0),
        ("Rating: 9", 9.0),
        ("Rating: [[11]]", None),
        ("Rating: [[0]]", None),
        ("No rating here.", None),
    ],
)
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


def test_grade_per_turn_and_category_by_hand():
    answered = [
        {"id": "1", "category": "writing", "questions": ["w1", "w2"], "answers": ["[r=8]", "[r=6]"]},
        {"id": "2", "category": "math", "questions": ["m1", "m2"], "answers": ["[r=4]", "no rating"]},
    ]
    seen = []

    def script(request, index):
        seen.append(request.messages[0]["content"])
        # The rating is written in the graded answer itself: "[r=8]" -> "Rating: [[8]]".
        match = re.search(r"\[The Assistant's Answer\]\s*\[r=(\d+)\]", request.messages[0]["content"])
        return f"Rating: [[{match.group(1)}]]" if match else "I cannot rate this."

    metrics, items = grade_answers(answered, make_backend("fake", None, script=script), make_grader("mtbench"),
                                   seed=0, sampling=Sampling(n=1, temperature=0.0))
    assert [it["score"] for it in items] == [8.0, 6.0, 4.0, None]
    assert metrics["score_mean"] == pytest.approx(6.0)
    assert metrics["per_turn"] == {"1": 6.0, "2": 6.0}
    assert metrics["per_category"] == {"math": 4.0, "writing": 7.0}
    assert metrics["mt_bench_groups"]["math_coding_reasoning"] == 4.0
    assert metrics["n_scored_turns"] == 3 and metrics["sample_parse_rate"] == pytest.approx(0.75)
    # Turn 2 is graded with the conversation before it.
    assert "w1\n\nAssistant: [r=8]\n\nUser: w2" in seen[1]


def test_additive_grader_uses_the_loop_judge():
    answered = [{"id": "x", "category": None, "questions": ["q"], "answers": ["a"]}]
    metrics, items = grade_answers(answered, make_backend("fake", None, script=lambda r, i: f"Score: {i + 3}"),
                                   make_grader("additive"), seed=0, sampling=Sampling(n=2))
    assert items[0]["scores"] == [3.0, 4.0] and metrics["score_mean"] == 3.5
    assert metrics["scale"] == [0.0, 5.0] and metrics["per_category"] == {} and "mt_bench_groups" not in metrics


def test_cli_grade(tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n")
    out = tmp_path / "g.json"
    assert main(["eval", "grade", "--answers", str(answers), "--out", str(out), "backend.name=fake"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["grader"] == "additive" and metrics["n_graded_turns"] == 1
    assert metrics["judge"]["num_samples"] == 3  # judge.num_samples, as in the loop
    assert (tmp_path / "g.items.jsonl").exists() and "overall" in capsys.readouterr().out


def test_write_and_read_answers_round_trip(tmp_path):
    from srlm.evaluation.prompt_sets import PromptSet

    prompt_set = PromptSet("file", [PromptItem("a", ["q?"])], "x")
    records = [{"id": "a", "category": None, "questions": ["q?"], "answers": ["ans"], "finish_reasons": ["stop"],
                "num_tokens": [1]}]
    path = write_answers(tmp_path / "o.jsonl", prompt_set, records, "gen")
    assert read_answers(path) == [{"id": "a", "category": None, "questions": ["q?"], "answers": ["ans"]}]
