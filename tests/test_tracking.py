"""Experiment tracking (`tracking.*`): the trainers' report_to and the loop's per-iteration figures, offline.

The loop runs on the tiny model with the scripted `fake` backend (as in test_loop.py); TensorBoard's event files are
read back with its own EventAccumulator. wandb, mlflow and trackio are not installed here: their code paths are run
against stand-in modules, and their absence must be a clear error before any training.
"""

import json
import sys
import types
from contextlib import contextmanager

import pytest

from srlm import tracking
from srlm.config import Config, load_config, save_config
from srlm.errors import ConfigError, SrlmError
from srlm.loop import run_loop
from srlm.stage_settings import STAGE_SECTIONS, preview_changes, stage_fingerprint
from srlm.rundir import RunDir
from srlm.stages.select import selection_fingerprint
from srlm.stages.training import trainer_kwargs

SMALL = ["backend.name=fake", "data.max_ift_examples=6", "data.max_eft_examples=6", "sft.batch_size=4",
         "sft.micro_batch_size=2", "sft.epochs=1", "dpo.batch_size=4", "dpo.micro_batch_size=2",
         "prompts.num_prompts=6", "backend.chunk_prompts=2", "judge.method=sample_mean", "judge.num_samples=3",
         "eval.heldout_prompts=null", "eval.judge_data=null", "loop.iterations=1"]
