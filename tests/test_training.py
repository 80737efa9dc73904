"""SFT and DPO through TRL on the tiny model: full and LoRA, the reference model, and the training fault guards."""

import json
from pathlib import Path

import pytest

from srlm.config import DpoConfig, SftConfig
from srlm.errors import SrlmError
from srlm.stages.dpo import run_dpo
from srlm.stages.sft import run_sft


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


@pytest.fixture
def data(tmp_path):
    ift = tmp_path / "ift.jsonl"
    ift.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}) + "\n"
                           for i in range(4)))
    eft = tmp_path / "eft.jsonl"
    eft.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?", "response": "No idea.",
                                       "judgement": "The response does not answer.\nScore: 1"}) + "\n" for i in range(4)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
                                         "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
                                         "rejected": [{"role": "assistant", "content": "No idea at all."}]}) + "\n"
                             for i in range(4)))
    return ift, eft, pairs


@pytest.mark.parametrize("lora", [False, True])
def test_sft_then_dpo_change_the_weights_and_save_plain_checkpoints(tiny_model_dir, tmp_path, data, lora):
    ift, eft, pairs = data
    sft_cfg = SftConfig(epochs=1, batch_size=2, micro_batch_size=1, learning_rate=1e-3, dropout=0.0,
                        lora={"enabled": lora, "r": 4, "alpha": 8})
    stats = run_sft(str(tiny_model_dir), ift, eft, tmp_path / "m1", sft_cfg, seed=0)
    assert stats["ift_examples"] == 4 and stats["eft_examples"] == 4 and stats["steps"] == 4
    assert "loss_first" in stats and "loss_last" in stats
    base, m1 = _weights(tiny_model_dir), _weights(tmp_path / "m1")
    assert set(m1) == set(base)  # LoRA merged: no adapter tensors, same names as the base model
    assert any(not (m1[k] == base[k]).all() for k in base)

    dpo_cfg = DpoConfig(epochs=1, batch_size=2, micro_batch_size=1, learning_rate=1e-3, dropout=0.0,
                        lora={"enabled": lora, "r": 4, "alpha": 8})
    stats = run_dpo(str(tmp_path / "m1"), pairs, tmp_path / "m2", dpo_cfg, seed=0)
    assert stats["pairs"] == 4 and stats["loss_first"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    assert "reward_accuracy_last" in stats and "reward_margin_last" in stats
    m2 = _weights(tmp_path / "m2")
    assert set(m2) == set(base) and any(not (m2[k] == m1[k]).all() for k in m1)
    assert not list(tmp_path.glob(".m*"))  # no trainer scratch or staging folders left behind


def test_exploding_loss_stops_without_writing_a_model(tiny_model_dir, tmp_path, data):
    ift, eft, _ = data
    cfg = SftConfig(epochs=3, batch_size=1, micro_batch_size=1, learning_rate=1e9, learning_rate_end=1e9, dropout=0.0)
    with pytest.raises(SrlmError, match="training (loss|grad_norm) became (nan|inf)"):
        run_sft(str(tiny_model_dir), ift, eft, tmp_path / "m1", cfg, seed=0)
    assert not (tmp_path / "m1").exists()


def test_not_enough_disk_is_found_before_training(tiny_model_dir, tmp_path, data, monkeypatch):
    import shutil
    from collections import namedtuple

    ift, eft, _ = data
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(SrlmError, match="GiB free, saving the model needs about"):
        run_sft(str(tiny_model_dir), ift, eft, tmp_path / "m1", SftConfig(epochs=1, batch_size=1, micro_batch_size=1),
                seed=0)
    assert not (tmp_path / "m1").exists()


def test_dpo_refuses_an_empty_pair_file(tiny_model_dir, tmp_path):
    (tmp_path / "pairs.jsonl").write_text("")
    with pytest.raises(SrlmError, match="zero preference pairs; refusing to train on nothing"):
        run_dpo(str(tiny_model_dir), tmp_path / "pairs.jsonl", tmp_path / "m2", DpoConfig(), seed=0)


def test_prompts_longer_than_the_limit_are_skipped_and_counted(tmp_path):
    from srlm.backends import make_backend
    from srlm.config import RespondConfig
    from srlm.stages.respond import run_respond

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "short one"}) + "\n" + json.dumps({"prompt": "long " * 50}) + "\n")
    stats = run_respond(prompts, tmp_path / "r.jsonl", make_backend("fake"), RespondConfig(max_prompt_tokens=10), seed=0)
    assert stats["skipped_prompt_too_long"] == 1 and stats["prompts"] == 1 and stats["responses"] == 4


