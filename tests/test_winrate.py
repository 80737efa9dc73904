"""Pairwise win rates: the verdict parser, both-orders judging, and `srlm eval winrate`."""

import json

import pytest

from srlm.backends import make_backend
from srlm.cli import main
from srlm.errors import SrlmError
from srlm.evaluation.winrate import (
    builtin_pairwise_template,
    load_pairwise_template,
    pairwise_winrate,
    parse_verdict,
    render_pairwise,
)


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Output (a) is more complete.\nWinner: A", "A"),
        ("Winner: B", "B"),
        ("Both are equally good.\nWinner: tie", "tie"),
        ("winner: TIE", "tie"),
        ("**Winner:** Output (b)", "B"),
        ("Winner: [[A]]", "A"),
        ("Winner: Draw.", "tie"),
        ("First Winner: A, on reflection...\nWinner: B", "B"),  # the conclusion counts
        ("Winner: A or B", None),
        ("Winner: Output (a) is better", None),
        ("I prefer output (a).", None),
        ("", None),
        ("Winner: C", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_template_and_single_pass_rendering(tmp_path):
    template = builtin_pairwise_template()
    for slot in ("{instruction}", "{output_a}", "{output_b}", "Winner: A", "Winner: B", "Winner: tie"):
        assert slot in template
    rendered = render_pairwise("I={instruction} A={output_a} B={output_b}", "say {output_b}", "x{instruction}", "y")
    assert rendered == "I=say {output_b} A=x{instruction} B=y"  # user text is never re-substituted
    bad = tmp_path / "t.txt"
    bad.write_text("{instruction} {output_a}")
    with pytest.raises(SrlmError, match="no \\{output_b\\} slot"):
        load_pairwise_template(bad)


def position_of(content, text):
    return content.find(text)


def fair_judge(request, index):
    """Prefers the output containing 'good', wherever it is shown."""
    content = request.messages[0]["content"]
    a_part, b_part = content.split("# Output (b)")
    if "good" in a_part.split("# Output (a)")[1]:
        return "Output (a) is better.\nWinner: A"
    if "good" in b_part:
        return "Output (b) is better.\nWinner: B"
    return "They are the same.\nWinner: tie"


def test_a_wins_when_both_orders_agree():
    prompts = ["p1", "p2", "p3"]
    result = pairwise_winrate(prompts, ["good 1", "good 2", "good 3"], ["bad", "bad", "bad"],
                              make_backend("fake", None, script=fair_judge), seed=0, max_new_tokens=50,
                              bootstrap_samples=0)
    m = result["metrics"]
    assert m["win"] == 1.0 and m["loss"] == 0.0 and m["win_rate"] == 1.0 and m["n"] == 3
    items = result["items"]
    assert [(it["first_order"], it["second_order"]) for it in items] == [("A", "B")] * 3
    assert m["mean_len_a"] == 6.0 and m["mean_len_b"] == 3.0 and m["length_unit"] == "characters"


def test_position_bias_becomes_ties():
    result = pairwise_winrate(["p1", "p2"], ["x", "y"], ["z", "w"],
                              make_backend("fake", None, script=lambda r, i: "Winner: A"), seed=0,
                              max_new_tokens=50, bootstrap_samples=0)
    m = result["metrics"]
    assert m["tie"] == 1.0 and m["win_rate"] == 0.5 and m["n_order_disagreements"] == 2


def test_mixed_outcomes_by_hand():
    # pair 0: A better; pair 1: B better; pair 2: a judge that always says A (ties); pair 3: never parses.
    def judge(request, index):
        content = request.messages[0]["content"]
        if "biased" in content:
            return "Winner: A"
        if "mute" in content:
            return "No idea."
        return fair_judge(request, index)

    prompts = ["p0", "p1", "biased", "mute"]
    result = pairwise_winrate(prompts, ["good a", "bad a", "s", "t"], ["bad b", "good b", "u", "v"],
                              make_backend("fake", None, script=judge), seed=0, max_new_tokens=50,
                              bootstrap_samples=0)
    m = result["metrics"]
    assert (m["win"], m["tie"], m["loss"]) == (0.25, 0.5, 0.25)
    assert m["win_rate"] == 0.5 and m["n_unparsed"] == 1 and m["n_order_disagreements"] == 1


def test_both_orders_are_sent_and_greedy_by_default():
    seen = []

    def judge(request, index):
        seen.append(request)
        return "Winner: tie"

    pairwise_winrate(["the prompt"], ["ANSWER-A"], ["ANSWER-B"], make_backend("fake", None, script=judge), seed=3,
                     max_new_tokens=40, bootstrap_samples=0)
    first, second = (r.messages[0]["content"] for r in seen)
    assert position_of(first, "ANSWER-A") < position_of(first, "ANSWER-B")
    assert position_of(second, "ANSWER-B") < position_of(second, "ANSWER-A")
    assert all(r.sampling.greedy and r.sampling.max_new_tokens == 40 for r in seen)


def test_lengths_must_match():
    with pytest.raises(ValueError):
        pairwise_winrate(["p"], ["a", "b"], ["c"], make_backend("fake"), seed=0)


def _outputs(path, answers, generator):
    path.write_text(json.dumps([{"instruction": f"Instruction {i}", "output": a, "generator": generator,
                                 "dataset": "test"} for i, a in enumerate(answers)]))


def test_cli_from_output_files(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _outputs(a, ["one", "two", "three"], "model-a")
    _outputs(b, ["uno", "dos", "tres"], "model-b")
    out = tmp_path / "w.json"
    assert main(["eval", "winrate", "--outputs-a", str(a), "--outputs-b", str(b), "--out", str(out),
                 "--bootstrap-samples", "0", "backend.name=fake"]) == 0
    metrics = json.loads(out.read_text())
    # The fake backend's default text has no verdict: every pair is an unparsed tie.
    assert metrics["n"] == 3 and metrics["n_unparsed"] == 3 and metrics["win_rate"] == 0.5
    assert metrics["mean_len_a"] == pytest.approx(11 / 3)
    items = [json.loads(line) for line in (tmp_path / "w.items.jsonl").read_text().splitlines()]
    assert [it["answer_b"] for it in items] == ["uno", "dos", "tres"]
    assert "win rate" in capsys.readouterr().out


def test_cli_generates_both_sides(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about {x}."}) + "\n" for x in ("cats", "dogs")))
    out = tmp_path / "w.json"
    assert main(["eval", "winrate", "--prompts", str(prompts), "--model-a", "A", "--model-b", "B",
                 "--out", str(out), "--bootstrap-samples", "0", "backend.name=fake"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 2 and metrics["model_a"] == "A" and metrics["model_b"] == "B"


def test_cli_argument_errors(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _outputs(a, ["one", "two"], "a")
    _outputs(b, ["uno"], "b")
    out = str(tmp_path / "w.json")
    assert main(["eval", "winrate", "--outputs-a", str(a), "--outputs-b", str(b), "--out", out,
                 "backend.name=fake"]) == 2
    assert "no answer for 1 of 2 prompts" in capsys.readouterr().err
    assert main(["eval", "winrate", "--outputs-a", str(a), "--model-b", "B", "--out", out]) == 2
    assert "not a mix" in capsys.readouterr().err
    assert main(["eval", "winrate", "--model-a", "A", "--model-b", "B", "--out", out]) == 2
    assert "need --prompts" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Identical answers, and single-answer (additive) grading


def _counting(script):
    calls = []

    def wrapped(request, index):
        calls.append(request.messages[0]["content"])
        return script(request, index)

    return wrapped, calls


def test_identical_answers_are_ties_that_are_not_judged():
    script, calls = _counting(lambda request, index: "Winner: A")  # a judge that always picks the first position
    judge = make_backend("fake", script=script)
    result = pairwise_winrate(["p1", "p2", "p3"], ["same", "x", "same too"], ["same", "y", "same too"], judge, seed=0,
                              bootstrap_samples=0)
    assert len(calls) == 2  # only the pair that differs, in both orders
    metrics, items = result["metrics"], result["items"]
    assert metrics["n_identical"] == 2 and [bool(i.get("identical")) for i in items] == [True, False, True]
    assert metrics["tie"] == pytest.approx(1.0)  # identical pairs tie; the position-biased pair disagrees: a tie
    assert metrics["n_order_disagreements"] == 1


def test_additive_winrate_grades_each_answer_alone_and_the_higher_score_wins():
    from srlm.config import JudgeConfig
    from srlm.evaluation.winrate import additive_winrate

    scores = {"great answer": 5, "fine answer": 3, "okay answer": 3, "poor answer": 1, "mumble": None}

    def judge_script(request, index):
        content = request.messages[0]["content"]
        answer = next(a for a in scores if a in content)
        return "Justified." + ("" if scores[answer] is None else f"\nScore: {scores[answer]}")

    script, calls = _counting(judge_script)
    judge = make_backend("fake", script=script)
    prompts = ["q1", "q2", "q3", "q4", "q5"]
    a = ["great answer", "poor answer", "fine answer", "mumble", "fine answer"]
    b = ["poor answer", "great answer", "okay answer", "fine answer", "fine answer"]
    result = additive_winrate(prompts, a, b, judge, JudgeConfig(num_samples=2), seed=0, bootstrap_samples=0)
    items, metrics = result["items"], result["metrics"]
    outcomes = [(i["first_order"], i["second_order"]) for i in items]
    # A wins, B wins, equal scores tie, an unscored answer leaves the pair unparsed, identical answers tie
    assert outcomes == [("A", "B"), ("B", "A"), ("tie", "tie"), (None, None), ("tie", "tie")]
    assert items[0]["score_a"] == 5 and items[0]["score_b"] == 1 and len(items[0]["judgements_a"]) == 2
    assert metrics["win"] == pytest.approx(0.2) and metrics["loss"] == pytest.approx(0.2)
    assert metrics["n_unparsed"] == 1 and metrics["n_identical"] == 1 and metrics["n_order_disagreements"] == 0
    assert metrics["judge"]["method"] == "additive"
    # each distinct (prompt, answer) of a pair that differs is graded once, with num_samples=2 judgements
    assert len(set(calls)) == 8 and len(calls) == 8 * 2


def test_eval_winrate_cli_additive_method(tmp_path, capsys):
    outputs_a = tmp_path / "a.json"
    outputs_b = tmp_path / "b.json"
    outputs_a.write_text(json.dumps([{"instruction": "q1", "output": "one"}, {"instruction": "q2", "output": "two"}]))
    outputs_b.write_text(json.dumps([{"instruction": "q1", "output": "uno"}, {"instruction": "q2", "output": "two"}]))
    out = tmp_path / "w.json"
    assert main(["eval", "winrate", "--outputs-a", str(outputs_a), "--outputs-b", str(outputs_b), "--method",
                 "additive", "--out", str(out), "backend.name=fake"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["judge"]["method"] == "additive" and metrics["n"] == 2 and metrics["n_identical"] == 1
    assert "graded alone" in capsys.readouterr().out


def test_judge_prompts_over_the_limit_are_not_sent_and_are_counted():
    from srlm.config import JudgeConfig
    from srlm.evaluation.winrate import additive_winrate

    long_answer = "word " * 3000  # over judge.max_prompt_tokens (fake backend: words)
    sent = []

    def judge(request, index):
        sent.append(request.messages[0]["content"])
        return "Winner: A" if "Output (a)" in request.messages[0]["content"] else "Fine.\nScore: 3"

    backend = make_backend("fake", None, script=judge)
    pairwise = pairwise_winrate(["p1", "p2"], ["good", long_answer], ["bad", "bad"], backend, seed=0,
                                bootstrap_samples=0, max_prompt_tokens=2048)
    assert pairwise["metrics"]["pairs_skipped_prompt_too_long"] == 1 and len(sent) == 2  # only p1, both orders
    assert pairwise["items"][1]["skipped"] == "judge_prompt_too_long" and pairwise["items"][1]["first_order"] is None
    sent.clear()
    additive = additive_winrate(["p1", "p2"], ["good", long_answer], ["bad", "bad"], backend,
                                JudgeConfig(num_samples=1), seed=0, bootstrap_samples=0)
    assert additive["metrics"]["answers_skipped_prompt_too_long"] == 1 and len(sent) == 3
    assert additive["items"][1]["first_order"] is None and additive["metrics"]["n_unparsed"] == 1


def test_additive_grades_kept_from_an_earlier_comparison_are_not_judged_again():
    """The loop's fixed judge (M1) meets M1's answers in every iteration's comparison: graded once, reused after."""
    from srlm.config import JudgeConfig
    from srlm.evaluation.winrate import additive_winrate

    from srlm.evaluation.winrate import ungraded_answers

    scores = {"m1 one": 2, "m1 two": 4, "m2 one": 3, "m2 two": 5, "m3 one": 4, "m3 two": 1}

    def judge_script(request, index):
        content = request.messages[0]["content"]
        return "Justified.\nScore: " + str(next(v for a, v in scores.items() if a in content))

    script, calls = _counting(judge_script)
    judge = make_backend("fake", script=script)
    prompts, m1, m2, m3 = ["q1", "q2"], ["m1 one", "m1 two"], ["m2 one", "m2 two"], ["m3 one", "m3 two"]
    grades = {}
    first = additive_winrate(prompts, m2, m1, judge, JudgeConfig(num_samples=1), seed=0, bootstrap_samples=0,
                             grades=grades)
    assert len(calls) == 4 and len(grades) == 4 and first["metrics"]["answers_graded_before"] == 0
    again = additive_winrate(prompts, m3, m1, judge, JudgeConfig(num_samples=1), seed=0, bootstrap_samples=0,
                             grades=grades)
    assert len(calls) == 6  # only M3's two answers were sent
    assert again["metrics"]["answers_graded_before"] == 2
    fresh = additive_winrate(prompts, m3, m1, make_backend("fake", script=judge_script), JudgeConfig(num_samples=1),
                             seed=0, bootstrap_samples=0)
    assert again["items"] == fresh["items"]  # the same verdicts as grading everything anew
    assert [i["first_order"] for i in again["items"]] == ["A", "B"]
    # everything graded: nothing to send, so the caller need not load the judge model at all
    assert ungraded_answers(prompts, m3, m1, grades) == 0 and ungraded_answers(prompts, m3, m1, {}) == 4
    without_judge = additive_winrate(prompts, m3, m1, None, JudgeConfig(num_samples=1), seed=0, bootstrap_samples=0,
                                     grades=grades)
    assert without_judge["items"] == again["items"] and len(calls) == 6


def test_a_model_trained_again_at_the_same_path_is_not_taken_for_the_old_one(tmp_path):
    """Held-out answers and grades are cached by model: the key follows the weight files, not only the path."""
    from srlm.config import Config
    from srlm.stages.evaluate import _model_key

    model = tmp_path / "models" / "m1"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"old weights")
    cfg = Config()
    before = _model_key(cfg, str(model))
    assert _model_key(cfg, str(model)) == before
    (model / "model.safetensors").write_bytes(b"new weights, retrained")
    assert _model_key(cfg, str(model)) != before
    assert _model_key(cfg.model_copy(update={"seed": 1}), str(model)) != _model_key(cfg, str(model))
