"""What every `srlm` subcommand shares: the config arguments (`--recipe`/`--config` + key=value), the config they
resolve to, `--model`, the generation backend of a config, and printing a stage's stats."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


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
