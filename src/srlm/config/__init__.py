"""Run configuration: pydantic models, YAML recipes and `key=value` overrides.

Every field has a description (shown by `srlm config --keys`) and, where it has one, its unit in its name.
Unknown keys and wrong types are errors that name the key: a typo must never silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from srlm.config.sections import (
    BASE_AS_M1,
    KNOWN_INTEGRATIONS,
    LOOP_TRACKERS,
    DataConfig,
    DpoConfig,
    EvalConfig,
    GenerationBackendConfig,
    JudgeConfig,
    JudgeTrainingConfig,
    LaunchConfig,
    LoopConfig,
    LoraConfig,
    MetaConfig,
    ModelConfig,
    PairsConfig,
    PromptsConfig,
    RespondConfig,
    SftConfig,
    TrackingConfig,
    TrainingConfig,
    _Section,
    known_integrations,
    report_to_names,
)
from srlm.errors import ConfigError

__all__ = [
    "ADDED_KEYS", "ADDED_SECTIONS", "BASE_AS_M1", "Config", "DataConfig", "DpoConfig", "EvalConfig", "GenerationBackendConfig",
    "JudgeConfig", "JudgeTrainingConfig", "KNOWN_INTEGRATIONS", "LOOP_TRACKERS", "LaunchConfig", "LoopConfig",
    "LoraConfig", "MetaConfig", "ModelConfig", "PairsConfig", "PromptsConfig", "RespondConfig", "SftConfig",
    "TrackingConfig", "TrainingConfig", "describe_keys", "fingerprint_view", "known_integrations", "list_recipes",
    "load_config", "recipe_path", "report_to_names", "save_config"
]


class Config(_Section):
    seed: int = Field(0, description="Seed for sampling, shuffling and training.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    backend: GenerationBackendConfig = Field(default_factory=GenerationBackendConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    respond: RespondConfig = Field(default_factory=RespondConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    dpo: DpoConfig = Field(default_factory=DpoConfig)
    judge_training: JudgeTrainingConfig = Field(default_factory=JudgeTrainingConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, value: int) -> int:
        if not 0 <= value < 2**31:
            raise ValueError("seed must be in [0, 2**31)")
        return value

    @model_validator(mode="after")
    def _pair_policies_say_what_they_set(self):
        if self.pairs.policy == "consistency_weighted" and self.dpo.label_smoothing > 0:
            raise ValueError("pairs.policy=consistency_weighted sets DPO's label smoothing in each iteration from the "
                             "judges' consistency: leave dpo.label_smoothing at 0")
        if self.pairs.policy == "anchored" and self.pairs.length_control_rho > 0:
            raise ValueError("pairs.policy=anchored takes the rejected answer from M1's answers, which length control "
                             "(pairs.length_control_rho) does not choose among: use one or the other")
        return self

    @model_validator(mode="after")
    def _meta_judge_needs_judgements_to_compare(self):
        if self.meta.enabled and (self.judge.method == "direct" or self.judge.num_samples < 2):
            raise ValueError("meta.enabled=true compares a response's judgements with each other: it needs two or more "
                             "written judgements per response (judge.num_samples >= 2, judge.method sample_mean or "
                             "expected)")
        return self

    def fingerprint(self, *sections: str) -> str:
        """A hash of the named sections (all if none): a stage reruns when the part of the config it reads changed."""
        data = {name: fingerprint_view(name, values) if isinstance(values, dict) else values
                for name, values in self.model_dump(mode="json").items()}
        if sections:
            picked = {name: data[name] for name in sections}
        else:  # the whole config: sections added since, at their defaults, leave it as it was
            picked = {name: values for name, values in data.items()
                      if not (name in ADDED_SECTIONS and values == fingerprint_view(name, _default_section(name)))}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


# Keys added to a section after run directories already existed. While such a key holds the value it was added
# with, it is left out of the fingerprints, so upgrading srlm does not make a finished run redo its stages when
# the config those stages read is what it was. Add every new key here, with its default.
ADDED_KEYS: dict[str, dict[str, object]] = {
    "backend": {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.85, "max_model_len": None,
                "enforce_eager": False, "data_parallel_size": 1, "int8_weights": False},
    "judge": {"method": "sample_mean"},
    "sft": {"group_by_length": True, "save_every_steps": None},
    "dpo": {"group_by_length": True, "checkpoint_every_steps": None, "nll_weight": 0.0, "save_every_steps": None,
            "label_smoothing": 0.0},
    "eval": {"winrate_method": "pairwise", "select_checkpoint": False, "selection_prompts": None, "selection_limit": 32,
             "selection_judge": "previous", "ifeval_prompts": None, "ifeval_limit": None, "ifeval_max_new_tokens": 384,
             "harness_tasks": [], "harness_limit": None, "harness_include_path": None},
    "loop": {"require_judge_signal": False, "m1": None, "eval_base": False},
    "pairs": {"policy": "best_worst"},
    "judge_training": {"length_balance": False},
    "meta": {"method": "generate"},
}


# Sections added after run directories already existed: left out of the whole-config fingerprint while every key
# holds its default (a stage's fingerprint names the sections it reads, so those never see them).
ADDED_SECTIONS = {"judge_training", "tracking", "meta"}


def _default_section(name: str) -> dict:
    return Config.model_fields[name].default_factory().model_dump(mode="json")


def fingerprint_view(section: str, values: dict) -> dict:
    """A section's dumped values without the ADDED_KEYS that still hold the value they were added with."""
    added = ADDED_KEYS.get(section, {})
    return {key: value for key, value in values.items() if not (key in added and added[key] == value)}


# ---------------------------------------------------------------------------------------------------------------
# Recipes and overrides


def list_recipes() -> dict[str, str]:
    """Recipe name -> first comment line (its one-line description)."""
    out = {}
    for entry in sorted(resources.files("srlm.recipes").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            first = entry.read_text(encoding="utf-8").splitlines()[0]
            out[entry.name[: -len(".yaml")]] = first.lstrip("# ").strip()
    return out


def recipe_path(name: str) -> Path:
    entry = resources.files("srlm.recipes").joinpath(f"{name}.yaml")
    if not entry.is_file():
        raise ConfigError(f"unknown recipe '{name}'; available: {', '.join(list_recipes())}")
    return Path(str(entry))


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like key=value (e.g. respond.num_samples=4)")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{assignment}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # a plain string that YAML can't parse, e.g. "a: b: c"
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        elif not key:  # a rule across sections: its message names the keys
            lines.append(err["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"config key '{key}': {err['msg']} (got {err.get('input')!r})")
    return f"{origin}: " + "; ".join(lines)


def load_config(recipe: str | None = None, config_file: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Resolve a config: a recipe or a YAML file (or the defaults), then the `key=value` overrides in order."""
    if recipe and config_file:
        raise ConfigError("give either --recipe or --config, not both")
    origin = "defaults"
    data: dict = {}
    if recipe:
        data = _load_yaml(recipe_path(recipe))
        origin = f"recipe '{recipe}'"
    elif config_file:
        data = _load_yaml(Path(config_file))
        origin = str(config_file)
    for assignment in overrides:
        _apply_override(data, assignment)
    if overrides:
        origin += " with overrides " + " ".join(overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None


def save_config(config: Config, path: Path) -> None:
    from srlm.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def describe_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every leaf key: the text behind `srlm config --keys`."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe_keys(annotation, f"{prefix}{name}."))
        else:
            default = field.default_factory() if field.default_factory else field.default
            rows.append((f"{prefix}{name}", json.dumps(default), field.description or ""))
    return rows
