"""The loop end to end on a tiny model: real SFT/DPO through TRL, generation from the scripted `fake` backend."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from srlm.backends.fake import default_script
from srlm.config import load_config
from srlm.errors import SrlmError
from srlm.io import read_jsonl
from srlm.loop import run_loop

SMALL = ["backend.name=fake", "data.max_ift_examples=6", "data.max_eft_examples=6", "sft.batch_size=4", "sft.micro_batch_size=2", "sft.epochs=1",
         "dpo.batch_size=4", "dpo.micro_batch_size=2", "prompts.num_prompts=6", "backend.chunk_prompts=2",
         # the paper's judging and no in-loop evaluation, unless a test turns them on
         "judge.method=sample_mean", "judge.num_samples=3", "eval.heldout_prompts=null", "eval.judge_data=null"]


def small_config(model_dir, *extra):
    return load_config("quickstart", overrides=[f"model.name_or_path={model_dir}", *SMALL, *extra])


def snapshot(run_dir):
    """Every JSONL output of a run, by relative path: what must be equal between runs."""
    return {str(p.relative_to(run_dir)): p.read_text() for p in sorted(run_dir.rglob("*.jsonl"))}


def write_eval_files(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"prompt": f"Held-out question number {i}?"}) + "\n" for i in range(3)))
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"A good answer {i}.",
                                          "rejected": f"Bad {i}."}) + "\n" for i in range(4)))
    return [f"eval.heldout_prompts={heldout}", f"eval.judge_data={ranked}"]


def test_loop_runs_m1_to_m3_and_a_rerun_does_nothing(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    eval_overrides = write_eval_files(tmp_path)
    summary = run_loop(small_config(tiny_model_dir, *eval_overrides), run_dir)
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
    for t in (1, 2, 3):
        assert (run_dir / "models" / f"m{t}" / "model.safetensors").exists()
    on_disk = json.loads((run_dir / "summary.json").read_text())
    for row in on_disk["iterations"]:
        for key in ("iteration", "prompts", "responses", "judge_parse_rate", "pairs", "chosen_len_mean",
                    "rejected_len_mean", "seconds"):
            assert key in row
        assert row["prompts"] == 6 and row["responses"] == 24 and row["pairs"] > 0
    out = capsys.readouterr().out
    assert "iteration 1: m1 -> m2" in out and "judge parse rate" in out
    pairs = read_jsonl(run_dir / "iter_1" / "pairs.jsonl")
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert (run_dir / "config.yaml").exists()
    # evaluation inside the loop: M1's judge once, then M_t+1 vs M_t and M_t+1's judge after each iteration
    assert 0 <= on_disk["m1_judge_accuracy"]["parse_failure_rate"] <= 1
    m1_accuracy = on_disk["m1_judge_accuracy"]
    assert m1_accuracy["judge_signal"] in ("above chance", "below chance", "none")
    assert m1_accuracy["length_baseline"]["pairwise_accuracy"] == 1.0  # every chosen answer is the longer one
    for row in on_disk["iterations"]:
        w = row["eval"]["winrate_vs_previous"]
        # M1 judges every comparison: a judge fixed for the run, not the contestant
        assert w["n"] == 3 and abs(w["win"] + w["tie"] + w["loss"] - 1) < 1e-9 and w["judge"] == "M1 (fixed)"
        assert row["eval"]["judge_accuracy"]["n"] == 4
        # the judge that built this iteration's pairs (M_t), with its interval, in the iteration's row
        assert row["judge_accuracy"]["pairwise_accuracy_ci"] is not None
        # one logged entry per DPO step, first loss ln 2 (policy = reference)
        assert row["dpo_steps"] and abs(row["dpo_steps"][0]["loss"] - 0.6931) < 1e-3
    assert "winrate_vs_m1" not in on_disk["iterations"][0]["eval"]  # M2's previous model is M1
    assert on_disk["iterations"][1]["eval"]["winrate_vs_m1"]["model_b"] == "m1"
    # the fixed judge's grades are kept for the run: M1's answers are graded once, not in every comparison
    assert (run_dir / "eval_answers" / "grades_by_m1.json").exists()
    assert "answers_graded_before" in on_disk["iterations"][1]["eval"]["winrate_vs_m1"]
    assert on_disk["iterations"][1]["judge_accuracy"] == {
        k: on_disk["iterations"][0]["eval"]["judge_accuracy"].get(k) for k in on_disk["iterations"][1]["judge_accuracy"]}
    assert "m3 vs m1 (win/tie/loss)" in out and "judge (m1) pairwise acc." in out
    assert (run_dir / "iter_2" / "eval" / "judge_accuracy.items.jsonl").exists()
    html = (run_dir / "report.html").read_text()
    assert "<svg" in html and (run_dir / "report.md").exists()

    before = snapshot(run_dir)
    weights = (run_dir / "models" / "m3" / "model.safetensors").stat().st_mtime_ns
    run_loop(small_config(tiny_model_dir, *eval_overrides), run_dir)
    assert "already done, skipped" in capsys.readouterr().out
    assert snapshot(run_dir) == before
    assert (run_dir / "models" / "m3" / "model.safetensors").stat().st_mtime_ns == weights


def test_a_changed_setting_reruns_that_stage_and_everything_after(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_loop(small_config(tiny_model_dir, "loop.iterations=1"), run_dir)
    capsys.readouterr()
    run_loop(small_config(tiny_model_dir, "loop.iterations=1", "pairs.min_score_gap=0.5"), run_dir)
    out = capsys.readouterr().out
    assert "iter_1/judge: already done" in out
    assert "iter_1/pairs: running" in out and "iter_1/dpo: running" in out
    # said before anything ran: the changed key, the stages that rerun, and where the old config went
    preview = out[: out.index("srlm: sft:")]
    assert "pairs.min_score_gap: 0.0 -> 0.5" in preview
    assert "finished stages that will rerun: iter_1/pairs, iter_1/dpo\n" in preview
    assert "min_score_gap: 0.0" in (run_dir / "config.previous.yaml").read_text()
    assert "min_score_gap: 0.5" in (run_dir / "config.yaml").read_text()


def test_zero_pairs_stops_with_a_clear_message(tiny_model_dir, tmp_path, monkeypatch):
    def constant_judge(request, index):
        text = default_script(request, index)
        return "Always the same.\nScore: 3" if "Score:" in text else text

    import srlm.backends.fake as fake

    monkeypatch.setattr(fake, "default_script", constant_judge)
    run_dir = tmp_path / "run"
    with pytest.raises(SrlmError, match="iteration 1 produced zero preference pairs.*'tie': 6"):
        run_loop(small_config(tiny_model_dir, "loop.iterations=1"), run_dir)
    assert not (run_dir / "models" / "m2").exists()


def _run_cli(run_dir, model_dir, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    args = [sys.executable, "-m", "srlm", "run", "--recipe", "quickstart", "--run-dir", str(run_dir),
            f"model.name_or_path={model_dir}", *SMALL, "loop.iterations=1"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_during_generation_then_resume_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    clean = tmp_path / "clean"
    assert _run_cli(clean, tiny_model_dir).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    for partial_name in ("responses.jsonl.partial", "judgements.jsonl.partial"):
        proc = _run_cli(killed, tiny_model_dir, {"SRLM_FAKE_DELAY_SECONDS": "0.3"})
        partial = killed / "iter_1" / partial_name
        deadline = time.time() + 240
        while not (partial.exists() and partial.stat().st_size > 0) and time.time() < deadline:
            time.sleep(0.05)
        assert partial.exists(), f"the run never reached {partial_name}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert partial.exists() and not (killed / "iter_1" / partial_name.replace(".partial", "")).exists()
    assert _run_cli(killed, tiny_model_dir).wait(timeout=300) == 0

    assert snapshot(killed) == snapshot(clean)
    responses = read_jsonl(killed / "iter_1" / "responses.jsonl")
    assert len({r["response_id"] for r in responses}) == len(responses) == 24


def test_side_stages_never_rerun_the_main_line(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_loop(small_config(tiny_model_dir, "loop.iterations=1"), run_dir)
    capsys.readouterr()
    # Turning on evaluation and the SFT baseline afterwards runs only those.
    summary = run_loop(small_config(tiny_model_dir, "loop.iterations=1", "loop.sft_baseline=true",
                                    "loop.eval_base=true", *write_eval_files(tmp_path)), run_dir)
    out = capsys.readouterr().out
    for stage in ("sft", "iter_1/prompts", "iter_1/respond", "iter_1/judge", "iter_1/pairs", "iter_1/dpo"):
        assert f"{stage}: already done" in out
    for stage in ("eval_m1", "iter_1/eval", "sft_baseline", "eval_sft_baseline", "eval_base"):
        assert f"{stage}: running" in out
    assert summary["sft_baseline"]["eft_examples"] == 0 and summary["sft_baseline"]["ift_examples"] == 6
    assert (run_dir / "models" / "sft_baseline" / "model.safetensors").exists()
    assert summary["sft_baseline_judge_accuracy"]["n"] == 4
    # loop.eval_base: the model the run started from, judged on the same pairs, in the report beside M1
    assert summary["base_judge_accuracy"]["n"] == 4 and (run_dir / "eval_base" / "judge_accuracy.json").exists()
    from srlm.report import write_report

    write_report(run_dir)
    assert re.search(r"^\| base\s+\|", (run_dir / "report.md").read_text(), re.MULTILINE)
    capsys.readouterr()
    run_loop(small_config(tiny_model_dir, "loop.iterations=1", "loop.sft_baseline=true", "loop.eval_base=true",
                          *write_eval_files(tmp_path)), run_dir)
    assert "eval_base: already done" in capsys.readouterr().out


def test_generated_prompts_are_decontaminated(tiny_model_dir, tmp_path):
    from srlm.io import read_jsonl as read

    # Everything the fake generator can write starts with one of six verbs; an evaluation set holding all its
    # prompts of the first run makes a second run reject them as contaminated.
    run_dir = tmp_path / "run"
    run_loop(small_config(tiny_model_dir, "loop.iterations=1"), run_dir)
    generated = read(run_dir / "iter_1" / "prompts.jsonl")
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in generated))
    from srlm.stages.prompts import run_prompts
    from srlm.backends import make_backend

    cfg = small_config(tiny_model_dir, f"prompts.decontaminate_against=[{eval_file}]")
    stats = run_prompts(["Explain tides.", "Describe a forest in autumn for a child."], [], tmp_path / "p.jsonl",
                        make_backend("fake"), cfg.prompts, seed=cfg.seed)
    assert stats["rejected"].get("contaminated", 0) >= len(generated)
    kept = {r["prompt"] for r in read(tmp_path / "p.jsonl")} if stats["kept"] else set()
    assert not kept & {r["prompt"] for r in generated}


@pytest.mark.slow  # launches the training stages as their own processes: about 40 s
def test_training_stages_run_under_accelerate_launch(tiny_model_dir, tmp_path):
    # `launch.num_processes=2` runs SFT and DPO as 2 gloo processes on the run's saved config.
    run_dir = tmp_path / "run"
    summary = run_loop(small_config(tiny_model_dir, "loop.iterations=1", "launch.num_processes=2",
                                    "launch.config_file=cpu_gloo_2proc"), run_dir)
    assert summary["sft"]["processes"] == 2 and summary["sft"]["ift_examples"] == 6
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["iter_1/dpo"]["stats"]["processes"] == 2
    assert (run_dir / "models" / "m2" / "model.safetensors").exists()
    assert not list(run_dir.glob(".*stats.json"))


def test_expected_judging_on_a_backend_without_score_probabilities_fails_before_training(tiny_model_dir, tmp_path):
    cfg = small_config(tiny_model_dir, "judge.method=expected", "backend.name=vllm")
    with pytest.raises(SrlmError, match="judge.method=expected reads the judge's score-token probabilities, which the "
                                        "'vllm' backend cannot give"):
        run_loop(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "models").exists()  # refused before SFT


def _judge_that_knows(monkeypatch):
    """A fake judge with real signal on the eval pairs of `write_eval_files` (good answers 5, bad ones 0) and the
    default scripted scores elsewhere."""
    import srlm.backends.fake as fake

    original = fake.default_script

    def script(request, index):
        last = request.messages[-1]["content"] if request.messages else ""
        if "Score: <total points>" in last and "A good answer" in last:
            return "Complete and correct.\nScore: 5"
        if "Score: <total points>" in last and "<response>Bad" in last:
            return "Wrong.\nScore: 0"
        return original(request, index)

    monkeypatch.setattr(fake, "default_script", script)


def test_require_judge_signal_stops_before_dpo_when_the_judge_is_at_chance(tiny_model_dir, tmp_path, capsys):
    # The scripted judge scores the 4 human pairs at random: an interval that includes 0.5.
    run_dir = tmp_path / "run"
    cfg = small_config(tiny_model_dir, "loop.iterations=1", "loop.require_judge_signal=true", *write_eval_files(tmp_path))
    with pytest.raises(SrlmError, match="no better than chance; stopping before DPO"):
        run_loop(cfg, run_dir)
    assert (run_dir / "iter_1" / "pairs.jsonl").exists() and not (run_dir / "models" / "m2").exists()


def test_a_judge_with_signal_trains_and_ifeval_runs_for_every_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    _judge_that_knows(monkeypatch)
    ifeval = tmp_path / "ifeval.jsonl"
    ifeval.write_text(
        json.dumps({"key": 1, "prompt": "Answer in lowercase letters only.",
                    "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}) + "\n"
        + json.dumps({"key": 2, "prompt": "Answer without any commas.",
                      "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}) + "\n")
    run_dir = tmp_path / "run"
    cfg = small_config(tiny_model_dir, "loop.iterations=1", "loop.require_judge_signal=true",
                       f"eval.ifeval_prompts={ifeval}", *write_eval_files(tmp_path))
    summary = run_loop(cfg, run_dir)
    assert summary["m1_judge_accuracy"]["pairwise_accuracy"] == 1.0
    assert summary["m1_judge_accuracy"]["judge_signal"] == "above chance"
    # The scripted answers ("Answer <id>: word word ...") start with a capital and have no comma.
    for ifeval_metrics in (summary["m1_ifeval"], summary["iterations"][0]["eval"]["ifeval"]):
        assert ifeval_metrics["n_prompts"] == 2 and ifeval_metrics["prompt_level_strict_acc"] == 0.5
    assert (run_dir / "eval_m1" / "ifeval.items.jsonl").exists()
    out = capsys.readouterr().out
    assert "m2 IFEval prompt strict" in out and "no better than chance" not in out
    assert (run_dir / "models" / "m2" / "model.safetensors").exists()


def test_a_collapsing_judge_is_warned_about(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A judge that gives nearly every answer full marks (the collapse later self-rewarding work reports)."""
    import srlm.backends.fake as fake

    original = fake.default_script

    def generous(request, index):
        text = original(request, index)
        if text.startswith("The response is on topic"):
            return "Excellent.\nScore: " + ("4" if len(request.request_id) % 4 == 0 and index == 0 else "5")
        return text

    monkeypatch.setattr(fake, "default_script", generous)
    run_dir = tmp_path / "run"
    try:
        summary = run_loop(small_config(tiny_model_dir, "loop.iterations=1"), run_dir)
    except SrlmError as exc:  # every prompt tied: no pairs; the warning must come first
        assert "zero preference pairs" in str(exc)
        summary = None
    out = capsys.readouterr().out
    assert "srlm: warning: iteration 1:" in out and "got the top score" in out
    if summary is not None:
        monitors = summary["iterations"][0]["monitors"]
        assert monitors["top_score_share"] > 0.5 and summary["iterations"][0]["warnings"]


