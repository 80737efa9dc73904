"""What every `srlm` subcommand shares: the commands as data (`Command`, `arg`, `one_of`) and what registers them
(`add_commands`, `add_group`), the config arguments (`--recipe`/`--config` + key=value), the config they resolve to,
`--model`, the generation backend of a config, and printing a stage's stats."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


# -- commands as data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One `parser.add_argument(*flags, **options)` call, written down instead of made."""

    flags: tuple[str, ...]
    options: dict

    def add_to(self, parser) -> None:
        parser.add_argument(*self.flags, **self.options)


def arg(*flags: str, **options) -> Arg:
    """An argument of a `Command`: the same words as `add_argument`, e.g. arg("--out", required=True, help=...)."""
    return Arg(flags, options)


@dataclass(frozen=True)
class OneOf:
    """Arguments of which a command line may give at most one (argparse's mutually exclusive group)."""

    args: tuple[Arg, ...]

    def add_to(self, parser) -> None:
        group = parser.add_mutually_exclusive_group()
        for argument in self.args:
            argument.add_to(group)


def one_of(*args: Arg) -> OneOf:
    return OneOf(args)


@dataclass(frozen=True)
class Command:
    """One `srlm` subcommand: its name, the handler `main` calls with the parsed arguments, the help `srlm --help`
    lists it with, the description its own --help opens with, and its arguments in the order --help shows them."""

    name: str
    handler: Callable[[argparse.Namespace], int]
    help: str
    description: str
    args: tuple[Arg | OneOf, ...] = ()
    tracking: bool = False  # then --tracking-run-dir and --tracking-stage (add_tracking_args)
    config: bool = True  # last, --recipe/--config and key=value overrides (add_config_args)
    raw_description: bool = False  # the description keeps its line breaks (for example blocks)


def add_commands(subparsers: argparse._SubParsersAction, commands: tuple[Command, ...]) -> None:
    """Register each command of `commands` on `subparsers`, in order."""
    for command in commands:
        formatter = argparse.RawDescriptionHelpFormatter if command.raw_description else argparse.HelpFormatter
        parser = subparsers.add_parser(command.name, help=command.help, description=command.description,
                                       formatter_class=formatter)
        for argument in command.args:
            argument.add_to(parser)
        if command.tracking:
            add_tracking_args(parser)
        if command.config:
            add_config_args(parser)
        parser.set_defaults(func=command.handler)


def add_group(subparsers: argparse._SubParsersAction, name: str, *, help: str, description: str, dest: str,
              metavar: str, commands: tuple[Command, ...]) -> argparse.ArgumentParser:
    """A command whose work is done by subcommands of its own (`srlm data ...`, `srlm eval ...`); returns its parser."""
    group = subparsers.add_parser(name, help=help, description=description)
    add_commands(group.add_subparsers(dest=dest, metavar=metavar, required=True), commands)
    return group


# -- what the commands share -------------------------------------------------------------------------------------


def add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--recipe", help="a shipped recipe (see `srlm recipes`)")
    group.add_argument("--config", help="a YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. respond.num_samples=4 model.name_or_path=DIR (anywhere on the "
                        "command line)")


def config_from_args(args, extra: list[str] = ()):
    """The config a command asked for: --recipe or --config, then `extra` and the command line's key=value."""
    from srlm.config import load_config

    return load_config(args.recipe, args.config, [*extra, *args.overrides])


def model_override(args) -> list[str]:
    return [f"model.name_or_path={args.model}"] if getattr(args, "model", None) else []


def print_stats(stats: dict, stats_out: str | None = None) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch` every rank returns the same stats
        print(json.dumps(stats, indent=2))
        if stats_out:
            from srlm.io import write_json

            write_json(stats_out, stats)


def stage_tracking_of(cfg, args):
    """tracking.* for a training command: logs under <run dir>/tracking/<stage> (or tracking.logging_dir/<stage>),
    the run dir being --tracking-run-dir or the output's parent folder, the stage --tracking-stage or its name."""
    from srlm.tracking import stage_tracking

    out = Path(args.out)
    return stage_tracking(cfg.tracking, args.tracking_run_dir or out.parent, args.tracking_stage or out.name)


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-run-dir", help="with tracking.report_to: the run this stage's logs belong to (they "
                   "go under <it>/tracking unless tracking.logging_dir is set; default: the output's parent folder)")
    p.add_argument("--tracking-stage", help="with tracking.report_to: this stage's name in the tracker (default: "
                   "the output's folder name)")


def generation_backend(cfg):
    from srlm.backends import backend_for

    return backend_for(cfg, cfg.model.name_or_path)
