"""The `srlm data` subcommands: `oasst`, `eft`, `convert` and `decontaminate`.

`add_data_commands(subparsers)` registers them, as declared in `DATA_COMMANDS`, on the main CLI's subparsers. Each
handler takes the parsed arguments, prints what it did as a small table and returns the exit status; a `DataError`
is left to propagate, since the main CLI prints those as one-line messages. The library functions are imported
inside the handlers (they are cheap, but what they import later, `datasets`, `pyarrow`, `rouge_score`, is not), so
that `srlm --help` stays fast.
"""

from __future__ import annotations

import argparse
from contextlib import closing
from pathlib import Path
from typing import Iterable

# Cheap to import: these modules import only the standard library and srlm.io at module level.
from srlm.argtypes import fraction, non_negative_int, positive_int, threshold
from srlm.cli.common import Command, add_group, arg, config_from_args, generation_backend, model_override
from srlm.data.formats import FORMATS
from srlm.data.oasst import DEFAULT_IFT_SHARE_OF_RANKED


def _print_table(title: str, rows: Iterable[tuple[str, object]]) -> None:
    rows = list(rows)
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def _langs(text: str) -> tuple[str, ...] | None:
    if text.strip().lower() == "all":
        return None
    codes = tuple(code.strip() for code in text.split(",") if code.strip())
    if not codes:
        raise argparse.ArgumentTypeError("give language codes separated by commas (en,de) or 'all'")
    return codes


# --------------------------------------------------------------------------------------------------------------
# Handlers


def run_oasst(args: argparse.Namespace) -> int:
    from srlm.data.oasst import build_from_oasst

    counts = build_from_oasst(
        args.input,
        args.out,
        langs=args.langs,
        include_synthetic=args.include_synthetic,
        eft_eval_fraction=args.eval_fraction,
        ift_share_of_ranked=args.ift_share,
        seed=args.seed,
        limit=args.limit,
        split=args.split,
    )
    # Zero-count filters are noise in a terminal; counts.json keeps all of them.
    rows = [(name, value) for name, value in counts.items() if value or name in ("ift", "eft_train", "eft_eval")]
    _print_table(f"OpenAssistant -> {args.out} (all counts in counts.json)", rows)
    return 0


def run_eft(args: argparse.Namespace) -> int:
    from srlm.data.eft import counts_path_for, format_counts, run_data_eft

    cfg = config_from_args(args, model_override(args))
    # The teacher's name goes into the log's staleness key: an OpenAI-compatible server names its own weights.
    teacher = cfg.model.name_or_path
    if cfg.backend.name == "openai" and getattr(cfg.backend, "model_name", None):
        teacher = cfg.backend.model_name
    with closing(generation_backend(cfg)) as backend:
        counts = run_data_eft(
            args.source, args.out, backend, cfg.judge, seed=cfg.seed, teacher=teacher,
            max_per_score_share=args.max_per_score_share, limit=args.limit, chunk_groups=cfg.backend.chunk_prompts,
        )
    print(f"EFT {args.source} -> {args.out} (teacher {teacher}; counts in {counts_path_for(args.out)})")
    print(format_counts(counts))
    if not counts["examples"]:
        print("  warning: no example was kept; `srlm sft` cannot train on an empty EFT file")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from srlm.data.formats import read_records
    from srlm.io import write_jsonl

    result = read_records(args.input, kind=args.kind, format=args.format, split=args.split)
    written = write_jsonl(args.out, result.records)
    rows = [("format", result.format), ("kind", args.kind), ("written", written)]
    if result.skipped_empty:
        rows.append(("skipped (empty text)", result.skipped_empty))
    _print_table(f"{args.input} -> {args.out}", rows)
    if result.first_skipped:
        print(f"  first skipped: {result.first_skipped}")
    return 0


def default_report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.with_suffix('').name}.decontamination.json")


def run_decontaminate(args: argparse.Namespace) -> int:
    from srlm.data.decontaminate import decontaminate
    from srlm.data.formats import load_records
    from srlm.io import read_jsonl, write_json, write_jsonl

    records = read_jsonl(args.input, schema={args.field: str})
    eval_prompts: list[dict] = []
    for eval_source in args.eval:
        eval_prompts.extend(load_records(eval_source, kind="prompts", split=args.split))
    kept, report = decontaminate(
        records, eval_prompts, field=args.field, near_threshold=args.threshold, ngram_size=args.ngram or None
    )
    write_jsonl(args.out, kept)
    report_path = Path(args.report) if args.report else default_report_path(args.out)
    write_json(report_path, {"input": str(args.input), "eval": [str(e) for e in args.eval], **report})
    rows = [
        ("records", report["records"]),
        ("eval prompts", report["eval_prompts"]),
        ("removed: exact", report["exact"]),
        ("removed: near (ROUGE-L)", report["near_rouge_l"]),
        ("removed: near (n-gram)", report["near_ngram"]),
        ("kept", report["kept"]),
    ]
    _print_table(f"{args.input} -> {args.out} (matches listed in {report_path})", rows)
    return 0


