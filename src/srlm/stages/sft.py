"""Stage `sft`: supervised fine-tuning on IFT (+ EFT) data, loss on response tokens only (paper sections 2, 3).

    srlm sft --ift ift.jsonl [--eft eft.jsonl] --out DIR --model BASE [key=value ...]

IFT examples `{prompt, response}` become a user turn and an assistant turn. EFT examples `{prompt, response,
judgement}` become the judge prompt (the same template the loop judges with) and the judgement as the answer, so
the model learns the judge's format, ending in `Score: N`. Both go to TRL's `SFTTrainer` as prompt-completion
conversations, which puts the loss on the completion only. Without EFT this trains the paper's SFT baseline.
"""

from __future__ import annotations

import random
from pathlib import Path

from srlm.config import ModelConfig, SftConfig
from srlm.errors import DataError
from srlm.io import read_jsonl
from srlm.judge import load_template, parse_score, render
from srlm.stages import training

IFT_SCHEMA = {"prompt": str, "response": str}
EFT_SCHEMA = {"prompt": str, "response": str, "judgement": str}


def read_ift(path, limit: int | None = None) -> list[dict]:
    return read_jsonl(path, IFT_SCHEMA)[:limit]


def read_eft(path, limit: int | None = None) -> list[dict]:
    records = read_jsonl(path, EFT_SCHEMA)
    for line, record in enumerate(records, start=1):
        if parse_score(record["judgement"]) is None:
            raise DataError(f"{path}:{line}: field 'judgement' does not end in a score line 'Score: <0-5>'")
    return records[:limit]


def build_sft_examples(ift: list[dict], eft: list[dict], judge_template: str, seed: int) -> list[dict]:
    examples = [
        {"prompt": [{"role": "user", "content": r["prompt"]}], "completion": [{"role": "assistant", "content": r["response"]}]}
        for r in ift
    ] + [
        {
            "prompt": [{"role": "user", "content": render(judge_template, r["prompt"], r["response"])}],
            "completion": [{"role": "assistant", "content": r["judgement"].strip()}],
        }
        for r in eft
    ]
    random.Random(seed).shuffle(examples)
    return examples


def run_sft(
    model_path: str,
    ift_path,
    eft_path,
    out_dir: Path,
    cfg: SftConfig,
    *,
    seed: int,
    judge_template_file: str | None = None,
    max_ift_examples: int | None = None,
    max_eft_examples: int | None = None,
    model: ModelConfig | None = None,
    tracking=None,
) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ift = read_ift(ift_path, max_ift_examples)
    eft = read_eft(eft_path, max_eft_examples) if eft_path else []
    examples = build_sft_examples(ift, eft, load_template(judge_template_file), seed)

    placement = training.Placement.of(model)
    out_dir = Path(out_dir)
    key = training.resume_key_if_saving(cfg, "sft", model_path, examples, cfg.model_dump(mode="json"), seed)
    with training.scratch_dir(out_dir, key) as scratch, training.head_on_labelled_positions_only():
        args = SFTConfig(
            **placement.trainer_kwargs(cfg, seed=seed, output_dir=scratch, tracking=tracking),
            completion_only_loss=True,
        )
        # The model is created after the trainer config: under DeepSpeed ZeRO-3 that config is what makes
        # from_pretrained build it already sharded, instead of every rank holding a full copy.
        loaded = placement.load_model(model_path, out_dir, cfg.dropout)
        trainer_class = SFTTrainer
        if cfg.group_by_length and cfg.micro_batch_size > 1:  # one example per pass: nothing to pad
            trainer_class = training.length_grouped(SFTTrainer, lambda d: [len(ids) for ids in d["input_ids"]])
        trainer = trainer_class(
            model=loaded.model,
            args=args,
            train_dataset=Dataset.from_list(examples),
            processing_class=loaded.tokenizer,
            peft_config=training.peft_config(cfg.lora),
            callbacks=[training.nan_guard()],
        )
        training.train(trainer, scratch, cfg.save_every_steps)
        training.finish_and_save(trainer, loaded.tokenizer, out_dir, base_model=loaded.path, dtype=placement.torch_dtype)
    stats = training.log_history_stats(trainer.state.log_history, {"mean_token_accuracy": "token_accuracy_mean"})
    return {"ift_examples": len(ift), "eft_examples": len(eft), "processes": trainer.args.world_size, **stats}
