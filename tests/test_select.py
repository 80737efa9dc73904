"""Checkpoint selection: DPO checkpoints saved every k steps, the pairwise choice among them, resuming, the loop."""

import copy
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from srlm.backends import make_backend
from srlm.config import DpoConfig, load_config
from srlm.errors import ConfigError, SrlmError
from srlm.io import read_json, write_json
from srlm.stages import checkpoints, select
from srlm.stages.dpo import run_dpo
from srlm.stages.checkpoints import checkpoint_dir
from srlm.stages.select import recover_model_dir, run_selection

PREVIOUS = "m1"


def _sha(path: Path) -> str:
    return hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def _pairs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
                                        "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
                                        "rejected": [{"role": "assistant", "content": "No idea at all."}]}) + "\n"
                            for i in range(n)))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Saving checkpoints during DPO


@pytest.mark.parametrize("lora", [False, True])
def test_dpo_saves_full_checkpoints_every_k_steps(tiny_model_dir, tmp_path, lora):
    # 10 pairs, 2 per step: 5 steps; every 2 steps -> step-2 and step-4; step 5 is the final model in m2 itself.
    cfg = DpoConfig(epochs=1, batch_size=2, micro_batch_size=2, learning_rate=1e-3, dropout=0.1,
                    checkpoint_every_steps=2, lora={"enabled": lora, "r": 4, "alpha": 8})
    stats = run_dpo(str(tiny_model_dir), _pairs(tmp_path / "pairs.jsonl", 10), tmp_path / "models" / "m2", cfg,
                    seed=0)
    assert stats["steps"] == 5
    ckpt = checkpoint_dir(tmp_path / "models" / "m2")
    assert ckpt == tmp_path / "models" / ".m2.checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2", "step-4", "training.json"]
    info = read_json(ckpt / "training.json")
    assert info["every_steps"] == 2 and info["max_steps"] == 5 and info["final_step"] == 5 and info["run_id"]

    base = _weights(tiny_model_dir)
    saved = {name: _weights(path) for name, path in
             (("step-2", ckpt / "step-2"), ("step-4", ckpt / "step-4"), ("final", tmp_path / "models" / "m2"))}
    for name, weights in saved.items():
        assert set(weights) == set(base), name  # plain checkpoints: LoRA merged, no adapter tensors
    changed = lambda a, b: any(not (a[k] == b[k]).all() for k in a)  # noqa: E731
    assert changed(saved["step-2"], base) and changed(saved["step-4"], saved["step-2"])
    assert changed(saved["final"], saved["step-4"])
    config = json.loads((ckpt / "step-2" / "config.json").read_text())
    assert config["attention_dropout"] == 0.0 and config["use_cache"] is True  # for inference, like the final model
    assert (ckpt / "step-2" / "tokenizer.json").exists()
    assert not list(ckpt.parent.glob(".m2.*saving"))


def test_two_processes_save_one_merged_checkpoint_from_rank_zero(tiny_model_dir, tmp_path):
    import os

    from srlm import distributed

    # `srlm dpo` under accelerate launch, 2 gloo ranks, LoRA: 8 pairs, global batch 4 -> 2 steps, step-1 saved.
    out = tmp_path / "models" / "m2"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    distributed.run_launched(
        ["dpo", "--model", str(tiny_model_dir), "--pairs", str(_pairs(tmp_path / "pairs.jsonl", 8)), "--out", str(out),
         "dpo.batch_size=4", "dpo.micro_batch_size=1", "dpo.learning_rate=1e-3", "dpo.dropout=0.0",
         "dpo.checkpoint_every_steps=1", "dpo.lora.enabled=true", "dpo.lora.r=4", "dpo.lora.alpha=8"],
        num_processes=2, config_file="cpu_gloo_2proc", env=env, capture_output=True, timeout_seconds=300)
    ckpt = checkpoint_dir(out)
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-1", "training.json"]
    assert read_json(ckpt / "training.json")["final_step"] == 2
    base, step1, final = _weights(tiny_model_dir), _weights(ckpt / "step-1"), _weights(out)
    assert set(step1) == set(base) and any(not (step1[k] == base[k]).all() for k in base)
    assert any(not (step1[k] == final[k]).all() for k in base)
    assert sorted(p.name for p in out.parent.iterdir()) == [".m2.checkpoints", "m2"]


