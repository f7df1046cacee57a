from dataclasses import dataclass, field

import pytest

from agentalign.config import ConfigError, build_config, config_to_dict
from agentalign.models import PolicyConfig


@dataclass(frozen=True)
class _Train:
    lr: float = 1e-4
    steps: int = 100
    target: str = "left"
    bf16: bool = False
    pads: tuple[str, ...] = ("left", "right")
    init: str | None = None
    model: PolicyConfig = field(default_factory=PolicyConfig)


def test_table_and_overrides_are_typed():
    cfg = build_config(_Train, {"lr": 3e-4, "model": {"width": 64, "heads": 2}},
                       ["steps=250", "bf16=true", "model.layers=2", "pads=middle", "init=none"])  # fmt: skip
    assert cfg.lr == 3e-4 and cfg.steps == 250 and cfg.bf16 is True and cfg.pads == ("middle",)
    assert cfg.model.width == 64 and cfg.model.layers == 2 and cfg.model.heads == 2 and cfg.init is None
    assert config_to_dict(cfg)["model"]["width"] == 64


@pytest.mark.parametrize(
    "table, overrides, match",
    [
        ({"lrr": 1.0}, [], r"unknown config key 'lrr' \(did you mean 'lr'\?\)"),
        ({}, ["steps=ten"], "steps: expected an integer"),
        ({}, ["model.widht=3"], "unknown config key 'model.widht'"),
        ({}, ["bf16=maybe"], "bf16: expected true or false"),
        ({}, ["model.width=102"], "divisible by model.heads"),
        ({}, ["steps"], "key=value"),
    ],
)
def test_bad_keys_and_values_are_named(table, overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config(_Train, table, overrides)


def test_overriding_one_nested_key_keeps_the_fields_own_defaults():
    from agentalign.train.preference_ft import PreferenceFTConfig

    cfg = build_config(PreferenceFTConfig, {}, ["bc.lr=1e-3"])
    assert cfg.bc.lr == 1e-3
    default = PreferenceFTConfig().bc  # the preference preset, not BCConfig()'s pre-training defaults
    assert (cfg.bc.stage, cfg.bc.steps, cfg.bc.train_only) == (default.stage, default.steps, default.train_only)
