"""The pipeline's config: one typed dataclass per stage (each defined beside the code it
configures), TOML presets that extend one another (configs/NAME.toml, `extends = "cpu"`), and
`--set key=value` overrides, all checked before any work starts. `agentalign config keys` lists
every key.

The pipeline fills in what one stage takes from another — the model and its image size, the
stores a stage reads, the checkpoint it starts from — so none of those is a key a user could set
and see overwritten. `seed` seeds every stage unless a stage's own `seed` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from agentalign.config import ConfigError, build_config, given_table, load_toml, merge_tables
from agentalign.envs.skygarden import world as W
from agentalign.models import MODEL_PRESETS, PolicyConfig, model_preset
from agentalign.players.generate import GenerateConfig
from agentalign.players.generate import preset as data_preset
from agentalign.train.align import AlignConfig
from agentalign.train.bc import BCConfig, bc_preset
from agentalign.train.common import resolve_device
from agentalign.train.dpo import DPOConfig
from agentalign.train.rest import PreferenceFTConfig
from agentalign.train.reward import RewardTrainConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # shipped inside the package: works installed too


@dataclass(frozen=True)
class EvalStageConfig:
    episodes: int = 1000  # the paper's evaluation
    videos: int = 3
    num_envs: int = 64
    temperature: float = 1.0
    seed: int = 1  # evaluation episodes differ from the preference rollouts (seed 0)


@dataclass(frozen=True)
class DeployStageConfig:
    """The aligned agent as a game would run it: its actions sampled at a lower temperature, as an
    LLM is decoded below the temperature it was trained at. Reported beside the paper's T = 1
    evaluation (`eval_align`), never instead of it. At 0.3 most wall-bound misses go."""

    temperature: float | None = 0.3  # None: no deployment evaluation

    def __post_init__(self) -> None:
        if self.temperature is not None and not 0 < self.temperature <= 1:
            raise ValueError(f"temperature must lie in (0, 1] or be none, got {self.temperature!r}")


@dataclass(frozen=True)
class PrefsStageConfig:
    rollout_episodes: int = 2400  # paper: 2,400 on-policy trajectories ...
    train: int = 1000  # ... 1,000 for training, 1,400 held out
    temperature: float = 1.0  # paper §3.4: diverse enough at 1
    # "synthetic": the labeller of section 3.4; "labels": people's, given through `agentalign label
    # serve RUN` and exported by this stage on every run (docs/labeling.md).
    source: Literal["synthetic", "labels"] = "synthetic"


@dataclass(frozen=True)
class SweepStageConfig:
    enabled: bool = True
    seeds: int = 3
    points: int = 6
    encoders: tuple[str, ...] = ("agent", "random")
    # The sweep trains points x seeds x encoders reward models; these cap each one's cost where the
    # main reward model's settings are too dear for a CPU (None: the reward stage's value).
    max_steps: int | None = None
    traj_per_step: int | None = None


# What makes one model size differ from another (appendix E); the rest (image size, context,
# conditioning on a_{t-1}, dropout) stays the main model's, so every size reads the same data.
SIZE_FIELDS = ("width", "layers", "heads", "ff_mult", "head_hidden", "stem_channels", "encoder_stages")


@dataclass(frozen=True)
class ReproduceConfig:
    """The extra runs behind the paper's alignment figures: both pads (figures 8 and 9), several
    alignment seeds, a small and a large comparison set, with and without preference fine-tuning,
    and each one's final jump-pad distribution (appendix I); then behaviour cloning at other model
    sizes (figure 12). Off by default: it multiplies the alignment work about twentyfold."""

    enabled: bool = False
    targets: tuple[str, ...] = ("left", "right")  # figure 8 (left) and figure 9 (right)
    seeds: int = 3  # alignment seeds per variant: the fewest whose standard error means something
    # The two ends of figures 8/9's range of reward models: "small" trains on all pairs of
    # `small_trajectories` training trajectories, "large" on all pairs of all of them.
    comparisons: tuple[Literal["small", "large"], ...] = ("small", "large")
    small_trajectories: int = 15  # 105 comparisons: the paper's smallest set (~100)
    with_pft: tuple[bool, ...] = (True, False)  # figures 8/9: with (blue) and without preference FT
    # Model presets cloned at figure 12's sizes, on the cpu preset's scale (the paper's are 4m, 25m,
    # paper-103m, for a GPU); one equal to the main model reuses its stages; () skips the sweep.
    model_sizes: tuple[str, ...] = ("tiny", "cpu")
    eval_episodes: int | None = None  # per variant; None: the main evaluation's count

    def __post_init__(self) -> None:
        for name in ("targets", "comparisons", "with_pft", "model_sizes"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {list(values)}")
        for pad in self.targets:
            if pad not in W.PAD_NAMES:
                raise ValueError(f"targets: unknown jump pad {pad!r}; choose from {', '.join(W.PAD_NAMES)}")
        for preset in self.model_sizes:
            if preset not in MODEL_PRESETS:
                raise ValueError(f"model_sizes: unknown model preset {preset!r}; choose from {', '.join(MODEL_PRESETS)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.eval_episodes is not None and self.eval_episodes < 1:
            raise ValueError(f"eval_episodes must be at least 1 (or none), got {self.eval_episodes}")


def size_model(main: PolicyConfig, preset: str) -> PolicyConfig:
    """The main model at another preset's size (SIZE_FIELDS)."""
    sized = model_preset(preset)
    return replace(main, **{f: getattr(sized, f) for f in SIZE_FIELDS})