def test_without_the_option_no_checkpoints_and_stale_ones_removed(tiny_model_dir, tmp_path):
    stale = checkpoint_dir(tmp_path / "m2") / "step-1"
    stale.mkdir(parents=True)
    cfg = DpoConfig(epochs=1, batch_size=2, micro_batch_size=2, learning_rate=1e-3, dropout=0.0)
    run_dpo(str(tiny_model_dir), _pairs(tmp_path / "pairs.jsonl", 4), tmp_path / "m2", cfg, seed=0)
    assert not checkpoint_dir(tmp_path / "m2").exists() and (tmp_path / "m2" / "config.json").exists()


def test_lora_merge_equals_peft_merge_and_unload(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; a random B makes the merge do something
                param.normal_(0, 0.5)
    merged = checkpoints.merge_lora_state_dict(model.state_dict(), model.peft_config["default"])
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(merged) == set(expected)
    assert any(not torch.equal(expected[k], model.get_base_model().state_dict()[k.replace(
        "q_proj.weight", "q_proj.base_layer.weight")]) for k in expected if "q_proj.weight" in k)
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Choosing among them, with scripted answers and verdicts


def _layout(tmp_path, tiny_model_dir, steps=(2, 4), final=5, run_id="run-a"):
    """models/m1 (M_t), models/m2 (the final model) and models/.m2.checkpoints/step-N, each a real tiny checkpoint
    with a marker file saying which one it is."""
    models = tmp_path / "models"
    for name, path in [(PREVIOUS, models / PREVIOUS), ("final", models / "m2")] + \
                      [(f"step-{s}", checkpoint_dir(models / "m2") / f"step-{s}") for s in steps]:
        shutil.copytree(tiny_model_dir, path)
        (path / "marker.txt").write_text(name)
    write_json(checkpoint_dir(models / "m2") / "training.json",
               {"run_id": run_id, "every_steps": 2, "max_steps": final, "final_step": final})
    return models / PREVIOUS, models / "m2"


def _config(tmp_path, n_prompts=5, *extra):
    prompts = tmp_path / "selection.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Selection question {i}?"}) + "\n" for i in range(n_prompts)))
    return load_config(overrides=["backend.name=fake", "eval.select_checkpoint=true", "dpo.checkpoint_every_steps=2",
                                  f"eval.selection_prompts={prompts}", *extra])


class Scripted:
    """Stands in for `backend_for`: every model answers with its own directory name; the judge prefers the
    candidate on the prompts listed in `wins[candidate dir name]` and M_t on the others, in both orders."""

    def __init__(self, wins: dict, fail_at_judgement: int | None = None):
        self.wins, self.fail_at = wins, fail_at_judgement
        self.answers = self.judgements = 0
        self.loaded = []

    def __call__(self, cfg, model_path):
        name = Path(model_path).name

        def script(request, index):
            content = request.messages[-1]["content"]
            if "# Output (a)" not in content:
                self.answers += 1
                return f"answer by {name} to {content}"
            self.judgements += 1
            if self.fail_at is not None and self.judgements == self.fail_at:
                raise RuntimeError("judge killed")
            shown = re.findall(r"# Output \((a|b)\)\nanswer by (\S+) to Selection question (\d+)", content)
            (_, model_a, question), (_, model_b, _) = shown
            candidate = model_b if model_a == PREVIOUS else model_a
            better = candidate if int(question) in self.wins.get(candidate, ()) else PREVIOUS
            return "Winner: A" if model_a == better else "Winner: B"

        self.loaded.append(name)
        return make_backend("fake", None, script=script)


