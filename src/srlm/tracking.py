"""Experiment tracking (`tracking.*`): the trainers' own `report_to`, and the loop's figures after each iteration.

Training stages (SFT, DPO) report through transformers' integrations: `stage_tracking` resolves the config for one
stage (its TensorBoard folder `<logging_dir>/<stage>`, its run name) and `srlm.stages.training.trainer_kwargs`
turns that into trainer arguments and the environment variables the integrations read.

The loop's own figures (judge parse rate, score shares, pairs, DPO loss and reward accuracy, judge accuracy, win
rates, IFEval) are logged by `log_iteration` after each iteration, step = iteration, to one tracker run per srlm run:
`<logging_dir>/loop` for TensorBoard, a run named after the srlm run for wandb, mlflow and trackio (imported only when
listed). Each step is logged once: a resumed run that recomputes an iteration's figures unchanged logs nothing again.
Tracking changes no result, so no stage's fingerprint includes it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from srlm.config import LOOP_TRACKERS, TrackingConfig, report_to_names
from srlm.errors import SrlmError

# The pip package each integration srlm itself imports needs (TensorBoard: `srlm[tracking]`).
PIP_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
# Environment variables through which transformers' integrations (or the trackers themselves) take a project name.
PROJECT_ENV = {"wandb": "WANDB_PROJECT", "mlflow": "MLFLOW_EXPERIMENT_NAME", "comet_ml": "COMET_PROJECT_NAME",
               "clearml": "CLEARML_PROJECT", "swanlab": "SWANLAB_PROJECT"}
LOOP_DIR = "loop"
LOGGED_FILE = "logged.json"  # in <logging_dir>/loop: per tracker, step -> hash of the figures logged there


def integrations(cfg: TrackingConfig | None) -> list[str]:
    """The integrations tracking.report_to names: [] when off; 'all' = every one installed (transformers' list)."""
    names = report_to_names(cfg.report_to) if cfg is not None else []
    if names == ["all"]:
        from transformers.integrations import get_available_reporting_integrations

        names = list(get_available_reporting_integrations())
    return names


def tracking_root(cfg: TrackingConfig, run_dir) -> Path:
    """tracking.logging_dir, or <run_dir>/tracking, as an absolute path."""
    return (Path(cfg.logging_dir).expanduser() if cfg.logging_dir else Path(run_dir) / "tracking").absolute()


def base_run_name(cfg: TrackingConfig, run_dir) -> str:
    return cfg.run_name or Path(run_dir).absolute().name


def check_installed(names: list[str]) -> None:
    """A clear error, before any training, when a listed tracker srlm imports itself is not installed."""
    for name in names:
        if name not in PIP_PACKAGES:
            continue  # the other integrations are transformers' alone: its own error names what is missing
        if not any(_installed(m) for m in (("tensorboard", "tensorboardX") if name == "tensorboard" else (name,))):
            extra = " (or pip install 'srlm[tracking]')" if name == "tensorboard" else ""
            raise SrlmError(f"tracking.report_to lists {name}, which is not installed: pip install "
                            f"{PIP_PACKAGES[name]}{extra}, or set tracking.report_to=none")


def _installed(module: str) -> bool:
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check(cfg: TrackingConfig | None) -> None:
    check_installed(integrations(cfg))


@dataclass(frozen=True)
class StageTracking:
    """Tracking for one training stage, resolved: what `training.trainer_kwargs(tracking=...)` takes."""

    report_to: tuple[str, ...]
    logging_dir: Path  # this stage's TensorBoard folder
    run_name: str  # this stage's run name
    project: str | None = None

    def trainer_args(self) -> dict:
        """TrainingArguments (SFTConfig, DPOConfig) keywords: report_to, run_name and, when set, project (trackio)."""
        return {"report_to": list(self.report_to), "run_name": self.run_name,
                **({"project": self.project} if self.project else {})}

    def environment(self) -> dict[str, str]:
        """What the integrations read from the environment: TensorBoard's folder and, when set, the project."""
        env = {}
        if "tensorboard" in self.report_to:
            env["TENSORBOARD_LOGGING_DIR"] = str(self.logging_dir)
        if self.project:
            env.update({PROJECT_ENV[n]: self.project for n in self.report_to if n in PROJECT_ENV})
        return env

    def apply(self) -> None:
        """Set the environment the integrations read when the trainer is built and when training starts."""
        os.environ.update(self.environment())
        wandb = sys.modules.get("wandb")
        if "wandb" in self.report_to and wandb is not None and getattr(wandb, "run", None) is not None:
            # transformers' callback logs into any open run: one left open by an earlier stage would get this one's
            wandb.finish()


def stage_tracking(cfg: TrackingConfig | None, run_dir, stage: str) -> StageTracking | None:
    """Tracking for the training stage `stage` (sft, iter_1_dpo, ...) of the run in `run_dir`; None when off."""
    names = integrations(cfg)
    if not names:
        return None
    check_installed(names)
    return StageTracking(report_to=tuple(names), logging_dir=tracking_root(cfg, run_dir) / stage,
                         run_name=f"{base_run_name(cfg, run_dir)}/{stage}", project=cfg.project)


def stage_name(stage_key: str) -> str:
    """A run directory's stage key as a folder name: 'iter_1/dpo' -> 'iter_1_dpo'."""
    return stage_key.replace("/", "_")


# ---------------------------------------------------------------------------------------------------------------
# The loop's figures


def iteration_figures(row: dict) -> dict:
    """The numbers worth a curve from one iteration's summary row (`health.iteration_row` plus its monitors)."""
    monitors = row.get("monitors") or {}
    hist = row.get("score_histogram") or {}
    scored = sum(v for v in hist.values() if isinstance(v, (int, float)))
    evaluation = row.get("eval") or {}
    figures = {
        "prompts": {"kept": row.get("prompts"), "attempts": row.get("prompt_attempts")},
        "respond": {"candidates": row.get("responses"), "response_tokens_mean": row.get("response_tokens_mean")},
        "judge": {
            "parse_rate": row.get("judge_parse_rate"),
            "score_mean": row.get("score_mean"),
            "top_score_share": monitors.get("top_score_share"),
            "tie_rate": monitors.get("tie_rate"),
            **{f"score_share_{k}": round(v / scored, 4) for k, v in hist.items() if scored},
            # M_t, the judge that built this iteration's pairs, on eval.judge_data
            "pairwise_accuracy": (row.get("judge_accuracy") or {}).get("pairwise_accuracy"),
        },
        "pairs": {
            "count": row.get("pairs"),
            "yield": monitors.get("pair_yield"),
            "chosen_len_mean": row.get("chosen_len_mean"),
            "rejected_len_mean": row.get("rejected_len_mean"),
            "chosen_score_mean": row.get("chosen_score_mean"),
            "rejected_score_mean": row.get("rejected_score_mean"),
            "score_gap_mean": monitors.get("score_gap_mean"),
        },
        "dpo": {
            "loss_first": row.get("dpo_loss_first"),
            "loss_last": row.get("dpo_loss_last"),
            "reward_accuracy_last": row.get("dpo_reward_accuracy"),
            "reward_margin_last": row.get("dpo_reward_margin"),
            "steps": monitors.get("dpo_steps_total"),
        },
        "seconds": row.get("seconds"),
    }
    # M_t+1 after the iteration: win rates, its judge, IFEval
    for key in ("winrate_vs_previous", "winrate_vs_m1"):
        if key in evaluation:
            w = evaluation[key]
            figures.setdefault("eval", {})[key] = {k: w.get(k) for k in ("win_rate", "win", "tie", "loss",
                                                                           "length_controlled_win_rate")}
    if "judge_accuracy" in evaluation:
        figures.setdefault("eval", {})["judge_pairwise_accuracy"] = evaluation["judge_accuracy"].get("pairwise_accuracy")
    if "ifeval" in evaluation:
        figures.setdefault("eval", {})["ifeval"] = {k: evaluation["ifeval"].get(k) for k in (
            "prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc")}
    if row.get("selection"):
        won = next((c for c in row["selection"].get("candidates", []) if c.get("selected")), {})
        figures["selection"] = {"step": row["selection"].get("selected_step"), "win_rate": won.get("win_rate")}
    return figures


def flatten(figures: dict, prefix: str = "") -> dict[str, float]:
    """{"judge": {"parse_rate": 0.9}} -> {"judge/parse_rate": 0.9}; only finite numbers (no booleans, no None)."""
    out = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = value
    return out


def log_iteration(cfg: TrackingConfig | None, run_dir, step: int, figures: dict) -> list[str]:
    """Log one iteration's figures (nested dicts of numbers, flattened to "judge/parse_rate", ...) at `step` to every
    listed tracker the loop logs to; the trackers written to. Nothing when tracking is off."""
    names = [n for n in integrations(cfg) if n in LOOP_TRACKERS]
    flat = flatten(figures)
    if not names or not flat:
        return []
    check_installed(names)
    loop_dir = tracking_root(cfg, run_dir) / LOOP_DIR
    loop_dir.mkdir(parents=True, exist_ok=True)
    logged_path = loop_dir / LOGGED_FILE
    logged = json.loads(logged_path.read_text()) if logged_path.is_file() else {}
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]
    written = []
    for name in names:
        if logged.get(name, {}).get(str(step)) == digest:
            continue  # a resumed run: these figures are there already
        WRITERS[name](cfg, run_dir, loop_dir, step, flat, relog=str(step) in logged.get(name, {}))
        logged.setdefault(name, {})[str(step)] = digest
        logged_path.write_text(json.dumps(logged, indent=1, sort_keys=True) + "\n")
        written.append(name)
    return written


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise SrlmError(f"tracking.report_to lists {name}, which is not installed: pip install {PIP_PACKAGES[name]}, "
                        "or set tracking.report_to=none") from None


