"""`srlm report`: a small fake run directory in, a self-contained HTML page and a Markdown file out."""

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from srlm.cli import main
from srlm.errors import DataError
from srlm.report import _nice_ticks, collect_report_data, svg_bar_chart, svg_line_chart, write_report

XSS = "<script>alert(1)</script>"


def summary_row(t, **extra):
    return {
        "iteration": t, "model": f"m{t}", "prompts": 10, "prompt_attempts": 20, "prompts_rejected": {"rouge": 3},
        "responses": 40, "response_tokens_mean": 50.0, "judge_parse_rate": 0.9, "score_mean": 3.1,
        "score_histogram": {"0": 1, "1": 2, "2": 3, "3": 10, "4": 15, "5": 5},
        "pairs": 8, "pairs_dropped": {"tie": 2}, "chosen_len_mean": 300.0, "rejected_len_mean": 200.0,
        "chosen_score_mean": 4.5, "rejected_score_mean": 2.0, "dpo_reward_accuracy": 0.75, "dpo_reward_margin": 0.2,
        "dpo_loss_first": 0.69, "dpo_loss_last": 0.5, "seconds": 12.5,
        "dpo_steps": [{"step": 1, "loss": 0.6931, "reward_accuracy": 0.0}, {"step": 2, "loss": 0.6, "reward_accuracy": 0.75},
                      {"step": 3, "loss": 0.5, "reward_accuracy": 1.0}], **extra,
    }


def pair(i, chosen, rejected, cs, rs, prompt="Explain things."):
    return {
        "pair_id": f"p{i}", "prompt_id": f"q{i}", "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": rejected}],
        "chosen_score": cs, "rejected_score": rs, "chosen_len": len(chosen), "rejected_len": len(rejected),
    }


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


JUDGE_ACC = {"pairwise_accuracy": 0.7, "pairwise_accuracy_ci": [0.6, 0.8], "judge_signal": "above chance",
             "length_baseline": {"pairwise_accuracy": 0.61, "pairwise_accuracy_ci": [0.56, 0.66]}, "five_best": 0.4, "exact_match": 0.1, "spearman": 0.25, "kendall_tau": 0.2,
             "parse_failure_rate": 0.05, "n": 50}
WINRATE = {"metrics": {"win": 0.5, "tie": 0.3, "loss": 0.2, "win_rate": 0.65, "length_controlled_win_rate": 0.6,
                       "n": 20}}


@pytest.fixture
def run_dir(tmp_path):
    """Iteration 1 has its files; iteration 2 only its summary row (the report falls back to the aggregates)."""
    root = tmp_path / "run"
    root.mkdir()
    rows = [summary_row(1, eval={"judge_accuracy": JUDGE_ACC}),
            summary_row(2, eval={"judge_accuracy": {**JUDGE_ACC, "pairwise_accuracy": 0.8},
                                 "winrate_vs_previous": WINRATE})]
    (root / "summary.json").write_text(json.dumps({"run_dir": str(root), "sft": {"examples": 10},
                                                   "iterations": rows, "seconds": 100.0}))
    (root / "config.yaml").write_text("seed: 0\nmodel:\n  name_or_path: tiny<model>\nloop:\n  iterations: 2\n")
    scores = [5.0, 4.0, 4.0, 3.6666, None, 0.0]
    write_jsonl(root / "iter_1" / "judgements.jsonl",
                [{"prompt_id": "q", "response_id": f"r{i}", "score": s} for i, s in enumerate(scores)])
    write_jsonl(root / "iter_1" / "pairs.jsonl", [
        pair(0, f"A helpful answer {XSS} with markup.", "short", 5.0, 1.0, prompt=f"Prompt with {XSS}"),
        pair(1, "close call chosen", "close call rejected", 3.5, 3.0),
        pair(2, "middle", "x", 4.0, 2.0),
    ])
    return root


def test_report_files_plots_and_escaping(run_dir):
    html_path, md_path = write_report(run_dir)
    assert html_path == run_dir / "report.html" and md_path == run_dir / "report.md"
    page = html_path.read_text()
    # Five plots, all with data: score histogram, lengths, win rates, judge accuracy per model, DPO loss per step.
    assert page.count("<svg") == 5 and "No data" not in page
    assert "DPO loss per step" in page and "0.700 [0.600, 0.800]" in page and "length baseline" in page
    # Generated text is escaped, never live markup; the page has no script and no URL at all.
    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "http" not in page and "tiny&lt;model&gt;" in page
    # Best (margin 4) and worst (margin 0.5) pair of iteration 1 are shown.
    assert "best (largest score margin)" in page and "close call chosen" in page
    assert "worst (smallest score margin)" in page


