"""Scale-out: the training stages under `accelerate launch`, sharded generation, the shipped accelerate configs and
the scale-out recipes. Everything runs on the 2-layer tiny model (tests/tiny_model.py), on CPU.

- `srlm sft` and `srlm dpo` run as 2 gloo processes (accelerate_configs/cpu_gloo_2proc.yaml) and as 1 plain process
  with the same global batch (2 processes x micro 1 x accumulation 2 vs 1 process x micro 1 x accumulation 4). The
  loss the trainer logs at every step must agree within LOSS_TOL, and the saved weights nearly exactly.
- `run_respond` + `run_judge` run as 2 shard subprocesses; `merge_shards` must give byte for byte the files of one
  process.
- Every shipped accelerate config goes through accelerate's own config loader and launch validation, and the two
  scale-out recipes validate.

Under several processes, `batch_size` is the global batch, only rank 0 writes the model and clears the shared
scratch folder, and DPO's pairs are saved to disk by rank 0 so every rank reads the same reference-log-prob cache:
the unit tests below pin each of these.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import yaml

from srlm import distributed
from srlm.errors import DataError, SrlmError
from srlm.io import read_jsonl, stable_id, write_jsonl

CONFIG_DIR = Path(distributed.__file__).parent / "accelerate_configs"
GPU_CONFIGS = ["ddp", "zero2", "zero3", "fsdp"]

# Tolerance on the loss logged at each step, 1 process vs 2. The runs do the same arithmetic up to the order of the
# gradient all-reduce, so they agree far closer than this (measured: equal at the 4 significant digits the trainer
# prints; saved weights within 1e-6). 1e-2 absolute is about 0.2% of the SFT loss (~6) and 2% of the DPO loss
# (~0.5): loose enough for a float-order difference, far too tight for a different batch, data order or step count.
LOSS_TOL = 1e-2
WEIGHT_TOL = 1e-4

GLOBAL_BATCH = 4
TRAIN_EXAMPLES = 16  # a multiple of the global batch: with a remainder, accelerate pads the last step of the
# 2-process run with repeated examples (even_batches), so that step alone differs from one process (seen: 5.729
# vs 5.750 on the last of 4 steps with 15 examples).

# Turning the learning rate up makes the loss move a visible amount in 4 steps; dropout off makes both runs
# deterministic (dropout masks come from per-process random streams).
SFT_ARGS = ["sft.micro_batch_size=1", "sft.epochs=1", "data.max_ift_examples=8", "data.max_eft_examples=8",
            "sft.dropout=0.0", "sft.learning_rate=1e-3", "sft.learning_rate_end=1e-4", "sft.max_length_tokens=2048"]
DPO_ARGS = ["dpo.micro_batch_size=1", "dpo.epochs=1", "dpo.dropout=0.0", "dpo.learning_rate=1e-3",
            "dpo.learning_rate_end=1e-4", "dpo.max_length_tokens=2048"]

def _env() -> dict[str, str]:
    # One thread per process: another job on this machine measures CPU time, and two ranks share 2 cores anyway.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _run_single(stage_args: list[str]) -> str:
    result = subprocess.run([sys.executable, "-m", "srlm", *stage_args], env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _run_two_processes(stage_args: list[str]) -> str:
    result = distributed.run_launched(stage_args, num_processes=2, config_file="cpu_gloo_2proc", env=_env(),
                                      capture_output=True, timeout_seconds=300)
    return result.stdout


def _logged_losses(stdout: str) -> list[float]:
    """The `loss` of every logged step: rank 0's trainer prints each log as a Python dict on stdout."""
    losses = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{'loss'"):
            losses.append(float(ast.literal_eval(line)["loss"]))
    return losses


def _ranks_reporting(stdout: str) -> int:
    """How many processes ran the stage, as the trainer saw it (rank 0 prints the stats, with "processes")."""
    found = re.findall(r'^\s*"processes": (\d+)', stdout, flags=re.M)
    assert len(found) == 1, "the stats must be printed once, by rank 0"
    return int(found[0])


def _max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _assert_same_curve(single: str, multi: str, steps: int) -> None:
    a, b = _logged_losses(single), _logged_losses(multi)
    assert len(a) == len(b) == steps, (a, b)
    diffs = [abs(x - y) for x, y in zip(a, b)]
    assert max(diffs) <= LOSS_TOL, f"loss per step, 1 process {a} vs 2 processes {b}"


# ---------------------------------------------------------------------------------------------------------------
# Training under accelerate launch


def _check_two_process_run(single: str, multi: str) -> None:
    _assert_same_curve(single, multi, steps=TRAIN_EXAMPLES // GLOBAL_BATCH)
    assert _ranks_reporting(multi) == 2  # really two ranks, not a silent single one


@pytest.mark.slow  # two torch processes on 2 cores: about 35 s
def test_sft_two_gloo_processes_match_one_process(tiny_model_dir, tmp_path):
    from srlm.models import load_model

    common = ["--model", str(tiny_model_dir), *SFT_ARGS]
    single = _run_single(["sft", "--out", str(tmp_path / "single"), *common, f"sft.batch_size={GLOBAL_BATCH}"])
    multi = _run_two_processes(["sft", "--out", str(tmp_path / "multi"), *common, f"sft.batch_size={GLOBAL_BATCH}"])
    _check_two_process_run(single, multi)
    assert _ranks_reporting(single) == 1
    assert _max_weight_difference(tmp_path / "single", tmp_path / "multi") <= WEIGHT_TOL
    loaded = load_model(str(tmp_path / "multi"), device="cpu")  # a plain, loadable checkpoint
    assert loaded.model.config.use_cache
    assert not list(tmp_path.glob(".*"))  # no staging or scratch folder left behind


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    from srlm.loop import resolve_data_path

    ift = read_jsonl(resolve_data_path("builtin:ift"))
    pairs = [
        {"prompt": [{"role": "user", "content": ift[i]["prompt"]}],
         "chosen": [{"role": "assistant", "content": ift[i]["response"]}],
         "rejected": [{"role": "assistant", "content": ift[(i + 8) % len(ift)]["response"]}]}
        for i in range(TRAIN_EXAMPLES)
    ]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    return tmp_path / "pairs.jsonl"


@pytest.mark.slow  # two torch processes on 2 cores: about 35 s
def test_dpo_two_gloo_processes_match_one_process(tiny_model_dir, tmp_path, pairs_file):
    common = ["--model", str(tiny_model_dir), "--pairs", str(pairs_file), *DPO_ARGS]
    single = _run_single(["dpo", "--out", str(tmp_path / "single"), *common, f"dpo.batch_size={GLOBAL_BATCH}"])
    multi = _run_two_processes(["dpo", "--out", str(tmp_path / "multi"), *common, f"dpo.batch_size={GLOBAL_BATCH}"])
    _check_two_process_run(single, multi)
    assert _max_weight_difference(tmp_path / "single", tmp_path / "multi") <= WEIGHT_TOL
    assert not list(tmp_path.glob(".*"))


def test_batch_size_is_the_global_batch_under_several_processes():
    import torch

    from srlm.config import SftConfig
    from srlm.stages.training import trainer_kwargs

    with mock.patch.dict(os.environ, {"WORLD_SIZE": "2"}):
        kwargs = trainer_kwargs(cfg=SftConfig(batch_size=GLOBAL_BATCH, micro_batch_size=1), device="cpu",
                                dtype=torch.float32, seed=0, output_dir="unused")
        assert kwargs["gradient_accumulation_steps"] * 1 * 2 == GLOBAL_BATCH  # accumulation x micro x ranks
        with pytest.raises(SrlmError, match="multiple of micro_batch_size 1 x 2 processes"):
            trainer_kwargs(cfg=SftConfig(batch_size=3, micro_batch_size=1), device="cpu", dtype=torch.float32,
                           seed=0, output_dir="unused")


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_zero_writes_the_model_and_all_ranks_wait(tmp_path, rank):
    from tiny_model import build_tiny_model

    from srlm.stages.training import finish_and_save

    model, tokenizer = build_tiny_model(tmp_path, save=False)
    barriers = []
    trainer = SimpleNamespace(  # what a rank's trainer says about itself; DDP: every rank holds the full model
        model=model, model_wrapped=model, is_deepspeed_enabled=False, is_fsdp_enabled=False,
        is_world_process_zero=lambda: rank == 0, is_local_process_zero=lambda: rank == 0,
        args=SimpleNamespace(process_index=rank, world_size=2, should_save=rank == 0),
        accelerator=SimpleNamespace(is_main_process=rank == 0, process_index=rank, num_processes=2,
                                    wait_for_everyone=lambda: barriers.append(rank)),
    )
    with mock.patch.dict(os.environ, {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}):
        finish_and_save(trainer, tokenizer, tmp_path / "out", base_model=str(tmp_path), dtype=model.dtype)
    assert (tmp_path / "out" / "model.safetensors").exists() == (rank == 0)
    assert barriers == [rank]


def test_scratch_folder_belongs_to_rank_zero(tmp_path):
    from srlm.stages.training import scratch_dir

    folder = tmp_path / ".out.trainer"
    folder.mkdir()
    (folder / "rank0-file").write_text("written by rank 0")
    with mock.patch.dict(os.environ, {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}):
        with scratch_dir(tmp_path / "out") as path:
            assert Path(path) == folder
            assert (folder / "rank0-file").exists()  # rank 1 must not clear what rank 0 made
        assert folder.exists()  # nor remove it when it is done


# ---------------------------------------------------------------------------------------------------------------
# Launch commands


def test_launch_command_is_accelerate_launch_of_the_srlm_module():
    command = distributed.launch_command(["dpo", "--pairs", "p.jsonl", "--out", "m2", "dpo.beta=0.1"],
                                         num_processes=8, config_file="zero3",
                                         launch_args=["--offload_optimizer_device", "cpu"])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]  # = `accelerate launch`
    assert command[3:] == ["--config_file", str(CONFIG_DIR / "zero3.yaml"), "--num_processes", "8",
                           "--offload_optimizer_device", "cpu",
                           "-m", "srlm", "dpo", "--pairs", "p.jsonl", "--out", "m2", "dpo.beta=0.1"]
    own = CONFIG_DIR / "ddp.yaml"  # any file works, not only a shipped name
    assert distributed.launch_command(["sft", "--out", "m1"], num_processes=2, config_file=str(own))[4] == str(own)
    assert "--config_file" not in distributed.launch_command(["sft", "--out", "m1"], num_processes=1, config_file=None)


@pytest.mark.parametrize("stage_args, kwargs, message", [
    (["respond", "--prompts", "p"], {}, "only the training stages"),
    ([], {}, "got nothing"),
    (["sft"], {"num_processes": 0}, "num_processes must be a positive integer"),
    (["sft"], {"config_file": "zero4"}, "accelerate config 'zero4' not found"),
])
def test_launch_command_refuses_what_cannot_work(stage_args, kwargs, message):
    with pytest.raises(SrlmError, match=message):
        distributed.launch_command(stage_args, **{"num_processes": 2, "config_file": "ddp", **kwargs})


def test_run_launched_failure_names_command_status_and_error():
    with pytest.raises(SrlmError) as info:
        distributed.run_launched(["sft", "--out", "m1", "--no-such-flag"], num_processes=2,
                                 config_file="cpu_gloo_2proc", env=_env(), capture_output=True, timeout_seconds=120)
    text = str(info.value)
    assert "exit status" in text and "-m srlm sft --out m1 --no-such-flag" in text
    assert "the ranks' errors:\n    srlm: error: unrecognized arguments: --no-such-flag" in text
    assert "ChildFailedError" not in text  # the launcher's report says that a rank failed, never why


# ---------------------------------------------------------------------------------------------------------------
# Sharded generation

SHARD_DRIVER = """
import sys
from pathlib import Path
from srlm.backends import make_backend
from srlm.config import JudgeConfig, RespondConfig
from srlm.models import load_model
from srlm.stages.judge import run_judge
from srlm.stages.respond import run_respond

prompts, responses, judgements, model = map(Path, sys.argv[1:5])
backend = make_backend("hf", load_model(str(model), device="cpu"))
run_respond(prompts, responses, backend, RespondConfig(max_new_tokens=8), seed=0)
run_judge(responses, judgements, backend, JudgeConfig(max_new_tokens=8), seed=0)
"""


def test_two_shard_processes_merge_to_the_single_process_files(tiny_model_dir, tmp_path):
    from srlm.loop import resolve_data_path

    ift = read_jsonl(resolve_data_path("builtin:ift"))
    prompts = [{"prompt": r["prompt"]} for r in ift[:6]] + [{"prompt": ift[4]["prompt"]}]  # one duplicate
    write_jsonl(tmp_path / "prompts.jsonl", prompts)

    single = tmp_path / "single"
    subprocess.run([sys.executable, "-c", SHARD_DRIVER, str(tmp_path / "prompts.jsonl"),
                    str(single / "responses.jsonl"), str(single / "judgements.jsonl"), str(tiny_model_dir)],
                   env=_env(), check=True, timeout=300, capture_output=True)

    # Two shard processes at once: each answers its prompts and judges its own answers, as one GPU each would.
    shards = distributed.write_shards(tmp_path / "prompts.jsonl", 2, kind="prompts", out_dir=tmp_path / "shards")
    assert [len(read_jsonl(s)) for s in shards] == [3, 3]  # 6 distinct prompts; the duplicate is dropped up front
    outs = [(tmp_path / "shards" / f"responses.{i}.jsonl", tmp_path / "shards" / f"judgements.{i}.jsonl")
            for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", SHARD_DRIVER, str(s), str(r), str(j), str(tiny_model_dir)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s, (r, j) in zip(shards, outs)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    merged = tmp_path / "merged"
    distributed.merge_shards([r for r, _ in outs], merged / "responses.jsonl",
                             distributed.respond_order_key(tmp_path / "prompts.jsonl"),
                             id_field="response_id",
                             expected_ids=[r["response_id"] for r in read_jsonl(single / "responses.jsonl")])
    assert (merged / "responses.jsonl").read_bytes() == (single / "responses.jsonl").read_bytes()
    distributed.merge_shards([j for _, j in outs], merged / "judgements.jsonl",
                             distributed.judge_order_key(merged / "responses.jsonl"), id_field="response_id")
    assert (merged / "judgements.jsonl").read_bytes() == (single / "judgements.jsonl").read_bytes()
    assert len(read_jsonl(merged / "judgements.jsonl")) == 6 * 4


def test_shards_are_contiguous_balanced_and_complete():
    items = list(range(10))
    parts = [distributed.shard(items, i, 3) for i in range(3)]
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert [x for p in parts for x in p] == items
    assert [distributed.shard([1, 2], i, 4) for i in range(4)] == [[], [1], [], [2]]  # more shards than items
    for index, count in [(3, 3), (-1, 3), (0, 0)]:
        with pytest.raises(SrlmError):
            distributed.shard(items, index, count)


def _fake_responses(prompts_path: Path, out: Path, n: int = 2) -> list[dict]:
    records = [{"prompt_id": p["prompt_id"], "response_id": stable_id("response", p["prompt_id"], k), "sample_index": k,
                "prompt": p["prompt"], "response": f"answer {k}"} for p in read_jsonl(prompts_path) for k in range(n)]
    write_jsonl(out, records)
    return records


def test_split_and_merge_commands_and_every_merge_error(tmp_path, capsys):
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"question number {i}"} for i in range(5)])
    assert distributed.main(["split", str(tmp_path / "prompts.jsonl"), "--kind", "prompts", "--count", "2"]) == 0
    shards = [tmp_path / "prompts.shard-00-of-02.jsonl", tmp_path / "prompts.shard-01-of-02.jsonl"]
    assert capsys.readouterr().out.split() == [str(s) for s in shards]
    outs = [tmp_path / f"responses.shard-0{i}-of-02.jsonl" for i in range(2)]
    expected = [r for s, o in zip(shards, outs) for r in _fake_responses(s, o)]
    # Shard outputs listed in any order merge to the stage's order.
    assert distributed.main(["merge", "--kind", "respond", "--source", str(tmp_path / "prompts.jsonl"),
                             "--out", str(tmp_path / "responses.jsonl"), str(outs[1]), str(outs[0])]) == 0
    assert read_jsonl(tmp_path / "responses.jsonl") == expected

    order = distributed.respond_order_key(tmp_path / "prompts.jsonl")
    out = tmp_path / "bad.jsonl"
    with pytest.raises(DataError, match=r"shards \[1\] of 2 not given"):
        distributed.merge_shards([outs[0]], out, order)
    with pytest.raises(DataError, match="duplicate response_id .* and .*overlapping shards"):
        distributed.merge_shards([outs[0], outs[0], outs[1]], out, order)
    with pytest.raises(DataError, match="2 missing"):
        distributed.merge_shards(outs, out, order, expected_ids=[r["response_id"] for r in expected] + ["x", "y"])
    with pytest.raises(DataError, match="1 unexpected"):
        distributed.merge_shards(outs, out, order, expected_ids=[r["response_id"] for r in expected][1:])
    with pytest.raises(DataError, match="not in the source file"):
        distributed.merge_shards(outs, out, distributed.respond_order_key(shards[0]))
    outs[1].rename(outs[1].with_name(outs[1].name + ".partial"))
    with pytest.raises(DataError, match="did not finish; rerun its command to resume"):
        distributed.merge_shards(outs, out, order)
    assert not out.exists()  # nothing is written when the shards do not add up
    assert distributed.main(["merge", "--kind", "respond", "--source", str(tmp_path / "prompts.jsonl"),
                             "--out", str(out), *map(str, outs)]) == 2
    assert "shard output not found" in capsys.readouterr().err

    shard_1 = expected[len(read_jsonl(outs[0])):]
    write_jsonl(outs[1], [r for r in shard_1 if r["sample_index"] == 0])  # its prompts lost their second sample
    with pytest.raises(DataError, match="incomplete set of 2 samples"):
        distributed.merge_respond_shards(outs, out, tmp_path / "prompts.jsonl")


