"""Prompt sets (MT-Bench, AlpacaEval, prompt files), multi-turn answering, output formats and single-answer grading."""

import json
import re

import pytest

from srlm.backends import Sampling, make_backend
from srlm.cli import main
from srlm.errors import SrlmError
from srlm.evaluation.grading import grade_answers, make_grader, parse_rating
from srlm.evaluation.prompt_sets import (
    PromptItem,
    default_sampling,
    generate_answers,
    load_alpaca_eval,
    load_mt_bench,
    load_prompt_set,
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


# ----------------------------------------------------------------------------------------------------------------
# MT-Bench reference answers


def _reference_file(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _ref(question_id, *turns):
    return {"question_id": question_id, "model_id": "ref", "choices": [{"index": 0, "turns": list(turns)}]}


def test_real_reference_answers_cover_mt_bench_math_reasoning_coding(shared_data):
    from srlm.evaluation.grading import REFERENCE_CATEGORIES, load_reference_answers

    references = load_reference_answers(shared_data / "mt_bench" / "reference_answer" / "gpt-4.jsonl")
    questions = {it.id: it for it in load_mt_bench(shared_data / "mt_bench" / "question.jsonl")}
    assert len(references) == 30 and all(len(r.turns) == 2 for r in references.values())
    assert {questions[i].category for i in references} == {"math", "reasoning", "coding"}
    assert {i for i, q in questions.items() if q.category in REFERENCE_CATEGORIES} == set(references)
    assert references["101"].where.endswith("gpt-4.jsonl:1")


def test_cli_grade_with_the_real_reference_file(tmp_path, shared_data, monkeypatch):
    import srlm.backends.fake as fake

    answers = tmp_path / "mt.jsonl"
    assert main(["eval", "generate", "--set", "mtbench", "--data", str(shared_data / "mt_bench" / "question.jsonl"),
                 "--out", str(answers), "backend.name=fake"]) == 0
    seen = {}

    def judge(request, index):
        content = request.messages[0]["content"]
        seen[request.request_id] = content
        return "Rating: [[3]]" if "[Reference Answer]" in content else "Rating: [[8]]"

    monkeypatch.setattr(fake, "default_script", judge)
    out = tmp_path / "grades.json"
    reference_file = shared_data / "mt_bench" / "reference_answer" / "gpt-4.jsonl"
    assert main(["eval", "grade", "--answers", str(answers), "--grader", "mtbench", "--reference",
                 str(reference_file), "--out", str(out), "backend.name=fake"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n_graded_turns"] == 160 and metrics["n_reference_turns"] == 60
    assert metrics["per_category"]["math"] == 3.0 and metrics["per_category"]["writing"] == 8.0
    assert metrics["reference"]["questions_missing_reference"] == []
    items = [json.loads(line) for line in (tmp_path / "grades.items.jsonl").read_text().splitlines()]
    for item in items:
        guided = item["category"] in ("math", "reasoning", "coding")
        assert item["reference_used"] is guided
        assert item["template"] == ("mt_bench_reference_judge.txt" if guided else "mt_bench_judge.txt")
    # Turn 2 of question 101 sees both reference turns, the question and the model's own turn-1 answer.
    reference = [json.loads(line) for line in reference_file.read_text().splitlines()][0]["choices"][0]["turns"]
    first_answer = [json.loads(line) for line in answers.read_text().splitlines() if '"question_id": 101' in line][0]
    turn2 = seen["101/turn2"]
    assert f"Turn 1: {reference[0]}" in turn2 and f"Turn 2: {reference[1]}" in turn2
    assert f"Assistant: {first_answer['answers'][0]}" in turn2
    assert reference[0] in seen["101/turn1"] and reference[1] not in seen["101/turn1"]


def test_reference_grading_by_hand(tmp_path):
    from srlm.evaluation.grading import REFERENCE_CATEGORIES, load_reference_answers, match_references

    answered = [
        {"id": "7", "category": "math", "questions": ["What is 2+2?", "And 3+3?"], "answers": ["4", "5"]},
        {"id": "8", "category": "writing", "questions": ["Write a haiku."], "answers": ["Leaves fall."]},
        {"id": "9", "category": "coding", "questions": ["Sort a list."], "answers": ["sorted(x)"]},
    ]
    references = load_reference_answers(_reference_file(tmp_path / "ref.jsonl", [
        _ref(7, "2+2 = 4.", "3+3 = 6."), _ref("8", "An example haiku."),
    ]))
    matched, missing = match_references(answered, references, categories=REFERENCE_CATEGORIES)
    assert matched == {"7": ["2+2 = 4.", "3+3 = 6."]} and missing == ["9"]  # writing is not graded on a reference
    assert match_references(answered, references, categories=None)[0]["8"] == ["An example haiku."]

    seen = {}

    def judge(request, index):
        seen[request.request_id] = request.messages[0]["content"]
        return "Rating: [[9]]" if "Answer]\n4" in request.messages[0]["content"] else "Rating: [[2]]"

    metrics, items = grade_answers(answered, make_backend("fake", None, script=judge), make_grader("mtbench"),
                                   seed=0, sampling=Sampling(n=1, temperature=0.0), references=matched)
    assert [(it["id"], it["turn"], it["reference_used"]) for it in items] == [
        ("7", 1, True), ("7", 2, True), ("8", 1, False), ("9", 1, False)]
    assert [it["score"] for it in items] == [9.0, 2.0, 2.0, 2.0] and metrics["n_reference_turns"] == 2
    assert "[Reference Answer]\n2+2 = 4.\n\n[The Assistant's Answer]\n4" in seen["7/turn1"]
    assert "[Reference Answer]\nTurn 1: 2+2 = 4.\n\nTurn 2: 3+3 = 6.\n\n[The Assistant's Answer]\n5" in seen["7/turn2"]
    assert "What is 2+2?\n\nAssistant: 4\n\nUser: And 3+3?" in seen["7/turn2"]
    assert "[Reference Answer]" not in seen["8/turn1"] and "[Reference Answer]" not in seen["9/turn1"]
    with pytest.raises(SrlmError, match="additive grader has no reference-guided template"):
        grade_answers(answered, make_backend("fake"), make_grader("additive"), seed=0, sampling=Sampling(n=1),
                      references=matched)


@pytest.mark.parametrize(
    "records, message",
    [
        ([_ref(7, "a", "b"), _ref(999, "x")], r"ref.jsonl:2: field 'question_id': 999 is not a question in"),
        ([_ref(7, "only one turn")], r"ref.jsonl:1: field 'choices\[0\].turns' has 1 turn\(s\), but question 7 has 2"),
        ([{"question_id": 7, "choices": []}], r"ref.jsonl:1: field 'choices' must be a non-empty list"),
        ([{"question_id": 7, "choices": [{"turns": "a"}]}], r"ref.jsonl:1: field 'choices\[0\].turns' must be"),
        ([_ref(7, "a", " ")], r"ref.jsonl:1: field 'choices\[0\].turns\[1\]' must be a non-empty string"),
        ([{"choices": [{"turns": ["a"]}]}], r"ref.jsonl:1: missing field 'question_id'"),
        ([_ref(7, "a", "b"), _ref("7", "c", "d")], r"ref.jsonl:2: field 'question_id': 7 already has a reference "
                                                   r"answer at .*ref.jsonl:1"),
    ],
)
def test_bad_reference_files_name_file_line_and_field(tmp_path, records, message):
    from srlm.evaluation.grading import REFERENCE_CATEGORIES, load_reference_answers, match_references

    answered = [{"id": "7", "category": "math", "questions": ["q1", "q2"], "answers": ["a1", "a2"]}]
    with pytest.raises(SrlmError, match=message):
        references = load_reference_answers(_reference_file(tmp_path / "ref.jsonl", records))
        match_references(answered, references, categories=REFERENCE_CATEGORIES)


def test_cli_grade_reference_checks(tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    answers.write_text("".join(json.dumps({"id": str(i), "category": "math", "questions": ["q"],
                                           "answers": ["a"]}) + "\n" for i in (1, 2, 3)))
    references = _reference_file(tmp_path / "ref.jsonl", [_ref(1, "r1"), _ref(3, "r3")])
    out = str(tmp_path / "g.json")
    assert main(["eval", "grade", "--answers", str(answers), "--reference", str(references), "--out", out,
                 "backend.name=fake"]) == 2
    assert "--grader additive has no place for them" in capsys.readouterr().err
    # --limit grades a part of the answers; references are checked against the whole file, and only the kept
    # questions are reported as missing one.
    assert main(["eval", "grade", "--answers", str(answers), "--grader", "mtbench", "--reference", str(references),
                 "--limit", "2", "--out", out, "backend.name=fake"]) == 0
    metrics = json.loads((tmp_path / "g.json").read_text())
    assert metrics["n_reference_turns"] == 1 and metrics["reference"]["questions_missing_reference"] == ["2"]
    assert "1 of 2 turns graded against a reference answer" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "grade", "--answers", str(answers), "--grader", "mtbench", "--reference", str(references),
              "--reference-categories", " ", "--out", out])
    assert "give categories separated by commas, or 'all'" in capsys.readouterr().err