def test_markdown_has_the_same_numbers(run_dir):
    write_report(run_dir)
    md = (run_dir / "report.md").read_text()
    assert "## Iterations" in md
    assert "| iteration | model | prompts | candidates | judge parse rate |" in md
    assert "| 1 | m1 | 10 | 40 | 90.0% | 3.1 |" in md and "| 2 | m2 |" in md
    # Iteration 1's histogram comes from judgements.jsonl (3.67 rounds to 4; None is missing), 2's from the summary.
    assert "| 1 | 1 | 0 | 0 | 0 | 3 | 1 | 1 | 6 | iter_1/judgements.jsonl |" in md
    assert "| 2 | 1 | 2 | 3 | 10 | 15 | 5 | 4 | 40 | summary.json |" in md
    assert "| 2 | winrate_vs_previous | 50.0% | 30.0% | 20.0% | 65.0% | 60.0% | 20 prompts: a demonstration (under 100) |" in md
    # The judge table has one row per model (M_t+1 of iteration t), with the interval and the length baseline.
    assert "| m3 | 0.800 [0.600, 0.800] | 0.610 [0.560, 0.660] | above chance | 0.4 | 0.1 | 0.25 | 0.2 | 5.0% |" in md
    assert "| 2 | 3 | 0.693 | 0.5 | 1 |" in md  # DPO: steps, first and last loss, last reward accuracy
    # Examples sit in fenced blocks, where markup is inert text.
    assert "```text\nA helpful answer <script>alert(1)</script> with markup.\n```" in md


def test_lengths_from_pairs_file_and_summary(run_dir):
    data = collect_report_data(run_dir)
    first, second = data["iterations"]
    assert first["chosen_len_mean"] == pytest.approx((len(f"A helpful answer {XSS} with markup.") + 17 + 6) / 3)
    assert first["lengths_source"] == "iter_1/pairs.jsonl" and second["chosen_len_mean"] == 300.0
    assert [ex["margin"] for ex in first["examples"]] == [4.0, 0.5] and second["examples"] == []
    assert second["winrates"]["winrate_vs_previous"]["win_rate"] == 0.65  # unwrapped from {"metrics": ...}


def test_plots_without_data_say_so(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    row = summary_row(1)
    del row["score_histogram"], row["chosen_len_mean"], row["rejected_len_mean"], row["dpo_steps"]
    (root / "summary.json").write_text(json.dumps({"iterations": [row]}))
    html_path, md_path = write_report(root)
    page = html_path.read_text()
    assert "<svg" not in page and page.count('class="no-data"') == 6  # 5 plots + examples
    assert "No data: no win rates recorded" in md_path.read_text()


def test_missing_summary(tmp_path, capsys):
    with pytest.raises(DataError, match="summary.json: not found"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json" in capsys.readouterr().err


def test_cli(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert "report.html" in capsys.readouterr().out


def test_svg_is_well_formed_and_escaped():
    bar = svg_bar_chart("A <b> & c", ["x<1", "y"], [("s&1", [1.0, None]), ("s2", [2.5, 3.0])], y_label="n")
    line = svg_line_chart("t", ["1", "2", "3"], [("a", [0.2, None, 0.9])], y_min=0, y_max=1, reference=0.5)
    for svg in (bar, line):
        root = ET.fromstring(svg)
        assert root.tag == "svg"
    assert bar.count("<rect") == 1 + 3 + 2  # background, 3 bars (one None), 2 legend swatches
    assert "A &lt;b&gt; &amp; c" in bar
    assert line.count("<circle") == 2 and "<polyline" not in line  # a gap splits the line into single points


def test_nice_ticks():
    assert _nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert _nice_ticks(0, 37) == [0, 10, 20, 30, 40]
    assert _nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    html_path, _ = write_report(run_dir)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--window-size=1100,2400", f"--screenshot={shot}", html_path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
