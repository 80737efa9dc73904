"""DPO: srlm's DPO stage (TRL DPOTrainer, reference log-probs computed once, no reference copy in memory, batches
grouped by length, the output head only at trained positions) vs TRL's DPOTrainer with default settings (a second
model as reference, run at every step), on the same pairs; and srlm without length grouping, and with TRL's own
output head on CPU (every position scored), to show what each gives alone.

    python benchmarks/dpo.py [--pairs 32] [--json]

Compared by pairs per second of training (the reference pass included on both sides). The pairs' answers vary in
length from one to eight sentences, as generated answers do, so that padding (what grouping removes) is realistic.

The bound, measured in the same run (bound.py): full fine-tuning costs 6 x params FLOPs per trained token (forward
and backward) plus 2 x params for the reference's forward pass, so 8 x params x tokens (chosen and rejected, prompt
included, no padding), at the rate the model's linear layers reach at a 512-row chunk; attention is left out, so
the fraction is conservative. srlm's time includes loading and saving the model, TRL's does not.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bound import describe
from common import Timer, prompts, report, trl_head_at_every_position


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from srlm.config import DpoConfig
    from srlm.io import write_jsonl
    from srlm.models import load_model, resolve_model_path
    from srlm.stages.dpo import run_dpo

    texts = prompts(args.pairs)
    pairs = [{"prompt": [{"role": "user", "content": t}],
              "chosen": [{"role": "assistant", "content": f"Here is a careful answer about: {t} " * (1 + (i * 5) % 8)}],
              "rejected": [{"role": "assistant", "content": "I don't know. " * (1 + (i * 3) % 6)}]}
             for i, t in enumerate(texts)]
    cfg = DpoConfig(epochs=1, learning_rate=5e-6, batch_size=4, micro_batch_size=2, max_length_tokens=512, dropout=0.0)
    model_path = resolve_model_path("embedded")
    with tempfile.TemporaryDirectory() as tmp:
        write_jsonl(Path(tmp) / "pairs.jsonl", pairs)
        with Timer() as fast:
            run_dpo(model_path, Path(tmp) / "pairs.jsonl", Path(tmp) / "out", cfg, seed=0)
        with Timer() as ungrouped:
            run_dpo(model_path, Path(tmp) / "pairs.jsonl", Path(tmp) / "out2", cfg.model_copy(update={"group_by_length": False}),
                    seed=0)
        with trl_head_at_every_position(), Timer() as every_position:
            run_dpo(model_path, Path(tmp) / "pairs.jsonl", Path(tmp) / "out3", cfg, seed=0)

        lm = load_model(model_path)
        baseline_args = DPOConfig(output_dir=str(Path(tmp) / "baseline"), per_device_train_batch_size=2,
                                  gradient_accumulation_steps=2, num_train_epochs=1, learning_rate=5e-6,
                                  max_length=512, use_cpu=True, bf16=False, report_to=[], save_strategy="no")
        with Timer() as slow:
            DPOTrainer(model=lm.model, args=baseline_args, train_dataset=Dataset.from_list(pairs),
                       processing_class=lm.tokenizer).train()

    tok = lm.tokenizer
    tokens = sum(len(tok.apply_chat_template(p["prompt"] + p[side], tokenize=True, return_dict=True)["input_ids"])
                 for p in pairs for side in ("chosen", "rejected"))
    params = sum(w.numel() for w in lm.model.parameters())
    bound = describe(lm.model, 512)
    bound_seconds = 8 * params * tokens / (bound["linear_gflops_at_these_shapes"] * 1e9)
    fast_rate, slow_rate = args.pairs / fast.seconds, args.pairs / slow.seconds
    ungrouped_rate = args.pairs / ungrouped.seconds
    every_position_rate = args.pairs / every_position.seconds
    result = {"benchmark": "dpo", "pairs": args.pairs, "srlm_pairs_per_s": round(fast_rate, 3),
              "srlm_ungrouped_pairs_per_s": round(ungrouped_rate, 3),
              "trl_default_pairs_per_s": round(slow_rate, 3), "speedup": round(fast_rate / slow_rate, 2),
              "grouping_speedup": round(fast_rate / ungrouped_rate, 2),
              "srlm_every_position_head_pairs_per_s": round(every_position_rate, 3),
              "head_speedup": round(fast_rate / every_position_rate, 2), "trained_tokens": tokens,
              "bound_seconds": round(bound_seconds, 1), "srlm_fraction_of_bound": round(bound_seconds / fast.seconds, 3),
              "trl_fraction_of_bound": round(bound_seconds / slow.seconds, 3), "bound": bound}
    report("DPO: precomputed reference vs TRL default (reference model at every step)", [
        ("srlm dpo pairs/s (load + train + save)", fast_rate, f"({fast.seconds:.1f} s)"),
        ("srlm dpo without length grouping pairs/s", ungrouped_rate, f"({ungrouped.seconds:.1f} s)"),
        ("TRL DPOTrainer default pairs/s (train only)", slow_rate, f"({slow.seconds:.1f} s)"),
        ("speedup vs TRL default", fast_rate / slow_rate, "x"),
        ("speedup from length grouping", fast_rate / ungrouped_rate, "x"),
        ("srlm dpo with TRL's every-position head pairs/s", every_position_rate, f"({every_position.seconds:.1f} s)"),
        ("speedup from the head at trained positions", fast_rate / every_position_rate, "x"),
        ("bound: 8 x params x tokens at the linear rate, s", bound_seconds,
         f"({tokens} tokens; {bound['linear_gflops_at_these_shapes']} GFLOP/s at 512 rows)"),
        ("srlm / TRL as a fraction of that bound", bound_seconds / fast.seconds,
         f"/ {bound_seconds / slow.seconds:.2f}"),
    ], result, args.json)


if __name__ == "__main__":
    main()
