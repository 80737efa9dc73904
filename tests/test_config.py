import pytest

from srlm.config import Config, describe_keys, list_recipes, load_config
from srlm.errors import ConfigError


def test_recipes_validate():
    names = list_recipes()
    assert {"quickstart", "paper"} <= set(names)
    for name in names:
        cfg = load_config(recipe=name)
        assert isinstance(cfg, Config)
    paper = load_config(recipe="paper")
    assert (paper.dpo.beta, paper.respond.num_samples, paper.judge.num_samples) == (0.1, 4, 3)
    assert (paper.sft.learning_rate, paper.dpo.learning_rate, paper.dpo.learning_rate_end) == (5.5e-6, 1e-6, 1e-7)
    assert paper.loop.iterations == 2  # M1 -> M2 -> M3


def test_overrides_are_typed():
    cfg = load_config(recipe="quickstart", overrides=["respond.num_samples=6", "model.name_or_path=/x/y", "seed=3"])
    assert cfg.respond.num_samples == 6 and cfg.model.name_or_path == "/x/y" and cfg.seed == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("respond.num_sample=4", "unknown config key 'respond.num_sample'"),
        ("nosuch=1", "unknown config key 'nosuch'"),
        ("respond.num_samples=many", "config key 'respond.num_samples'"),
        ("respond.num_samples=1", "config key 'respond.num_samples'"),  # pairs need at least 2 candidates
        ("judge.top_p=1.5", "config key 'judge.top_p'"),
        ("respond=4", "config key 'respond'"),
        ("respond.temperature", "must look like key=value"),
        ("seed=-1", "config key 'seed'"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(recipe="quickstart", overrides=[override])


def test_bad_config_files(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("sft:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*invalid YAML"):
        load_config(config_file=bad_yaml)
    wrong_type = tmp_path / "list.yaml"
    wrong_type.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(config_file=wrong_type)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(config_file=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_config(recipe="nope")


def test_every_key_is_described():
    rows = describe_keys()
    assert len(rows) > 40
    assert all(description for _, _, description in rows)


def test_fingerprint_tracks_the_sections_read():
    a = load_config(recipe="quickstart")
    b = load_config(recipe="quickstart", overrides=["judge.num_samples=5"])
    assert a.fingerprint("respond") == b.fingerprint("respond")
    assert a.fingerprint("judge") != b.fingerprint("judge")


def test_added_keys_at_their_defaults_leave_fingerprints_unchanged():
    """Upgrading srlm must not make a finished run redo its stages: with every key added since run directories
    existed left at its default, the fingerprints are those srlm computed before the keys were added (pinned)."""
    from srlm.config import ADDED_KEYS, Config, load_config

    # One default changed on purpose since then: eval.winrate_judge "next" -> "m1" (a judge fixed for the run). It is
    # read only by evaluation side stages, so a finished run redoes its evaluation, never its main line.
    assert load_config(overrides=["eval.winrate_judge=next"]).fingerprint() == "ede65554c00688ca"
    assert load_config("paper", overrides=["eval.winrate_judge=next"]).fingerprint() == "0d3795c56afd8733"
    for section in ("seed", "model", "data", "sft", "prompts", "respond", "judge", "pairs", "dpo", "backend"):
        assert load_config().fingerprint(section) == load_config(overrides=["eval.winrate_judge=next"]).fingerprint(section)
    for section, keys in ADDED_KEYS.items():
        fields = type(getattr(Config(), section)).model_fields
        for key, value in keys.items():
            assert fields[key].default == value, f"ADDED_KEYS[{section!r}][{key!r}] must be the field's default"
    # a changed value is part of the fingerprint like any other key
    assert load_config(overrides=["judge.method=expected"]).fingerprint("judge") != load_config().fingerprint("judge")
