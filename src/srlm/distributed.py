"""Scale-out on the engines users already have: accelerate (DDP, DeepSpeed ZeRO, FSDP) for training, plain
data parallelism (or a vLLM server) for generation. srlm has no distributed layer of its own.

**Training.** `srlm sft` and `srlm dpo` are TRL trainers, which run unchanged under `accelerate launch`. This
module builds and runs that command with the accelerate configs shipped in `srlm/accelerate_configs/` (`ddp`,
`zero2`, `zero3`, `fsdp` for one node of 8 GPUs, `cpu_gloo_2proc` for two CPU processes) or any config file of
your own:

    accelerate launch --config_file zero3.yaml --num_processes 8 -m srlm dpo --pairs ... --model ... --out ...

Only the training stages are launched this way. Under `accelerate launch` every rank runs the whole command, so a
generation stage would have each rank produce every record into the same file.

**Generation.** `respond` and `judge` are data-parallel by nature. Split the input into shards (`shard`,
`write_shards`), run one ordinary `srlm respond` / `srlm judge` process per shard (per GPU), then merge the shard
outputs (`merge_shards`). The merged file has exactly the records, ids and order that a single process writes,
byte for byte: every output sequence samples from its own generator, seeded from its request and sample index
(`srlm.backends.hf`), so a record's text does not depend on which process or batch produced it.

    python -m srlm.distributed configs                          # the shipped accelerate configs and their paths
    python -m srlm.distributed split --kind prompts prompts.jsonl --count 8
    CUDA_VISIBLE_DEVICES=$i srlm respond --prompts prompts.shard-0$i-of-08.jsonl \
        --out responses.shard-0$i-of-08.jsonl ...                  # for i in 0..7, in parallel
    python -m srlm.distributed merge --kind respond --source prompts.jsonl --out responses.jsonl \
        responses.shard-*.jsonl

docs/scale-out.md has the recipes (1 GPU, one node of 8, several nodes with SLURM) and the memory arithmetic.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Sequence

from srlm.errors import DataError, SrlmError
from srlm.io import iter_jsonl, read_jsonl, safe_child, write_jsonl

# Stages that may run under `accelerate launch`: the trainers. Every other command does the whole job on each rank.
LAUNCHABLE_STAGES = ("sft", "dpo")
ACCELERATE_CONFIGS = ("ddp", "zero2", "zero3", "fsdp", "cpu_gloo_2proc")


# ---------------------------------------------------------------------------------------------------------------
# Launching the training stages


class LaunchError(SrlmError):
    """A launched stage failed. Carries the exit status and, when it was captured, the output of the ranks."""

    def __init__(self, message: str, *, returncode: int | None, stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.returncode, self.stdout, self.stderr = returncode, stdout or "", stderr or ""


def accelerate_config_path(name_or_path: str) -> Path:
    """A shipped accelerate config by short name (`zero3`, `cpu_gloo_2proc`, ...) or any existing file."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    entry = resources.files("srlm.accelerate_configs").joinpath(f"{name_or_path}.yaml")
    if entry.is_file():
        return Path(str(entry))
    raise SrlmError(f"accelerate config '{name_or_path}' not found: give a file or one of "
                    f"{', '.join(ACCELERATE_CONFIGS)}")


def launch_command(
    stage_args: Sequence[str], *, num_processes: int, config_file: str | None, launch_args: Sequence[str] = ()
) -> list[str]:
    """The argv of `accelerate launch [--config_file F] --num_processes N [launch_args] -m srlm <stage> ...`.

    `accelerate launch` is spelled `python -m accelerate.commands.launch` with this interpreter: the same thing,
    but it works without an activated virtual environment and the ranks import the srlm that is running now.
    `config_file` is a path or the name of a shipped config; None leaves it to accelerate (its default config,
    from `accelerate config`). `launch_args` go to accelerate before `-m`, e.g. `["--offload_optimizer_device",
    "cpu"]` or the multi-node flags `--num_machines/--machine_rank/--main_process_ip/--main_process_port`.
    """
    stage_args = [str(a) for a in stage_args]
    if not stage_args or stage_args[0] not in LAUNCHABLE_STAGES:
        got = stage_args[0] if stage_args else "nothing"
        raise SrlmError(
            f"only the training stages ({', '.join(LAUNCHABLE_STAGES)}) run under accelerate launch, got {got}: "
            "every rank would run a generation stage in full and write the same file; shard it instead "
            "(python -m srlm.distributed split / merge)"
        )
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise SrlmError(f"num_processes must be a positive integer, got {num_processes!r}")
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        command += ["--config_file", str(accelerate_config_path(config_file))]
    command += ["--num_processes", str(num_processes), *map(str, launch_args), "-m", "srlm", *stage_args]
    return command


