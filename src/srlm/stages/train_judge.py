"""Stage `train-judge`: teach a model's judge to order replies as humans do, with a pairwise objective.

    srlm train-judge --model M1 --pairs builtin:hh_eft --out DIR [key=value ...]

Not in the paper. Its EFT teaches the judge's *format* from demonstrations; at 135M parameters that judge orders
human-ranked replies no better than chance (the evidence run: 0.51 [0.45, 0.57] on 271 HH-RLHF pairs). Here the
judge is instead trained the way generative reward models are: for every human pair (better, worse) the model
reads the direct judge prompt (`judge.method=direct`: the rubric, question and reply, then its own reply opened
with "Score: ") and gives an expected score E = sum_k k * p(k) over its probabilities of the digits 0-5 at that
position; the loss is Bradley-Terry's

    -log sigmoid(score_scale * (E[better] - E[worse]))

so gradients push probability toward higher digits for the reply humans preferred. The judge keeps the paper's
rubric and its 0-5 scale (so the loop's pairs, score histograms and monitors mean what they meant), and the loop
reads it with `judge.method=direct`, exactly as it was trained.

What the user must know, and how the stage tells it:
- Pairs come from `srlm.evaluation.judge_eval.read_human_groups`: any two replies of a group with different human
  ranks make one pair (ties give none). A pair whose longer judge prompt exceeds `max_length_tokens` is skipped
  and counted, never truncated (the score position is the last token).
- In the first epoch every pair is scored before the update that learns from it, so that epoch's running pair
  accuracy is an honest held-out estimate (progressive validation); it is in the stats as
  `pair_accuracy_first_epoch`. The reported measure is still the held-out split (`srlm eval judge`).
- Training is transformers' Trainer (optimizer, cosine schedule, accumulation, checkpoints for resume, NaN guard)
  with LoRA from PEFT; only the loss is ours. The model is saved merged, as every srlm model.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from srlm.backends.base import GenerationRequest, Sampling, prompt_token_ids
from srlm.config import JudgeTrainingConfig, ModelConfig
from srlm.errors import DataError
from srlm.judge import DIRECT_PREFIX, SCORE_TOKENS, load_template, render
from srlm.stages import training


def human_pairs(path, limit: int | None = None, *, length_balance: bool = False, seed: int = 0) -> tuple[list[dict], dict]:
    """(pairs, counts): {pair_id, question, better, worse} from every group of `path` with two different ranks.
    `length_balance`: see `balance_by_length` (applied before `limit`)."""
    from srlm.evaluation.judge_eval import conversation_as_prompt, read_human_groups

    groups, counts, data_format = read_human_groups(path)
    pairs = []
    for group in groups:
        question = conversation_as_prompt(group.context)
        replies = group.replies
        for i, a in enumerate(replies):
            for b in replies[i + 1:]:
                if a["rank"] == b["rank"]:
                    continue
                better, worse = (a, b) if a["rank"] < b["rank"] else (b, a)
                pairs.append({"pair_id": f"{group.group_id}/{better['reply_id']}>{worse['reply_id']}",
                              "question": question, "better": better["text"], "worse": worse["text"]})
    if not pairs:
        raise DataError(f"{path}: no pair of replies with different human ranks to train a judge on")
    available = len(pairs)
    balance = {}
    if length_balance:
        pairs, balance = balance_by_length(pairs, seed)
    pairs = pairs[:limit]
    return pairs, {"format": data_format, "reader": counts, "pairs_available": available, **balance,
                   "pairs_used": len(pairs)}


def balance_by_length(pairs: list[dict], seed: int) -> tuple[list[dict], dict]:
    """Keep as many pairs whose better reply is the longer (in characters) as pairs whose better reply is the
    shorter, dropping a seeded random subset of the larger class (pairs of equal length all stay; order is kept).

    Why: in HH-RLHF the preferred reply is the longer in about 61% of pairs, and a judge trained on them learns
    that length is most of the signal (measured: 0.81 accuracy where humans preferred the longer reply, 0.32 where
    they preferred the shorter). On balanced pairs "longer is better" earns nothing, so only what else tells the
    replies apart can lower the loss."""
    import random

    longer = [i for i, p in enumerate(pairs) if len(p["better"]) > len(p["worse"])]
    shorter = [i for i, p in enumerate(pairs) if len(p["better"]) < len(p["worse"])]
    larger, smaller = (longer, shorter) if len(longer) >= len(shorter) else (shorter, longer)
    dropped = set(random.Random(seed).sample(larger, len(larger) - len(smaller)))
    if len(dropped) == len(pairs):
        raise DataError("judge_training.length_balance: every pair's better reply is on the same side of the length "
                        "order, so balancing would leave no pair")
    kept = [p for i, p in enumerate(pairs) if i not in dropped]
    return kept, {"better_longer": len(longer), "better_shorter": len(shorter), "dropped_for_length_balance": len(dropped)}


def tokenize_pairs(pairs: list[dict], tokenizer, template: str, max_length: int) -> tuple[list[dict], list[int], int]:
    """(features, digit token ids, pairs skipped as too long). Each feature holds the token ids of the better
    and the worse reply's direct judge prompt, each ending where the score digit comes next: the very ids the hf
    backend scores with judge.method=direct, so training and judging read the same position."""
    from srlm.backends.hf import candidate_token_ids

    continuation, digit_ids = candidate_token_ids(tokenizer, DIRECT_PREFIX, list(SCORE_TOKENS), "train-judge")
    features, too_long = [], 0
    for pair in pairs:
        ids = []
        for reply in (pair["better"], pair["worse"]):
            request = GenerationRequest(pair["pair_id"], Sampling(), 0,
                                        messages=[{"role": "user", "content": render(template, pair["question"], reply)}])
            ids.append(prompt_token_ids(tokenizer, request) + continuation)
        if max(len(x) for x in ids) > max_length:
            too_long += 1
            continue
        features.append({"better_ids": ids[0], "worse_ids": ids[1]})
    return features, digit_ids, too_long


def collate_pairs(features: list[dict], pad_id: int) -> dict:
    """Right-padded rows better_0, worse_0, better_1, ...; `last` is each row's final real position."""
    import torch

    rows = [f[key] for f in features for key in ("better_ids", "worse_ids")]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "last": torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)}