def test_every_model_has_a_card_and_iteration_t_trains_from_m_t_against_m_t(tiny_model_dir, tmp_path):
    from srlm.cards import model_sha256

    run_dir = tmp_path / "run"
    run_loop(small_config(tiny_model_dir, "loop.sft_baseline=true", *write_eval_files(tmp_path)), run_dir)
    lineage = json.loads((run_dir / "manifest.json").read_text())["lineage"]
    hashes = {name: model_sha256(run_dir / "models" / name) for name in ("m1", "m2", "m3")}
    for t in (1, 2):
        entry = lineage[f"m{t + 1}"]
        assert entry["trained_from"] == entry["reference"] == f"models/m{t}"
        assert entry["trained_from_sha256"] == entry["reference_sha256"] == hashes[f"m{t}"]
        assert entry["sha256"] == hashes[f"m{t + 1}"]
        assert entry["data"]["name"] == f"iter_{t}/pairs.jsonl" and entry["data"]["rows"] > 0
    assert hashes["m2"] != hashes["m1"]  # so iteration 2 provably did not start from M1
    assert lineage["m1"]["trained_from"] == str(tiny_model_dir) and lineage["m1"]["reference"] is None
    for name in ("m1", "m2", "m3", "sft_baseline"):
        card = (run_dir / "models" / name / "README.md").read_text()
        assert card.startswith("---\nbase_model: ") and "library_name: transformers" in card
    m3 = (run_dir / "models" / "m3" / "README.md").read_text()
    assert "with `models/m2` as the reference model" in m3 and hashes["m2"] in m3
    assert "judge pairwise accuracy on" in m3 and "m3 vs m1" in m3 and "judge: M1 (fixed)" in m3
    assert "instruction data only" in (run_dir / "models" / "sft_baseline" / "README.md").read_text()