# ---------------------------------------------------------------------------------------------------------------
# Loading for training and saving when no rank holds the whole model (ZeRO-3, FSDP)


def test_dropout_is_set_when_the_model_is_built_and_off_in_the_saved_model(tiny_model_dir, tmp_path, data):
    """Attention layers copy config.attention_dropout when built: the rate must reach the layers, not only the config."""
    import torch

    from srlm.models import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu", dropout=0.25)
    attention = loaded.model.model.layers[0].self_attn
    assert attention.attention_dropout == 0.25
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    loaded.model.train()
    torch.manual_seed(0)
    first = loaded.model(ids).logits
    second = loaded.model(ids).logits
    assert not torch.equal(first, second)  # dropout really acts in training mode

    ift, eft, _ = data
    run_sft(str(tiny_model_dir), ift, eft, tmp_path / "m1",
            SftConfig(epochs=1, batch_size=2, micro_batch_size=1, dropout=0.1), seed=0)
    saved = json.loads((tmp_path / "m1" / "config.json").read_text())
    assert saved["attention_dropout"] == 0.0 and saved["use_cache"] is True


def test_resolve_device_gives_each_launched_rank_its_own_gpu(monkeypatch):
    import torch

    from srlm.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == "cuda:3"
    assert resolve_device("cpu") == "cpu"  # an explicit device wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


@pytest.mark.parametrize("lora", [False, True])
def test_gathered_save_equals_the_plain_save(tiny_model_dir, tmp_path, data, monkeypatch, lora):
    """The ZeRO-3/FSDP save path (trainer.save_model on every rank, LoRA merged into a fresh copy of the base model on
    rank 0) run in one process: it must write the same checkpoint as the plain path, safetensors only."""
    import torch

    from srlm.stages import training

    ift, eft, _ = data
    cfg = SftConfig(epochs=1, batch_size=2, micro_batch_size=1, learning_rate=1e-3, dropout=0.1,
                    lora={"enabled": lora, "r": 4, "alpha": 8})
    run_sft(str(tiny_model_dir), ift, eft, tmp_path / "plain", cfg, seed=0)
    monkeypatch.setattr(training, "needs_gathering", lambda trainer: True)
    run_sft(str(tiny_model_dir), ift, eft, tmp_path / "gathered", cfg, seed=0)

    plain, gathered = _weights(tmp_path / "plain"), _weights(tmp_path / "gathered")
    assert set(plain) == set(gathered) == set(_weights(tiny_model_dir))  # no adapter tensors left
    assert max(float((plain[k] - gathered[k]).abs().max()) for k in plain) <= 1e-6
    assert any(not torch.equal(gathered[k], w) for k, w in _weights(tiny_model_dir).items())
    names = {p.name for p in (tmp_path / "gathered").iterdir()}
    assert "training_args.bin" not in names and not any(n.endswith((".bin", ".pt")) for n in names)
    assert "tokenizer_config.json" in names and "adapter_config.json" not in names
    saved = json.loads((tmp_path / "gathered" / "config.json").read_text())
    assert saved["attention_dropout"] == 0.0 and saved["use_cache"] is True
    assert not list(tmp_path.glob(".*"))  # no staging, gathering or scratch folder left behind