# --------------------------------------------------------------------------------------------------------------
# Parsers

_OASST_HELP = """\
Build the paper's seed data from OpenAssistant trees (Yuan et al. 2024, section 2; Li et al. 2023 selection).

Writes into --out:
  ift.jsonl               first user turn + its rank-0 human reply   {prompt, response, id, source, lang}
  eft_source_train.jsonl  first user turns with >= 2 human-ranked replies   {group_id, prompt, replies}
  eft_source_eval.jsonl   the same, held out to measure judge accuracy (no prompt shared with train or IFT)
  counts.json             how many messages, prompts and replies each filter removed

INPUT is a tree export (*.trees.jsonl[.gz]), a flat message table (JSONL or Parquet, the
oasst1/oasst2 columns), or a Hugging Face Hub id such as OpenAssistant/oasst1 (needs network).

examples:
  srlm data oasst 2023-04-12_oasst_ready.trees.jsonl.gz --out data/oasst
  srlm data oasst OpenAssistant/oasst1 --out data/oasst --langs en,de --eval-fraction 0.2
"""

_EFT_HELP = """\
Build LLM-as-a-Judge demonstrations (EFT) from human-ranked groups (Yuan et al. 2024, section 2.2):
  1. a teacher judges every reply with the judge template (judge.num_samples samples; the first
     with a parsable score is the demonstration), all texts logged; resumable;
  2. a group is kept only if the teacher's scores order its replies as the humans did: a better
     human rank needs a strictly higher score (equal human ranks: no constraint; equal scores
     for different ranks: disagreement); a group with an unparsable reply is dropped (no_score);
  3. no score value may exceed --max-per-score-share of the kept examples (random, seeded drops).

The teacher is model.name_or_path of the config (--model overrides it); in the paper it is the
SFT baseline, trained on IFT only (`srlm sft --no-eft`). Any backend works (backend.name=fake).

Writes OUT {prompt, response, judgement, score, group_id, reply_id} (the EFT schema of `srlm sft`),
OUT's stem + .judgements.jsonl (every judgement) and + .counts.json (kept/dropped, histograms).

examples:
  srlm data eft --source data/oasst/eft_source_train.jsonl --out data/oasst/eft_train.jsonl \\
      --recipe oasst --model data/oasst/sft_baseline
  srlm data eft --source eft_source_train.jsonl --out eft.jsonl backend.name=fake --limit 10
"""

_CONVERT_HELP = """\
Convert instruction data to srlm's JSONL schemas:
  --kind ift      {"prompt", "response"} (+ id, source, lang when present)
  --kind prompts  {"prompt"} (+ id when present)

Formats (detected from the first record with --format auto):
  srlm           prompt, response
  alpaca         instruction, input, output           (JSON array or JSONL)
  alpaca_eval    instruction, output, generator/dataset (AlpacaEval outputs)
  sharegpt       conversations: [{from, value}]       first human turn + the reply after it
  openai         messages: [{role, content}]          first user message + the reply after it
  prompts        prompt | instruction | a bare JSON string per line
  self_instruct  instruction, instances: [{input, output}]
  mt_bench       turns: [...]                         first turn (prompts only)
INPUT may be JSONL (optionally .gz), a JSON array, Parquet, or a Hugging Face Hub id.

examples:
  srlm data convert alpaca_data.json --out ift.jsonl --kind ift
  srlm data convert question.jsonl --out mt_bench_prompts.jsonl --kind prompts
"""

_DECONTAMINATE_HELP = """\
Remove records whose prompt matches an evaluation prompt: exactly (ignoring case, spacing and
punctuation) or nearly (ROUGE-L F1 >= --threshold, or a shared run of --ngram words).

INPUT is any srlm JSONL with a prompt field (IFT, prompts, EFT source groups); other fields are kept.
Each --eval file is read in any format `srlm data convert` knows (AlpacaEval JSON, MT-Bench, ...).
Which eval prompt each removed record matched is written to --report.

example:
  srlm data decontaminate data/oasst/ift.jsonl --eval alpaca_eval.json --eval question.jsonl \\
      --out data/oasst/ift.clean.jsonl
"""