def _script(monkeypatch, scripted):
    monkeypatch.setattr("srlm.stages.select.backend_for", scripted)
    monkeypatch.setattr("srlm.stages.evaluate.backend_for", scripted)
    return scripted


def test_selection_picks_the_scripted_winner_and_records_every_candidate(tmp_path, tiny_model_dir, monkeypatch):
    m1, m2 = _layout(tmp_path, tiny_model_dir)
    scripted = _script(monkeypatch, Scripted({"step-2": {0, 1, 2}, "step-4": {0, 1, 2, 3}, "m2": {0}}))
    step4_hash = _sha(checkpoint_dir(m2) / "step-4")
    table = run_selection(_config(tmp_path), m1, m2, tmp_path / "iter_1")

    assert table["selected"] == "step-4" and table["selected_step"] == 4 and not table["selected_final"]
    rows = {r["candidate"]: r for r in table["candidates"]}
    assert [r["candidate"] for r in table["candidates"]] == ["step-2", "step-4", "step-5"]
    assert (rows["step-2"]["win"], rows["step-2"]["loss"], rows["step-2"]["win_rate"]) == (0.6, 0.4, 0.6)
    assert (rows["step-4"]["win"], rows["step-4"]["tie"], rows["step-4"]["win_rate"]) == (0.8, 0.0, 0.8)
    assert rows["step-5"]["final"] and rows["step-5"]["win_rate"] == pytest.approx(0.2)
    assert [r["selected"] for r in table["candidates"]] == [False, True, False]
    assert table["n_prompts"] == 5 and table["judge"].startswith("previous")
    # Each model loaded once to answer, then one judge (M_t) for every candidate.
    assert scripted.loaded == [PREVIOUS, "step-2", "step-4", "m2", PREVIOUS]
    assert read_json(tmp_path / "iter_1" / "selection.json") == table

    # The winner is M_t+1; the other checkpoints and every temporary folder are gone.
    assert (m2 / "marker.txt").read_text() == "step-4" and _sha(m2) == step4_hash
    assert sorted(p.name for p in m2.parent.iterdir()) == ["m1", "m2"]
    items = [json.loads(line) for line in (tmp_path / "iter_1" / "selection.items.jsonl").read_text().splitlines()]
    assert [r["id"] for r in items] == ["answers/previous", "answers/step-2", "answers/step-4", "answers/step-5",
                                        "verdicts/step-2", "verdicts/step-4", "verdicts/step-5", "decision"]
    assert items[0]["prompts"][0] == "Selection question 0?" and items[1]["answers"][0].startswith("answer by step-2")
    assert all("run_id" not in r for r in items)
    assert not list((tmp_path / "iter_1").glob("*.partial"))


def test_equal_win_rates_go_to_the_later_step_and_the_final_model_stays(tmp_path, tiny_model_dir, monkeypatch):
    m1, m2 = _layout(tmp_path, tiny_model_dir)
    final_hash = _sha(m2)
    _script(monkeypatch, Scripted({"step-2": {0, 1}, "step-4": {3}, "m2": {2, 4}}))
    table = run_selection(_config(tmp_path), m1, m2, tmp_path / "iter_1")
    assert table["selected"] == "step-5" and table["selected_final"]
    assert (m2 / "marker.txt").read_text() == "final" and _sha(m2) == final_hash
    assert not checkpoint_dir(m2).exists()


