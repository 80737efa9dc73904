"""`srlm eval harness`: any lm-evaluation-harness task on a model, through `lm_eval.simple_evaluate`.

A thin wrapper: lm-eval loads the model, builds the requests, scores them and aggregates; srlm picks the model
class and its arguments from its own settings, checks the task names first, and writes lm-eval's results JSON.

- The model. `model.name_or_path`-style names resolve as everywhere in srlm (`embedded` is the cached local copy
  of the embedded model, a directory is checked for safetensors weights). lm-eval's Hugging Face model (`hf`)
  loads it with `pretrained=<path>`, on `model.device` (auto: CUDA when there is one, else the CPU) and in
  `model.dtype` (auto: float32 on a CPU, bfloat16 on a GPU that has it, as srlm loads models). With
  `backend.name=vllm`, and vllm importable, lm-eval's `vllm` model is used instead, with srlm's
  `backend.tensor_parallel_size`, `gpu_memory_utilization`, `max_model_len` and `seed`; `backend.data_parallel_size`
  > 1 is lm-eval's own data parallelism (Ray actors, one vLLM replica each: `pip install ray`).
- The tasks. Names are looked up in lm-eval's task index (`TaskManager`, with `--include-path DIR` for local task
  YAML), glob patterns (`mmlu_*`) and `.yaml` paths as lm-eval's own CLI takes them. An unknown name is an error
  before any model loads, with the closest names lm-eval knows. When every name is a task in DIR, only DIR is
  indexed (lm-eval's 14,000 built-in entries take seconds to scan); otherwise both.
- Data. lm-eval reads each task's data with `datasets`, which follows HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: offline,
  a task's data must already be in the Hugging Face cache or be local files (`dataset_path: json` with
  `data_files`). srlm sets neither variable; a task whose data cannot be read is an error naming the task.
- Output. `results`, `configs`, `versions`, `n-shot`, `higher_is_better` and `n-samples` of lm-eval's results,
  made JSON-safe (NaN and infinities become null), plus what was run (model, tasks, limit, few-shot, batch size,
  lm-eval's model class and arguments, lm-eval's version). `format_harness_table` prints one line per task and
  metric: value +- stderr.

Seeds are lm-eval's defaults (random 0, numpy/torch/few-shot 1234), so a figure compares with `lm_eval`'s CLI on the
same model, tasks and settings. No chat template is applied (lm-eval's default for `simple_evaluate`).
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from srlm.errors import SrlmError

INSTALL_HINT = "pip install 'srlm[eval]'"
_KEPT = ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples")
_GLOB = set("*?[")


def load_lm_eval() -> SimpleNamespace:
    """lm-eval's `simple_evaluate` and `TaskManager`, or an SrlmError naming srlm[eval]."""
    try:
        import lm_eval
        from lm_eval.evaluator import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        name = (exc.name or "").split(".")[0] or str(exc)
        raise SrlmError(f"srlm eval harness needs lm-evaluation-harness (the package {name} is not installed): "
                        f"{INSTALL_HINT}") from None
    return SimpleNamespace(simple_evaluate=simple_evaluate, TaskManager=TaskManager,
                           version=getattr(lm_eval, "__version__", None))


