"""The run directory: where every stage of a run writes, and the manifest that makes `srlm run` resumable.

    RUN_DIR/
      config.yaml                 the fully resolved config of the run
      manifest.json               per stage: status, fingerprint, stats, seconds
      summary.json                per iteration: prompts, responses, parse rate, pairs, lengths, DPO metrics
      models/m1/                  M1 = SFT on IFT + EFT (a plain Hugging Face checkpoint; loop.m1=base: the base model)
      iter_1/prompts.jsonl        new prompts (+ prompts.attempts.jsonl: every raw attempt and its fate)
      iter_1/responses.jsonl      N candidates per prompt from M1
      iter_1/judgements.jsonl     K judgements per candidate, by M1
      iter_1/pairs.jsonl          best vs worst per prompt
      models/m2/                  M2 = DPO(M1) on iter_1/pairs.jsonl
      iter_2/...  models/m3/      and so on

A stage is skipped when the manifest says it finished with the same fingerprint (a hash of the config it reads,
chained with the fingerprints of the stages before it) and its outputs exist. A stage that must run again makes
every later stage run again. A stage interrupted mid-way keeps its `.partial` records when it resumes with the same
fingerprint; with a different one they are deleted first.

Everything a run writes stays inside RUN_DIR: its paths are composed with `srlm.io.safe_child`, and a stage whose
outputs would lead outside (a subfolder that is a symbolic link to another place) is refused before it runs.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Callable

from srlm.errors import DataError, SrlmError
from srlm.io import check_output_path, ensure_inside, os_error_message, read_json, safe_child, write_json
from srlm.models import release_memory

MANIFEST_VERSION = 1


_JSON_NAMES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def _json_name(value) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def load_manifest(path: Path) -> dict:
    """The manifest at `path`, checked: a hand-edited or foreign file is named with what is wrong in it, never a
    TypeError or KeyError in the middle of a run. Deleting it makes every stage run again."""
    manifest = read_json(path)
    hint = "; fix it, or delete it to run every stage again"
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object with a 'stages' object, got a JSON {_json_name(manifest)}{hint}")
    stages = manifest.setdefault("stages", {})
    if not isinstance(stages, dict):
        raise DataError(f"{path}: field 'stages' must be an object (stage name -> entry), got a JSON "
                        f"{_json_name(stages)}{hint}")
    for key, entry in stages.items():
        if not isinstance(entry, dict):
            raise DataError(f"{path}: stage '{key}' must be an object, got a JSON {_json_name(entry)}{hint}")
        for field in ("status", "fingerprint"):
            if not isinstance(entry.get(field), str):
                problem = "lacks" if field not in entry else "has a non-string"
                raise DataError(f"{path}: stage '{key}' {problem} field '{field}'{hint}")
    return manifest


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not str(root).strip():
            raise SrlmError("the run directory is empty: give a folder name (--run-dir DIR)")
        if self.root.exists() and not self.root.is_dir():
            raise SrlmError(f"{self.root}: run directory path exists and is not a directory")
        check_output_path(self.root, what="the run directory", kind="workdir")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SrlmError(os_error_message(self.root, exc, "cannot create the run directory")) from None
        self.manifest_path = self.path("manifest.json")
        self.manifest = (load_manifest(self.manifest_path) if self.manifest_path.exists()
                         else {"version": MANIFEST_VERSION, "stages": {}})
        self.chain = "start"
        self.rerun_rest = False

    def path(self, name: str) -> Path:
        """`root / name`, refused (`UnsafePathError`) if it would lead outside the run directory."""
        return safe_child(self.root, name)

    # Every path of a run directory is asked for here: its layout is written down once.
    def named_model_dir(self, name: str) -> Path:
        """models/<name>: m1, m2, ... (M_t), m1_eft (M1 before its judge was trained), sft_baseline."""
        return self.path(f"models/{name}")

    def model_dir(self, t: int) -> Path:
        """models/m<t>: M_t."""
        return self.named_model_dir(f"m{t}")

    def model_names(self) -> list[str]:
        """The models the run directory holds (folders of models/, hidden work folders left out), sorted."""
        models = self.root / "models"
        return sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if models.is_dir() else []

    def iter_dir(self, t: int) -> Path:
        """iter_<t>: iteration t's prompts, responses, judgements, pairs, and its eval/ of M_t+1."""
        return self.path(f"iter_{t}")

    def iterations_on_disk(self) -> list[int]:
        """The t of every iter_<t> folder there is, ascending (a run may hold more than its config asks for)."""
        found = (re.fullmatch(r"iter_(\d+)", p.name) for p in self.root.glob("iter_*") if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def eval_dir(self, name: str) -> Path:
        """eval_<name>: the evaluations of models/<name> on its own (eval_m1, eval_sft_baseline)."""
        return self.path(f"eval_{name}")

    def save(self) -> None:
        write_json(self.manifest_path, self.manifest)

    def stage(
        self, key: str, config_fingerprint: str, outputs: list[Path], run: Callable[[], dict], *, side: bool = False
    ) -> dict:
        """Run `run()` unless the stage already finished with the same inputs; returns the stage's stats.

        A `side` stage (evaluation, the SFT baseline) depends on the stages before it, but nothing depends on it:
        turning it on, off or changing its settings never reruns the main line of the loop.
        """
        for out in outputs:  # before anything is run or deleted: a stage writes only inside the run directory
            ensure_inside(self.root, out)
        fingerprint = hashlib.sha256(f"{self.chain}|{key}|{config_fingerprint}".encode()).hexdigest()[:16]
        entry = self.manifest["stages"].get(key)
        finished = (
            entry is not None and entry["status"] == "done" and entry["fingerprint"] == fingerprint
            and all(p.exists() for p in outputs)
        )
        if finished and not self.rerun_rest:
            if not side:
                self.chain = fingerprint
            print(f"srlm: {key}: already done, skipped", flush=True)
            return entry.get("stats")
        if entry is not None and entry["fingerprint"] != fingerprint:
            for out in outputs:  # records from a run with other settings must not be mixed in
                for stale in out.parent.glob(f"{out.stem}*.partial"):
                    stale.unlink()
        if not side:
            self.chain = fingerprint
            self.rerun_rest = True
        resumed = entry is not None and entry["status"] == "running" and entry["fingerprint"] == fingerprint
        print(f"srlm: {key}: {'resuming' if resumed else 'running'}", flush=True)
        self.manifest["stages"][key] = {"status": "running", "fingerprint": fingerprint, "started": time.time()}
        self.save()
        start = time.perf_counter()
        stats = run()
        release_memory()
        self.manifest["stages"][key] = {
            "status": "done",
            "fingerprint": fingerprint,
            "seconds": round(time.perf_counter() - start, 1),
            "outputs": [str(p.relative_to(self.root)) for p in outputs],
            "stats": stats,
        }
        self.save()
        return stats

    def seconds(self, prefix: str) -> float:
        return round(sum(e.get("seconds", 0) for k, e in self.manifest["stages"].items() if k.startswith(prefix)), 1)