# `srlm data COMMAND`, in the order `srlm data --help` lists them (config=False: no --recipe/--config/key=value).
DATA_COMMANDS = (
    Command(
        "oasst", run_oasst, config=False, raw_description=True,
        help="OpenAssistant -> IFT + ranked EFT groups",
        description=_OASST_HELP,
        args=(
            arg("input", metavar="INPUT", help="tree export, flat message table (JSONL/Parquet) or Hub id"),
            arg("--out", required=True, metavar="DIR", help="folder for the output files"),
            arg("--langs", type=_langs, default=("en",), metavar="CODES",
                help="first-turn languages, comma-separated, or 'all' (default: en)"),
            arg("--include-synthetic", action="store_true", help="also use model-written (synthetic) messages"),
            arg("--eval-fraction", type=fraction, default=0.25, metavar="F",
                help="share of EFT prompts held out for eval (default: 0.25)"),
            arg("--ift-share", type=fraction, default=DEFAULT_IFT_SHARE_OF_RANKED, metavar="F",
                help="share of the prompts usable for both IFT and EFT that go to IFT "
                     "(default: %(default)s, near the paper's 3,200 IFT : 2,171 EFT)"),
            arg("--seed", type=int, default=0, metavar="N",
                help="seed of the IFT/EFT and train/eval splits (default: 0)"),
            arg("--limit", type=positive_int, default=None, metavar="N",
                help="use only the first N trees (quick runs)"),
            arg("--split", default=None, help="Hub split to read (default: all splits)"),
        ),
    ),
    Command(
        "eft", run_eft, raw_description=True,
        help="teacher-judged, human-agreeing judge demonstrations (EFT) from ranked groups",
        description=_EFT_HELP,
        args=(
            arg("--source", required=True, metavar="FILE",
                help="ranked groups from `srlm data oasst` (eft_source_train.jsonl)"),
            arg("--out", required=True, metavar="FILE", help="output EFT JSONL"),
            arg("--model", default=None, metavar="TEACHER",
                help="teacher model: hub id, local directory, a .gguf file or 'embedded' "
                "(default: model.name_or_path)"),
            # The default is srlm.data.eft.DEFAULT_MAX_PER_SCORE_SHARE, written out so `srlm --help` need not import
            # it.
            arg("--max-per-score-share", type=threshold, default=0.4, metavar="F",
                help="most share of the kept examples one score value may have; 1 = no rebalancing (default: 0.4)"),
            arg("--limit", type=positive_int, default=None, metavar="N",
                help="use only the first N groups (quick runs)"),
        ),
    ),
    Command(
        "convert", run_convert, config=False, raw_description=True,
        help="convert Alpaca/ShareGPT/OpenAI/... to srlm JSONL",
        description=_CONVERT_HELP,
        args=(
            arg("input", metavar="INPUT", help="data file or Hub id"),
            arg("--out", required=True, metavar="FILE", help="output JSONL"),
            arg("--kind", required=True, choices=("ift", "prompts"), help="prompt/response pairs or prompts only"),
            arg("--format", default="auto", choices=("auto", *FORMATS),
                help="input format (default: auto, detected from the first record)"),
            arg("--split", default="train", help="Hub split to read (default: train)"),
        ),
    ),
    Command(
        "decontaminate", run_decontaminate, config=False, raw_description=True,
        help="drop records whose prompt matches an evaluation prompt",
        description=_DECONTAMINATE_HELP,
        args=(
            arg("input", metavar="INPUT", help="srlm JSONL whose records have a prompt field"),
            arg("--eval", action="append", required=True, metavar="FILE", help="evaluation prompts (repeatable)"),
            arg("--out", required=True, metavar="FILE", help="output JSONL with the kept records"),
            arg("--threshold", type=threshold, default=0.8, metavar="T",
                help="ROUGE-L F1 at or above which a prompt is a near match (default: 0.8)"),
            arg("--ngram", type=non_negative_int, default=13, metavar="N",
                help="a shared run of N words is also a near match; 0 turns it off (default: 13)"),
            arg("--field", default="prompt", help="the record field holding the prompt (default: prompt)"),
            arg("--report", default=None, metavar="FILE",
                help="where to write the matches (default: OUT's name + .decontamination.json)"),
            arg("--split", default="train", help="Hub split for --eval ids (default: train)"),
        ),
    ),
)


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `data` and its subcommands on the main CLI's `subparsers`; returns the `data` parser."""
    return add_group(subparsers, "data", help="build, convert and decontaminate seed data",
                     description="Prepare seed data: build IFT/EFT from OpenAssistant, convert common formats, "
                     "decontaminate.", dest="data_command", metavar="COMMAND", commands=DATA_COMMANDS)