def test_a_run_whose_model_writes_some_empty_answers_finishes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Empty and whitespace-only answers are skipped and counted by the judge stage, never fatal (issue: a run
    used to wedge, every rerun failing on srlm's own responses file)."""
    import srlm.backends.fake as fake

    original = fake.default_script

    def sometimes_empty(request, index):
        text = original(request, index)
        if text.startswith("Answer ") and index % 4 == 1:
            return "" if len(request.request_id) % 2 else "   \n"
        return text

    monkeypatch.setattr(fake, "default_script", sometimes_empty)
    run_dir = tmp_path / "run"
    summary = run_loop(small_config(tiny_model_dir, "loop.iterations=1"), run_dir)
    judged = read_jsonl(run_dir / "iter_1" / "judgements.jsonl")
    skipped = [r for r in judged if r.get("skipped") == "empty_response"]
    assert skipped and all(r["score"] is None for r in skipped)
    assert summary["iterations"][0]["pairs"] > 0 and (run_dir / "models" / "m2" / "model.safetensors").exists()
    run_loop(small_config(tiny_model_dir, "loop.iterations=1"), run_dir)  # and a rerun is a no-op, not an error
    assert "iter_1/judge: already done" in capsys.readouterr().out


def test_judge_training_makes_m1_from_the_eft_model_and_the_loop_judges_directly(tiny_model_dir, tmp_path, capsys):
    from srlm.cards import model_sha256

    run_dir = tmp_path / "run"
    pairs = tmp_path / "human_pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"A full answer {i}.", "rejected": "No."})
                             + "\n" for i in range(4)))
    judge_training = [f"judge_training.pairs={pairs}", "judge_training.batch_size=2", "judge.method=direct",
                      "judge.num_samples=1", "loop.iterations=1"]
    with pytest.raises(SrlmError, match="set judge.method=direct"):
        run_loop(small_config(tiny_model_dir, f"judge_training.pairs={pairs}"), run_dir)
    summary = run_loop(small_config(tiny_model_dir, *judge_training), run_dir)
    assert summary["train_judge"]["pairs_trained"] == 4 and summary["train_judge"]["steps"] == 2
    lineage = json.loads((run_dir / "manifest.json").read_text())["lineage"]
    assert lineage["m1"]["trained_from"] == "models/m1_eft"
    assert lineage["m1"]["trained_from_sha256"] == model_sha256(run_dir / "models" / "m1_eft")
    assert lineage["m2"]["trained_from"] == lineage["m2"]["reference"] == "models/m1"
    assert model_sha256(run_dir / "models" / "m1") != model_sha256(run_dir / "models" / "m1_eft")
    judged = read_jsonl(run_dir / "iter_1" / "judgements.jsonl")
    assert judged and all(len(r["judgements"]) == 1 and r["judgements"][0]["score_probs"] for r in judged)
    assert "srlm train-judge" in (run_dir / "models" / "m1" / "README.md").read_text()
    from srlm.report import write_report

    write_report(run_dir)
    report = (run_dir / "report.md").read_text()
    assert "M1's judge training on human pairs" in report or "held-out pair accuracy, first pass" in report
    capsys.readouterr()
    run_loop(small_config(tiny_model_dir, *judge_training), run_dir)  # resumed: nothing reruns
    assert "train_judge: already done" in capsys.readouterr().out


