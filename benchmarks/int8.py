"""int8 weights (`backend.int8_weights=true`) against fp32, in one run: generation speed, IFEval and judge accuracy.

    python benchmarks/int8.py --judge-model runs/quickstart/models/m1 [--model embedded] [--shared ../shared/data]
        [--judge-limit 300] [--recipe quickstart] [--out runs/int8] [--json]

1. Speed: the `hf` backend of each kind on the same requests (32 prompts x 4 samples x 128 new tokens, T 0.7,
   top-p 0.9), fp32 and int8 alternated twice, the best of each kept; compared by generated tokens per second.
2. IFEval (no judge involved): `--model` answers the 150 reported prompts of ../shared/data/ifeval (the same half
   benchmarks/evidence.py reports; the other half is set apart) greedily, with each kind of weights; prompt-level
   strict accuracy of each and their paired difference (bootstrap over prompts).
3. Judge: `--judge-model` (a model trained to judge, e.g. a run's M1) scores every reply of `--judge-limit`
   HH-RLHF pairs of builtin:hh_test with the recipe's judge settings, with each kind of weights: pairwise accuracy
   of each, their paired difference (bootstrap over pairs), and how alike the two judges' scores are (Spearman).

Everything goes through `srlm.stages.evaluate` with the config key set, as `srlm run` would evaluate. Nothing here
chooses a setting: int8 is off by default whatever this prints.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import machine, prompts
from evidence import ifeval_outcomes, split_ifeval

ROOT = Path(__file__).resolve().parents[1]


def generation_speed(model: str, weights: dict) -> dict:
    from srlm.backends import GenerationRequest, Sampling, backend_for

    sampling = Sampling(n=4, temperature=0.7, top_p=0.9, max_new_tokens=128)
    requests = [GenerationRequest(f"p{i}", sampling, i, messages=[{"role": "user", "content": t}])
                for i, t in enumerate(prompts(32))]
    best: dict[str, float] = {}
    for _ in range(2):
        for kind, cfg in weights.items():
            backend = backend_for(cfg, model)
            start = time.perf_counter()
            outputs = backend.generate(requests)
            seconds = time.perf_counter() - start
            backend.close()
            rate = sum(c.num_tokens for outs in outputs for c in outs) / seconds
            best[kind] = max(best.get(kind, 0.0), rate)
    return {"fp32_tokens_per_s": round(best["fp32"], 1), "int8_tokens_per_s": round(best["int8"], 1),
            "speedup": round(best["int8"] / best["fp32"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="the actor: speed and IFEval")
    parser.add_argument("--judge-model", required=True, help="a model trained to judge, e.g. runs/quickstart/models/m1")
    parser.add_argument("--recipe", default="quickstart", help="judge settings come from this recipe")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--judge-limit", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "runs" / "int8"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from scipy import stats

    from srlm.config import load_config
    from srlm.evaluation.metrics import format_with_interval, pair_credits, paired_difference_by_key
    from srlm.io import iter_jsonl
    from srlm.models import resolve_model_path
    from srlm.stages.evaluate import ifeval_accuracy, judge_accuracy

    out = Path(args.out)
    reported, _set_apart = split_ifeval(Path(args.shared), out / "data")
    common = [f"eval.ifeval_prompts={reported}", "eval.judge_data=builtin:hh_test", f"eval.judge_limit={args.judge_limit}"]
    weights = {kind: load_config(args.recipe, overrides=[*common, f"backend.int8_weights={kind == 'int8'}"])
               for kind in ("fp32", "int8")}
    model = resolve_model_path(args.model) if args.model == "embedded" else args.model

    speed = generation_speed(model, weights)
    ifeval, judge, seconds = {}, {}, {}
    for kind, cfg in weights.items():
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        ifeval[kind] = ifeval_accuracy(cfg, model, folder)
        seconds[f"ifeval_{kind}"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        judge[kind] = judge_accuracy(cfg, args.judge_model, folder)
        seconds[f"judge_{kind}"] = round(time.perf_counter() - start, 1)

    follows = {kind: ifeval_outcomes(out / kind / "ifeval.items.jsonl") for kind in weights}
    ifeval_diff = paired_difference_by_key(follows["int8"], follows["fp32"])
    judge_items = {kind: list(iter_jsonl(out / kind / "judge_accuracy.items.jsonl")) for kind in weights}
    credits = {kind: pair_credits(items) for kind, items in judge_items.items()}
    judge_diff = paired_difference_by_key(credits["int8"], credits["fp32"])
    scored = [(a["score"], b["score"]) for a, b in zip(judge_items["fp32"], judge_items["int8"])
              if a["score"] is not None and b["score"] is not None]
    agreement = stats.spearmanr([a for a, _ in scored], [b for _, b in scored]).statistic if len(scored) > 2 else None

    result = {"benchmark": "int8", "model": args.model, "judge_model": args.judge_model, "recipe": args.recipe,
              "speed": speed, "seconds": seconds,
              "ifeval_prompt_strict": {k: ifeval[k]["prompt_level_strict_acc"] for k in weights},
              "ifeval_prompt_strict_ci": {k: ifeval[k]["prompt_level_strict_acc_ci"] for k in weights},
              "ifeval_int8_minus_fp32": ifeval_diff,
              "judge_pairwise_accuracy": {k: judge[k]["pairwise_accuracy"] for k in weights},
              "judge_pairwise_accuracy_ci": {k: judge[k]["pairwise_accuracy_ci"] for k in weights},
              "judge_parse_rate": {k: judge[k]["sample_parse_rate"] for k in weights},
              "judge_pairs_scored": {k: judge[k]["n_pairs"] for k in weights},
              "judge_int8_minus_fp32": judge_diff, "judge_score_spearman_fp32_int8": agreement,
              "judge_scored_replies": len(scored), "machine": machine()}
    print("\nint8 weights vs fp32, one run")
    print(f"  generation tokens/s (32 x 4 x 128)     fp32 {speed['fp32_tokens_per_s']}, int8 "
          f"{speed['int8_tokens_per_s']}: {speed['speedup']}x")
    for kind in weights:
        print(f"  {kind}: IFEval prompt strict {format_with_interval(ifeval[kind], 'prompt_level_strict_acc')} "
              f"(n={ifeval[kind]['n_prompts']}, {seconds[f'ifeval_{kind}']} s); judge pairwise acc. "
              f"{format_with_interval(judge[kind], 'pairwise_accuracy')} on {judge[kind]['n_pairs']} pairs scored, "
              f"parse rate {judge[kind]['sample_parse_rate']:.3f} ({seconds[f'judge_{kind}']} s)")
    print(f"  IFEval int8 - fp32                      {format_with_interval(ifeval_diff, 'difference')} "
          f"(paired, n={ifeval_diff['n']})")
    print(f"  judge accuracy int8 - fp32              {format_with_interval(judge_diff, 'difference')} "
          f"(paired, n={judge_diff['n']} pairs)")
    print(f"  judge scores, Spearman fp32 vs int8     {agreement:.3f} over {len(scored)} replies" if agreement is not None
          else "  judge scores: too few scored replies to compare")
    print(f"  machine: {result['machine']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