TRACKER_ENV = ("TENSORBOARD_LOGGING_DIR", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME", "COMET_PROJECT_NAME")


def small_config(model_dir, *extra):
    return load_config("quickstart", overrides=[f"model.name_or_path={model_dir}", *SMALL, *extra])


@pytest.fixture(autouse=True)
def restored_environment(monkeypatch):
    """The trainers read tracking settings from the environment, which trainer_kwargs sets: undone after each test."""
    for name in TRACKER_ENV:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_the_trainers_logs_and_the_loops_figures(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = run_loop(small_config(tiny_model_dir, "tracking.report_to=tensorboard"), run_dir)
    row = summary["iterations"][0]

    sft = scalars(run_dir / "tracking" / "sft")
    assert sft["train/loss"] and sft["train/loss"][0][0] == 1  # logging_steps=1: one point per optimizer step
    dpo = scalars(run_dir / "tracking" / "iter_1_dpo")
    assert len(dpo["train/loss"]) == len(row["dpo_steps"])
    assert "train/rewards/accuracies" in dpo

    loop = scalars(run_dir / "tracking" / "loop")
    assert loop["dpo/loss_last"] == [(1, pytest.approx(row["dpo_loss_last"]))]
    assert loop["dpo/loss_first"] == [(1, pytest.approx(row["dpo_loss_first"]))]
    assert loop["pairs/count"] == [(1, row["pairs"])]
    assert loop["judge/parse_rate"] == [(1, pytest.approx(row["judge_parse_rate"]))]
    assert loop["judge/top_score_share"] == [(1, pytest.approx(row["monitors"]["top_score_share"]))]
    assert loop["respond/response_tokens_mean"] == [(1, pytest.approx(row["response_tokens_mean"]))]
    assert "tensorboard --logdir" in capsys.readouterr().out

    # A rerun of the finished run trains nothing and logs nothing twice.
    files = sorted(p.name for p in (run_dir / "tracking").rglob("*tfevents*"))
    run_loop(small_config(tiny_model_dir, "tracking.report_to=tensorboard"), run_dir)
    assert sorted(p.name for p in (run_dir / "tracking").rglob("*tfevents*")) == files
    assert scalars(run_dir / "tracking" / "loop")["pairs/count"] == [(1, row["pairs"])]


def test_tracking_off_writes_nothing_and_turning_it_on_reruns_nothing(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_loop(small_config(tiny_model_dir), run_dir)
    assert not (run_dir / "tracking").exists()
    assert not list(tmp_path.rglob("*tfevents*"))
    out = capsys.readouterr().out
    assert "tracking.report_to=tensorboard" in out and f"tensorboard --logdir {run_dir / 'tracking'}" in out

    manifest = json.loads((run_dir / "manifest.json").read_text())
    logdir = tmp_path / "tb"
    run_loop(small_config(tiny_model_dir, "tracking.report_to=[tensorboard]", f"tracking.logging_dir={logdir}"),
             run_dir)
    out = capsys.readouterr().out
    assert "finished stages that will rerun: none" in out
    assert json.loads((run_dir / "manifest.json").read_text())["stages"] == manifest["stages"]  # nothing reran
    assert not (logdir / "sft").exists()  # no training happened, so no trainer logs
    assert scalars(logdir / "loop")["pairs/count"][0][0] == 1  # the finished iteration's figures, logged now


def test_tracking_changes_no_stage_fingerprint():
    base = ["judge_training.pairs=builtin:hh_eft"]  # so that the train_judge stage has a fingerprint too
    off = load_config(overrides=base)
    for overrides in (["tracking.report_to=tensorboard"],
                      ["tracking.report_to=[tensorboard,mlflow]", "tracking.project=p", "tracking.run_name=r",
                       "tracking.logging_dir=/tmp/tb"]):
        on = load_config(overrides=[*base, *overrides])
        for stage in STAGE_SECTIONS:
            assert stage_fingerprint(on, stage) == stage_fingerprint(off, stage), stage
        assert selection_fingerprint(on) == selection_fingerprint(off)
    assert Config().fingerprint() == load_config().fingerprint()


def test_a_run_directory_from_before_tracking_reports_no_change(tmp_path, capsys):
    cfg = Config()
    rd = RunDir(tmp_path / "run")
    save_config(cfg, rd.root / "config.yaml")
    import yaml

    old = yaml.safe_load((rd.root / "config.yaml").read_text())
    del old["tracking"]
    (rd.root / "config.yaml").write_text(yaml.safe_dump(old))
    preview_changes(cfg, rd)
    assert "settings changed" not in capsys.readouterr().out


@pytest.mark.parametrize("value, message", [
    ("tensorbord", "unknown integration 'tensorbord'"),
    ("[tensorboard,nope]", "unknown integration 'nope'"),
    ("[none,tensorboard]", "'none' cannot be combined"),
    ("[all,wandb]", "'all' cannot be combined"),
])
def test_an_unknown_integration_is_a_config_error(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"tracking.report_to={value}"])
    assert "tracking.report_to" in str(err.value) and message in str(err.value)
    if "unknown" in message:
        assert "accepted: none, all," in str(err.value) and "tensorboard" in str(err.value)


def test_accepted_forms_of_report_to():
    assert tracking.integrations(Config().tracking) == []
    for value, names in (("tensorboard", ["tensorboard"]), ("[tensorboard,wandb]", ["tensorboard", "wandb"]),
                         ("tensorboard,mlflow", ["tensorboard", "mlflow"]), ("[]", []), ("none", [])):
        assert tracking.integrations(load_config(overrides=[f"tracking.report_to={value}"]).tracking) == names


def test_trainer_kwargs_pass_tracking_to_the_trainers(tmp_path):
    import torch

    from srlm.config import SftConfig

    kwargs = dict(cfg=SftConfig(batch_size=4, micro_batch_size=2), device="cpu", dtype=torch.float32, seed=0,
                  output_dir=str(tmp_path / "scratch"))
    assert trainer_kwargs(**kwargs)["report_to"] == []  # off: no loggers, as before tracking existed
    # comet_ml is transformers' alone (srlm logs no loop figures there): not needed installed to build the args
    cfg = load_config(overrides=["tracking.report_to=[tensorboard,comet_ml]", "tracking.project=exp",
                                 "tracking.run_name=mine"]).tracking
    stage = tracking.stage_tracking(cfg, tmp_path / "run", "iter_2_dpo")
    args = trainer_kwargs(**kwargs, tracking=stage)
    assert args["report_to"] == ["tensorboard", "comet_ml"] and args["run_name"] == "mine/iter_2_dpo"
    assert args["project"] == "exp"
    import os

    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str((tmp_path / "run" / "tracking" / "iter_2_dpo").absolute())
    assert os.environ["COMET_PROJECT_NAME"] == "exp" and "WANDB_PROJECT" not in os.environ  # only when listed
    from trl import SFTConfig

    assert SFTConfig(**args).report_to == ["tensorboard", "comet_ml"]  # names the installed TRL/transformers accept
    assert tracking.stage_tracking(Config().tracking, tmp_path, "sft") is None


def test_log_iteration_flattens_numbers_and_skips_the_rest(tmp_path):
    cfg = load_config(overrides=["tracking.report_to=tensorboard"]).tracking
    figures = {"judge": {"parse_rate": 0.75, "note": "text", "missing": None}, "pairs": {"count": 3},
               "flag": True, "dpo": {"loss_last": float("nan"), "loss_first": 0.69}}
    assert tracking.flatten(figures) == {"judge/parse_rate": 0.75, "pairs/count": 3, "dpo/loss_first": 0.69}
    assert tracking.log_iteration(cfg, tmp_path, 2, figures) == ["tensorboard"]
    assert tracking.log_iteration(cfg, tmp_path, 2, figures) == []  # already there
    assert scalars(tmp_path / "tracking" / "loop")["judge/parse_rate"] == [(2, 0.75)]
    # the same step with other figures (a stage reran): logged again, replacing the old values
    assert tracking.log_iteration(cfg, tmp_path, 2, {"judge": {"parse_rate": 0.5}}) == ["tensorboard"]
    assert scalars(tmp_path / "tracking" / "loop")["judge/parse_rate"] == [(2, 0.5)]
    assert tracking.log_iteration(Config().tracking, tmp_path / "off", 1, figures) == []
    assert not (tmp_path / "off").exists()


def test_iteration_figures_cover_the_summary_row():
    row = {"prompts": 6, "prompt_attempts": 9, "responses": 24, "response_tokens_mean": 12.5,
           "judge_parse_rate": 0.9, "score_mean": 3.1, "score_histogram": {"3": 2, "5": 2}, "pairs": 5,
           "chosen_len_mean": 40.0, "rejected_len_mean": 20.0, "chosen_score_mean": 4.0, "rejected_score_mean": 2.0,
           "dpo_loss_first": 0.6931, "dpo_loss_last": 0.5, "dpo_reward_accuracy": 1.0, "dpo_reward_margin": 0.2,
           "judge_accuracy": {"pairwise_accuracy": 0.6}, "seconds": 10.0,
           "monitors": {"top_score_share": 0.5, "tie_rate": 0.1, "pair_yield": 0.8, "score_gap_mean": 2.0,
                        "dpo_steps_total": 3},
           "eval": {"winrate_vs_previous": {"win_rate": 0.55, "win": 0.4, "tie": 0.3, "loss": 0.3},
                    "judge_accuracy": {"pairwise_accuracy": 0.65},
                    "ifeval": {"prompt_level_strict_acc": 0.3, "inst_level_loose_acc": 0.4}}}
    flat = tracking.flatten(tracking.iteration_figures(row))
    for key, value in {"judge/parse_rate": 0.9, "judge/top_score_share": 0.5, "judge/score_share_5": 0.5,
                       "judge/pairwise_accuracy": 0.6, "pairs/count": 5, "pairs/score_gap_mean": 2.0,
                       "dpo/loss_first": 0.6931, "dpo/loss_last": 0.5, "dpo/reward_accuracy_last": 1.0,
                       "respond/response_tokens_mean": 12.5, "eval/winrate_vs_previous/win_rate": 0.55,
                       "eval/judge_pairwise_accuracy": 0.65, "eval/ifeval/prompt_level_strict_acc": 0.3}.items():
        assert flat[key] == value, key


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio"])
def test_a_tracker_that_is_not_installed_fails_before_training(name, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # importing it fails, installed or not
    monkeypatch.setattr(tracking, "_installed", lambda module: False)
    with pytest.raises(SrlmError, match=f"pip install {name}"):
        run_loop(small_config(tiny_model_dir, f"tracking.report_to={name}"), tmp_path / "run")
    assert not (tmp_path / "run" / "models").exists()
    cfg = load_config(overrides=[f"tracking.report_to={name}"]).tracking
    monkeypatch.setattr(tracking, "check_installed", lambda names: None)
    with pytest.raises(SrlmError, match=f"pip install {name}"):  # the lazy import itself says the same
        tracking.log_iteration(cfg, tmp_path, 1, {"pairs": {"count": 1}})


def test_tensorboard_missing_names_the_extra(monkeypatch):
    monkeypatch.setattr(tracking, "_installed", lambda module: False)
    with pytest.raises(SrlmError, match=r"pip install tensorboard .*srlm\[tracking\]"):
        tracking.check(load_config(overrides=["tracking.report_to=tensorboard"]).tracking)


def _fake_wandb(calls):
    class Run:
        def __init__(self, **kwargs):
            self.id = kwargs["id"]
            calls.append(("init", kwargs))

        def define_metric(self, *args, **kwargs):
            calls.append(("define_metric", args, kwargs))

        def log(self, data):
            calls.append(("log", data))

        def finish(self):
            calls.append(("finish",))

    module = types.ModuleType("wandb")
    module.run = None
    module.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    module.init = lambda **kwargs: Run(**kwargs)
    module.finish = lambda: calls.append(("module.finish",))
    return module


def test_loop_figures_reach_wandb_mlflow_and_trackio_through_their_apis(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))

    mlflow = types.ModuleType("mlflow")

    @contextmanager
    def start_run(run_id=None, run_name=None, nested=False):
        calls.append(("mlflow.start_run", run_id, run_name, nested))
        yield types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "mlf1"))

    mlflow.set_experiment = lambda name: calls.append(("mlflow.set_experiment", name))
    mlflow.active_run = lambda: None
    mlflow.start_run = start_run
    mlflow.log_metrics = lambda metrics, step: calls.append(("mlflow.log_metrics", metrics, step))
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)

    trackio = types.ModuleType("trackio")
    trackio.init = lambda **kwargs: calls.append(("trackio.init", kwargs))
    trackio.log = lambda metrics, step: calls.append(("trackio.log", metrics, step))
    trackio.finish = lambda: calls.append(("trackio.finish",))
    monkeypatch.setitem(sys.modules, "trackio", trackio)

    cfg = load_config(overrides=["tracking.report_to=[wandb,mlflow,trackio]", "tracking.project=proj"]).tracking
    run_dir = tmp_path / "myrun"
    for step in (1, 2):
        assert tracking.log_iteration(cfg, run_dir, step, {"dpo": {"loss_last": 0.5 / step}}) == \
            ["wandb", "mlflow", "trackio"]
    inits = [c[1] for c in calls if c[0] == "init"]
    assert [i["id"] for i in inits] == ["abc123", "abc123"]  # one wandb run for the srlm run, resumed
    assert inits[0]["name"] == "myrun" and inits[0]["project"] == "proj" and inits[0]["resume"] == "allow"
    assert ("log", {"dpo/loss_last": 0.25, "iteration": 2}) in calls
    assert [c[1] for c in calls if c[0] == "mlflow.start_run"] == [None, "mlf1"]  # the same mlflow run again
    assert ("mlflow.log_metrics", {"dpo/loss_last": 0.5}, 1) in calls
    assert ("trackio.log", {"dpo/loss_last": 0.25}, 2) in calls
    assert [c[1]["project"] for c in calls if c[0] == "trackio.init"] == ["proj", "proj"]


@pytest.mark.slow  # launches the training stages as their own processes: about 40 s
def test_launched_training_stages_log_to_the_same_folders(tiny_model_dir, tmp_path):
    # launch.num_processes=2: SFT and DPO run as `accelerate launch -m srlm sft|dpo`, told their place in the run.
    run_dir = tmp_path / "run"
    run_loop(small_config(tiny_model_dir, "launch.num_processes=2", "launch.config_file=cpu_gloo_2proc",
                          "tracking.report_to=tensorboard"), run_dir)
    assert scalars(run_dir / "tracking" / "sft")["train/loss"]
    assert scalars(run_dir / "tracking" / "iter_1_dpo")["train/loss"]
    assert sorted(p.name for p in (run_dir / "tracking").iterdir()) == ["iter_1_dpo", "loop", "sft"]
