"""benchmarks/evidence.py's table is what the README's "Does it work?" quotes: every figure in it must come from the
run directory's files, the paired differences over the right items. Checked on a run directory written here, with
outcomes chosen so each figure is known."""

import importlib.util
import json
from pathlib import Path

from srlm.evaluation.judge_eval import read_human_groups
from srlm.seed import resolve_data_path

ROOT = Path(__file__).resolve().parents[1]


def _evidence_module():
    spec = importlib.util.spec_from_file_location("evidence", ROOT / "benchmarks" / "evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _judge_files(folder: Path, groups, agree: int) -> None:
    """A judge that orders the first `agree` of the groups as humans did, and the rest the other way."""
    items = [{"group_id": g.group_id, "reply_id": r["reply_id"], "rank": r["rank"],
              "score": float((r["rank"] == 0) == (i < agree))}
             for i, g in enumerate(groups) for r in g.replies]
    _write_jsonl(folder / "judge_accuracy.items.jsonl", items)
    accuracy = agree / len(groups)
    (folder / "judge_accuracy.json").write_text(json.dumps(
        {"pairwise_accuracy": accuracy, "pairwise_accuracy_ci": [accuracy - 0.1, accuracy + 0.1],
         "n_pairs": len(groups)}))


def _ifeval_files(folder: Path, followed: list[int]) -> None:
    """IFEval on four prompts, followed (strict) where `followed` has a 1."""
    _write_jsonl(folder / "ifeval.items.jsonl", [{"key": k, "follow_all_instructions_strict": bool(f)}
                                                 for k, f in enumerate(followed)])
    (folder / "ifeval.json").write_text(json.dumps(
        {"prompt_level_strict_acc": sum(followed) / len(followed), "n_prompts": len(followed)}))


def _winrate(path: Path, win: float, tie: float) -> None:
    loss = 1 - win - tie
    path.write_text(json.dumps({"win": win, "tie": tie, "loss": loss, "win_rate": win + tie / 2,
                                "win_rate_ci": [0.4, 0.9], "n": 10, "judge": "M1 (fixed)",
                                "length_controlled_win_rate": 0.61}))


def test_the_evidence_table_reads_every_figure_from_the_run_directory(tmp_path):
    evidence = _evidence_module()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("eval:\n  judge_data: builtin:hh_test\n  judge_limit: 4\n")
    groups = read_human_groups(resolve_data_path("builtin:hh_test"))[0][:4]
    folders = {"base": run / "eval_base", "sft_baseline": run / "eval_sft_baseline", "m1": run / "eval_m1",
               "m2": run / "iter_1" / "eval", "m3": run / "iter_2" / "eval"}
    agree = {"base": 2, "sft_baseline": 1, "m1": 3, "m2": 3, "m3": 4}
    followed = {"base": [1, 1, 1, 0], "sft_baseline": [0, 0, 0, 0], "m1": [1, 0, 0, 0], "m2": [1, 1, 0, 0],
                "m3": [1, 1, 0, 1]}
    for name, folder in folders.items():
        folder.mkdir(parents=True)
        _judge_files(folder, groups, agree[name])
        _ifeval_files(folder, followed[name])
    _winrate(folders["m2"] / "winrate_vs_previous.json", 0.5, 0.2)   # M2's previous model is M1
    _winrate(folders["m3"] / "winrate_vs_previous.json", 0.4, 0.2)
    _winrate(folders["m3"] / "winrate_vs_m1.json", 0.6, 0.1)
    (run / "eval_answers").mkdir()
    for name, length in (("m1", 10), ("m2", 12), ("m3", 14)):
        (run / "eval_answers" / f"{name}.json").write_text(json.dumps({"answers": ["x" * length] * 5}))
    dpo = {"status": "done", "seconds": 1.0,
           "stats": {"loss_first": 0.6931, "loss_last": 0.2, "per_step": [{"loss": v} for v in (0.7, 0.5, 0.3, 0.1)]}}
    (run / "manifest.json").write_text(json.dumps({"stages": {"iter_1/dpo": dpo, "iter_2/dpo": dpo}}))

    result = evidence.collect(run)
    assert list(result["models"]) == ["base", "sft_baseline", "m1", "m2", "m3"]
    assert result["models"]["m2"]["dpo_loss"] == (0.6931, 0.2, (0.6, 0.2))  # the mean loss of each of the two passes
    assert result["models"]["m3"]["length"]["mean_len"] == 14
    differences = {name: c["difference"] for name, c in result["comparisons"].items()}
    assert differences == {
        "judge_accuracy m1 - sft_baseline": 0.5, "judge_accuracy m1 - base": 0.25,
        "ifeval prompt strict m3 - m1": 0.5, "ifeval prompt strict m2 - m1": 0.25,
        "ifeval prompt strict m3 - m2": 0.25, "ifeval prompt strict m1 - base": -0.5,
        "ifeval prompt strict m2 - base": -0.25, "ifeval prompt strict m3 - base": 0.0,
        "ifeval prompt strict sft_baseline - base": -0.75,
    }
    table = evidence.render(result)
    assert "m2 vs m1 (judge M1 (fixed)): win / tie / loss 50% / 20% / 30%, win rate 0.60 [0.40, 0.90]" in table
    assert "m3 vs m1 (judge M1 (fixed)): win / tie / loss 60% / 10% / 30%" in table
    assert "m3 vs the previous model (judge M1 (fixed)): win / tie / loss 40% / 20% / 40%" in table
    assert "length-controlled 0.61, n=10" in table
