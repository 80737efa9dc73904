"""`srlm run`: the whole method of the paper on one run directory.

    M1 = SFT(base, IFT + EFT)
    for t = 1 .. loop.iterations:
        prompts_t    = self-instruct(generator, seed prompts, earlier generated prompts)
        responses_t  = N samples per prompt from M_t
        judgements_t = K judgements per response by M_t (the same model, as judge)
        pairs_t      = best vs worst per prompt, ties dropped
        M_{t+1}      = DPO(M_t, reference M_t, pairs_t)

Each line is a stage from `srlm.stages`, run through `RunDir.stage`, which skips what is finished and resumes what
was interrupted. After each iteration a table of its health metrics is printed and `summary.json` is rewritten.
Off the paper's path, behind keys: M1's judge trained on human pairs (judge_training.pairs), an M1 made elsewhere
(loop.m1) or the base model as M1, with no SFT (loop.m1=base), pair policies that need more answers or judgements
(pairs.policy: `run_policy_stages`), checkpoint selection (eval.select_checkpoint), and the side stages
(evaluations, the SFT baseline, the base model's evaluation).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from srlm import cards, tracking
from srlm.backends import backend_for
from srlm.config import BASE_AS_M1, Config, save_config
from srlm.errors import SrlmError
from srlm.evaluation.judge_eval import format_accuracy
from srlm.health import collapse_monitors, collapse_warnings, iteration_row, print_iteration_table
from srlm.judge import check_judge_method
from srlm.models import local_model_dir
from srlm.io import iter_jsonl, write_json
from srlm.report import write_report
from srlm.rundir import RunDir
from srlm.stages import training
from srlm.stages.dpo import run_dpo
from srlm.stages.evaluate import harness_eval, ifeval_accuracy, judge_accuracy, run_iteration_eval
from srlm.stages.judge import run_judge
from srlm.stages.metajudge import mix_pairs, run_metajudge
from srlm.stages.pairs import run_pairs
from srlm.stages.prompts import run_prompts
from srlm.stages.respond import run_respond
from srlm.stages.select import check_selection_config, recover_model_dir, run_selection, selection_fingerprint
from srlm.stages.sft import run_sft
from srlm.stages.train_judge import run_train_judge
from srlm.stage_settings import preview_changes, stage_fingerprint
from srlm.seed import resolve_data_path  # also imported from here by callers: `srlm.loop.resolve_data_path`


def seed_prompt_texts(cfg: Config) -> list[str]:
    path = resolve_data_path(cfg.data.seed_prompts or cfg.data.ift)
    return [r["prompt"].strip() for r in iter_jsonl(path, {"prompt": str})]


class _Generator:
    """Loads a model for generation only when a stage needs it, and frees it before training."""

    def __init__(self, cfg: Config, model_path: str):
        self.cfg, self.model_path, self.backend = cfg, model_path, None

    def get(self):
        if self.backend is None:
            self.backend = backend_for(self.cfg, self.model_path)
        return self.backend

    def close(self):
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def _launched(cfg: Config, rd: RunDir, stage_args: list[str], stats_name: str) -> dict:
    """Run a training stage as `accelerate launch ... -m srlm <stage>` on the run's saved config; its stats."""
    from srlm.distributed import run_launched
    from srlm.io import read_json

    stats_path = rd.root / f".{stats_name}.stats.json"
    stats_path.unlink(missing_ok=True)
    run_launched([*stage_args, "--config", str(rd.root / "config.yaml"), "--stats-out", str(stats_path)],
                 num_processes=cfg.launch.num_processes, config_file=cfg.launch.config_file,
                 launch_args=cfg.launch.extra_args)
    stats = read_json(stats_path)
    stats_path.unlink()
    return stats


def _tracking_args(cfg: Config, rd: RunDir, stage: str) -> list[str]:
    """A launched training stage's place in the run's tracking (see `srlm.tracking.stage_tracking`)."""
    return ["--tracking-run-dir", str(rd.root), "--tracking-stage", stage] if tracking.integrations(cfg.tracking) else []