def test_selection_resumes_after_a_kill_without_redoing_finished_candidates(tmp_path, tiny_model_dir, monkeypatch):
    wins = {"step-2": {0, 1, 2}, "step-4": {0, 1, 2, 3}, "m2": {0}}
    clean_dir = tmp_path / "clean"
    m1, m2 = _layout(clean_dir, tiny_model_dir)
    _script(monkeypatch, Scripted(wins))
    clean = run_selection(_config(tmp_path), m1, m2, clean_dir / "iter_1")

    run_dir = tmp_path / "killed"
    m1, m2 = _layout(run_dir, tiny_model_dir)
    # 5 prompts x 2 orders = 10 judgements per candidate: the 11th is the second candidate's first.
    _script(monkeypatch, Scripted(wins, fail_at_judgement=11))
    with pytest.raises(RuntimeError, match="judge killed"):
        run_selection(_config(tmp_path), m1, m2, run_dir / "iter_1")
    partial = run_dir / "iter_1" / "selection.items.jsonl.partial"
    done = [json.loads(line)["id"] for line in partial.read_text().splitlines()]
    assert done == ["answers/previous", "answers/step-2", "answers/step-4", "answers/step-5", "verdicts/step-2"]

    resumed = _script(monkeypatch, Scripted(wins))
    table = run_selection(_config(tmp_path), m1, m2, run_dir / "iter_1")
    assert resumed.answers == 0 and resumed.judgements == 20  # only the two candidates not judged yet
    assert table == {**clean, "previous_model": str(m1)}
    assert (m2 / "marker.txt").read_text() == "step-4" and not partial.exists()


def test_records_about_an_earlier_dpo_run_are_discarded(tmp_path, tiny_model_dir, monkeypatch):
    m1, m2 = _layout(tmp_path, tiny_model_dir)
    _script(monkeypatch, Scripted({}, fail_at_judgement=11))
    with pytest.raises(RuntimeError):
        run_selection(_config(tmp_path), m1, m2, tmp_path / "iter_1")
    # DPO ran again: new checkpoints with a new run id. Nothing recorded about the old ones may be reused.
    info = read_json(checkpoint_dir(m2) / "training.json")
    write_json(checkpoint_dir(m2) / "training.json", {**info, "run_id": "run-b"})
    again = _script(monkeypatch, Scripted({"step-2": {0}}))
    table = run_selection(_config(tmp_path), m1, m2, tmp_path / "iter_1")
    assert again.answers == 4 * 5 and again.judgements == 3 * 10
    assert table["selected"] == "step-2"


def test_a_move_interrupted_between_renames_is_completed(tmp_path, tiny_model_dir, monkeypatch):
    m1, m2 = _layout(tmp_path, tiny_model_dir)
    _script(monkeypatch, Scripted({"step-2": {0, 1, 2, 3, 4}}))
    real_rename, calls = select._rename, []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 3:  # step-2 -> .m2.selected, m2 -> .m2.replaced, then killed before .m2.selected -> m2
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(select, "_rename", rename)
    with pytest.raises(KeyboardInterrupt):
        run_selection(_config(tmp_path), m1, m2, tmp_path / "iter_1")
    assert not m2.exists() and (m2.parent / ".m2.selected").exists()
    monkeypatch.setattr(select, "_rename", real_rename)

    recover_model_dir(m2)  # what the loop does before it looks for models/m2
    assert (m2 / "marker.txt").read_text() == "step-2"
    after = _script(monkeypatch, Scripted({}))
    table = run_selection(_config(tmp_path), m1, m2, tmp_path / "iter_1")
    assert after.answers == after.judgements == 0 and table["selected"] == "step-2"
    assert sorted(p.name for p in m2.parent.iterdir()) == ["m1", "m2"]
    recover_model_dir(m2)  # and a no-op when there is nothing to finish
    assert (m2 / "marker.txt").read_text() == "step-2"


def test_configuration_errors_name_the_keys(tmp_path):
    from srlm.stages.select import check_selection_config

    with pytest.raises(ConfigError, match="dpo.checkpoint_every_steps"):
        check_selection_config(load_config(overrides=["eval.select_checkpoint=true"]))
    with pytest.raises(ConfigError, match="eval.selection_prompts"):
        check_selection_config(load_config(overrides=["eval.select_checkpoint=true", "dpo.checkpoint_every_steps=5"]))
    with pytest.raises(SrlmError, match="missing.jsonl: selection prompts file not found"):
        check_selection_config(load_config(overrides=["eval.select_checkpoint=true", "dpo.checkpoint_every_steps=5",
                                                      f"eval.heldout_prompts={tmp_path / 'missing.jsonl'}"]))
    check_selection_config(load_config(overrides=["dpo.checkpoint_every_steps=5"]))  # off: nothing to check