def test_loop_m1_base_skips_sft_and_can_train_the_base_models_judge(tiny_model_dir, tmp_path):
    from srlm.cards import model_sha256

    copied = run_loop(small_config(tiny_model_dir, "loop.iterations=1", "loop.m1=base"), tmp_path / "copied")
    assert "sft" not in copied and "train_judge" not in copied
    assert model_sha256(tmp_path / "copied" / "models" / "m1") == model_sha256(tiny_model_dir)
    assert "without SFT (loop.m1=base)" in (tmp_path / "copied" / "models" / "m1" / "README.md").read_text()
    assert (tmp_path / "copied" / "models" / "m2" / "model.safetensors").exists()

    pairs = tmp_path / "human_pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"A full answer {i}.", "rejected": "No."})
                             + "\n" for i in range(4)))
    run_dir = tmp_path / "trained"
    judged = ["loop.iterations=1", "loop.m1=base", f"judge_training.pairs={pairs}", "judge_training.batch_size=2",
              "judge.method=direct", "judge.num_samples=1"]
    summary = run_loop(small_config(tiny_model_dir, *judged), run_dir)
    assert "sft" not in summary and summary["train_judge"]["pairs_trained"] == 4
    assert not (run_dir / "models" / "m1_eft").exists()  # the judge was trained from the base model itself
    assert model_sha256(run_dir / "models" / "m1") != model_sha256(tiny_model_dir)
    lineage = json.loads((run_dir / "manifest.json").read_text())["lineage"]
    assert lineage["m1"]["trained_from"] == str(tiny_model_dir)
    assert "with its judge trained" in (run_dir / "models" / "m1" / "README.md").read_text()
    # judge training turned off on the same run directory: M1 is the base model again, not the trained judge
    untrained = [o for o in judged if not o.startswith("judge_training.")]
    summary = run_loop(small_config(tiny_model_dir, *untrained), run_dir)
    assert "train_judge" not in summary and "train_judge" not in json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert model_sha256(run_dir / "models" / "m1") == model_sha256(tiny_model_dir)


