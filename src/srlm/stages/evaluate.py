"""Stage `eval` inside `srlm run`: how each new model compares with the one before, and how good its judge is.

After iteration t has produced M_t+1:
- head to head, M_t+1 vs M_t on held-out prompts (`eval.heldout_prompts`): both answer greedily, a pairwise judge
  compares every pair in both orders, a disagreement is a tie (paper section 6.1); or, with
  `eval.winrate_method=additive`, the additive judge grades each answer alone and the higher score wins. The judge is M_t+1 itself unless
  `eval.winrate_judge` names a fixed model: a self-judged win rate flatters the newer model, and the summary says
  which judge was used;
- the judge's agreement with human rankings (`eval.judge_data`: pairwise accuracy, 5-best, exact match, Spearman,
  Kendall tau; paper section 6.5), for M_t+1, and for M1 once after SFT, so a run reports M1, M2, M3 as Table 4 does.

Results go to `iter_t/eval/*.json` (with per-item JSONL beside them) and into `summary.json`.
"""

from __future__ import annotations

from pathlib import Path

from srlm.backends import Sampling, backend_for
from srlm.config import Config
from srlm.io import iter_jsonl, write_json, write_jsonl
from srlm.seed import resolve_data_path


def judge_accuracy(cfg: Config, model_path: str, out_dir: Path) -> dict:
    """Metrics of `model_path` as a judge on `eval.judge_data`; writes judge_accuracy.json and its items."""
    from srlm.evaluation.judge_eval import evaluate_judge, read_human_groups, write_judge_eval

    groups, _counts, _fmt = read_human_groups(resolve_data_path(cfg.eval.judge_data))
    groups = groups[: cfg.eval.judge_limit]
    backend = backend_for(cfg, model_path)
    try:
        metrics, items = evaluate_judge(groups, backend, cfg.judge, seed=cfg.seed)
    finally:
        backend.close()
    write_judge_eval(out_dir / "judge_accuracy.json", metrics, items)
    return metrics


def _answers(cfg: Config, model_path: str, prompts: list[str]) -> list[str]:
    """Greedy answers of `model_path` to the held-out prompts, through the same path as `srlm eval generate`."""
    from srlm.evaluation.prompt_sets import PromptItem, generate_answers

    items = [PromptItem(id=f"heldout-{i}", turns=[p]) for i, p in enumerate(prompts)]
    greedy = Sampling(n=1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.eval.max_new_tokens)
    backend = backend_for(cfg, model_path)
    try:
        records = generate_answers(items, backend, seed=cfg.seed, sampling_for=lambda item: greedy)
    finally:
        backend.close()
    return [r["answers"][0] for r in records]


def winrate_vs_previous(cfg: Config, new_model: str, old_model: str, out_dir: Path) -> dict:
    """M_t+1 (side A) vs M_t (side B) on the held-out prompts; writes winrate_vs_previous.json and its items."""
    from srlm.evaluation.winrate import additive_winrate, pairwise_winrate

    path = resolve_data_path(cfg.eval.heldout_prompts)
    prompts = [r["prompt"] for r in iter_jsonl(path, {"prompt": str})][: cfg.eval.heldout_limit]
    answers_new, answers_old = _answers(cfg, new_model, prompts), _answers(cfg, old_model, prompts)
    judge_path = new_model if cfg.eval.winrate_judge == "next" else cfg.eval.winrate_judge
    judge = backend_for(cfg, judge_path)
    try:
        if cfg.eval.winrate_method == "additive":
            result = additive_winrate(prompts, answers_new, answers_old, judge, cfg.judge, seed=cfg.seed)
        else:
            result = pairwise_winrate(prompts, answers_new, answers_old, judge, seed=cfg.seed,
                                      max_new_tokens=cfg.eval.max_new_tokens)
    finally:
        judge.close()
    metrics = {**result["metrics"], "judge": "self (M_t+1)" if cfg.eval.winrate_judge == "next" else judge_path}
    write_json(out_dir / "winrate_vs_previous.json", metrics)
    write_jsonl(out_dir / "winrate_vs_previous.items.jsonl", result["items"])
    return metrics


def run_iteration_eval(cfg: Config, new_model: str, old_model: str, out_dir: Path) -> dict:
    results = {}
    if cfg.eval.heldout_prompts:
        results["winrate_vs_previous"] = winrate_vs_previous(cfg, new_model, old_model, out_dir)
    if cfg.eval.judge_data:
        results["judge_accuracy"] = judge_accuracy(cfg, new_model, out_dir)
    return results