def _train_sft(cfg: Config, rd: RunDir, ift_path, eft_path, out_dir: Path, stage: str = "sft") -> dict:
    if cfg.launch.num_processes > 1:
        data_args = ["--ift", ift_path] + (["--eft", eft_path] if eft_path else ["--no-eft"])
        return _launched(cfg, rd, ["sft", "--out", str(out_dir), *data_args, *_tracking_args(cfg, rd, stage)],
                         out_dir.name)
    return run_sft(cfg.model.name_or_path, ift_path, eft_path, out_dir, cfg.sft, seed=cfg.seed,
                   judge_template_file=cfg.judge.template_file, max_ift_examples=cfg.data.max_ift_examples,
                   max_eft_examples=cfg.data.max_eft_examples if eft_path else None, model=cfg.model,
                   tracking=tracking.stage_tracking(cfg.tracking, rd.root, stage))


def check_model_dir(source: Path) -> None:
    if not (source / "config.json").is_file() or not any(source.glob("*.safetensors")):
        raise SrlmError(f"loop.m1={source}: not a model directory (needs config.json and safetensors weights)")


def copy_model(source: Path, out_dir: Path) -> dict:
    """loop.m1: the given model copied into models/m1."""
    from srlm.models import copy_model_files

    check_model_dir(source)
    copy_model_files(source, out_dir)
    return {"copied_from": str(source)}


def check_judge_training(cfg: Config) -> None:
    """A judge trained by judge_training.pairs reads scores the way it was trained: judge.method=direct."""
    if cfg.loop.m1 and cfg.loop.m1 != BASE_AS_M1:
        check_model_dir(Path(cfg.loop.m1))  # before anything runs, not after the evaluation files are checked
        if cfg.judge_training.pairs:
            raise SrlmError("loop.m1 gives the run its M1, so judge_training.pairs would train nothing: train that "
                            "model's judge with `srlm train-judge` first, or drop loop.m1")
    if cfg.judge_training.pairs:
        resolve_data_path(cfg.judge_training.pairs)
        if cfg.judge.method != "direct":
            raise SrlmError(f"judge_training.pairs trains M1's judge to give its score directly (judge.method=direct), "
                            f"but judge.method={cfg.judge.method}: set judge.method=direct judge.num_samples=1")
        if cfg.launch.num_processes > 1:
            raise SrlmError("judge_training runs in one process; set launch.num_processes=1 (or train M1's judge with "
                            "`srlm train-judge` and start the loop from it)")


def _train_dpo(cfg: Config, rd: RunDir, model_t: Path, pairs: Path, out_dir: Path, dpo_cfg=None) -> dict:
    stage = tracking.stage_name(f"{Path(pairs).parent.name}/dpo")  # iter_t/pairs.jsonl -> iter_t_dpo
    dpo_cfg = dpo_cfg or cfg.dpo
    if cfg.launch.num_processes > 1:
        return _launched(cfg, rd, ["dpo", "--pairs", str(pairs), "--model", str(model_t), "--out", str(out_dir),
                                   *_tracking_args(cfg, rd, stage), f"dpo.label_smoothing={dpo_cfg.label_smoothing}"],
                         out_dir.name)
    return run_dpo(str(model_t), pairs, out_dir, dpo_cfg, seed=cfg.seed, model=cfg.model,
                   tracking=tracking.stage_tracking(cfg.tracking, rd.root, stage))


