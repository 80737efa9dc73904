"""Stage `eval` inside `srlm run`: how each new model compares with earlier ones, how good its judge is, and how
well it follows verifiable instructions.

After SFT (for M1, for the SFT baseline when trained, and for the base model with `loop.eval_base`) and after
iteration t has produced M_t+1:
- the judge's agreement with human preferences (`eval.judge_data`: pairwise accuracy, 5-best, exact match,
  Spearman, Kendall tau with 95% intervals, plus the length baseline; paper section 6.5), so a run reports M1, M2,
  M3 as Table 4 does. `judge_signal` says whether the interval excludes 0.5; the loop prints a plain warning when
  it does not, and `loop.require_judge_signal` stops before DPO;
- IFEval (`eval.ifeval_prompts`): greedy answers scored by the lm-evaluation-harness checkers, a figure no judge
  decides;
- lm-evaluation-harness tasks (`eval.harness_tasks`, through `lm_eval.simple_evaluate`; `harness.json`);
- head to head on held-out prompts (`eval.heldout_prompts`): M_t+1 vs M_t, and from iteration 2 on also M_t+1 vs
  M1. Both answer greedily; a pairwise judge compares every pair in both orders, a disagreement is a tie (paper
  section 6.1), or, with `eval.winrate_method=additive`, the additive judge grades each answer alone and the higher
  score wins. The judge is M1, fixed for the whole run (`eval.winrate_judge=m1`): after iteration 1 it is never a
  contestant, and it does not change as the models it judges do. `next` makes M_t+1 its own judge, a number that
  flatters the newer model; the summary says which judge was used.

Results go to `eval_m1/`, `iter_t/eval/`, `eval_sft_baseline/` and, with `loop.eval_base`, `eval_base/` (`*.json`
with per-item JSONL beside them) and into `summary.json`. Each model's greedy answers to the held-out prompts are
kept in `eval_answers/<model>.json` and reused: M1's answers are generated once, not once per comparison; and, with
`eval.winrate_method=additive`, each answer's grade by a judge in `eval_answers/grades_by_<judge>.json`, so the
fixed judge grades each answer once per run. Both are keyed by the model's weight files, not only its path.
"""

from __future__ import annotations

from contextlib import closing, nullcontext
from pathlib import Path

from srlm.backends import Sampling, backend_for
from srlm.config import Config
from srlm.io import iter_jsonl, read_json, write_json, write_jsonl
from srlm.seed import resolve_data_path


def judge_accuracy(cfg: Config, model_path: str, out_dir: Path) -> dict:
    """Metrics of `model_path` as a judge on `eval.judge_data`; writes judge_accuracy.json and its items."""
    from srlm.evaluation.judge_eval import evaluate_judge, read_human_groups, write_judge_eval

    groups, _counts, _fmt = read_human_groups(resolve_data_path(cfg.eval.judge_data))
    groups = groups[: cfg.eval.judge_limit]
    with closing(backend_for(cfg, model_path)) as backend:
        metrics, items = evaluate_judge(groups, backend, cfg.judge, seed=cfg.seed)
    metrics["data"] = cfg.eval.judge_data
    write_judge_eval(out_dir / "judge_accuracy.json", metrics, items)
    return metrics


def ifeval_accuracy(cfg: Config, model_path: str, out_dir: Path) -> dict:
    """IFEval metrics of `model_path` on `eval.ifeval_prompts`; writes ifeval.json and its per-prompt items."""
    from srlm.evaluation.ifeval import evaluate_ifeval, load_ifeval, write_ifeval

    items = load_ifeval(resolve_data_path(cfg.eval.ifeval_prompts), limit=cfg.eval.ifeval_limit)
    with closing(backend_for(cfg, model_path)) as backend:
        metrics, records = evaluate_ifeval(items, backend, max_new_tokens=cfg.eval.ifeval_max_new_tokens, seed=cfg.seed)
    metrics["data"] = cfg.eval.ifeval_prompts
    write_ifeval(out_dir / "ifeval.json", metrics, records)
    return metrics


def harness_eval(cfg: Config, model_path: str, out_dir: Path) -> dict:
    """lm-evaluation-harness tasks `eval.harness_tasks` on `model_path`, as `srlm eval harness` runs them; writes
    harness.json (lm-eval's results) and returns its figures per task (`harness_summary`)."""
    from srlm.evaluation.harness import harness_for_config, harness_summary

    result = harness_for_config(cfg, model_path, limit=cfg.eval.harness_limit,
                                include_path=cfg.eval.harness_include_path)
    write_json(out_dir / "harness.json", result)
    return harness_summary(result)


def model_evals(cfg: Config, model_path: str, out_dir: Path) -> dict:
    """The evaluations of one model alone (judge accuracy, IFEval, lm-eval tasks), as configured: the `eval_m1`
    side stage."""
    results = {}
    if cfg.eval.judge_data:
        results["judge_accuracy"] = judge_accuracy(cfg, model_path, out_dir)
    if cfg.eval.ifeval_prompts:
        results["ifeval"] = ifeval_accuracy(cfg, model_path, out_dir)
    if cfg.eval.harness_tasks:
        results["harness"] = harness_eval(cfg, model_path, out_dir)
    return results


