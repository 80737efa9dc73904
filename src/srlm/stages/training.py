"""What SFT and DPO share: trainer arguments for CPU or GPU, LoRA, the NaN guard, the disk check and saving.

Training itself is TRL's (`SFTTrainer`, `DPOTrainer`); this module only sets them up the way the paper and this
machine need: precision chosen for the device (fp32 on CPU, where bf16 runs in a slow fallback), cosine decay to
a floor learning rate, dropout from `sft/dpo.dropout` (paper 0.1), no checkpoints or loggers that the user did not ask for
(`tracking.report_to` asks for loggers).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from srlm.config import LoraConfig, ModelConfig
from srlm.errors import SrlmError
from srlm.models import fresh_dir, inference_config, move_into_place, save_model, work_dir


@dataclass
class Placement:
    """Where and how a training stage loads its model: the resolved device, the torch dtype training runs in, and
    `load_model`'s other keywords (the model section's dtype string, chat template, remote code)."""

    device: str
    torch_dtype: object
    load: dict

    @classmethod
    def of(cls, model) -> "Placement":
        """From the model section (`ModelConfig`; None = its defaults). The path loaded is the stage's own: a stage
        trains M_t, not always `model.name_or_path`."""
        from srlm.models import resolve_device, resolve_dtype

        load = (model or ModelConfig()).load_options()
        device = resolve_device(load.pop("device"))
        return cls(device=device, torch_dtype=resolve_dtype(load["dtype"], device), load=load)

    def load_model(self, model_path: str, out_dir: Path, dropout: float):
        """The model to train, not yet placed (the trainer places it), after the check that the trained model will
        fit on the disk at `out_dir`."""
        from srlm.models import check_free_disk, load_model

        loaded = load_model(model_path, **self.load, device=self.device, place=False, dropout=dropout)
        check_free_disk(loaded.model, Path(out_dir).parent)
        return loaded

    def trainer_kwargs(self, cfg, *, seed: int, output_dir: str, tracking=None) -> dict:
        return trainer_kwargs(cfg=cfg, device=self.device, dtype=self.torch_dtype, seed=seed, output_dir=output_dir,
                              tracking=tracking)


def trainer_kwargs(*, cfg, device: str, dtype, seed: int, output_dir: str, tracking=None) -> dict:
    """Keyword arguments shared by SFTConfig and DPOConfig.

    `tracking` (a `srlm.tracking.StageTracking`, from `tracking.stage_tracking`) turns on the trainers' `report_to`
    for this stage: its integrations, run name and project, and the environment they read (TensorBoard's folder,
    the project); None = no loggers, as without tracking.
    """
    import torch

    # batch_size is the global batch: under accelerate/torchrun every rank takes micro_batch_size examples per step.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set on every rank by torchrun, accelerate and deepspeed
    per_step = cfg.micro_batch_size * world_size
    if cfg.batch_size % per_step:
        raise SrlmError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size {cfg.micro_batch_size}"
                        + (f" x {world_size} processes" if world_size > 1 else ""))
    peak = cfg.learning_rate
    return dict(
        output_dir=output_dir,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // per_step,
        learning_rate=peak,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": min(cfg.learning_rate_end, peak)},
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        max_length=cfg.max_length_tokens,
        bf16=dtype == torch.bfloat16,
        fp16=False,
        use_cpu=device == "cpu",
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_nan_inf_filter=False,  # the default hides a NaN loss from the logs, and so from the guard below
        # Trainer checkpoints only when asked for (sft/dpo.save_every_steps): they let a killed stage resume.
        **({"save_strategy": "steps", "save_steps": cfg.save_every_steps, "save_total_limit": 1}
           if getattr(cfg, "save_every_steps", None) else {"save_strategy": "no"}),
        **(tracking_args(tracking) if tracking is not None else {"report_to": []}),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def tracking_args(tracking) -> dict:
    """The trainer arguments of a stage's tracking; sets the environment its integrations read (see trainer_kwargs)."""
    import dataclasses

    from transformers import TrainingArguments

    tracking.apply()
    args = tracking.trainer_args()
    if "logging_dir" in {f.name for f in dataclasses.fields(TrainingArguments)}:
        args["logging_dir"] = str(tracking.logging_dir)  # transformers before 5 reads the folder from here
    return args


