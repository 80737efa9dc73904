"""Which config sections each stage of the loop reads, and so what a change of settings reruns.

`stage_fingerprint` is the part of a stage's fingerprint that comes from the config (`RunDir.stage` chains it with
the stages before); `preview_changes` tells a user, before anything runs, which keys changed since the run
directory last ran and which finished stages that will rerun.
"""

from __future__ import annotations

import re

from srlm.config import Config
from srlm.rundir import RunDir


# The config sections each stage reads: a stage reruns when one of them changed (or a main-line stage before it
# reran). Groups are hashed separately and joined, as they always have been, so fingerprints stay what they were.
STAGE_SECTIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "m1_copy": (),  # fingerprinted by the copied model's files, not by settings
    "m1_base": (("seed", "model", "data"),),  # and the base model's files
    "sft": (("seed", "model", "data", "sft"), ("judge",)),
    "eval_m1": (("eval", "judge"),),
    "eval_m1_ifeval": (("seed", "eval"),),
    "eval_m1_harness": (("seed", "eval"),),
    "prompts": (("seed", "prompts", "backend"),),
    "respond": (("seed", "respond", "backend"),),
    "judge": (("seed", "judge", "backend"),),
    "pairs": (("seed", "pairs"),),
    "metajudge": (("seed", "meta", "judge", "backend"),),
    # pairs.policy's own stages read what the stage they repeat reads
    "anchor_respond": (("seed", "respond", "backend"),),
    "anchor_judge": (("seed", "judge", "backend"),),
    "previous_judge": (("seed", "judge", "backend"),),
    "dpo": (("seed", "dpo"),),
    "eval": (("seed", "eval", "judge"),),
    "sft_baseline": (("seed", "model", "data", "sft"),),
    "train_judge": (("seed", "judge_training"), ("judge",)),
}
MAIN_LINE = ("m1_copy", "m1_base", "sft", "train_judge", "prompts", "respond", "judge", "metajudge", "anchor_respond",
             "anchor_judge", "previous_judge", "pairs", "dpo")
# Other models' evaluations read what M1's read: eval_sft_baseline_ifeval has eval_m1_ifeval's sections.
EVALUATED_AS_M1 = re.compile(r"^eval_(sft_baseline|base)")


def stage_fingerprint(cfg: Config, stage: str) -> str:
    fingerprint = "".join(cfg.fingerprint(*group) for group in STAGE_SECTIONS[stage])
    # The evaluations run the models through the backend without reading its section (batch sizes change no
    # figure), but int8 weights do change them: marked apart, so fp32 fingerprints stay what they were.
    if stage.startswith("eval") and cfg.backend.int8_weights:
        fingerprint += "+int8"
    return fingerprint


def changed_settings(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every setting that differs between two dumped configs."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append((f"{prefix}{key}", a, b))
    return changes


def preview_changes(cfg: Config, rd: RunDir) -> None:
    """On a run directory that has run before with other settings: say which keys changed and which finished
    stages will rerun, before anything is touched, and keep the old config as config.previous.yaml."""
    import yaml

    from srlm.config import ADDED_KEYS, ADDED_SECTIONS

    old_path = rd.root / "config.yaml"
    if not old_path.is_file():
        return
    try:
        old = yaml.safe_load(old_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        old = {}
    new = cfg.model_dump(mode="json")
    for section in ADDED_SECTIONS:  # whole sections added since that config was written, still at their defaults
        if section not in old and new.get(section) == Config.model_fields[section].default_factory().model_dump(mode="json"):
            old[section] = new[section]
    for section, added in ADDED_KEYS.items():  # keys added since that config was written, still at their defaults
        for key, default in added.items():
            if isinstance(old.get(section), dict) and key not in old[section] and new.get(section, {}).get(key) == default:
                old[section][key] = default
    changes = changed_settings(old, new)
    if not changes:
        return
    print("srlm: settings changed since this run directory last ran:", flush=True)
    for key, a, b in changes:
        print(f"  {key}: {a!r} -> {b!r}")
    changed_sections = {key.split(".")[0] for key, _, _ in changes}
    done = {k for k, v in rd.manifest["stages"].items() if v.get("status") == "done"}
    rerun, main_changed = [], False
    for stage in MAIN_LINE:
        main_changed = main_changed or any(changed_sections & set(g) for g in STAGE_SECTIONS[stage])
        if main_changed:
            rerun += [k for k in sorted(done) if k == stage or k.endswith(f"/{stage}")]
    side = [k for k in sorted(done) if k not in rerun and k.split("/")[-1] not in MAIN_LINE
            and (main_changed or any(changed_sections & set(g)
                                     for g in STAGE_SECTIONS.get(EVALUATED_AS_M1.sub("eval_m1", k.split("/")[-1]), ())))]
    print(f"  finished stages that will rerun: {', '.join(rerun + side) or 'none'}", flush=True)
    (rd.root / "config.previous.yaml").write_text(old_path.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"  the previous config is kept in {rd.root / 'config.previous.yaml'}", flush=True)