def expected_scores(logits_at_last, digit_ids):
    """E = sum_k k * p(k), p the softmax of the digit logits (renormalised over 0-5), per row."""
    import torch

    probs = torch.softmax(logits_at_last[:, digit_ids].float(), dim=-1)
    return probs @ torch.arange(len(digit_ids), dtype=probs.dtype, device=probs.device)


def common_prefix_length(input_ids, attention_mask) -> int:
    """How many leading tokens every row shares (the chat header and rubric), at most each row's length - 1 so
    that every row keeps at least its last token for the second pass."""
    import torch

    lengths = attention_mask.sum(dim=1)
    limit = int(lengths.min()) - 1
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(dim=0)
    differs = torch.nonzero(~same)
    return int(differs[0]) if len(differs) else limit


def last_position_scores(model, inputs, digit_ids, share_prefix: bool = True):
    """Each row's expected score at its last real position.

    The rows of a micro-batch all begin with the same chat header and rubric (about 270 of a judge prompt's 400
    tokens with the built-in template). With `share_prefix` that prefix is run once, as one row, and its key/value
    cache is repeated for every row before the rows' own tokens run on top of it: the same function of the
    weights as running every row whole (so the same loss and gradients, up to float rounding; tested), with the
    prefix's cost paid once per micro-batch instead of once per row. Logits are made only at each row's last
    position: `logits_to_keep` keeps the same positions for every row, so row i's own is on the diagonal."""
    import torch

    input_ids, attention_mask, last = inputs["input_ids"], inputs["attention_mask"], inputs["last"]
    rows = torch.arange(len(last), device=last.device)
    prefix = common_prefix_length(input_ids, attention_mask) if share_prefix and len(last) > 1 else 0
    if prefix == 0:
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=last, use_cache=False)
        return expected_scores(out.logits[rows, rows], digit_ids)
    # transformers 5.x renamed `past_key_values` (argument and output field) to `cache`; accept both versions.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    shared = model(input_ids=input_ids[:1, :prefix], use_cache=True)
    cache = shared[cache_arg]
    cache.batch_repeat_interleave(len(last))
    out = model(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, logits_to_keep=last - prefix,
                use_cache=True, **{cache_arg: cache})
    return expected_scores(out.logits[rows, rows], digit_ids)


