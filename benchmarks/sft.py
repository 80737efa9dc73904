"""SFT: srlm's SFT stage (TRL SFTTrainer, the output head run only at trained positions) vs the same stage with TRL's
own head on CPU (run at every position, prompt included, then masked), on the quickstart's kind of data.

    python benchmarks/sft.py [--ift 4] [--eft 12] [--repeats 2] [--json]

Both arms are `srlm.stages.sft.run_sft` with the quickstart's settings (LoRA r16 on every linear layer, micro-batch
1, no gradient checkpointing, fp32), on the first `--ift` IFT and `--eft` EFT examples of the shipped seed data (an
EFT example is the ~500-token judge prompt with a ~100-token judgement to learn). The baseline turns off
`training.head_on_labelled_positions_only`, which is all that differs. The arms alternate, `--repeats` times
each, and the best of each is compared (the machine drifts by about 10% within minutes). Both arms must log the same
per-step losses (to 1e-3), which the script checks.

The bound, measured in the same run (bound.py): LoRA training costs 2 x params FLOPs per token forward and 2 x
params backward (the gradient reaching the inputs; the adapters' own gradients are about 1% of it), so 4 x params x
tokens, at the rate the model's linear layers reach at a 512-row chunk (the printed "every-position" bound; TRL's
head costs more than that, as its backward recomputes each tile's logits). What training needs is less: the output projection (21% of the matmul FLOPs here, with the tied
embedding) only at the trained positions, so the printed "needed" bound counts the body at every token and the head
at trained tokens only. Attention's FLOPs are left out of the bound (small at these lengths), so each fraction says
how far from pure matmul time an arm runs.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from bound import describe
from common import Timer, report, trl_head_at_every_position


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ift", type=int, default=4)
    parser.add_argument("--eft", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from srlm.config import SftConfig
    from srlm.judge import load_template
    from srlm.models import load_model, resolve_model_path
    from srlm.seed import resolve_data_path
    from srlm.stages.sft import build_sft_examples, read_eft, read_ift, run_sft

    cfg = SftConfig(epochs=1, learning_rate=1e-3, learning_rate_end=1e-4, batch_size=8, micro_batch_size=1,
                    max_length_tokens=768, dropout=0.0, gradient_checkpointing=False,
                    lora={"enabled": True, "r": 16, "alpha": 32})
    model_path = resolve_model_path("embedded")
    ift, eft = resolve_data_path("builtin:ift"), resolve_data_path("builtin:eft")
    seconds = {"srlm": [], "trl_head": []}
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for arm in ("trl_head", "srlm") if repeat % 2 else ("srlm", "trl_head"):
                baseline = trl_head_at_every_position() if arm == "trl_head" else contextlib.nullcontext()
                with baseline, Timer() as t:
                    stats = run_sft(model_path, ift, eft, Path(tmp) / f"{arm}_{repeat}", cfg, seed=0,
                                    max_ift_examples=args.ift, max_eft_examples=args.eft)
                seconds[arm].append(stats.get("train_seconds") or t.seconds)
                losses.setdefault(arm, [s["loss"] for s in stats["per_step"]])
    same_losses = len(losses["srlm"]) == len(losses["trl_head"]) and all(
        abs(a - b) <= 1e-3 for a, b in zip(losses["srlm"], losses["trl_head"]))

    lm = load_model(model_path)
    tok = lm.tokenizer
    examples = build_sft_examples(read_ift(ift, args.ift), read_eft(eft, args.eft), load_template(None), seed=0)
    tokens = trained = 0
    for e in examples:
        prompt = tok.apply_chat_template(e["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)
        whole = tok.apply_chat_template(e["prompt"] + e["completion"], tokenize=True, return_dict=True)
        n = min(len(whole["input_ids"]), cfg.max_length_tokens)
        tokens += n
        trained += max(n - len(prompt["input_ids"]), 0)
    params = sum(w.numel() for w in lm.model.parameters())
    head = lm.model.get_output_embeddings().weight.numel()
    bound = describe(lm.model, 512)
    rate = bound["linear_gflops_at_these_shapes"] * 1e9
    every_position_bound = 4 * params * tokens / rate
    needed_bound = 4 * ((params - head) * tokens + head * trained) / rate
    fast, slow = min(seconds["srlm"]), min(seconds["trl_head"])
    result = {"benchmark": "sft", "examples": len(examples), "tokens": tokens, "trained_tokens": trained,
              "srlm_seconds": round(fast, 1), "trl_head_seconds": round(slow, 1), "speedup": round(slow / fast, 2),
              "all_seconds": seconds, "same_losses": same_losses,
              "every_position_bound_seconds": round(every_position_bound, 1),
              "needed_bound_seconds": round(needed_bound, 1),
              "srlm_fraction_of_needed_bound": round(needed_bound / fast, 3),
              "trl_head_fraction_of_needed_bound": round(needed_bound / slow, 3),
              "trl_head_fraction_of_its_bound": round(every_position_bound / slow, 3), "bound": bound}
    report("SFT (LoRA, quickstart settings): the head at trained positions only vs TRL's head at every position", [
        ("srlm sft, train seconds (best)", fast, f"of {seconds['srlm']}"),
        ("TRL's head at every position, train seconds", slow, f"of {seconds['trl_head']}"),
        ("speedup", slow / fast, f"x (same per-step losses: {same_losses})"),
        ("tokens / of them trained", tokens, f"/ {trained} ({len(examples)} examples)"),
        ("bound, head at trained positions, s", needed_bound,
         f"(4 x params x tokens, head at trained tokens; {bound['linear_gflops_at_these_shapes']} GFLOP/s)"),
        ("srlm / TRL head as a fraction of it", needed_bound / fast, f"/ {needed_bound / slow:.2f}"),
        ("bound, head at every position, s", every_position_bound, "(what TRL's CPU path computes)"),
        ("TRL head as a fraction of that bound", every_position_bound / slow, ""),
    ], result, args.json)


if __name__ == "__main__":
    main()