def run_launched(
    stage_args: Sequence[str],
    *,
    num_processes: int,
    config_file: str | None,
    launch_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    capture_output: bool = False,
    timeout_seconds: float | None = None,
) -> subprocess.CompletedProcess:
    """Run `launch_command(...)` and wait for it. A failure raises `LaunchError` (an `SrlmError`) with the command,
    the exit status and, when the output was captured, the ranks' error lines (otherwise their tracebacks are
    already on the terminal); the captured stdout and stderr travel on the exception.

    `env` replaces the environment when given (start from `os.environ`). With `capture_output=True`, stdout and
    stderr come back as text on the result: the trainer's per-step logs are printed to stdout by rank 0.
    """
    # Checked here so that the error names the package, not a launcher's traceback.
    if importlib.util.find_spec("accelerate") is None:
        raise SrlmError("multi-process training needs accelerate: pip install accelerate")
    command = launch_command(stage_args, num_processes=num_processes, config_file=config_file, launch_args=launch_args)
    shown = shlex.join(command)
    try:
        result = subprocess.run(command, env=env, cwd=cwd, capture_output=capture_output, text=True,
                                timeout=timeout_seconds)
    except subprocess.TimeoutExpired as exc:
        raise LaunchError(f"launched command did not finish within {timeout_seconds} s: {shown}", returncode=None,
                          stdout=_text(exc.stdout), stderr=_text(exc.stderr)) from None
    except OSError as exc:
        raise SrlmError(f"cannot start {shown}: {exc}") from None
    if result.returncode != 0:
        detail = "see the ranks' output above"
        if capture_output:
            errors = _rank_errors(result.stderr or "")
            lines = errors or (result.stderr or "").strip().splitlines()[-15:] or ["(no stderr)"]
            detail = ("the ranks' errors:" if errors else "end of stderr:") + "\n    " + "\n    ".join(lines)
        raise LaunchError(f"launched command failed with exit status {result.returncode}: {shown}\n  {detail}",
                          returncode=result.returncode, stdout=result.stdout, stderr=result.stderr)
    return result


def _text(output) -> str:
    return output.decode("utf-8", "replace") if isinstance(output, bytes) else output or ""


# Lines of the launcher's own report (torchrun's ChildFailedError, accelerate's CalledProcessError): they say that a
# rank failed, never why.
_LAUNCHER_LINES = ("ChildFailedError", "CalledProcessError", "error_file", "To enable traceback", "torch/distributed/",
                   "accelerate/commands/")


def _rank_errors(stderr: str, limit: int = 10) -> list[str]:
    """The error lines the ranks printed, once each (every rank usually prints the same one), in order."""
    seen: dict[str, None] = {}
    for line in stderr.splitlines():
        text = re.sub(r"^\[rank\d+\]:\s?", "", line).strip()
        if re.search(r"error", text, re.IGNORECASE) and not any(mark in text for mark in _LAUNCHER_LINES):
            seen.setdefault(text)
    return list(seen)[-limit:]


# ---------------------------------------------------------------------------------------------------------------
# Data-parallel generation: shard the input, merge the outputs


