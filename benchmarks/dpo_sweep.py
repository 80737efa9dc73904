"""DPO settings for the embedded model: a small sweep on real self-rewarding pairs, side by side in one run.

    .venv/bin/python benchmarks/dpo_sweep.py --model RUN/models/m1 --pairs RUN/iter_1/pairs.jsonl [--json]

Each setting trains M_t -> M_t+1 on the same pairs (from a quickstart run, never the evidence run's) and reports
how far DPO moved the model on them: the loss at the first and last step (ln 2 = 0.693 at step 1, when the policy
is the reference), the drop, reward accuracy and margin at the last step (TRL's batch figures), and seconds. The
settings that the recipes use were chosen from this table (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

SETTINGS = {
    # name: dpo.* overrides
    "full lr 1e-5, 1 epoch (old quickstart)": {"learning_rate": 1e-5, "learning_rate_end": 2e-6, "epochs": 1},
    "full lr 1e-5, 2 epochs": {"learning_rate": 1e-5, "learning_rate_end": 2e-6, "epochs": 2},
    "full lr 3e-5, 2 epochs": {"learning_rate": 3e-5, "learning_rate_end": 3e-6, "epochs": 2},
    "LoRA r16 lr 5e-5, 2 epochs": {"learning_rate": 5e-5, "learning_rate_end": 5e-6, "epochs": 2, "lora": True},
    "LoRA r16 lr 2e-4, 2 epochs": {"learning_rate": 2e-4, "learning_rate_end": 2e-5, "epochs": 2, "lora": True},
    "LoRA r16 lr 2e-4, 2 epochs, beta 0.5": {"learning_rate": 2e-4, "learning_rate_end": 2e-5, "epochs": 2,
                                             "lora": True, "beta": 0.5},
    "LoRA r16 lr 2e-4, 2 epochs, RPO nll 1.0": {"learning_rate": 2e-4, "learning_rate_end": 2e-5, "epochs": 2,
                                                "lora": True, "nll_weight": 1.0},
}


def main() -> None:
    from srlm.config import load_config
    from srlm.stages.dpo import run_dpo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", required=True, nargs="+")
    parser.add_argument("--only", nargs="*", help="names of settings to run (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="srlm-dpo-sweep-"))
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(Path(p).read_text() for p in args.pairs))
    n_pairs = sum(1 for line in pairs.read_text().splitlines() if line.strip())
    results = []
    for name, setting in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        setting = dict(setting)
        overrides = [f"dpo.{k}={v}" for k, v in setting.items() if k != "lora"]
        overrides += [f"dpo.lora.enabled={str(setting.get('lora', False)).lower()}", "dpo.batch_size=4",
                      "dpo.micro_batch_size=1", "dpo.dropout=0.0", "dpo.gradient_checkpointing=false",
                      "dpo.max_length_tokens=512"]
        cfg = load_config("quickstart", overrides=overrides)
        out = work / "out"
        start = time.perf_counter()
        stats = run_dpo(args.model, pairs, out, cfg.dpo, seed=0)
        seconds = time.perf_counter() - start
        shutil.rmtree(out, ignore_errors=True)
        row = {"setting": name, "pairs": n_pairs, "steps": stats.get("steps"), "loss_first": stats.get("loss_first"),
               "loss_last": stats.get("loss_last"), "reward_accuracy_last": stats.get("reward_accuracy_last"),
               "reward_margin_last": stats.get("reward_margin_last"), "seconds": round(seconds, 1),
               "per_step_loss": [s["loss"] for s in stats.get("per_step", [])]}
        row["loss_drop"] = round(row["loss_first"] - row["loss_last"], 4) if row["loss_last"] is not None else None
        results.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nDPO sweep on {n_pairs} pairs ({', '.join(args.pairs)}), batch 4, from {args.model}")
    print(f"  {'setting':44s} {'steps':>5} {'loss first -> last':>20} {'drop':>7} {'rew.acc':>7} {'margin':>7} {'s':>6}")
    for r in results:
        print(f"  {r['setting']:44s} {r['steps']:>5} {r['loss_first']:>9} -> {r['loss_last']:<8} {r['loss_drop']:>7} "
              f"{r['reward_accuracy_last']!s:>7} {r['reward_margin_last']!s:>7} {r['seconds']:>6}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