def test_a_run_can_start_from_an_m1_made_elsewhere(tiny_model_dir, tmp_path, capsys):
    from srlm.cards import model_sha256

    run_dir = tmp_path / "run"
    given = ["loop.iterations=1", f"loop.m1={tiny_model_dir}"]
    summary = run_loop(small_config(tiny_model_dir, *given), run_dir)
    assert "sft" not in summary and summary["m1_copy"]["copied_from"] == str(tiny_model_dir)
    assert model_sha256(run_dir / "models" / "m1") == model_sha256(tiny_model_dir)
    lineage = json.loads((run_dir / "manifest.json").read_text())["lineage"]
    assert lineage["m1"]["trained_from"] == str(tiny_model_dir) and lineage["m2"]["trained_from"] == "models/m1"
    assert "given to this run" in (run_dir / "models" / "m1" / "README.md").read_text()
    with pytest.raises(SrlmError, match="not a model directory"):
        run_loop(small_config(tiny_model_dir, "loop.iterations=1", f"loop.m1={tmp_path}"), tmp_path / "other")
    with pytest.raises(SrlmError, match="judge_training.pairs would train nothing"):
        run_loop(small_config(tiny_model_dir, *given, f"judge_training.pairs={tiny_model_dir}/config.json"),
                 tmp_path / "third")