def test_length_grouped_batches_hold_similar_lengths():
    """The DPO trainer's sampler puts pairs of similar token length in one optimizer batch, and visits each once."""
    import random
    from types import SimpleNamespace

    import torch
    from trl import DPOTrainer

    from srlm.stages import training
    from srlm.stages.dpo import pair_lengths

    rng = random.Random(0)
    n, micro = 256, 2
    dataset = {name: [[0] * rng.randint(1, 300) for _ in range(n)] for name in ("prompt_ids", "chosen_ids", "rejected_ids")}
    lengths = pair_lengths(dataset)
    trainer = object.__new__(training.length_grouped(DPOTrainer, pair_lengths))
    trainer.args = SimpleNamespace(train_batch_size=2, gradient_accumulation_steps=2)
    trainer.train_dataset = dataset
    torch.manual_seed(0)
    order = list(trainer._get_train_sampler())
    assert sorted(order) == list(range(n))

    def padding(indices):  # pad tokens added when each micro-batch is padded to its longest pair
        batches = [indices[i:i + micro] for i in range(0, n, micro)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    # Sorted within groups of 16 optimizer batches (the sampler's group size for 256 examples): a fraction of the
    # padding of the dataset's own order (measured 0.06 with this seed).
    assert padding(order) < 0.25 * padding(list(range(n)))


def _crash_after_save(monkeypatch, at_step):
    """Make training die right after the trainer checkpoint of step `at_step` is written, like a kill would."""
    from transformers import TrainerCallback

    from srlm.stages import training

    guard = training.nan_guard

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == at_step:
                raise KeyboardInterrupt

    def with_crash():
        return [guard(), Crash()]

    monkeypatch.setattr(training, "nan_guard", lambda: _Both(with_crash()))


class _Both:
    """Two callbacks where the trainers take one (the stages pass callbacks=[training.nan_guard()])."""

    def __new__(cls, callbacks):
        from transformers import TrainerCallback

        class Combined(TrainerCallback):
            pass

        combined = Combined()
        for name in ("on_log", "on_save"):
            handlers = [getattr(c, name) for c in callbacks if type(c).__dict__.get(name)]

            def call(*args, _handlers=handlers, **kwargs):
                for handler in _handlers:
                    handler(*args, **kwargs)

            setattr(combined, name, call)
        return combined


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_a_killed_training_stage_resumes_from_its_last_checkpoint_to_the_same_weights(
        tiny_model_dir, tmp_path, data, monkeypatch, capsys, stage):
    ift, eft, pairs = data
    if stage == "sft":
        cfg = SftConfig(epochs=2, batch_size=1, micro_batch_size=1, learning_rate=1e-3, dropout=0.0, save_every_steps=2)

        def train(out):
            return run_sft(str(tiny_model_dir), ift, eft, out, cfg, seed=0)
    else:
        cfg = DpoConfig(epochs=2, batch_size=1, micro_batch_size=1, learning_rate=1e-3, dropout=0.0, save_every_steps=2)

        def train(out):
            return run_dpo(str(tiny_model_dir), pairs, out, cfg, seed=0)

    clean = train(tmp_path / "clean" / "m")
    with monkeypatch.context() as patch:
        _crash_after_save(patch, at_step=4)
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path / "killed" / "m")
    scratch = tmp_path / "killed" / ".m.trainer"
    assert (scratch / "checkpoint-4").is_dir() and not (tmp_path / "killed" / "m").exists()
    capsys.readouterr()
    from transformers import Trainer

    steps_run = []
    original_step = Trainer.training_step
    monkeypatch.setattr(Trainer, "training_step",
                        lambda self, *a, **k: steps_run.append(1) or original_step(self, *a, **k))
    resumed = train(tmp_path / "killed" / "m")
    assert "resuming training from checkpoint-4" in capsys.readouterr().out
    assert len(steps_run) == clean["steps"] - 4  # only the steps after the checkpoint were trained again
    assert resumed["steps"] == clean["steps"]
    a, b = _weights(tmp_path / "clean" / "m"), _weights(tmp_path / "killed" / "m")
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from the uninterrupted run's"
    assert not scratch.exists()  # removed once the model is saved


def test_an_interrupt_before_any_checkpoint_leaves_no_trainer_folder(tiny_model_dir, tmp_path, data, monkeypatch):
    ift, eft, _ = data
    cfg = SftConfig(epochs=1, batch_size=1, micro_batch_size=1, learning_rate=1e-3, dropout=0.0, save_every_steps=100)
    from transformers import Trainer

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sft(str(tiny_model_dir), ift, eft, tmp_path / "m1", cfg, seed=0)
    assert not list(tmp_path.glob(".m1*"))


