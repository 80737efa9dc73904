"""Stage `dpo`: DPO from M_t with M_t as the reference model, on the pairs of this iteration (paper section 3).

    srlm dpo --pairs pairs.jsonl --model M_t --out M_t+1 [key=value ...]

TRL's `DPOTrainer` with beta `dpo.beta` (0.1, the paper's). The reference is the starting model itself: its log-probabilities on every pair
are computed once before training (`precompute_ref_log_probs`), so no second copy of the model is kept in memory.
With LoRA, the reference is the model with its adapters disabled. The result is saved as a full checkpoint (LoRA
merged) that the next iteration and any Hugging Face tool can load. An empty pair file is an error: a DPO step on
nothing would silently copy M_t forward as M_t+1.
"""

from __future__ import annotations

from pathlib import Path

from srlm.config import DpoConfig, ModelConfig
from srlm.stages import checkpoints, training
from srlm.stages.pairs import read_pair_file

PAIR_SCHEMA = {"prompt": list, "chosen": list, "rejected": list}


def pair_lengths(dataset) -> list[int]:
    """Tokens a tokenized pair takes in a batch: its prompt plus the longer of its two responses."""
    return [len(p) + max(len(c), len(r))
            for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]


def loss_arguments(cfg: DpoConfig) -> dict:
    """TRL's loss settings for srlm's DPO: plain DPO (TRL's `sigmoid` loss) unless a key asks for more.

    - dpo.nll_weight > 0 (RPO): plus TRL's `sft` loss (NLL on the chosen answer) with that weight.
    - dpo.label_smoothing = e > 0 (conservative DPO, the form CREAM trains with): -(1-e) log s(bD) - e log s(-bD),
      the pair counted as right with probability 1-e. TRL's `sigmoid` loss ignores label_smoothing, and its `robust`
      loss is Robust DPO's unbiased form, ((1-e) S - e F) / (1-2e) with S = -log s(bD), F = -log s(-bD). Weighted
      2(1-e) x sigmoid - (1-2e) x robust, the two add up to exactly (1-e) S + e F (tested against the formula).
    """
    types, weights, extra = ["sigmoid"], [1.0], {}
    eps = cfg.label_smoothing
    if eps > 0:
        types, weights = ["sigmoid", "robust"], [2 * (1 - eps), -(1 - 2 * eps)]
        extra["label_smoothing"] = eps
    if cfg.nll_weight > 0:
        types.append("sft")
        weights.append(cfg.nll_weight)
    if types == ["sigmoid"]:
        return {}  # TRL's default loss, as always
    return {"loss_type": types, "loss_weights": weights, **extra}


def run_dpo(
    model_path: str,
    pairs_path: Path,
    out_dir: Path,
    cfg: DpoConfig,
    *,
    seed: int,
    model: ModelConfig | None = None,
    tracking=None,
) -> dict:
    # The whole pair file is checked (messages, roles, content, chosen != rejected) before anything is loaded.
    pairs = read_pair_file(pairs_path)
    from datasets import Dataset, load_from_disk
    from trl import DPOConfig, DPOTrainer

    placement = training.Placement.of(model)
    out_dir = Path(out_dir)
    key = training.resume_key_if_saving(cfg, "dpo", model_path, pairs, cfg.model_dump(mode="json"), seed)
    with training.scratch_dir(out_dir, key) as scratch, training.head_on_labelled_positions_only():
        args = DPOConfig(
            **placement.trainer_kwargs(cfg, seed=seed, output_dir=scratch, tracking=tracking),
            beta=cfg.beta,
            **loss_arguments(cfg),
            precompute_ref_log_probs=True,
            disable_dropout=cfg.dropout == 0,
        )
        # Created after the trainer config, so that under DeepSpeed ZeRO-3 it is built already sharded (see sft.py).
        loaded = placement.load_model(model_path, out_dir, cfg.dropout)
        train_dataset = Dataset.from_list(pairs)
        if args.world_size > 1:
            # TRL caches the precomputed reference log-probs beside the dataset's files, and every rank reads rank 0's
            # cache. An in-memory dataset has no files, so each rank would look in its own temporary folder.
            saved = str(Path(scratch) / "pairs_dataset")
            with args.main_process_first(local=False, desc="pairs dataset"):
                if args.process_index == 0:
                    train_dataset.save_to_disk(saved)
            train_dataset = load_from_disk(saved)
        trainer_class = DPOTrainer
        if cfg.group_by_length and cfg.micro_batch_size > 1:  # one example per pass: nothing to pad
            trainer_class = training.length_grouped(DPOTrainer, pair_lengths)
        trainer = trainer_class(
            model=loaded.model,
            ref_model=None,
            args=args,
            train_dataset=train_dataset,
            processing_class=loaded.tokenizer,
            peft_config=training.peft_config(cfg.lora),
            callbacks=[training.nan_guard()],
        )
        checkpoints.add_checkpoint_saver(trainer, cfg.checkpoint_every_steps, out_dir, loaded.tokenizer)
        training.train(trainer, scratch, cfg.save_every_steps)
        training.finish_and_save(trainer, loaded.tokenizer, out_dir, base_model=loaded.path, dtype=placement.torch_dtype)
    stats = training.log_history_stats(
        trainer.state.log_history,
        {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
         "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected"},
    )
    steps_seconds = stats.get("train_seconds")
    if steps_seconds:
        stats["pairs_per_second"] = round(len(pairs) * cfg.epochs / steps_seconds, 3)
    return {"pairs": len(pairs), "processes": trainer.args.world_size, **stats}