@pytest.mark.parametrize("policy", ["anchored", "consistency_weighted"])
def test_pair_policies_run_in_the_loop(tiny_model_dir, tmp_path, monkeypatch, capsys, policy):
    import srlm.loop
    import srlm.stages.pairs

    smoothing_seen = []
    real_run_dpo = srlm.loop.run_dpo

    def run_dpo(model_path, pairs, out_dir, cfg, **kwargs):
        smoothing_seen.append(cfg.label_smoothing)
        return real_run_dpo(model_path, pairs, out_dir, cfg, **kwargs)

    monkeypatch.setattr(srlm.loop, "run_dpo", run_dpo)
    # The scripted judge scores an answer the same whichever model it stands for (tau = 1); a made-up consistency
    # shows that the label smoothing it implies reaches DPO.
    monkeypatch.setattr(srlm.stages.pairs, "consistency_rate",
                        lambda by_prompt, previous: {"consistency_rate": 0.8, "prompts_compared": len(by_prompt),
                                                     "prompts_undefined": 0})
    run_dir = tmp_path / "run"
    summary = run_loop(small_config(tiny_model_dir, f"pairs.policy={policy}"), run_dir)
    first, second = summary["iterations"]
    assert first["policy"] == second["policy"] == policy
    it1, it2 = run_dir / "iter_1", run_dir / "iter_2"
    if policy == "anchored":
        assert first["anchored"] is False and second["anchored"] is True  # iteration 1: M1 is the anchor
        assert not (it1 / "anchor_responses.jsonl").exists()
        anchor_texts = {r["response"] for r in read_jsonl(it2 / "anchor_responses.jsonl")}
        assert len(read_jsonl(it2 / "anchor_judgements.jsonl")) == len(anchor_texts) > 0
        pairs = read_jsonl(it2 / "pairs.jsonl")
        assert pairs and all(p["rejected_from"] == "anchor" and p["rejected"][0]["content"] in anchor_texts
                             for p in pairs)
        assert smoothing_seen == [0.0, 0.0]
    else:
        assert first["consistency_rate"] is None and first["dpo_label_smoothing"] == 0.0  # no M_0
        assert (it2 / "previous_judgements.jsonl").exists() and not (it1 / "previous_judgements.jsonl").exists()
        assert second["consistency_rate"] == 0.8 and second["dpo_label_smoothing"] == 0.2
        assert smoothing_seen == [0.0, 0.2]
    assert "pair policy" in capsys.readouterr().out
    # a rerun finds every stage, the policy's own included, done
    run_loop(small_config(tiny_model_dir, f"pairs.policy={policy}"), run_dir)
    assert "running" not in capsys.readouterr().out.replace("srlm: report", "")