def test_label_smoothing_trains_conservative_dpo(tiny_model_dir, tmp_path, data):
    """dpo.label_smoothing = e gives each step the loss -(1-e) log s(m) - e log s(-m), m = the step's reward margin
    (beta x the log-ratio difference, one pair per step); e = 0 is plain DPO, -log s(m). TRL's plain loss ignores
    label_smoothing, so this is what shows the smoothing reaches the loss (pairs.policy=consistency_weighted)."""
    import math

    from srlm.stages.dpo import loss_arguments

    _, _, pairs = data

    def softplus(x):
        return math.log1p(math.exp(x))

    def steps(eps):
        cfg = DpoConfig(epochs=3, batch_size=1, micro_batch_size=1, learning_rate=5e-3, dropout=0.0,
                        label_smoothing=eps, gradient_checkpointing=False)
        return run_dpo(str(tiny_model_dir), pairs, tmp_path / f"m_{eps}", cfg, seed=0)["per_step"]

    assert loss_arguments(DpoConfig()) == {}  # plain DPO keeps TRL's default loss
    smoothed = steps(0.3)
    moved = [s for s in smoothed if abs(s["reward_margin"]) > 0.05]
    assert moved, smoothed  # the margin moves away from 0, where every loss is ln 2
    for s in smoothed:
        m = s["reward_margin"]
        assert s["loss"] == pytest.approx(0.7 * softplus(-m) + 0.3 * softplus(m), abs=2e-3), s
    assert any(abs(s["loss"] - softplus(-s["reward_margin"])) > 0.01 for s in moved)  # not the plain loss
    for s in steps(0.0):
        assert s["loss"] == pytest.approx(softplus(-s["reward_margin"]), abs=2e-3), s


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_the_head_on_labelled_positions_only_trains_as_trl_does_and_is_undone_after(tiny_model_dir, tmp_path, data,
                                                                                    monkeypatch, stage):
    """On CPU the output head runs only at trained positions (training.head_on_labelled_positions_only): the same
    per-step losses and DPO margins as TRL's own way, which runs it at every position, and TRL's choice is put back
    once training ends."""
    import contextlib

    import torch
    import trl.trainer.utils as trl_utils

    from srlm.stages import training

    ift, eft, pairs = data
    original = trl_utils._use_triton
    seen = []
    rows = {(arm, part): 0 for arm in ("compact", "every_position") for part in ("trained", "no_grad")}
    scoring = trl_utils._ChunkedLogProbFunction

    class CountingRows:  # counts the positions the head scored: in training, and without grad (DPO's reference pass)
        @staticmethod
        def apply(hidden, *args):
            rows[run, "trained" if torch.is_grad_enabled() else "no_grad"] += hidden.shape[0]
            return scoring.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingRows)

    def train(folder):
        if stage == "sft":
            cfg = SftConfig(epochs=2, batch_size=2, micro_batch_size=2, learning_rate=1e-3, dropout=0.0)
            return run_sft(str(tiny_model_dir), ift, eft, tmp_path / folder, cfg, seed=0)["per_step"]
        cfg = DpoConfig(epochs=2, batch_size=2, micro_batch_size=2, learning_rate=1e-3, dropout=0.0)
        return run_dpo(str(tiny_model_dir), pairs, tmp_path / folder, cfg, seed=0)["per_step"]

    run = "compact"
    compact = train("compact")
    assert trl_utils._use_triton is original and not original(torch.device("cpu"))
    with monkeypatch.context() as m:
        m.setattr(training, "head_on_labelled_positions_only", contextlib.nullcontext)
        m.setattr(trl_utils, "_use_triton", lambda device: seen.append(device.type) or original(device))
        run = "every_position"
        every_position = train("every_position")
    assert seen  # TRL's fused head did ask, and scored every position
    for part in ("trained", "no_grad") if stage == "dpo" else ("trained",):  # DPO's reference pass too
        assert 0 < rows["compact", part] < 0.75 * rows["every_position", part], rows  # prompts, padding not scored
    assert len(compact) == len(every_position) > 0
    for a, b in zip(compact, every_position):
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-3), (key, a, b)