def shard(items: Sequence, index: int, count: int) -> list:
    """Shard `index` of `count` **contiguous** shards of `items`; sizes differ by at most one.

    Contiguous rather than strided (items[index::count]): each shard keeps a run of the input in its order, so a
    shard's output is a slice of the single-process output (easy to check by eye), and a prompt's N responses stay
    in one shard when a responses file is sharded for judging (all but at most one prompt per boundary). Merging
    does not rely on either: it sorts by the stage's own order.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SrlmError(f"shard count must be a positive integer, got {count!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise SrlmError(f"shard index must be in [0, {count}), got {index!r}")
    n = len(items)
    return list(items[index * n // count : (index + 1) * n // count])


def shard_path(path: str | Path, index: int, count: int, out_dir: str | Path | None = None) -> Path:
    """`dir/name.jsonl` -> `out_dir/name.shard-03-of-08.jsonl`: the count is in the name, so a merge can tell a
    missing shard from a finished job. Refused (`UnsafePathError`) if that name is a link leading out of the folder."""
    path = Path(path)
    width = max(2, len(str(count)))
    return safe_child(out_dir or path.parent, f"{path.stem}.shard-{index:0{width}d}-of-{count:0{width}d}{path.suffix}")


def write_shards(path: str | Path, count: int, *, kind: str, out_dir: str | Path | None = None) -> list[Path]:
    """Split a stage's input file into `count` contiguous shard files; returns their paths, in shard order.

    kind="prompts": the prompts exactly as `srlm respond` reads them (duplicates dropped, `prompt_id` written out),
    so no prompt can reach two shards and every shard process uses the ids the single process would use.
    kind="responses": the responses file for `srlm judge`, records unchanged.
    """
    from srlm.io import load_prompts

    if kind == "prompts":
        records, _ = load_prompts(path)
    elif kind == "responses":
        records = read_jsonl(path)
    else:
        raise SrlmError(f"unknown shard kind '{kind}': prompts or responses")
    if count > len(records):
        raise SrlmError(f"{path}: {len(records)} records cannot fill {count} shards (a stage refuses an empty input)")
    paths = []
    for index in range(count):
        out = shard_path(path, index, count, out_dir)
        write_jsonl(out, shard(records, index, count))
        paths.append(out)
    return paths


def merge_shards(
    paths: Iterable[str | Path],
    out_path: str | Path,
    order_key: Callable[[dict], object],
    *,
    id_field: str = "response_id",
    expected_ids: Iterable[str] | None = None,
) -> list[dict]:
    """Merge per-process JSONL outputs into the file a single process would have written; returns the records.

    `order_key(record)` must give the order the stage itself sorts by (`respond_order_key`, `judge_order_key`);
    a record it does not know (a KeyError) is a record from another input. The records are written with srlm's
    own serializer, atomically, so the result is byte-identical to a single-process run. Every problem is a
    `DataError` that names it, and nothing is written then: an unfinished shard (no output, or only its
    `.partial`), a shard missing from a `*.shard-II-of-NN.*` set, a record without an id, an id produced twice
    (with both places), and, when `expected_ids` is given, the missing and the unexpected ids.
    """
    records = _merged_records(paths, out_path, order_key, id_field, expected_ids)
    write_jsonl(out_path, records)
    return records


_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.[^.]+$")


def _check_shard_set(paths: list[Path]) -> None:
    """Shard files named by `shard_path` carry their index and count: all of 0..count-1 must be there, once."""
    found = [(m, p) for p in paths if (m := _SHARD_NAME.search(p.name))]
    if len(found) != len(paths):
        return  # names of the user's own: nothing to check
    counts = {int(m.group(2)) for m, _ in found}
    if len(counts) > 1:
        raise DataError(f"shard files from different splits (of {sorted(counts)}): {', '.join(map(str, paths))}")
    count = counts.pop()
    indices = sorted(int(m.group(1)) for m, _ in found)
    missing = sorted(set(range(count)) - set(indices))
    if missing:
        raise DataError(f"shards {missing} of {count} not given (got {len(paths)} files: {', '.join(map(str, paths))})")


def _merged_records(paths, out_path, order_key, id_field: str, expected_ids) -> list[dict]:
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError(f"{out_path}: no shard files to merge")
    _check_shard_set(paths)
    records: list[dict] = []
    source_of: dict[str, str] = {}
    for path in paths:
        if not path.exists():
            partial = path.with_name(path.name + ".partial")
            hint = f" (only {partial.name} exists: the shard did not finish; rerun its command to resume)" \
                if partial.exists() else ""
            raise DataError(f"{path}: shard output not found{hint}")
        for line, record in enumerate(iter_jsonl(path), start=1):
            record_id = record.get(id_field)
            if not isinstance(record_id, str):
                raise DataError(f"{path}:{line}: missing field '{id_field}'")
            if record_id in source_of:
                raise DataError(f"duplicate {id_field} '{record_id}': in {source_of[record_id]} and {path}:{line} "
                                "(overlapping shards, or one shard listed twice)")
            source_of[record_id] = f"{path}:{line}"
            records.append(record)
    if expected_ids is not None:
        expected = set(expected_ids)
        missing = sorted(expected - source_of.keys())
        extra = sorted(source_of.keys() - expected)
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
        if extra:
            problems.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:5])})")
        if problems:
            raise DataError(f"{out_path}: shards do not cover the input exactly: {id_field}s " + "; ".join(problems))
    try:
        records.sort(key=order_key)
    except KeyError as exc:
        raise DataError(f"{out_path}: a shard record's id {exc} is not in the source file (shards of another input?)") \
            from None
    return records


def respond_order_key(prompts_path: str | Path) -> Callable[[dict], tuple]:
    """The order `srlm respond` writes: prompt position in the prompts file (as read: duplicates dropped), then
    sample index."""
    from srlm.io import load_prompts

    position = {p["prompt_id"]: i for i, p in enumerate(load_prompts(prompts_path)[0])}
    return lambda r: (position[r["prompt_id"]], r["sample_index"])


def judge_order_key(responses_path: str | Path) -> Callable[[dict], int]:
    """The order `srlm judge` writes: the response's position in the responses file."""
    position = {r["response_id"]: i for i, r in enumerate(read_jsonl(responses_path, {"response_id": str}))}
    return lambda r: position[r["response_id"]]