@dataclass(frozen=True)
class PipelineConfig:
    target: str = "left"  # the pad the designer wants: the labeller's preference, the logged success
    seed: int = 0
    model: PolicyConfig = field(default_factory=lambda: model_preset("cpu"))
    data_pretrain: GenerateConfig = field(default_factory=lambda: data_preset("pretrain"))
    data_finetune: GenerateConfig = field(default_factory=lambda: data_preset("finetune"))
    pretrain: BCConfig = field(default_factory=lambda: bc_preset("pretrain"))
    sft: BCConfig = field(default_factory=lambda: bc_preset("sft"))
    scratch: BCConfig = field(default_factory=lambda: bc_preset("scratch"))
    eval: EvalStageConfig = field(default_factory=EvalStageConfig)
    deploy: DeployStageConfig = field(default_factory=DeployStageConfig)
    prefs: PrefsStageConfig = field(default_factory=PrefsStageConfig)
    reward: RewardTrainConfig = field(default_factory=RewardTrainConfig)
    sweep: SweepStageConfig = field(default_factory=SweepStageConfig)
    pft: PreferenceFTConfig = field(default_factory=PreferenceFTConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)  # hashed by no main stage

    def __post_init__(self) -> None:
        W.pad_index(self.target)
        for stage in ("pretrain", "sft", "scratch"):  # before any work: a device this machine lacks
            name = getattr(self, stage).device
            try:
                kind = resolve_device(name).type
            except ValueError as e:
                raise ValueError(f"{stage}.{e}") from None
            if kind not in ("cpu", "cuda"):
                raise ValueError(f"{stage}.device: {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
        if self.prefs.train >= self.prefs.rollout_episodes - 1:
            raise ValueError(f"prefs.train ({self.prefs.train}) must leave held-out trajectories of the "
                             f"{self.prefs.rollout_episodes} rollouts")  # fmt: skip
        r = self.reproduce
        if not r.enabled:
            return
        if self.prefs.source == "labels":
            raise ValueError("reproduce labels every target pad synthetically: set prefs.source=synthetic with it")
        if "small" in r.comparisons and not 2 <= r.small_trajectories < self.prefs.train:
            raise ValueError(f"reproduce.small_trajectories ({r.small_trajectories}) must lie in 2..{self.prefs.train - 1}: "
                             f"fewer than the prefs.train trajectories, which make the large set")  # fmt: skip
        for preset in r.model_sizes:
            try:
                size_model(self.model, preset)
            except ValueError as e:
                raise ValueError(f"reproduce.model_sizes: {preset} at this pipeline's image size: {e}") from None


def preset_table(preset: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's table (configs/NAME.toml, or a TOML path), with `extends = "NAME"` (or a path,
    relative to the file) resolved: the file's keys over its parent's, table by table, so that a
    variant states only what it changes (`cpu-wide.toml`, or a studio's `my.toml` on `cpu`)."""
    path = Path(preset)
    if not path.suffix:
        path = CONFIG_DIR / f"{preset}.toml"
        if not path.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
            raise ValueError(f"unknown pipeline preset {str(preset)!r}; choose one of {', '.join(known)} or give a .toml path")
    path = path.resolve()
    if path in _chain:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(p.name for p in (*_chain, path))}")
    table = load_toml(path)
    parent = table.pop("extends", None)
    if parent is None:
        return table
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: extends must be a preset name or a .toml path, got {parent!r}")
    if Path(parent).suffix:
        parent = path.parent / parent
    try:
        base = preset_table(parent, (*_chain, path))
    except ConfigError:
        raise
    except ValueError as e:  # an unknown preset name: say which file asked for it
        raise ConfigError(f"{path}: extends: {e}") from None
    return merge_tables(base, table)


def load_pipeline_config(preset: str | Path = "cpu", overrides: list[str] | None = None) -> PipelineConfig:
    """A preset name (configs/NAME.toml) or a TOML path, then key=value overrides.

    `model_preset = "cpu"` (or --set model_preset=25m) picks the model preset that `[model]` keys
    then adjust."""
    table = preset_table(preset)
    overrides = list(overrides or [])
    name = table.pop("model_preset", "cpu")
    rest = []
    for o in overrides:
        if o.split("=", 1)[0].strip() == "model_preset":
            name = o.split("=", 1)[1].strip()
        else:
            rest.append(o)
    base = PipelineConfig(model=model_preset(name))
    try:  # the file alone first, so an error names where the bad key or value was given
        build_config(PipelineConfig, table, base=base)
    except ConfigError as e:
        raise ConfigError(f"{_source(preset)}: {e}") from None
    try:
        cfg = build_config(PipelineConfig, table, rest, base=base)
    except ConfigError as e:
        raise ConfigError(f"--set: {e}") from None
    given = given_table(table, rest)

    def seed(stage: str, offset: int = 0) -> int:
        """`seed` (+ offset) seeds every stage, unless the preset or an override sets the stage's
        own seed: `--set align.seed=3` replicates the alignment alone on the same earlier stages."""
        own = given.get(stage)
        return getattr(cfg, stage).seed if isinstance(own, dict) and "seed" in own else cfg.seed + offset

    stages = ("data_pretrain", "pretrain", "scratch", "sft", "reward", "pft", "align", "dpo")
    return replace(cfg, data_finetune=replace(cfg.data_finetune, seed=seed("data_finetune", 1)),
                   **{s: replace(getattr(cfg, s), seed=seed(s)) for s in stages})  # fmt: skip


def _source(preset: str | Path) -> str:
    """The file a preset name stands for, to name in an error."""
    path = Path(preset)
    return str(path if path.suffix else CONFIG_DIR / f"{preset}.toml")