def parse_tasks(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """'a,b' or ['a', 'b,c'] -> ['a', 'b', 'c'], without blanks or repeats."""
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    tasks = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not tasks:
        raise SrlmError("no lm-eval task given: name one or more, separated by commas "
                        "(e.g. --tasks arc_easy,hellaswag)")
    return tasks


def _check_include_path(include_path: str | Path | None) -> str | None:
    if include_path is None:
        return None
    path = Path(include_path).expanduser()
    if not path.is_dir():
        raise SrlmError(f"{include_path}: --include-path (eval.harness_include_path) must be a directory of lm-eval "
                        "task YAML files")
    return str(path.resolve())


def _task_manager(lm, tasks: list[str], include_path: str | None):
    """A TaskManager that knows `tasks`: only the include path's when it holds every one of them as a task."""
    if include_path:
        local = lm.TaskManager(include_path=include_path, include_defaults=False)
        if all(name in set(local.all_subtasks) for name in tasks):
            return local
    return lm.TaskManager(include_path=include_path) if include_path else lm.TaskManager()


def resolve_tasks(tasks: list[str], include_path: str | Path | None = None, *, lm=None) -> tuple[list[str], Any]:
    """(the task specs for `simple_evaluate`, the TaskManager that knows them); an unknown name is an SrlmError that
    lists the closest names lm-eval knows."""
    lm = lm or load_lm_eval()
    include = _check_include_path(include_path)
    manager = _task_manager(lm, [t for t in tasks if not t.endswith(".yaml")], include)  # a glob needs them all
    known = manager.all_tasks
    resolved, missing = [], []
    for name in tasks:
        if name.endswith(".yaml"):
            path = Path(name).expanduser()
            (resolved.append(str(path.resolve())) if path.is_file() else missing.append((name, [])))
        elif _GLOB & set(name):
            matched = manager.match_tasks([name])
            resolved.extend(matched) if matched else missing.append((name, []))
        elif name in known:
            resolved.append(name)
        else:
            missing.append((name, difflib.get_close_matches(name, known, n=5, cutoff=0.6)))
    if missing:
        where = "lm-eval's tasks" + (f" and {include}" if include else "")
        lines = []
        for name, close in missing:
            hint = f"; close matches: {', '.join(close)}" if close else ""
            what = "no such file" if name.endswith(".yaml") else f"not among {where}"
            lines.append(f"'{name}' ({what}{hint})")
        raise SrlmError(f"unknown lm-eval task {'; '.join(lines)}. `lm-eval ls tasks` lists the {len(known)} known "
                        "names; local task YAML needs --include-path DIR (eval.harness_include_path)")
    return list(dict.fromkeys(resolved)), manager


def _json_safe(value: Any) -> Any:
    """lm-eval's results as plain JSON: NaN/inf -> None, numpy scalars -> numbers, other objects -> their str."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return _json_safe(item())
        except (TypeError, ValueError):
            pass
    if callable(value):
        return getattr(value, "__name__", str(value))
    return str(value)


def default_batch_size(device: str) -> int | str:
    """8 on a CPU; 'auto' on a GPU (lm-eval finds the largest batch that fits)."""
    return "auto" if device.startswith("cuda") else 8


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _failure(exc: BaseException, tasks: list[str]) -> SrlmError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = f"lm-eval could not run {', '.join(tasks)}: {type(exc).__name__}: {first}"
    if isinstance(exc, ImportError):
        message += " (a package this task or lm-eval model needs is missing)"
    elif isinstance(exc, (OSError, ConnectionError)) and _offline():
        message += (" (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set: a task's dataset must already be in the Hugging "
                    "Face cache, or be local files)")
    return SrlmError(message)


def _model_spec(path: str, *, device: str, dtype: str, backend: str, trust_remote_code: bool,
                vllm_options: dict | None) -> tuple[str, dict, str | None]:
    """(lm-eval model name, its model_args, the device to pass) for srlm's settings."""
    if backend == "vllm" and importlib.util.find_spec("vllm") is not None:
        from srlm.backends.vllm import _vllm_dtype

        options = dict(vllm_options or {})
        args = {"pretrained": path, "dtype": _vllm_dtype(dtype), "trust_remote_code": trust_remote_code}
        for key in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "seed"):
            if options.get(key) is not None:
                args[key] = options[key]
        if (options.get("data_parallel_size") or 1) > 1:
            args["data_parallel_size"] = options["data_parallel_size"]
        return "vllm", args, None
    if backend == "vllm":
        print("srlm: backend.name=vllm but vllm is not importable: lm-eval runs the model with transformers (hf)",
              flush=True)
    from srlm.models import resolve_device, resolve_dtype

    resolved = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved)
    return "hf", {"pretrained": path, "dtype": str(torch_dtype).removeprefix("torch."),
                  "trust_remote_code": trust_remote_code}, resolved