def merge_respond_shards(paths: Iterable[str | Path], out_path: str | Path, prompts_path: str | Path) -> list[dict]:
    """`merge_shards` for `srlm respond` outputs, plus a check that every prompt present has all its samples
    (prompts skipped as too long have none, in a single run too, so prompt coverage cannot be checked here)."""
    records = _merged_records(paths, out_path, respond_order_key(prompts_path), "response_id", None)
    samples: dict[str, set] = {}
    for r in records:
        samples.setdefault(r["prompt_id"], set()).add(r["sample_index"])
    n = max((len(s) for s in samples.values()), default=0)
    broken = sorted(pid for pid, s in samples.items() if s != set(range(n)))
    if broken:
        raise DataError(f"{out_path}: prompts with an incomplete set of {n} samples: {', '.join(broken[:5])}")
    write_jsonl(out_path, records)
    return records


def merge_judge_shards(paths: Iterable[str | Path], out_path: str | Path, responses_path: str | Path) -> list[dict]:
    """`merge_shards` for `srlm judge` outputs: judging writes one record per response (skipped ones included), so
    the merged file must hold exactly the response ids of the responses file."""
    ids = [r["response_id"] for r in read_jsonl(responses_path, {"response_id": str})]
    return merge_shards(paths, out_path, judge_order_key(responses_path), id_field="response_id", expected_ids=ids)


# ---------------------------------------------------------------------------------------------------------------
# python -m srlm.distributed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srlm.distributed",
                                     description="Shipped accelerate configs; split and merge generation shards.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("configs", help="the shipped accelerate configs and their paths")
    p = sub.add_parser("split", help="split a prompts or responses file into contiguous shard files")
    p.add_argument("input")
    p.add_argument("--kind", required=True, choices=["prompts", "responses"])
    p.add_argument("--count", required=True, type=int)
    p.add_argument("--out-dir", help="where the shards go (default: beside the input)")
    p = sub.add_parser("merge", help="merge shard outputs into the file a single process writes")
    p.add_argument("shards", nargs="+")
    p.add_argument("--kind", required=True, choices=["respond", "judge"])
    p.add_argument("--source", required=True, help="the unsharded input: prompts (respond) or responses (judge)")
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "configs":
            for name in ACCELERATE_CONFIGS:
                print(f"{name:16s} {accelerate_config_path(name)}")
        elif args.command == "split":
            for path in write_shards(args.input, args.count, kind=args.kind, out_dir=args.out_dir):
                print(path)
        else:
            merge = merge_respond_shards if args.kind == "respond" else merge_judge_shards
            print(f"{len(merge(args.shards, args.out, args.source))} records -> {args.out}")
    except SrlmError as exc:
        print(f"srlm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