def _write_tensorboard(cfg, run_dir, loop_dir: Path, step: int, flat: dict, relog: bool) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise SrlmError("tracking.report_to lists tensorboard, which is not installed: pip install tensorboard "
                            "(or pip install 'srlm[tracking]'), or set tracking.report_to=none") from None
    # purge_step: figures of a step logged before (a stage reran with other results) replace the old ones.
    writer = SummaryWriter(log_dir=str(loop_dir), purge_step=step if relog else None)
    try:
        for tag, value in flat.items():
            writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()


def _run_id(loop_dir: Path, name: str, new_id) -> str:
    """The tracker run id of this srlm run (kept in <logging_dir>/loop), made by `new_id()` the first time."""
    path = loop_dir / f"{name}_run_id.txt"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = new_id()
    path.write_text(f"{run_id}\n")
    return run_id


def _write_wandb(cfg, run_dir, loop_dir: Path, step: int, flat: dict, relog: bool) -> None:
    wandb = _import("wandb")
    if wandb.run is not None:
        wandb.finish()  # a training stage's run, left open by transformers' callback: that stage is over
    run_id = _run_id(loop_dir, "wandb", lambda: wandb.util.generate_id())
    run = wandb.init(project=cfg.project or os.environ.get("WANDB_PROJECT", "huggingface"),
                     name=base_run_name(cfg, run_dir), id=run_id, resume="allow", dir=str(loop_dir))
    try:
        run.define_metric("iteration")
        run.define_metric("*", step_metric="iteration")
        run.log({**flat, "iteration": step})
    finally:
        run.finish()