# ---------------------------------------------------------------------------------------------------------------
# Shipped accelerate configs and recipes


def _launch_args(name: str, extra: list[str] = ()):
    """The arguments `accelerate launch --config_file <name>.yaml` ends up with, via accelerate's own validation."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = ["--config_file", str(CONFIG_DIR / f"{name}.yaml"), *extra, "-m", "srlm", "sft", "--out", "m1"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return args, defaults


@pytest.mark.parametrize("name", distributed.ACCELERATE_CONFIGS)
def test_accelerate_config_loads_and_passes_launch_validation(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = CONFIG_DIR / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), "first line: what the config is for"
    raw = yaml.safe_load(text)
    assert {"compute_environment", "distributed_type", "mixed_precision", "num_processes", "num_machines",
            "machine_rank", "use_cpu"} <= raw.keys()
    config = load_config_from_file(str(path))  # accelerate's loader: rejects unknown top-level keys
    assert config.compute_environment.value == "LOCAL_MACHINE"

    # Keys inside deepspeed_config/fsdp_config are copied onto the launch arguments without any check; one that
    # matches no launch argument would be ignored silently.
    dests = {action.dest for action in launch_command_parser()._actions}
    for key in [*raw.get("deepspeed_config", {}), *raw.get("fsdp_config", {})]:
        assert key in dests, f"{name}.yaml: '{key}' is no accelerate launch argument"

    args, _ = _launch_args(name)
    if name == "cpu_gloo_2proc":
        assert (args.num_processes, args.use_cpu, args.multi_gpu, args.mixed_precision) == (2, True, True, "no")
    else:
        assert (args.num_processes, args.num_machines, config.use_cpu, args.mixed_precision) == (8, 1, False, "bf16")
    if name.startswith("zero"):
        assert args.use_deepspeed and args.zero_stage == int(name[-1])
        assert args.deepspeed_multinode_launcher == "standard"  # several nodes: torchrun on each, no pdsh/ssh
        assert raw["deepspeed_config"].keys().isdisjoint({"gradient_accumulation_steps", "gradient_clipping"})
    if name == "zero3":
        assert args.zero3_init_flag and args.zero3_save_16bit_model
        override, _ = _launch_args(name, ["--offload_optimizer_device", "cpu"])  # the 70B setting, from the docs
        assert override.offload_optimizer_device == "cpu"
    if name == "fsdp":
        assert args.use_fsdp and str(args.fsdp_version) == "2" and args.fsdp_state_dict_type == "FULL_STATE_DICT"
        assert args.fsdp_sync_module_states  # accelerate requires it with cpu_ram_efficient_loading
    if name == "ddp":
        assert args.multi_gpu


@pytest.mark.parametrize("recipe", ["gpu-8b-lora", "node-70b-zero3"])
def test_scale_out_recipes_validate(recipe, capsys):
    from srlm.cli import main
    from srlm.config import list_recipes, load_config

    assert main(["config", "--recipe", recipe]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert list_recipes()[recipe]  # a one-line description
    cfg = load_config(recipe)
    assert (cfg.sft.batch_size, cfg.dpo.batch_size, cfg.dpo.beta) == (16, 16, 0.1)  # the paper's
    assert (cfg.respond.num_samples, cfg.judge.num_samples) == (4, 3)
    if recipe == "gpu-8b-lora":
        assert cfg.sft.lora.enabled and cfg.dpo.lora.enabled and cfg.backend.name == "hf"
    else:
        assert resolved["backend"]["name"] == "openai" and cfg.backend.base_url.endswith("/v1")
        assert not cfg.sft.lora.enabled and (cfg.dpo.learning_rate, cfg.dpo.learning_rate_end) == (1e-6, 1e-7)


def test_docs_name_only_shipped_configs_and_recipes():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "scale-out.md").read_text(encoding="utf-8")
    named = re.findall(r"accelerate_config_path\('([\w-]+)'\)", docs) + re.findall(r'config_file="([\w-]+)"', docs)
    assert named
    for name in named:
        distributed.accelerate_config_path(name)
    from srlm.config import list_recipes

    for recipe in set(re.findall(r"--recipe ([\w-]+)", docs)):
        assert recipe in list_recipes(), recipe
    for name in distributed.ACCELERATE_CONFIGS:  # every shipped config is documented
        assert f"{name}.yaml" in docs, name