def run_harness(
    model_path: str,
    tasks: str | list[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str | None = None,
    include_path: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "hf",
    trust_remote_code: bool = False,
    vllm_options: dict | None = None,
) -> dict:
    """Run lm-eval's tasks on `model_path`; lm-eval's results (JSON-safe) plus what was run.

    `backend` is srlm's `backend.name`: 'vllm' runs lm-eval's vLLM model when vllm is importable (with
    `vllm_options`: tensor_parallel_size, gpu_memory_utilization, max_model_len, seed, data_parallel_size); anything
    else runs lm-eval's Hugging Face model on `device` in `dtype` (srlm's model.device / model.dtype values).
    `batch_size` None = `default_batch_size(device)` for hf, 'auto' for vllm."""
    lm = load_lm_eval()
    requested = parse_tasks(tasks)
    resolved, manager = resolve_tasks(requested, include_path, lm=lm)  # before any model loads
    from srlm.models import resolve_model_path

    path = resolve_model_path(model_path)
    name, model_args, lm_device = _model_spec(path, device=device, dtype=dtype, backend=backend,
                                              trust_remote_code=trust_remote_code, vllm_options=vllm_options)
    if batch_size is None:
        batch_size = default_batch_size(lm_device) if name == "hf" else "auto"
    try:
        raw = lm.simple_evaluate(model=name, model_args=model_args, tasks=resolved, num_fewshot=num_fewshot,
                                 batch_size=batch_size, device=lm_device, limit=limit, task_manager=manager,
                                 log_samples=False)
    except (ImportError, OSError, ConnectionError, ValueError, KeyError) as exc:
        raise _failure(exc, requested) from exc
    if raw is None:  # only a non-zero rank of a distributed lm-eval run gets None
        raise SrlmError("lm-eval returned no results (not the main process of a distributed run)")
    result = {
        "model": model_path,
        "tasks": requested,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "include_path": str(include_path) if include_path else None,
        "lm_eval": {"version": lm.version, "model": name, "model_args": model_args, "device": lm_device},
    }
    result.update({key: _json_safe(raw[key]) for key in _KEPT if key in raw})
    if raw.get("groups"):
        result["groups"] = _json_safe(raw["groups"])
    return result


def _finite(value: Any) -> float | None:
    """A number lm-eval reported, or None for what is not one (its 'N/A' stderr, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def metric_rows(result: dict) -> list[dict]:
    """One {task, metric, filter, value, stderr, n} per task and metric of lm-eval's `results` (groups included)."""
    rows = []
    n_samples = result.get("n-samples") or {}
    for task, entry in (result.get("results") or {}).items():
        if not isinstance(entry, dict):
            continue
        for key, value in entry.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            stderr = entry.get(f"{metric}_stderr,{filt}")
            n = (n_samples.get(task) or {}).get("effective", entry.get("sample_len"))
            rows.append({"task": task, "metric": metric, "filter": filt, "value": _finite(value),
                         "stderr": _finite(stderr), "n": n})
    return rows


def harness_summary(result: dict) -> dict:
    """The figures of a harness result for summary.json: {task: {metric: value, metric_stderr: stderr, n}}."""
    tasks: dict[str, dict] = {}
    for row in metric_rows(result):
        name = row["metric"] if row["filter"] == "none" else f"{row['metric']},{row['filter']}"
        entry = tasks.setdefault(row["task"], {"n": row["n"]})
        entry[name] = row["value"]
        entry[f"{name}_stderr"] = row["stderr"]
    return {"tasks": tasks, "limit": result.get("limit"), "num_fewshot": result.get("num_fewshot"),
            "lm_eval_version": (result.get("lm_eval") or {}).get("version")}


def format_value(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def format_harness_table(result: dict) -> str:
    """task, metric, value ± stderr, n: one line per task and metric."""
    rows = metric_rows(result)
    if not rows:
        return "(no metrics in lm-eval's results)"
    lines = [("task", "metric", "value ± stderr", "n")]
    for row in rows:
        metric = row["metric"] if row["filter"] == "none" else f"{row['metric']} ({row['filter']})"
        lines.append((row["task"], metric, format_value(row["value"], row["stderr"]),
                      "" if row["n"] is None else str(row["n"])))
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c.ljust(widths[2])}  {d}".rstrip()
                     for a, b, c, d in lines)


def harness_for_config(cfg, model_path: str, *, tasks=None, limit=None, num_fewshot=None, batch_size=None,
                       include_path=None) -> dict:
    """`run_harness` with srlm's model and backend settings from `cfg` (what the CLI and the loop both run)."""
    b, m = cfg.backend, cfg.model
    return run_harness(
        model_path, tasks if tasks is not None else cfg.eval.harness_tasks,
        limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, include_path=include_path,
        device=m.device, dtype=m.dtype, backend=b.name, trust_remote_code=m.trust_remote_code,
        vllm_options=dict(tensor_parallel_size=b.tensor_parallel_size, gpu_memory_utilization=b.gpu_memory_utilization,
                          max_model_len=b.max_model_len, seed=cfg.seed,
                          data_parallel_size=getattr(b, "data_parallel_size", 1)),
    )