def test_selection_without_checkpoints_is_a_clear_error(tmp_path, tiny_model_dir, monkeypatch):
    m1, m2 = _layout(tmp_path, tiny_model_dir)
    shutil.rmtree(checkpoint_dir(m2))
    with pytest.raises(SrlmError, match="no DPO checkpoints to select from"):
        run_selection(_config(tmp_path), m1, m2, tmp_path / "iter_1")


def test_report_shows_the_selection_table_escaped(tmp_path):
    from srlm.report import write_report

    write_json(tmp_path / "summary.json", {"iterations": [{"iteration": 1, "model": "m1", "selection": {
        "selected": "step-4", "candidates": [
            {"candidate": "<script>x</script>", "step": 2, "final": False, "selected": False, "win": 0.25,
             "tie": 0.5, "loss": 0.25, "win_rate": 0.5, "n": 4},
            {"candidate": "step-4", "step": 4, "final": True, "selected": True, "win": 0.75, "tie": 0.0,
             "loss": 0.25, "win_rate": 0.75, "n": 4}]}}]})
    html_path, md_path = write_report(tmp_path)
    html = html_path.read_text()
    assert "Checkpoint selection" in html and "<script>x" not in html and "&lt;script&gt;x" in html
    assert "<td>step-4 (final)</td><td>4</td><td>75.0%</td>" in html
    assert "| 1 | step-4 (final) | 4 | 75.0% | 0.0% | 25.0% | 75.0% | 4 | yes |" in md_path.read_text()


# ----------------------------------------------------------------------------------------------------------------
# In the loop

SMALL = ["backend.name=fake", "data.max_ift_examples=6", "data.max_eft_examples=6", "sft.batch_size=4",
         "sft.micro_batch_size=2", "sft.epochs=1", "dpo.batch_size=2", "dpo.micro_batch_size=2",
         "prompts.num_prompts=6", "backend.chunk_prompts=2", "loop.iterations=1"]


def test_loop_with_selection_makes_the_selected_checkpoint_m2(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from srlm.loop import run_loop

    prompts = tmp_path / "selection.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Selection question {i}?"}) + "\n" for i in range(4)))
    cfg = load_config("quickstart", overrides=[f"model.name_or_path={tiny_model_dir}", *SMALL,
                                               "dpo.checkpoint_every_steps=1", "eval.select_checkpoint=true",
                                               f"eval.selection_prompts={prompts}"])
    _script(monkeypatch, Scripted({"step-1": {0, 1, 2, 3}}))  # the first checkpoint beats M1 everywhere
    hashes = {}
    real_list = select.list_candidates

    def list_and_hash(model_next):
        candidates, info = real_list(model_next)
        hashes.update({c.name: _sha(c.path) for c in candidates})
        return candidates, info

    monkeypatch.setattr(select, "list_candidates", list_and_hash)
    run_dir = tmp_path / "run"
    summary = run_loop(cfg, run_dir)

    selection = summary["iterations"][0]["selection"]
    assert selection["selected"] == "step-1" and selection["final_step"] >= 2
    assert len(selection["candidates"]) == selection["final_step"] == len(hashes)
    final_name = f"step-{selection['final_step']}"
    assert _sha(run_dir / "models" / "m2") == hashes["step-1"] != hashes[final_name]
    assert not checkpoint_dir(run_dir / "models" / "m2").exists()
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["iterations"][0]["selection"] == selection
    assert "checkpoint selected (vs m1)" in capsys.readouterr().out
    assert "Checkpoint selection" in (run_dir / "report.html").read_text()

    run_loop(cfg, run_dir)
    assert "iter_1/select: already done, skipped" in capsys.readouterr().out
    assert _sha(run_dir / "models" / "m2") == hashes["step-1"]