def heldout_prompts(cfg: Config) -> list[str]:
    path = resolve_data_path(cfg.eval.heldout_prompts)
    return [r["prompt"] for r in iter_jsonl(path, {"prompt": str})][: cfg.eval.heldout_limit]


def _model_key(cfg: Config, model_path: str) -> dict:
    """What a model's outputs depend on besides the request: the model folder (its weight files' names, sizes and
    times, so a model trained again at the same path is not mistaken for the old one) and the backend settings."""
    from srlm.stages.training import resume_key

    return {"model": model_path, "model_files": resume_key(model_path),
            "backend": cfg.backend.model_dump(mode="json"), "seed": cfg.seed}


def _cached(path: Path | None, key: dict, field: str):
    """`field` of the JSON cache file `path` when it was written under the same `key`; else None."""
    saved = read_json(path) if path is not None and path.exists() else {}
    return saved[field] if saved.get("key") == key else None


def _answers(cfg: Config, model_path: str, prompts: list[str], cache: Path | None = None) -> list[str]:
    """Greedy answers of `model_path` to the held-out prompts, through the same path as `srlm eval generate`.

    Kept in `cache` (when given) and reused while the model, the prompts and generation settings are the same."""
    from srlm.evaluation.prompt_sets import PromptItem, generate_answers

    key = {"prompts": prompts, "max_new_tokens": cfg.eval.max_new_tokens, **_model_key(cfg, model_path)}
    answers = _cached(cache, key, "answers")
    if answers is not None:
        return answers
    items = [PromptItem(id=f"heldout-{i}", turns=[p]) for i, p in enumerate(prompts)]
    greedy = Sampling(n=1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.eval.max_new_tokens)
    with closing(backend_for(cfg, model_path)) as backend:
        records = generate_answers(items, backend, seed=cfg.seed, sampling_for=lambda item: greedy)
    answers = [r["answers"][0] for r in records]
    if cache is not None:
        write_json(cache, {"key": key, "answers": answers})
    return answers


def winrate(cfg: Config, model_a: str, model_b: str, judge_path: str, out_path: Path, answers_dir: Path) -> dict:
    """`model_a` (side A) vs `model_b` (side B) on the held-out prompts, judged by `judge_path`; writes `out_path`
    (metrics) and its items beside it."""
    from srlm.evaluation.winrate import additive_winrate, pairwise_winrate, ungraded_answers

    prompts = heldout_prompts(cfg)
    answers_a = _answers(cfg, model_a, prompts, answers_dir / f"{Path(model_a).name}.json")
    answers_b = _answers(cfg, model_b, prompts, answers_dir / f"{Path(model_b).name}.json")
    if cfg.eval.winrate_method == "additive":
        # Each answer's grade is kept per judge: the fixed judge (M1) grades M1's answers, and M_t's, once per
        # run rather than once per comparison they appear in; when all are graded the judge is not even loaded.
        grades_file = answers_dir / f"grades_by_{Path(judge_path).name}.json"
        key = {"judge": cfg.judge.model_dump(mode="json"), **_model_key(cfg, judge_path)}
        grades = _cached(grades_file, key, "grades") or {}
        needed = ungraded_answers(prompts, answers_a, answers_b, grades)
        with closing(backend_for(cfg, judge_path)) if needed else nullcontext() as judge:
            result = additive_winrate(prompts, answers_a, answers_b, judge, cfg.judge, seed=cfg.seed, grades=grades)
        write_json(grades_file, {"key": key, "grades": grades})
    else:
        with closing(backend_for(cfg, judge_path)) as judge:
            result = pairwise_winrate(prompts, answers_a, answers_b, judge, seed=cfg.seed,
                                      max_new_tokens=cfg.eval.max_new_tokens,
                                      max_prompt_tokens=cfg.judge.max_prompt_tokens)
    judge_name = {"next": "self (M_t+1)", "m1": "M1 (fixed)"}.get(cfg.eval.winrate_judge, judge_path)
    metrics = {**result["metrics"], "judge": judge_name, "method": cfg.eval.winrate_method,
               "model_a": Path(model_a).name, "model_b": Path(model_b).name, "data": cfg.eval.heldout_prompts}
    write_json(out_path, metrics)
    write_jsonl(out_path.with_name(f"{out_path.stem}.items.jsonl"), result["items"])
    return metrics


def winrate_judge_path(cfg: Config, new_model: str, m1: str) -> str:
    if cfg.eval.winrate_judge == "next":
        return new_model
    if cfg.eval.winrate_judge == "m1":
        return m1
    return cfg.eval.winrate_judge


def run_iteration_eval(cfg: Config, new_model: str, old_model: str, out_dir: Path, *, m1: str,
                       answers_dir: Path) -> dict:
    """Everything measured on M_t+1 after iteration t (see the module docstring)."""
    results = {}
    if cfg.eval.heldout_prompts:
        judge_path = winrate_judge_path(cfg, new_model, m1)
        results["winrate_vs_previous"] = winrate(cfg, new_model, old_model, judge_path,
                                                 out_dir / "winrate_vs_previous.json", answers_dir)
        if Path(old_model) != Path(m1):
            results["winrate_vs_m1"] = winrate(cfg, new_model, m1, judge_path, out_dir / "winrate_vs_m1.json",
                                               answers_dir)
    results.update(model_evals(cfg, new_model, out_dir))
    return results