def run_loop(cfg: Config, run_dir: str | Path) -> dict:
    """The paper's loop on `run_dir`, as its module docstring draws it: M1, then loop.iterations self-rewarding
    iterations, each a list of stages. Side stages (evaluations, the SFT baseline) stand beside the main line:
    nothing in it depends on them. Returns the run's summary (also in summary.json)."""
    check_before_training(cfg)
    rd = RunDir(run_dir)
    if cfg.loop.iterations == 0:
        print("srlm: loop.iterations=0: this run makes M1 and evaluates it, with no self-rewarding iteration",
              flush=True)
    preview_changes(cfg, rd)
    save_config(cfg, rd.root / "config.yaml")
    started = time.perf_counter()
    summary = {"run_dir": str(rd.root), "iterations": []}

    if cfg.loop.eval_base:  # side: the model the loop starts from, measured as M1 is (it depends on nothing else)
        base = local_model_dir(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
        evaluate_model(cfg, rd, summary, "base", model=base, fingerprint=training.resume_key(base))
    make_m1(cfg, rd, summary)  # SFT (the paper), SFT then train-judge, the base model (loop.m1=base) or loop.m1's
    evaluate_model(cfg, rd, summary, "m1")  # side: M1's judge accuracy, IFEval, lm-eval tasks
    seeds = seed_prompt_texts(cfg)
    judge_of = {1: summary.get("m1_judge_accuracy")}  # t -> M_t's judge accuracy, the judge of iteration t
    for t in range(1, cfg.loop.iterations + 1):
        row = run_iteration(cfg, rd, t, seeds, judge_of)
        record_iteration(cfg, rd, summary, row)
    if cfg.loop.sft_baseline:
        make_sft_baseline(cfg, rd, summary)  # side: the paper's comparison model, IFT only, and its evaluations
    finish_run(cfg, rd, summary, started)
    return summary


def check_before_training(cfg: Config) -> None:
    """Everything that can be refused without training, refused now: a missing key or file must not surface after
    hours of SFT and DPO."""
    check_selection_config(cfg)
    check_judge_method(cfg)
    check_judge_training(cfg)
    tracking.check(cfg.tracking)  # a listed tracker that is not installed
    for path in (cfg.eval.heldout_prompts, cfg.eval.judge_data, cfg.eval.ifeval_prompts):
        resolve_data_path(path)
    if cfg.loop.require_judge_signal and not cfg.eval.judge_data:
        raise SrlmError("loop.require_judge_signal=true needs eval.judge_data (human preference pairs to measure the "
                        "judge on), e.g. eval.judge_data=builtin:hh_test")
    if cfg.eval.ifeval_prompts:
        from srlm.evaluation.ifeval import load_checkers

        load_checkers()  # the optional lm-eval dependency
    if cfg.eval.harness_tasks:
        from srlm.evaluation.harness import resolve_tasks

        resolve_tasks(cfg.eval.harness_tasks, cfg.eval.harness_include_path)  # lm-eval and every task name


def make_m1(cfg: Config, rd: RunDir, summary: dict) -> None:
    """models/m1, in one of four ways; each records where the model came from (the manifest's lineage)."""
    m1 = rd.model_dir(1)
    ift_path, eft_path = resolve_data_path(cfg.data.ift), resolve_data_path(cfg.data.eft)
    trains_judge = bool(cfg.judge_training.pairs)
    if not trains_judge and "train_judge" in rd.manifest["stages"]:
        # models/m1 was made by a judge training now turned off: it is made again, not kept under another name
        del rd.manifest["stages"]["train_judge"]
        rd.save()
        shutil.rmtree(m1, ignore_errors=True)
    if cfg.loop.m1 == BASE_AS_M1:
        # No SFT: an instruct model already follows instructions, and a short SFT on a few demonstrations can cost
        # more of that than the loop wins back (README, "Does it work?"). With judge_training.pairs the judge is
        # trained from the base model itself; without, M1 is a copy of it.
        base = local_model_dir(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
        start = Path(base) if trains_judge else m1
        # the base model's files, and what generation reads besides the model (seed prompts, model settings)
        fingerprint = training.resume_key(base) + stage_fingerprint(cfg, "m1_base")
        summary["m1_base"] = rd.stage("m1_base", fingerprint, [] if trains_judge else [m1 / "config.json"],
                                      lambda: {"base": base} if trains_judge else copy_model(Path(base), m1))
    elif cfg.loop.m1:  # an M1 made elsewhere, copied in: the run directory holds every model it used
        summary["m1_copy"] = rd.stage("m1_copy", training.resume_key(cfg.loop.m1), [m1 / "config.json"],
                                      lambda: copy_model(Path(cfg.loop.m1), m1))
        cards.record_lineage(rd, "m1", cfg.loop.m1, None, None)
        return
    else:  # the paper: SFT on IFT + EFT is M1; with judge_training.pairs, SFT first makes models/m1_eft
        start = rd.named_model_dir("m1_eft") if trains_judge else m1
        summary["sft"] = rd.stage("sft", stage_fingerprint(cfg, "sft"), [start / "config.json"],
                                  lambda: _train_sft(cfg, rd, ift_path, eft_path, start))
        cards.record_lineage(rd, start.name, cfg.model.name_or_path, None, None)
    if trains_judge:  # M1's judge trained on human pairs, from `start` into models/m1
        summary["train_judge"] = rd.stage(
            "train_judge", stage_fingerprint(cfg, "train_judge"), [m1 / "config.json"],
            lambda: run_train_judge(str(start), resolve_data_path(cfg.judge_training.pairs), m1, cfg.judge_training,
                                    seed=cfg.seed, judge_template_file=cfg.judge.template_file, model=cfg.model,
                                    tracking=tracking.stage_tracking(cfg.tracking, rd.root, "train_judge")),
        )
    if cfg.loop.m1 == BASE_AS_M1 or trains_judge:  # the base model's folder is hashed: a hub id names no version
        cards.record_lineage(rd, "m1", start if trains_judge else base, None, None)


# A model's evaluations on its own, each a side stage when configured: (summary key, stage suffix, output file,
# evaluation). M1's go to eval_m1/, the SFT baseline's to eval_sft_baseline/, with the same settings (fingerprints).
MODEL_EVALS = (
    ("judge_accuracy", "", "judge_accuracy.json", judge_accuracy, lambda e: e.judge_data),
    ("ifeval", "_ifeval", "ifeval.json", ifeval_accuracy, lambda e: e.ifeval_prompts),
    ("harness", "_harness", "harness.json", harness_eval, lambda e: e.harness_tasks),
)


def evaluate_model(cfg: Config, rd: RunDir, summary: dict, name: str, model: str | None = None,
                   fingerprint: str = "") -> None:
    """models/<name>'s (or the folder `model`'s, identified by `fingerprint`) evaluations (MODEL_EVALS) into
    rd.eval_dir(name), their figures into summary[<name>_<key>]."""
    model, out_dir = model or str(rd.named_model_dir(name)), rd.eval_dir(name)
    for key, suffix, output, evaluate, wanted in MODEL_EVALS:
        if wanted(cfg.eval):
            summary[f"{name}_{key}"] = rd.stage(f"eval_{name}{suffix}",
                                                stage_fingerprint(cfg, f"eval_m1{suffix}") + fingerprint,
                                                [out_dir / output], lambda: evaluate(cfg, model, out_dir), side=True)


def run_iteration(cfg: Config, rd: RunDir, t: int, seeds: list[str], judge_of: dict) -> dict:
    """Iteration t: M_t writes new prompts, answers each several times and judges its own answers; the best and
    worst answer of a prompt become a pair; DPO from M_t on the pairs gives M_t+1. Returns the iteration's row."""
    model_t, model_next, d = rd.model_dir(t), rd.model_dir(t + 1), rd.iter_dir(t)
    stats = {"iteration": t, "model": f"m{t}"}
    if judge_of.get(t):
        stats["judge_accuracy"] = judge_of[t]
    actor = _Generator(cfg, str(model_t))
    stats["prompts_stage"] = generate_prompts(cfg, rd, t, seeds, actor)
    stats["respond_stage"] = rd.stage(
        f"iter_{t}/respond", stage_fingerprint(cfg, "respond"), [d / "responses.jsonl"],
        lambda: run_respond(d / "prompts.jsonl", d / "responses.jsonl", actor.get(), cfg.respond,
                            seed=cfg.seed, chunk_prompts=cfg.backend.chunk_prompts),
    )
    stats["judge_stage"] = rd.stage(
        f"iter_{t}/judge", stage_fingerprint(cfg, "judge"), [d / "judgements.jsonl"],
        lambda: run_judge(d / "responses.jsonl", d / "judgements.jsonl", actor.get(), cfg.judge,
                          seed=cfg.seed, chunk_prompts=cfg.backend.chunk_prompts),
    )
    if cfg.meta.enabled:  # M_t, as meta-judge, compares its own judgements: pairs for the judge
        # meta.judge_pair_share only mixes the pairs for DPO: it is part of DPO's fingerprint, not this stage's
        unmixed = cfg.model_copy(update={"meta": cfg.meta.model_copy(
            update={"judge_pair_share": type(cfg.meta).model_fields["judge_pair_share"].default})})
        stats["metajudge_stage"] = rd.stage(
            f"iter_{t}/metajudge", stage_fingerprint(unmixed, "metajudge"), [d / "judge_pairs.jsonl"],
            lambda: run_metajudge(d / "responses.jsonl", d / "judgements.jsonl", d / "judge_pairs.jsonl", actor.get(),
                                  cfg.meta, cfg.judge, seed=cfg.seed),
        )
    actor.close()  # free the generation model before training
    policy_inputs = run_policy_stages(cfg, rd, t, actor, stats)
    early = collapse_monitors({"score_histogram": stats["judge_stage"].get("score_histogram")})
    for warning in collapse_warnings(early, None):  # said now: with every answer at 5 there may be no pairs
        print(f"srlm: warning: iteration {t}: {warning}", flush=True)
    stats["pairs_stage"] = rd.stage(
        f"iter_{t}/pairs", stage_fingerprint(cfg, "pairs"), [d / "pairs.jsonl"],
        lambda: run_pairs(d / "responses.jsonl", d / "judgements.jsonl", d / "pairs.jsonl", cfg.pairs, seed=cfg.seed,
                          **policy_inputs),
    )
    if stats["pairs_stage"]["pairs"] == 0:
        raise SrlmError(
            f"iteration {t} produced zero preference pairs ({stats['pairs_stage']['dropped']}); not training on "
            f"nothing. Look at {d / 'judgements.jsonl'}: a judge that never parses or always gives the same "
            "score needs more EFT training (sft.epochs, more EFT data) or more candidates (respond.num_samples)."
        )
    check_judge_signal(cfg, t, judge_of.get(t))
    train_next_model(cfg, rd, t, stats)
    if cfg.eval.heldout_prompts or cfg.eval.judge_data or cfg.eval.ifeval_prompts or cfg.eval.harness_tasks:
        stats["eval"] = rd.stage(
            f"iter_{t}/eval", stage_fingerprint(cfg, "eval"), [d / "eval"],
            lambda: run_iteration_eval(cfg, str(model_next), str(model_t), d / "eval", m1=str(rd.model_dir(1)),
                                       answers_dir=rd.path("eval_answers")), side=True,
        )
        judge_of[t + 1] = stats["eval"].get("judge_accuracy")
    return iteration_row(stats, rd.seconds(f"iter_{t}/"))


def run_policy_stages(cfg: Config, rd: RunDir, t: int, actor: _Generator, stats: dict) -> dict:
    """What pairs.policy needs beyond M_t's judgements of its own answers, from iteration 2 on (in iteration 1
    M_t is M1 and there is no M_0): `anchored`, M1's answers to this iteration's prompts judged by M_t;
    `consistency_weighted`, M_t-1's judgements of M_t's answers. Returns the pair stage's extra inputs."""
    d = rd.iter_dir(t)
    chunk = cfg.backend.chunk_prompts
    if cfg.pairs.policy == "anchored" and t > 1:
        anchor = _Generator(cfg, str(rd.model_dir(1)))
        stats["anchor_respond_stage"] = rd.stage(
            f"iter_{t}/anchor_respond", stage_fingerprint(cfg, "anchor_respond"), [d / "anchor_responses.jsonl"],
            lambda: run_respond(d / "prompts.jsonl", d / "anchor_responses.jsonl", anchor.get(), cfg.respond,
                                seed=cfg.seed, chunk_prompts=chunk),
        )
        anchor.close()
        stats["anchor_judge_stage"] = rd.stage(
            f"iter_{t}/anchor_judge", stage_fingerprint(cfg, "anchor_judge"), [d / "anchor_judgements.jsonl"],
            lambda: run_judge(d / "anchor_responses.jsonl", d / "anchor_judgements.jsonl", actor.get(), cfg.judge,
                              seed=cfg.seed, chunk_prompts=chunk),
        )
        actor.close()
        return {"anchor_responses": d / "anchor_responses.jsonl", "anchor_judgements": d / "anchor_judgements.jsonl"}
    if cfg.pairs.policy == "consistency_weighted" and t > 1:
        previous = _Generator(cfg, str(rd.model_dir(t - 1)))
        stats["previous_judge_stage"] = rd.stage(
            f"iter_{t}/previous_judge", stage_fingerprint(cfg, "previous_judge"), [d / "previous_judgements.jsonl"],
            lambda: run_judge(d / "responses.jsonl", d / "previous_judgements.jsonl", previous.get(), cfg.judge,
                              seed=cfg.seed, chunk_prompts=chunk),
        )
        previous.close()
        return {"previous_judgements": d / "previous_judgements.jsonl"}
    return {}


def generate_prompts(cfg: Config, rd: RunDir, t: int, seeds: list[str], actor: _Generator) -> dict:
    """Iteration t's new prompts, few-shot from the seed prompts and those of earlier iterations, written by M_t
    (prompts.generator=current, the paper) or by another model, loaded for this stage only."""
    d = rd.iter_dir(t)
    earlier = [r["prompt"] for s in range(1, t) for r in iter_jsonl(rd.iter_dir(s) / "prompts.jsonl")]
    generator = actor if cfg.prompts.generator == "current" else _Generator(cfg, cfg.prompts.generator)
    stats = rd.stage(
        f"iter_{t}/prompts", stage_fingerprint(cfg, "prompts"), [d / "prompts.jsonl"],
        lambda: run_prompts(seeds, earlier, d / "prompts.jsonl", generator.get(), cfg.prompts,
                            seed=cfg.seed, iteration=t),
    )
    if generator is not actor:
        generator.close()
    return stats


def train_next_model(cfg: Config, rd: RunDir, t: int, stats: dict) -> None:
    """M_t+1 = DPO(M_t, reference M_t, iteration t's pairs), then, with eval.select_checkpoint, the checkpoint
    chosen by a judge in its place."""
    model_t, model_next, d = rd.model_dir(t), rd.model_dir(t + 1), rd.iter_dir(t)
    recover_model_dir(model_next)  # a selected checkpoint whose move into models/m{t+1} a kill interrupted
    # With selection on, models/m{t+1} may hold a selected checkpoint, not the final model: turning selection
    # off again must train again, so the setting is part of the DPO stage's fingerprint (only when on, so runs
    # without it keep theirs).
    selecting = cfg.eval.select_checkpoint
    # pairs.policy=consistency_weighted: this iteration's label smoothing comes from its pairs stage (the stages
    # before it are in the chain of fingerprints, so it needs no part in DPO's own).
    smoothing = stats["pairs_stage"].get("dpo_label_smoothing")
    dpo_cfg = cfg.dpo.model_copy(update={"label_smoothing": smoothing}) if smoothing is not None else cfg.dpo
    mixing = f"+judge_pair_share={cfg.meta.judge_pair_share}" if cfg.meta.enabled else ""
    stats["dpo_stage"] = rd.stage(
        f"iter_{t}/dpo", stage_fingerprint(cfg, "dpo") + ("+select" if selecting else "") + mixing,
        [model_next / "config.json"],
        lambda: _train_dpo(cfg, rd, model_t, training_pairs(cfg, rd, t), model_next, dpo_cfg),
    )
    if selecting:
        # Part of the main line: the checkpoint picked here is M_t+1, which everything after builds on.
        stats["selection"] = rd.stage(
            f"iter_{t}/select", selection_fingerprint(cfg), [d / "selection.json", model_next / "config.json"],
            lambda: run_selection(cfg, model_t, model_next, d),
        )
    # Which model this one was trained from and against: M_t for both (TRL's reference is the starting model).
    trained_on = "dpo_pairs.jsonl" if cfg.meta.enabled else "pairs.jsonl"  # see training_pairs
    cards.record_lineage(rd, f"m{t + 1}", model_t, model_t,
                         cards.data_record(f"iter_{t}/{trained_on}", str(d / trained_on)))


def training_pairs(cfg: Config, rd: RunDir, t: int) -> Path:
    """The pair file iteration t's DPO trains on: the actor's pairs, and with meta.enabled the judge's pairs mixed in
    (up to meta.judge_pair_share of the whole) as iter_t/dpo_pairs.jsonl."""
    d = rd.iter_dir(t)
    if not cfg.meta.enabled:
        return d / "pairs.jsonl"
    mix_pairs(d / "pairs.jsonl", d / "judge_pairs.jsonl", d / "dpo_pairs.jsonl", cfg.meta.judge_pair_share,
              seed=cfg.seed)
    return d / "dpo_pairs.jsonl"


def record_iteration(cfg: Config, rd: RunDir, summary: dict, row: dict) -> None:
    """An iteration's row with its collapse monitors, printed and written everywhere a user looks: the table on the
    terminal, summary.json, the model cards and the trackers."""
    row["monitors"] = collapse_monitors(row)
    first = summary["iterations"][0] if summary["iterations"] else row
    row["warnings"] = collapse_warnings(row["monitors"], first["monitors"])
    summary["iterations"].append(row)
    print_iteration_table(row)
    summary["seconds"] = round(rd.seconds(""), 1)
    write_json(rd.root / "summary.json", summary)
    write_cards(cfg, rd, summary)
    tracking.log_iteration(cfg.tracking, rd.root, row["iteration"], tracking.iteration_figures(row))  # step = iteration


def make_sft_baseline(cfg: Config, rd: RunDir, summary: dict) -> None:
    """The paper's comparison model: the same SFT on IFT only, no judge demonstrations, evaluated as M1 is."""
    baseline = rd.named_model_dir("sft_baseline")
    summary["sft_baseline"] = rd.stage(
        "sft_baseline", stage_fingerprint(cfg, "sft_baseline"), [baseline / "config.json"],
        lambda: _train_sft(cfg, rd, resolve_data_path(cfg.data.ift), None, baseline, stage="sft_baseline"), side=True,
    )
    evaluate_model(cfg, rd, summary, "sft_baseline")
    cards.record_lineage(rd, "sft_baseline", cfg.model.name_or_path, None, None)


def finish_run(cfg: Config, rd: RunDir, summary: dict, started: float) -> None:
    """The final summary, the model cards and the report; what the user needs to know is printed last."""
    summary["seconds"] = round(rd.seconds(""), 1)
    summary["final_model"] = str(rd.model_dir(cfg.loop.iterations + 1))
    beyond = [t for t in rd.iterations_on_disk() if t > cfg.loop.iterations]
    if beyond:
        # A finished run whose loop.iterations was lowered: the later iterations stay on disk, untouched, but are
        # not part of this run's summary. Say so in both places rather than let the summary look complete.
        summary["iterations_on_disk_not_in_summary"] = [f"iter_{t}" for t in beyond]
        print(f"srlm: note: {', '.join(f'iter_{t}' for t in beyond)} (and their models) are on disk from an earlier "
              f"run with more iterations; this summary covers loop.iterations={cfg.loop.iterations}, so its final "
              f"model is {summary['final_model']}", flush=True)
    write_json(rd.root / "summary.json", summary)
    write_cards(cfg, rd, summary)
    html_path, _ = write_report(rd.root)
    print(f"srlm: report {html_path}", flush=True)
    if hint := tracking.hint(cfg.tracking, rd.root):
        print(hint, flush=True)
    print(f"srlm: run finished in {time.perf_counter() - started:.0f} s this session; final model "
          f"{summary['final_model']}; summary {rd.root / 'summary.json'}", flush=True)


def write_cards(cfg: Config, rd: RunDir, summary: dict) -> None:
    """A model card (models/<name>/README.md) for every model of the run so far, with its figures."""
    for name in rd.manifest.get("lineage", {}):
        if (rd.named_model_dir(name) / "config.json").exists():
            cards.write_model_card(cfg, rd, name, summary)


def check_judge_signal(cfg: Config, t: int, accuracy: dict | None) -> None:
    """Say plainly when the judge that built iteration t's pairs (M_t) is no better than chance; with
    loop.require_judge_signal, stop before DPO trains on those pairs."""
    if accuracy is None or accuracy.get("judge_signal", "none") == "above chance":
        return
    measured = f"m{t}'s judge pairwise accuracy on {cfg.eval.judge_data}: {format_accuracy(accuracy)}"
    if cfg.loop.require_judge_signal:
        raise SrlmError(
            f"{measured}: the 95% interval does not lie above 0.5, so iteration {t}'s preference pairs are no better "
            "than chance; stopping before DPO (loop.require_judge_signal=true). The pairs are kept in "
            f"iter_{t}/pairs.jsonl. A better judge needs better EFT data or a stronger model; "
            "loop.require_judge_signal=false trains on them anyway."
        )
    print(f"srlm: warning: {measured}: the interval does not lie above 0.5, so iteration {t}'s preference pairs are "
          "no better than chance (loop.require_judge_signal=true stops here instead)", flush=True)
