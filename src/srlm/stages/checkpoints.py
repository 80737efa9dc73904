"""Intermediate checkpoints of a DPO run, for checkpoint selection (`srlm.stages.select`): every
`dpo.checkpoint_every_steps` optimizer steps a full model (LoRA merged) goes into models/.m{t+1}.checkpoints/step-N,
with training.json saying which run saved them. Training goes on, on the unmerged adapters.

The merge here is srlm's own, not PEFT's `merge_and_unload`: that merges in place and unwraps the model being
trained, and under ZeRO-3 or FSDP no rank holds the weights to merge into; this one adds the LoRA deltas into a copy
of the gathered state dict, layer by layer on the CPU. The final model is still merged by PEFT
(`srlm.stages.training.finish_and_save`); the test of this merge checks it against PEFT's.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from srlm.errors import SrlmError
from srlm.io import read_json, write_json
from srlm.models import DROPOUT_KEYS, check_free_disk, inference_config, save_model, work_dir

TRAINING_FILE = "training.json"


def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where the intermediate checkpoints of the model trained into `out_dir` are kept."""
    return work_dir(Path(out_dir), "checkpoints")



def _discard(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def add_checkpoint_saver(trainer, every_steps: int | None, out_dir: Path, tokenizer) -> None:
    """Make `trainer` save a full model every `every_steps` optimizer steps into `checkpoint_dir(out_dir)/step-N`.

    The last step is not saved there: it is the final model, which the training stage saves to `out_dir` itself.
    With `every_steps` None nothing is saved, and checkpoints left by an earlier training into `out_dir` are
    removed, since they no longer belong to the model there.
    """
    ckpt_dir = checkpoint_dir(out_dir)
    if every_steps is None:
        if trainer.is_world_process_zero() and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        return
    from transformers import TrainerCallback

    class SaveCheckpoints(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
                _discard(ckpt_dir)  # a killed training's checkpoints are never mixed with this one's
                ckpt_dir.mkdir()
                count = (state.max_steps - 1) // every_steps  # before step 1, not at step N: they and the final model
                if count > 0:
                    check_free_disk(trainer.model, ckpt_dir, copies=count + 1,
                                    what=f"{count} checkpoints (dpo.checkpoint_every_steps) and the final model")
                write_json(ckpt_dir / TRAINING_FILE, {"run_id": uuid.uuid4().hex, "every_steps": every_steps,
                                                      "max_steps": state.max_steps, "started": time.time()})

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every_steps == 0 and state.global_step < state.max_steps:
                save_merged_checkpoint(trainer, tokenizer, ckpt_dir / f"step-{state.global_step}")

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                info = read_json(ckpt_dir / TRAINING_FILE)
                write_json(ckpt_dir / TRAINING_FILE, {**info, "final_step": state.global_step})

    trainer.add_callback(SaveCheckpoints())


def save_merged_checkpoint(trainer, tokenizer, out_dir: Path) -> None:
    """Save the model being trained as a plain checkpoint (LoRA merged), without changing it. Call on every rank.

    The weights come from the accelerator, which gathers ZeRO-3 and FSDP shards (every rank must take part);
    LoRA deltas are added into a copy of the weights, so training continues on the unmerged adapters. Rank 0
    writes, atomically, through `srlm.models.save_model`; the others wait for it.
    """
    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model)
    if trainer.is_world_process_zero():
        model = accelerator.unwrap_model(trainer.model)
        peft_config = getattr(model, "peft_config", None)
        if peft_config:
            adapter = model.active_adapter
            state_dict = merge_lora_state_dict(state_dict, peft_config[adapter], adapter)
            model = model.get_base_model()
        with _inference_config_while_saving(model):
            save_model(_StateDictModel(model, state_dict), tokenizer, out_dir)
    accelerator.wait_for_everyone()


class _StateDictModel:
    """A model as `save_model` sees it, whose `save_pretrained` writes the given state dict with the model's config."""

    def __init__(self, model, state_dict: dict):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, path, **kwargs):
        self.model.save_pretrained(path, state_dict=self.state_dict, **kwargs)


_MISSING = object()


@contextmanager
def _inference_config_while_saving(model):
    """The saved config is for inference (dropout 0, cache on), as the final model's; training's is restored after."""
    saved = {name: getattr(model.config, name, _MISSING) for name in (*DROPOUT_KEYS, "use_cache")}
    inference_config(model.config)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                if name in model.config.__dict__:
                    delattr(model.config, name)
            else:
                setattr(model.config, name, value)


def merge_lora_state_dict(state_dict: dict, config, adapter: str = "default") -> dict:
    """A PEFT LoRA model's state dict -> the plain state dict of the merged model, as `merge_and_unload` would give.

    W' = W + (B @ A) * alpha / r (alpha / sqrt(r) with rsLoRA), computed in float32 and stored in W's dtype on
    the CPU, one layer at a time, so merging never holds a second copy of the model on the accelerator.
    """
    if getattr(config, "use_dora", False) or getattr(config, "rank_pattern", None) or \
            getattr(config, "alpha_pattern", None):
        raise SrlmError("saving merged checkpoints supports plain LoRA only (no DoRA, no per-module ranks)")
    scaling = config.lora_alpha / (math.sqrt(config.r) if getattr(config, "use_rslora", False) else config.r)
    prefix = "base_model.model."
    out = {}
    for key, value in state_dict.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if ".lora_" in name or ".original_module." in name:
            continue  # adapter weights (merged below) and the frozen originals of modules_to_save
        if f".modules_to_save.{adapter}." in name:
            out[name.replace(f".modules_to_save.{adapter}.", ".")] = value
            continue
        if ".base_layer." not in name:
            out[name] = value
            continue
        module = key.rsplit(".base_layer.", 1)[0]
        lora_a = state_dict.get(f"{module}.lora_A.{adapter}.weight")
        lora_b = state_dict.get(f"{module}.lora_B.{adapter}.weight")
        if name.endswith(".base_layer.weight") and lora_a is not None and lora_b is not None:
            delta = (lora_b.float() @ lora_a.float()) * scaling
            if getattr(config, "fan_in_fan_out", False):
                delta = delta.T
            value = (value.float() + delta).to(value.dtype).cpu()
        out[name.replace(".base_layer.", ".")] = value
    return out