def length_grouped(trainer_class, lengths_of):
    """`trainer_class` (a TRL trainer) with training batches of similar-length examples.

    With micro_batch_size > 1 every sequence of a batch is padded to the longest; grouping by length cuts that
    waste. transformers' LengthGroupedSampler keeps the order random at the scale that matters: it shuffles, takes
    groups of up to 50 optimizer batches, and sorts only within each group. The trainers drop unused columns before the
    sampler is built, so the lengths are read from the tokenized columns they keep (`lengths_of(dataset)`).
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class LengthGroupedTrainer(trainer_class):
        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=lengths_of(dataset))

    LengthGroupedTrainer.__name__ = f"LengthGrouped{trainer_class.__name__}"
    return LengthGroupedTrainer


def peft_config(lora: LoraConfig):
    if not lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, task_type="CAUSAL_LM")





def nan_guard():
    """A callback that stops training at the first non-finite loss, before a broken model can be saved."""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise SrlmError(
                        f"training {key} became {value} at step {state.global_step}; stopping without saving a "
                        "model (lower the learning rate, or check the data)"
                    )

    return StopOnNonFiniteLoss()


def finish_and_save(trainer, tokenizer, out_dir: Path, *, base_model: str, dtype) -> None:
    """Save the trained model as one plain checkpoint (LoRA merged), atomically, whatever the process layout.

    `base_model` is the checkpoint training started from and `dtype` the dtype it was loaded in: with LoRA under
    ZeRO-3 or FSDP the adapters are merged into a fresh copy of it (see `_save_gathered`).
    """
    inference_config(trainer.model.config)
    if needs_gathering(trainer):
        _save_gathered(trainer, tokenizer, out_dir, base_model=base_model, dtype=dtype)
        return
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    # Under DDP every rank holds the same weights and all share out_dir: one writes, the others wait for it.
    if trainer.is_world_process_zero():
        save_model(model, tokenizer, out_dir)
    trainer.accelerator.wait_for_everyone()


def needs_gathering(trainer) -> bool:
    """True where no rank holds the whole model: DeepSpeed (ZeRO-3 partitions the weights) or FSDP."""
    return bool(trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled)


def _save_gathered(trainer, tokenizer, out_dir: Path, *, base_model: str, dtype) -> None:
    """Saving when no rank holds the whole model (DeepSpeed ZeRO-3, FSDP).

    `trainer.save_model` is collective: every rank takes part while the weights are gathered (ZeRO-3's
    `zero3_save_16bit_model`, FSDP's FULL_STATE_DICT) and rank 0 writes them. A LoRA model gathers only its adapters;
    rank 0 then merges them into a fresh CPU copy of the base model, which needs the base model's size in host RAM
    once. The result is renamed into place only when complete, like every other model srlm writes. The config it
    writes is the live one, which `finish_and_save` has already set up for inference.
    """
    out_dir = Path(out_dir)
    gathered = work_dir(out_dir, "gathered")
    main = trainer.is_world_process_zero()
    if main:
        fresh_dir(gathered)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(gathered))
    if main:
        (gathered / "training_args.bin").unlink(missing_ok=True)  # a pickle: srlm's checkpoints are safetensors only
        if (gathered / "adapter_config.json").exists():
            merged = merge_adapters(base_model, gathered, dtype)
            save_model(merged, tokenizer, out_dir)
        else:
            tokenizer.save_pretrained(gathered)
            move_into_place(gathered, out_dir)
        shutil.rmtree(gathered, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def merge_adapters(base_model: str, adapter_dir: Path, dtype):
    """A plain model: the base checkpoint (on CPU) with the saved LoRA adapters merged into its weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    inference_config(merged.config)
    return merged


RESUME_KEY_FILE = "resume_key.txt"


def resume_key_if_saving(cfg, *parts) -> str | None:
    """`resume_key(*parts)` when the stage saves trainer checkpoints (`save_every_steps`), else None (nothing to
    resume from)."""
    return resume_key(*parts) if cfg.save_every_steps else None


def resume_key(*parts) -> str:
    """A hash of everything a training run's result depends on (model, data files' bytes, settings, seed): a
    trainer checkpoint is resumed only by a run with the same key."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, (str, Path)) and str(part) and Path(part).is_dir():
            # A model folder: its weight and config files' names, sizes and modification times (hashing 140 GB of
            # weights is not worth it; a retrained model is rewritten, so its times change; a model card is not
            # part of the model).
            digest.update(json.dumps(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                            for f in Path(part).iterdir()
                                            if f.suffix == ".safetensors" or f.name == "config.json")).encode())
        elif isinstance(part, Path) or (isinstance(part, str) and part and Path(part).is_file()):
            digest.update(Path(part).read_bytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


@contextmanager
def scratch_dir(out_dir: Path, key: str | None = None):
    """The trainer's working folder beside the output, at a fixed name.

    Without `key` a killed run's leftovers are cleared. With `key` (training with save_every_steps) the folder is
    kept when it was made by a run with the same key, so that its last checkpoint can be resumed (see
    `last_checkpoint`); a folder from other settings or data is cleared. It is removed once the model is saved,
    and on an interrupt or error when it holds no checkpoint, so nothing empty is left behind.
    """
    path = work_dir(out_dir, "trainer")
    # All ranks share the folder; only rank 0 clears and removes it. The process group does not exist yet, so the
    # launcher's RANK says who that is.
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        stamp = path / RESUME_KEY_FILE
        if key is None or not stamp.is_file() or stamp.read_text().strip() != key:
            fresh_dir(path)
            if key is not None:
                stamp.write_text(key + "\n")
    finished = False
    try:
        yield str(path)
        finished = True
    finally:
        if main and (finished or last_checkpoint(path) is None):
            shutil.rmtree(path, ignore_errors=True)


def last_checkpoint(scratch) -> str | None:
    """The newest complete trainer checkpoint in the scratch folder, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    scratch = Path(scratch)
    if not scratch.is_dir():
        return None
    found = get_last_checkpoint(str(scratch))
    # A checkpoint is complete once the trainer wrote its state, the last file it saves.
    return found if found and (Path(found) / "trainer_state.json").is_file() else None


def train(trainer, scratch: str, save_every_steps: int | None) -> None:
    """trainer.train(), resumed from the last checkpoint in `scratch` when there is one."""
    resume = last_checkpoint(scratch) if save_every_steps else None
    if resume:
        print(f"srlm: resuming training from {Path(resume).name} (saved every {save_every_steps} steps)", flush=True)
    trainer.train(resume_from_checkpoint=resume)


@contextmanager
def head_on_labelled_positions_only():
    """TRL's fused output head, run only at the positions that have a label on CPU too: around a trainer's
    construction (DPO computes the reference log-probabilities there) and its training.

    SFTTrainer and DPOTrainer score tokens through TRL's fused head (`add_fused_lm_head`): the output projection over
    the vocabulary and its log-softmax, in tiles, without the full logits. On CUDA it runs only at the positions
    whose next token is trained on; on other devices it runs at every position (prompt and padding too) and masks
    afterwards, because on Neuron a varying number of positions would recompile the tiles. On CPU nothing
    recompiles, and the skipped positions are most of the work: an EFT example's judge prompt is ~500 tokens before
    a ~100-token judgement, and the head is a fifth of SmolLM2's weights. TRL decides this in one private function
    of `trl.trainer.utils` (`_use_triton`, read only there for that choice; the kernels module has its own copy
    that picks Triton or torch tiles and is left alone); it is replaced for the length of training. The loss and
    gradients are the same sums over the same positions; the matmuls over fewer rows may round differently in the
    last bits (the quickstart's three models came out byte-identical: benchmarks/README.md). Where a TRL version no longer has the function, training runs as TRL does and says so once.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        print("srlm: this TRL has no trl.trainer.utils._use_triton; its output head scores every position", flush=True)
        yield
        return
    trl_utils._use_triton = lambda device: True if device.type == "cpu" else original(device)  # others: as TRL does
    try:
        yield
    finally:
        trl_utils._use_triton = original


def log_history_stats(history: list[dict], keys: dict[str, str]) -> dict:
    """Logged training metrics (e.g. rewards/accuracies): the mean over all logged steps and the value at the last
    one (`<name>_last`), plus the first and last loss. The first DPO step always shows accuracy 0 (policy equals
    reference), so the last value is the one that says where training ended."""
    out = {}
    for key, name in keys.items():
        values = [h[key] for h in history if key in h and isinstance(h[key], (int, float))]
        if values:
            out[name] = round(sum(values) / len(values), 4)
            out[f"{name}_last"] = round(values[-1], 4)
    # Every logged step, for the report's training curves (logging_steps=1: one entry per optimizer step).
    out["per_step"] = [
        {"step": h.get("step"), "loss": round(h["loss"], 4),
         **{name: round(h[key], 4) for key, name in keys.items() if isinstance(h.get(key), (int, float))}}
        for h in history if isinstance(h.get("loss"), (int, float))
    ]
    losses = [h["loss"] for h in history if "loss" in h]
    if losses:
        out["loss_first"], out["loss_last"] = round(losses[0], 4), round(losses[-1], 4)
    train = [h for h in history if "train_runtime" in h]
    if train:
        out["train_seconds"] = round(train[-1]["train_runtime"], 3)
    out["steps"] = max((h.get("step", 0) for h in history), default=0)
    return out
