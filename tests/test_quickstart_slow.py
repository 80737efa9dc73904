"""The quickstart as a user runs it: `srlm run --recipe quickstart` on the embedded model, M1 -> M3, read against the
targets of the loop issue. Slow (about 15-20 minutes on 2 CPU cores): `python -m pytest -m slow`."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_reaches_m3_with_pairs_every_iteration(tmp_path):
    run_dir = tmp_path / "quickstart"
    proc = subprocess.run([sys.executable, "-m", "srlm", "run", "--recipe", "quickstart", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    print(json.dumps(summary["iterations"], indent=1))
    assert [row["iteration"] for row in summary["iterations"]] == [1, 2]
    for row in summary["iterations"]:
        assert row["pairs"] >= 8, row
        assert row["chosen_score_mean"] > row["rejected_score_mean"]
    assert summary["iterations"][0]["judge_parse_rate"] >= 0.9  # what EFT is for: M1 keeps the judge format
    for row in summary["iterations"]:  # the in-loop evaluation the quickstart turns on
        assert 0.0 <= row["eval"]["winrate_vs_previous"]["win_rate"] <= 1.0, row
        assert row["eval"]["winrate_vs_previous"]["n"] == 8
        assert 0.0 <= row["eval"]["judge_accuracy"]["pairwise_accuracy"] <= 1.0, row
    assert summary["m1_judge_accuracy"]["n"] == 16 and summary["m1_judge_accuracy"]["data"] == "builtin:hh_test"
    for row in summary["iterations"]:
        # DPO moves the model on its pairs (the evidence issue's quickstart target), and every step is logged
        # (the mean over the second pass, not one noisy last batch: the loss falls once pairs are seen again)
        losses = [step["loss"] for step in row["dpo_steps"]]
        assert len(losses) >= 2  # two passes over the pairs, batch 4
        second_pass = losses[len(losses) // 2:]
        assert losses[0] - sum(second_pass) / len(second_pass) >= 0.05, row["dpo_steps"]
        assert row["judge_accuracy"]["pairwise_accuracy_ci"] is not None and "monitors" in row
    assert summary["iterations"][1]["eval"]["winrate_vs_m1"]["judge"] == "M1 (fixed)"
    assert "judge (m1) pairwise acc." in proc.stdout and "m3 vs m1 (win/tie/loss)" in proc.stdout
    for name in ("m1", "m2", "m3"):
        assert (run_dir / "models" / name / "README.md").read_text().startswith("---\nbase_model: ")
    assert (run_dir / "models" / "m3" / "model.safetensors").exists()
    assert "<svg" in (run_dir / "report.html").read_text()
    assert "iteration 2: m2 -> m3" in proc.stdout
