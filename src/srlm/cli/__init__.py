"""The `srlm` command line: the loop (`srlm run`), each stage alone, data builders and evaluation.

Every command that reads settings takes `--recipe NAME` or `--config FILE` plus `key=value` overrides, resolved by
`srlm.config.load_config`, so a stage run alone behaves exactly as it does inside the loop.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from srlm import __version__
from srlm.cli.common import (Command, add_commands, arg, config_from_args, generation_backend, model_override,
                             one_of, print_stats, stage_tracking_of)
from srlm.errors import SrlmError

RUN_HELP = """Run the whole self-rewarding loop: SFT (M1), then loop.iterations x (prompts, respond, judge, pairs, DPO).
Rerunning the same command on the same run directory resumes where it stopped; on a finished run it does nothing."""


# -- command handlers --------------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from srlm.loop import run_loop

    if not args.recipe and not args.config:
        raise SrlmError("srlm run needs --recipe NAME or --config FILE (try --recipe quickstart)")
    run_loop(config_from_args(args), args.run_dir)
    return 0


def cmd_recipes(args) -> int:
    from srlm.config import list_recipes, recipe_path

    for name, description in list_recipes().items():
        print(f"{name:14s} {description}")
        if args.verbose:
            print(f"{'':14s} {recipe_path(name)}")
    return 0


def cmd_config(args) -> int:
    from srlm.config import describe_keys

    if args.keys:
        for key, default, description in describe_keys():
            print(f"{key:32s} {default:14s} {description}")
        return 0
    import yaml

    print(yaml.safe_dump(config_from_args(args).model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_sft(args) -> int:
    from srlm.loop import resolve_data_path
    from srlm.stages.sft import run_sft

    cfg = config_from_args(args, model_override(args))
    eft = None if args.no_eft else resolve_data_path(args.eft or cfg.data.eft)
    stats = run_sft(cfg.model.name_or_path, resolve_data_path(args.ift or cfg.data.ift), eft, Path(args.out), cfg.sft,
                    seed=cfg.seed, judge_template_file=cfg.judge.template_file, max_ift_examples=cfg.data.max_ift_examples,
                    max_eft_examples=cfg.data.max_eft_examples, model=cfg.model, tracking=stage_tracking_of(cfg, args))
    print_stats(stats, args.stats_out)
    return 0


def cmd_train_judge(args) -> int:
    from srlm.loop import resolve_data_path
    from srlm.stages.train_judge import run_train_judge

    cfg = config_from_args(args, model_override(args))
    pairs = args.pairs or cfg.judge_training.pairs
    if not pairs:
        raise SrlmError("train-judge needs human preference data: --pairs FILE (or judge_training.pairs=...), "
                        "e.g. builtin:hh_eft")
    stats = run_train_judge(cfg.model.name_or_path, resolve_data_path(pairs), Path(args.out), cfg.judge_training,
                            seed=cfg.seed, judge_template_file=cfg.judge.template_file, model=cfg.model)
    print_stats(stats, args.stats_out)
    print(f"srlm: judge it with judge.method=direct judge.num_samples=1 (the prompt it was trained on), e.g. "
          f"srlm eval judge --model {args.out} --data builtin:hh_test --out judge.json judge.method=direct "
          "judge.num_samples=1")
    return 0


def cmd_push(args) -> int:
    from srlm.hub import push_model

    model_dir = Path(args.run_dir) / "models" / args.model
    if not model_dir.is_dir():
        available = sorted(p.name for p in (Path(args.run_dir) / "models").glob("*") if p.is_dir())
        raise SrlmError(f"{model_dir}: no such model in the run (models there: {', '.join(available) or 'none'})")
    url = push_model(model_dir, args.repo_id, private=args.private)
    print(f"srlm: pushed {model_dir} with its model card to {args.repo_id}: {url}")
    return 0


def cmd_prompts(args) -> int:
    from srlm.io import iter_jsonl
    from srlm.stages.prompts import run_prompts

    cfg = config_from_args(args, model_override(args))
    seeds = [r["prompt"].strip() for r in iter_jsonl(args.seed_prompts, {"prompt": str})]
    earlier = [r["prompt"].strip() for pool in args.pool for r in iter_jsonl(pool, {"prompt": str})]
    stats = run_prompts(seeds, earlier, Path(args.out), generation_backend(cfg), cfg.prompts, seed=cfg.seed,
                        iteration=args.iteration)
    print_stats(stats)
    return 0


def cmd_respond(args) -> int:
    from srlm.stages.respond import run_respond

    cfg = config_from_args(args, model_override(args))
    stats = run_respond(Path(args.prompts), Path(args.out), generation_backend(cfg), cfg.respond, seed=cfg.seed,
                        chunk_prompts=cfg.backend.chunk_prompts)
    print_stats(stats)
    return 0


def cmd_judge(args) -> int:
    from srlm.stages.judge import run_judge

    cfg = config_from_args(args, model_override(args))
    stats = run_judge(Path(args.responses), Path(args.out), generation_backend(cfg), cfg.judge, seed=cfg.seed,
                      chunk_prompts=cfg.backend.chunk_prompts)
    print_stats(stats)
    return 0


def cmd_metajudge(args) -> int:
    from srlm.stages.metajudge import run_metajudge

    cfg = config_from_args(args, model_override(args))
    stats = run_metajudge(Path(args.responses), Path(args.judgements), Path(args.out), generation_backend(cfg),
                          cfg.meta, cfg.judge, seed=cfg.seed)
    print_stats(stats)
    return 0


def cmd_pairs(args) -> int:
    from srlm.stages.pairs import run_pairs

    cfg = config_from_args(args)
    anchored = (args.anchor_responses, args.anchor_judgements)
    if cfg.pairs.policy == "anchored" and None in anchored and anchored != (None, None):
        raise SrlmError("pairs.policy=anchored takes --anchor-responses and --anchor-judgements together (the anchor "
                        "model's answers and the judge's judgements of them), or neither")
    inputs = {"anchor_responses": args.anchor_responses, "anchor_judgements": args.anchor_judgements,
              "previous_judgements": args.previous_judgements}
    print_stats(run_pairs(Path(args.responses), Path(args.judgements), Path(args.out), cfg.pairs, seed=cfg.seed,
                          **{k: Path(v) for k, v in inputs.items() if v}))
    return 0


def cmd_dpo(args) -> int:
    from srlm.stages.dpo import run_dpo

    cfg = config_from_args(args, model_override(args))
    stats = run_dpo(cfg.model.name_or_path, Path(args.pairs), Path(args.out), cfg.dpo, seed=cfg.seed, model=cfg.model,
                    tracking=stage_tracking_of(cfg, args))
    print_stats(stats, args.stats_out)
    return 0


# -- the commands: what each takes, as data, and the parser built from them ---------------------------------------
# Each Command names its handler above; tracking=True adds --tracking-run-dir/--tracking-stage, and every command but
# those with config=False ends with --recipe/--config and key=value overrides (srlm.cli.common).

STATS_OUT = arg("--stats-out", help="also write the training stats (JSON) to this file")

# The loop and its stages, in the order `srlm --help` lists them; `srlm data`, `srlm eval` and `srlm report` follow.
COMMANDS = (
    Command(
        "run", cmd_run,
        help="the whole loop: SFT, then iterations of prompts/respond/judge/pairs/DPO",
        description=RUN_HELP,
        args=(
            arg("--run-dir", required=True, help="folder for every output of the run (created if missing)"),
        ),
    ),
    Command(
        "recipes", cmd_recipes, config=False,
        help="list the shipped recipes",
        description="List the shipped recipes.",
        args=(
            arg("-v", "--verbose", action="store_true", help="also print each recipe's file path"),
        ),
    ),
    Command(
        "config", cmd_config,
        help="print a resolved config, or every config key with its default and meaning",
        description="Print the fully resolved config (recipe + overrides), or with --keys every key.",
        args=(
            arg("--keys", action="store_true", help="list every config key, its default and what it does"),
        ),
    ),
    Command(
        "sft", cmd_sft, tracking=True,
        help="supervised fine-tuning on IFT (+ EFT) data: gives M1 (or the SFT baseline)",
        description="SFT with the loss on response tokens only. IFT: {prompt, response}; EFT: {prompt, response, "
        "judgement ending in 'Score: N'}. --no-eft trains the IFT-only baseline.",
        args=(
            arg("--ift", help="IFT JSONL (default: data.ift of the config, the shipped demo set)"),
            one_of(arg("--eft", help="EFT JSONL (default: data.eft of the config)"),
                   arg("--no-eft", action="store_true", help="IFT only: the paper's SFT baseline")),
            arg("--model", help="base model: hub id, local directory, a .gguf file or 'embedded' "
                "(default: model.name_or_path)"),
            arg("--out", required=True, help="output model directory"),
            STATS_OUT,
        ),
    ),
    Command(
        "push", cmd_push, config=False,
        help="upload one model of a run, with its model card, to the Hugging Face Hub",
        description="Upload RUN_DIR/models/MODEL (weights, config, tokenizer and README.md, the card srlm wrote) to "
        "the Hub with huggingface_hub's upload_folder. Needs a token (HF_TOKEN or `hf auth login`); offline it stops "
        "at once.",
        args=(
            arg("run_dir", metavar="RUN_DIR", help="a run directory written by `srlm run`"),
            arg("--model", required=True, help="the model's folder name under RUN_DIR/models, e.g. m3"),
            arg("--repo-id", required=True, help="the Hub repository, e.g. your-name/smollm2-135m-srlm-m3"),
            arg("--private", action="store_true", help="create the repository as private"),
        ),
    ),
    Command(
        "train-judge", cmd_train_judge,
        help="train a model's judge on human preference pairs (Bradley-Terry on its expected score; not in the "
        "paper)",
        description="Pairwise judge training: for each human pair the model's expected score (judge.method=direct's "
        "prompt) of the preferred reply is pushed above the other's. Judge the result with judge.method=direct "
        "judge.num_samples=1.",
        args=(
            arg("--model", help="the model whose judge to train, e.g. M1 (default: model.name_or_path)"),
            arg("--pairs", help="preference pairs, HH-RLHF dialogues, OASST trees or ranked groups "
                "(default: judge_training.pairs), e.g. builtin:hh_eft"),
            arg("--out", required=True, help="output model directory"),
            STATS_OUT,
        ),
    ),
    Command(
        "prompts", cmd_prompts,
        help="generate new prompts by few-shot self-instruction, with Self-Instruct filters",
        description="Few-shot self-instruction (6 seed + 2 generated demos, T 0.6, top-p 0.9) with ROUGE-L, length "
        "and keyword filters. Writes OUT and OUT's .attempts.jsonl log.",
        args=(
            arg("--seed-prompts", required=True, help="JSONL with a 'prompt' field (e.g. IFT data)"),
            arg("--pool", action="append", default=[], help="earlier generated prompts (JSONL); repeatable"),
            arg("--iteration", type=int, default=1, help="iteration number recorded in each prompt (default 1)"),
            arg("--model", help="generator model (default: model.name_or_path)"),
            arg("--out", required=True, help="output prompts JSONL"),
        ),
    ),
    Command(
        "respond", cmd_respond,
        help="sample N candidate responses per prompt",
        description="N candidates per prompt (respond.num_samples, default 4; T 0.7, top-p 0.9). Resumable: rerun "
        "the same command after an interruption.",
        args=(
            arg("--prompts", required=True, help="JSONL with a 'prompt' field ('prompt_id' optional)"),
            arg("--model", help="model (default: model.name_or_path)"),
            arg("--out", required=True, help="output responses JSONL"),
        ),
    ),
    Command(
        "judge", cmd_judge,
        help="score each response with the additive 5-point judge, K samples averaged",
        description="K judgements per response (judge.num_samples, default 3), parse failures kept as missing "
        "values, parse rate reported. Resumable.",
        args=(
            arg("--responses", required=True, help="responses JSONL from `srlm respond`"),
            arg("--model", help="judge model (default: model.name_or_path)"),
            arg("--out", required=True, help="output judgements JSONL"),
        ),
    ),
    Command(
        "metajudge", cmd_metajudge,
        help="the model judges its own judgements: judge preference pairs (Meta-Rewarding)",
        description="Every two parsed judgements of a response compared in both orders by the meta-judge (meta.*), "
        "position bias weighted out (meta.method=direct: the verdict read from p(A) vs p(B), averaged over both "
        "orders); the better and worse judgement become a pair in TRL's format. Resumable.",
        args=(
            arg("--responses", required=True, help="responses JSONL from `srlm respond`"),
            arg("--judgements", required=True, help="judgements JSONL from `srlm judge` (two or more per response)"),
            arg("--model", help="meta-judge model (default: model.name_or_path)"),
            arg("--out", required=True, help="output judge pairs JSONL"),
        ),
    ),
    Command(
        "pairs", cmd_pairs,
        help="best vs worst response per prompt, ties dropped: DPO pairs",
        description="One pair per prompt (highest vs lowest mean score); ties and prompts with fewer than 2 scored "
        "responses dropped and counted; optional pairs.min_score_gap and pairs.length_control_rho. Output is TRL's "
        "conversational preference format.",
        args=(
            arg("--responses", required=True, help="responses JSONL"),
            arg("--judgements", required=True, help="judgements JSONL"),
            arg("--out", required=True, help="output pairs JSONL"),
            arg("--anchor-responses", help="pairs.policy=anchored: the anchor model's (M1's) responses to the same "
                "prompts, the rejected side"),
            arg("--anchor-judgements", help="pairs.policy=anchored: the judge's judgements of --anchor-responses"),
            arg("--previous-judgements", help="pairs.policy=consistency_weighted: the previous model's judgements "
                "of the same responses"),
        ),
    ),
    Command(
        "dpo", cmd_dpo, tracking=True,
        help="DPO from a model with itself as reference: M_t -> M_t+1",
        description="DPO (beta 0.1) with the starting model as reference; saves a full checkpoint.",
        args=(
            arg("--pairs", required=True, help="pairs JSONL from `srlm pairs`"),
            arg("--model", help="M_t (default: model.name_or_path)"),
            arg("--out", required=True, help="output model directory (M_t+1)"),
            STATS_OUT,
        ),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srlm",
        description="Self-Rewarding Language Models: a model that trains on its own judgement (Yuan et al., 2024).",
        epilog="Start with: srlm run --recipe quickstart --run-dir runs/quickstart",
    )
    parser.add_argument("--version", action="version", version=f"srlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(sub, COMMANDS)
    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub) -> None:
    """Command groups that live beside the stages (data builders, evaluation, report)."""
    from srlm.cli.data import add_data_commands
    from srlm.cli.evaluation import add_eval_commands

    add_data_commands(sub)
    add_eval_commands(sub)


# Options that name files or folders a command reads, and those it writes (attribute names of the parsed args).
INPUT_ARGS = ("prompts", "responses", "judgements", "anchor_responses", "anchor_judgements",
              "previous_judgements", "pairs", "ift", "eft", "seed_prompts", "pool", "data", "answers",
              "reference", "outputs_a", "outputs_b", "source", "input", "eval", "model", "model_a", "model_b",
              "judge_model", "set", "config", "template")
OUTPUT_ARGS = ("out", "stats_out", "report")
# How each command writes --out: "dir" a folder replaced whole (a checkpoint), "workdir" a folder written into;
# every other --out is a file.
OUT_KINDS = {"cmd_sft": "dir", "cmd_dpo": "dir", "run_oasst": "workdir"}


POSITIONAL_ARGS = {"input": "INPUT"}  # inputs given without a flag


def _flag(name: str) -> str:
    return POSITIONAL_ARGS.get(name) or "--" + name.replace("_", "-")


def _side_outputs(args, out: Path) -> list[Path]:
    """Files a command writes beside --out, under names derived from it."""
    if args.command == "prompts":
        return [out.with_name(out.stem + ".attempts.jsonl")]
    if args.command == "eval" and getattr(args, "eval_command", None) in ("judge", "winrate", "grade", "ifeval"):
        from srlm.evaluation.judge_eval import items_path_for

        return [items_path_for(out)]
    if args.command == "data" and getattr(args, "data_command", None) == "eft":
        from srlm.data.eft import counts_path_for, log_path_for

        return [log_path_for(out), counts_path_for(out)]
    if args.command == "data" and getattr(args, "data_command", None) == "decontaminate" and not args.report:
        from srlm.cli.data import default_report_path

        return [default_report_path(out)]
    return []


def _same_or_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_paths(args) -> None:
    """Before a command does anything: each output can be written, and none of them is one of its inputs.

    An output equal to an input would overwrite the data being read (`--prompts p.jsonl --out p.jsonl`); a folder
    output that is replaced whole (`srlm sft`/`srlm dpo --out`) must not hold an input either (`--model m2 --out m2`).
    """
    from srlm.io import check_output_path

    inputs: list[tuple[str, Path]] = []
    for name in INPUT_ARGS:
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and value and os.path.exists(value):
                inputs.append((_flag(name), Path(value).resolve()))
    outputs: list[tuple[str, Path, str]] = []
    for name in OUTPUT_ARGS:
        value = getattr(args, name, None)
        if value is None or not isinstance(value, str):
            continue
        kind = OUT_KINDS.get(getattr(args.func, "__name__", ""), "file") if name == "out" else "file"
        path = check_output_path(value, what=_flag(name), kind=kind)
        outputs.append((_flag(name), path, kind))
        if name == "out":
            outputs.extend((f"the file {_flag(name)} {path} writes beside it", side, "file")
                           for side in _side_outputs(args, path))
    for flag, path, kind in outputs:
        resolved = path.resolve()
        for in_flag, in_path in inputs:
            clash = _same_or_inside(in_path, resolved) if kind == "dir" else in_path == resolved
            if clash:
                how = "is" if in_path == resolved else "would replace the folder holding"
                raise SrlmError(f"{path}: {flag} {how} the input {in_flag} {in_path}; srlm never overwrites what "
                                "it reads: choose another output path")
    seen: dict[Path, str] = {}
    for flag, path, _kind in outputs:
        resolved = path.resolve()
        if resolved in seen:
            raise SrlmError(f"{path}: {flag} and {seen[resolved]} name the same file; give them different paths")
        seen[resolved] = flag


def _split_overrides(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse the command line, taking key=value overrides wherever they stand, also between options."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        settings = [e for e in extras if "=" in e and not e.startswith("-")]
        rest = [e for e in extras if e not in settings]
        if rest or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(rest or extras)}")
        args.overrides = [*(args.overrides or []), *settings]
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _split_overrides(build_parser(), argv)
    try:
        check_paths(args)
        return args.func(args)
    except SrlmError as exc:
        print(f"srlm: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The last resort for a file problem that no check above foresaw (a disk that filled up, a folder that went
        # read-only mid-run): the path and the reason, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"srlm: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("srlm: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