def test_meta_judging_in_the_loop_trains_on_judge_pairs_too(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    # the scripted judge writes a different score per sample (3 judgements per response), so judgements differ
    summary = run_loop(small_config(tiny_model_dir, "meta.enabled=true", "meta.max_judgements=3"), run_dir)
    for t, row in enumerate(summary["iterations"], start=1):
        d = run_dir / f"iter_{t}"
        meta = row["meta"]
        assert meta["comparisons"] == len(read_jsonl(d / "judge_pairs.jsonl.verdicts.jsonl")) > 0
        judge_pairs = read_jsonl(d / "judge_pairs.jsonl")
        assert meta["judge_pairs"] == len(judge_pairs)
        assert all(p["kind"] == "judge" and "Score" in p["chosen"][0]["content"] for p in judge_pairs)
        trained = read_jsonl(d / "dpo_pairs.jsonl")
        actor = read_jsonl(d / "pairs.jsonl")
        # every actor pair, and judge pairs up to half of the whole (meta.judge_pair_share=0.5)
        assert trained[: len(actor)] == actor and len(actor) < len(trained) <= 2 * len(actor)
        assert row["dpo_pairs"] == len(trained)
        assert meta["position_bias_rate"] is None or 0 <= meta["position_bias_rate"] <= 1
    assert "meta-judge" in capsys.readouterr().out
