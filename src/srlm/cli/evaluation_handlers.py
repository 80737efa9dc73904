"""What the `srlm eval` subcommands and `srlm report` do: one handler each (`cmd_eval_judge`, `cmd_eval_winrate`,
`cmd_eval_generate`, `cmd_eval_grade`, `cmd_eval_ifeval`, `cmd_eval_harness`, `cmd_report`), called by the main CLI
with the arguments `srlm.cli.evaluation` declares.

Handlers print a small table, write their files and return the exit status; a `SrlmError` propagates to the main
CLI, which prints it and exits with 2. Library code is imported inside the handlers so `srlm --help` stays fast.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path


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
    with closing(_backend(cfg, args.model)) as backend:
        metrics, items = evaluate_judge(groups, backend, cfg.judge, seed=cfg.seed,
                                        bootstrap_samples=args.bootstrap_samples)
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
    with closing(_backend(cfg, args.judge_model)) as judge:
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
    with closing(_backend(cfg, model)) as backend:
        return [rec["answers"][0] for rec in generate_answers(items, backend, seed=cfg.seed, sampling_for=sampling_for)]


def cmd_eval_generate(args) -> int:
    from srlm.evaluation.prompt_sets import default_sampling, generate_answers, load_prompt_set, write_answers

    cfg = _config(args)
    prompt_set = load_prompt_set(args.set, args.data, limit=args.limit)
    sampling_for = default_sampling(prompt_set.name, temperature=args.temperature, top_p=cfg.respond.top_p,
                                    max_new_tokens=args.max_new_tokens or cfg.respond.max_new_tokens)
    with closing(_backend(cfg, args.model)) as backend:
        records = generate_answers(prompt_set.items, backend, seed=cfg.seed, sampling_for=sampling_for)
    generator = args.generator or _model_name(args.model, cfg)
    path = write_answers(args.out, prompt_set, records, generator)
    turns = sum(len(r["answers"]) for r in records)
    cut = sum(1 for r in records for f in r["finish_reasons"] if f == "length")
    print(f"answered {len(records)} questions ({turns} turns) of {prompt_set.name} {prompt_set.source} with "
          f"{generator}; {cut} answers cut at max_new_tokens")
    print(f"wrote {path}")
    return 0


def cmd_eval_grade(args) -> int:
    from srlm.backends import Sampling
    from srlm.errors import SrlmError
    from srlm.evaluation.judge_eval import items_path_for
    from srlm.evaluation.grading import (
        format_grade_table,
        grade_answers,
        load_reference_answers,
        make_grader,
        match_references,
    )
    from srlm.evaluation.prompt_sets import read_answers
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
    with closing(_backend(cfg, args.judge_model)) as backend:
        metrics, items = grade_answers(answered, backend, grader, seed=cfg.seed, sampling=sampling,
                                       references=references)
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
    with closing(_backend(cfg, args.model)) as backend:
        metrics, records = evaluate_ifeval(items, backend, max_new_tokens=args.max_new_tokens or IFEVAL_MAX_NEW_TOKENS,
                                           seed=cfg.seed, bootstrap_samples=args.bootstrap_samples)
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


def cmd_report(args) -> int:
    from srlm.report import write_report

    html_path, md_path = write_report(args.run_dir)
    print(f"wrote {html_path}\nwrote {md_path}")
    return 0