def _write_mlflow(cfg, run_dir, loop_dir: Path, step: int, flat: dict, relog: bool) -> None:
    mlflow = _import("mlflow")
    if cfg.project:
        mlflow.set_experiment(cfg.project)
    path = loop_dir / "mlflow_run_id.txt"
    run_id = path.read_text().strip() if path.is_file() else None
    nested = mlflow.active_run() is not None
    with (mlflow.start_run(run_id=run_id, nested=nested) if run_id
          else mlflow.start_run(run_name=base_run_name(cfg, run_dir), nested=nested)) as run:
        if not run_id:
            path.write_text(f"{run.info.run_id}\n")
        mlflow.log_metrics(flat, step=step)


def _write_trackio(cfg, run_dir, loop_dir: Path, step: int, flat: dict, relog: bool) -> None:
    trackio = _import("trackio")
    trackio.init(project=cfg.project or "huggingface", name=base_run_name(cfg, run_dir), resume="allow")
    try:
        trackio.log(flat, step=step)
    finally:
        trackio.finish()


WRITERS = {"tensorboard": _write_tensorboard, "wandb": _write_wandb, "mlflow": _write_mlflow,
           "trackio": _write_trackio}


def hint(cfg: TrackingConfig, run_dir) -> str:
    """One line for the end of a run: how to turn TensorBoard on, or how to open it."""
    root = tracking_root(cfg, run_dir)
    if "tensorboard" in integrations(cfg):
        return f"srlm: training curves and per-iteration figures: tensorboard --logdir {root}"
    if not integrations(cfg):
        return ("srlm: to follow training in TensorBoard, add tracking.report_to=tensorboard (pip install "
                f"'srlm[tracking]'), then run: tensorboard --logdir {root}")
    return ""