def pairwise_trainer_class():
    import torch.nn.functional as F
    from transformers import Trainer

    class PairwiseJudgeTrainer(Trainer):
        """transformers' Trainer with the Bradley-Terry loss on expected scores (see the module docstring)."""

        def __init__(self, *args, digit_ids, score_scale, **kwargs):
            super().__init__(*args, **kwargs)
            self.digit_ids = list(digit_ids)
            self.score_scale = score_scale
            # The loss is a mean over this micro-batch's pairs: Trainer must divide it by the accumulation steps.
            self.model_accepts_loss_kwargs = False
            self._sums = {"pair_accuracy": 0.0, "score_gap": 0.0, "pairs": 0}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            scores = last_position_scores(model, inputs, self.digit_ids, share_prefix=not self.args.gradient_checkpointing)
            gap = scores[0::2] - scores[1::2]
            loss = -F.logsigmoid(self.score_scale * gap).mean()
            if model.training:
                self._sums["pair_accuracy"] += float((gap > 0).float().sum())
                self._sums["score_gap"] += float(gap.detach().sum())
                self._sums["pairs"] += len(gap)
            return (loss, scores) if return_outputs else loss

        def log(self, logs, start_time=None):
            if self._sums["pairs"] and "loss" in logs:
                n = self._sums["pairs"]
                logs["pair_accuracy"] = self._sums["pair_accuracy"] / n
                logs["score_gap"] = self._sums["score_gap"] / n
                logs["pairs"] = n
                self._sums = {"pair_accuracy": 0.0, "score_gap": 0.0, "pairs": 0}
            super().log(logs, start_time)

    return PairwiseJudgeTrainer


def run_train_judge(
    model_path: str,
    pairs_path,
    out_dir: Path,
    cfg: JudgeTrainingConfig,
    *,
    seed: int,
    judge_template_file: str | None = None,
    model: ModelConfig | None = None,
    tracking=None,
) -> dict:
    """Train `model_path`'s judge on the pairs of `pairs_path` into `out_dir`; returns the training stats.
    `tracking`: the run's tracker for this stage (see `srlm.stages.training.trainer_kwargs`), None = no loggers."""
    from transformers import TrainingArguments

    pairs, counts = human_pairs(pairs_path, cfg.max_pairs, length_balance=cfg.length_balance, seed=seed)
    template = load_template(judge_template_file, "direct")
    placement = training.Placement.of(model)
    out_dir = Path(out_dir)
    loaded = placement.load_model(model_path, out_dir, cfg.dropout)
    features, digit_ids, too_long = tokenize_pairs(pairs, loaded.tokenizer, template, cfg.max_length_tokens)
    if not features:
        raise DataError(f"{pairs_path}: all {len(pairs)} pairs have a judge prompt longer than "
                        f"judge_training.max_length_tokens={cfg.max_length_tokens}")
    model = loaded.model
    if cfg.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, training.peft_config(cfg.lora))
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # PEFT + checkpointing: the frozen embeddings' output must carry grads
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.tokenizer.eos_token_id

    key = training.resume_key_if_saving(cfg, "train-judge", model_path, features, cfg.model_dump(mode="json"), seed)
    with training.scratch_dir(out_dir, key) as scratch:
        kwargs = placement.trainer_kwargs(cfg, seed=seed, output_dir=scratch, tracking=tracking)
        kwargs.pop("max_length")  # a TRL argument; pairs were length-checked above
        args = TrainingArguments(**kwargs, remove_unused_columns=False)
        trainer_class = pairwise_trainer_class()
        if cfg.group_by_length and cfg.micro_batch_size > 1:
            trainer_class = training.length_grouped(
                trainer_class, lambda d: [max(len(f["better_ids"]), len(f["worse_ids"])) for f in d])
        trainer = trainer_class(
            model=model, args=args, train_dataset=features,
            data_collator=lambda batch: collate_pairs(batch, pad_id),
            callbacks=[training.nan_guard()], digit_ids=digit_ids, score_scale=cfg.score_scale,
        )
        training.train(trainer, scratch, cfg.save_every_steps)
        training.finish_and_save(trainer, loaded.tokenizer, out_dir, base_model=loaded.path, dtype=placement.torch_dtype)
    history = trainer.state.log_history
    stats = training.log_history_stats(history, {"pair_accuracy": "pair_accuracy_mean", "score_gap": "score_gap_mean"})
    steps_per_epoch = max(1, -(-len(features) // cfg.batch_size))
    first = [h for h in history if "pair_accuracy" in h and h.get("step", 0) <= steps_per_epoch]
    if first:
        seen = sum(h["pairs"] for h in first)
        stats["pair_accuracy_first_epoch"] = round(sum(h["pair_accuracy"] * h["pairs"] for h in first) / seen, 4)
        stats["pairs_first_epoch"] = seen
    return {**counts, "pairs_trained": len(features), "skipped_too_long": too_long, **stats}
