from dataclasses import dataclass, field, replace

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
    from agentalign.train.rest import CloneConfig, PreferenceFTConfig

    cfg = build_config(PreferenceFTConfig, {}, ["rest.clone.lr=1e-3"])
    assert cfg.rest.clone == replace(CloneConfig(), lr=1e-3)  # the clone's other settings: its defaults
    assert replace(cfg.rest, clone=CloneConfig()) == PreferenceFTConfig().rest and cfg.rank == PreferenceFTConfig().rank


def test_a_nested_default_that_is_not_its_classs_default_is_kept():
    from agentalign.train.align import AlignConfig

    cfg = build_config(AlignConfig, {}, ["rest.clone.lr=1e-2", "sharpen.rounds=2"])
    default = AlignConfig()  # its rest and sharpen are ReST with the alignment's settings, not RestConfig()'s
    assert cfg.rest == replace(default.rest, clone=replace(default.rest.clone, lr=1e-2))
    assert cfg.sharpen == replace(default.sharpen, rounds=2) and cfg.reinforce == default.reinforce


@pytest.mark.parametrize(
    "cls, override",
    [
        ("rest:PreferenceFTConfig", "bc.lr=1e-3"),  # the preference fine-tuning's old BC config
        ("rest:PreferenceFTConfig", "iterations=2"),
        ("rest:PreferenceFTConfig", "rest.clone.model.width=64"),  # a clone's model is the agent's
        ("align:AlignConfig", "reinforce.epochs=2"),  # REINFORCE's options that were measured and not kept
        ("align:AlignConfig", "reinforce.value_lambda=0.9"),
        ("align:AlignConfig", "reinforce.samples_per_start=2"),
        ("align:AlignConfig", "reinforce.entropy_bonus=0.01"),
        ("align:AlignConfig", "reinforce.target=left"),  # the target lives at the top level only
        ("align:AlignConfig", "polish_bc.lr=1e-3"),
    ],
)
def test_removed_keys_are_unknown(cls, override):
    import importlib

    module, name = cls.split(":")
    config = getattr(importlib.import_module(f"agentalign.train.{module}"), name)
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config(config, {}, [override])


def test_a_range_error_in_a_nested_config_names_it():
    from agentalign.train.align import AlignConfig

    with pytest.raises(ConfigError, match=r"reinforce: .*beta"):
        build_config(AlignConfig, {}, ["reinforce.beta=-1"])
    with pytest.raises(ConfigError, match=r"rest: .*keep"):
        build_config(AlignConfig, {}, ["rest.keep=0"])
