"""The whole method, chained and resumable: from nothing to an aligned agent and a report.

    data_pretrain -> pretrain --------------------------> eval_base
    data_finetune -> sft (from pretrain) ---------------> eval_sft
                  -> scratch (the paper's baseline) ----> eval_scratch
    sft -> rollouts -> prefs (synthetic, target pad) -> reward (agent encoder) ; sweep (figure 7)
        -> pft (preference fine-tuning) -> align (REINFORCE) -> eval_pft, eval_align, eval_deploy
           [refresh] pft -> rollouts_pft -> prefs_pft -> reward_pft -> align (a second reward model)
        -> dpo (offline, from the preferences) -> eval_dpo
    [reproduce] prefs_PAD -> reward_PAD_SET -> pft_PAD_SET -> align_PAD_SET_[no]pft_sK -> eval_align_...
                size_PRESET_{pretrain,sft,scratch,eval_sft,eval_scratch}   (figures 8, 9, 12; app. I)
    -> report (report.html, results.json)

Every stage writes into its own folder under the run folder, with its resolved config, and marks
itself done with `stage.json`: a hash of its config and of the stages it reads. Running the same
command again skips done stages whose hash still matches; a stage that was interrupted runs again
(data generation and behaviour cloning resume from their last durable episode or checkpoint);
`from_stage` reruns from a stage on. A done stage whose config changed is an error that names it,
never silently overwritten (only the report, a summary of the others, is simply made again).

`reproduce` (off by default, `--reproduce`) adds the variants behind figures 8, 9 and 12 as stages
of their own, reusing the main stages wherever the computation is the same; the main stages'
hashes do not cover it, so turning it on keeps a finished run's stages.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal

from agentalign.config import ConfigError, build_config, config_to_dict, given_table, load_toml, merge_tables
from agentalign.envs.skygarden import world as W
from agentalign.models import MODEL_PRESETS, PolicyConfig, model_preset
from agentalign.players.generate import GenerateConfig, preset as data_preset
from agentalign.train.bc import BCConfig, bc_preset
from agentalign.train.common import atomic_write_json, json_safe
from agentalign.train.dpo import DPOConfig
from agentalign.train.preference_ft import PreferenceFTConfig
from agentalign.train.reinforce import ReinforceConfig
from agentalign.train.reward import RewardTrainConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped inside the package: works installed too


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
    evaluation (`eval_align`), never instead of it. At 0.3 the cpu preset's aligned agents lose
    most of their wall-bound misses: left 88-93 % at T = 1 became 90-98 % (RESULTS.md, seventh
    session); 0.1 gave the same as 0.3."""

    temperature: float | None = 0.3  # None: no deployment evaluation

    def __post_init__(self) -> None:
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1):
            raise ValueError(f"temperature must lie in (0, 1] or be none, got {t!r}")


@dataclass(frozen=True)
class RefreshStageConfig:
    """A second reward-model round before online alignment, as appendix A allows ("steps 3-5 can
    be repeated to generate new preferences"): the preference-fine-tuned agent plays
    `rollout_episodes` episodes, the same labeller compares `train` of them, and REINFORCE follows
    the reward model trained on those comparisons (still on the SFT agent's frozen encoder). The
    first reward model learnt from the SFT agent's play, where the target pad is rare; this one
    ranks the behaviours alignment actually starts from."""

    enabled: bool = False
    rollout_episodes: int | None = None  # None: the first round's (prefs.rollout_episodes)
    train: int | None = None  # labelled for training, the rest held out; None: prefs.train
    seed_offset: int = 11  # episode seeds apart from the other rollouts' (the pipeline seed + 0, 1, 2)

    def sizes(self, prefs: "PrefsStageConfig") -> tuple[int, int]:
        """(rollout episodes, training trajectories), the first round's where not set."""
        return (prefs.rollout_episodes if self.rollout_episodes is None else self.rollout_episodes,
                prefs.train if self.train is None else self.train)  # fmt: skip


@dataclass(frozen=True)
class PrefsStageConfig:
    rollout_episodes: int = 2400  # paper: 2,400 on-policy trajectories ...
    train: int = 1000  # ... 1,000 for training, 1,400 held out
    temperature: float = 1.0  # paper §3.4: diverse enough at 1


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
    target: str = "left"
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
    refresh: RefreshStageConfig = field(default_factory=RefreshStageConfig)
    align: ReinforceConfig = field(default_factory=ReinforceConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)  # hashed by no main stage

    def __post_init__(self) -> None:
        W.pad_index(self.target)
        if self.prefs.train >= self.prefs.rollout_episodes - 1:
            raise ValueError(f"prefs.train ({self.prefs.train}) must leave held-out trajectories of the "
                             f"{self.prefs.rollout_episodes} rollouts")  # fmt: skip
        episodes, train = self.refresh.sizes(self.prefs)
        if self.refresh.enabled and not 2 <= train < episodes - 1:
            raise ValueError(f"refresh: train ({train}) must lie in 2..{episodes - 2}: labelled trajectories, "
                             f"with some of the {episodes} rollouts held out")  # fmt: skip
        r = self.reproduce
        if not r.enabled:
            return
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
    cfg = build_config(PipelineConfig, table, rest, base=base)
    given = given_table(table, rest)

    def seed(stage: str, offset: int = 0) -> int:
        """`seed` (+ offset) seeds every stage, unless the preset or an override sets the stage's
        own seed: `--set align.seed=3` replicates the alignment alone on the same earlier stages."""
        own = given.get(stage)
        return getattr(cfg, stage).seed if isinstance(own, dict) and "seed" in own else cfg.seed + offset

    # One model and one image size for every stage; the target pad everywhere it matters.
    size = cfg.model.image_size
    return replace(
        cfg,
        data_pretrain=replace(cfg.data_pretrain, size=size, seed=seed("data_pretrain")),
        data_finetune=replace(cfg.data_finetune, size=size, seed=seed("data_finetune", 1)),
        pretrain=replace(cfg.pretrain, model=cfg.model, seed=seed("pretrain")),
        scratch=replace(cfg.scratch, model=cfg.model, seed=seed("scratch")),
        sft=replace(cfg.sft, model=cfg.model, seed=seed("sft")),
        reward=replace(cfg.reward, seed=seed("reward")),
        pft=replace(cfg.pft, seed=seed("pft")),
        align=replace(cfg.align, target=cfg.target, seed=seed("align")),
        dpo=replace(cfg.dpo, seed=seed("dpo")),
    )


# ---- stages ------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    deps: tuple[str, ...]
    config: Any  # what the stage's hash covers
    run: Callable[["Run"], dict]  # returns its headline figures
    headline: Callable[[dict], str] = lambda r: ""
    # A summary of other stages' outputs (the report): when its inputs changed (--reproduce added
    # stages, say), it is simply made again rather than refused.
    redo_when_stale: bool = False


class Run:
    """A run folder and its stages."""

    def __init__(self, out: str | Path, cfg: PipelineConfig):
        self.out = Path(out)
        self.cfg = cfg
        self.stages = _stages(cfg)
        self.by_name = {s.name: s for s in self.stages}

    def dir(self, name: str) -> Path:
        return self.out / name

    def stage_hash(self, name: str, _memo: dict | None = None) -> str:
        memo = {} if _memo is None else _memo
        if name not in memo:
            s = self.by_name[name]
            payload = json.dumps({"name": name, "config": _plain(s.config),
                                  "deps": [self.stage_hash(d, memo) for d in s.deps]}, sort_keys=True)  # fmt: skip
            memo[name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return memo[name]

    def marker(self, name: str) -> dict | None:
        p = self.dir(name) / "stage.json"
        return json.loads(p.read_text()) if p.is_file() else None


def _plain(x: Any) -> Any:
    try:
        return config_to_dict(x)
    except TypeError:
        return x


def _stages(cfg: PipelineConfig) -> list[Stage]:
    from agentalign.pipeline_stages import STAGE_FUNCTIONS as F

    ev = cfg.eval
    stages = [
        Stage("data_pretrain", (), cfg.data_pretrain, F["data_pretrain"], lambda r: f"{r['episodes']} episodes"),
        Stage("data_finetune", (), cfg.data_finetune, F["data_finetune"], lambda r: f"{r['episodes']} episodes"),
        Stage("pretrain", ("data_pretrain",), cfg.pretrain, F["pretrain"], _loss_line),
        Stage("sft", ("pretrain", "data_finetune"), cfg.sft, F["sft"], _loss_line),
        Stage("scratch", ("data_finetune",), cfg.scratch, F["scratch"], _loss_line),
        Stage("eval_base", ("pretrain",), ev, F["eval_base"], _eval_line),
        Stage("eval_sft", ("sft",), ev, F["eval_sft"], _eval_line),
        Stage("eval_scratch", ("scratch",), ev, F["eval_scratch"], _eval_line),
        # Only what the rollouts depend on: a new train/test split relabels them, it does not replay them.
        Stage("rollouts", ("sft",), {"rollout_episodes": cfg.prefs.rollout_episodes, "temperature": cfg.prefs.temperature},
              F["rollouts"], lambda r: f"{r['episodes']} trajectories"),  # fmt: skip
        Stage("prefs", ("rollouts",), _prefs_config(cfg, cfg.target), F["prefs"], _prefs_line),
        Stage("reward", ("prefs",), cfg.reward, F["reward"], _reward_line),
        Stage("pft", ("reward",), cfg.pft, F["pft"], _pft_line),
        *_refresh_stages(cfg),
        Stage("align", ("pft", "reward_pft") if cfg.refresh.enabled else ("pft",), cfg.align, F["align"],
              partial(_align_line, cfg.target)),  # fmt: skip
        Stage("dpo", ("prefs",), cfg.dpo, F["dpo"], lambda r: r.get("skipped") or f"pair accuracy {_pct(r.get('dpo/accuracy'))}"),
        Stage("eval_pft", ("pft",), ev, F["eval_pft"], _eval_line),
        Stage("eval_align", ("align",), ev, F["eval_align"], _eval_line),
        *([Stage("eval_deploy", ("align",), replace(ev, temperature=cfg.deploy.temperature), F["eval_deploy"],
                 _eval_line)] if cfg.deploy.temperature is not None else []),  # fmt: skip
        Stage("eval_dpo", ("dpo",), ev, F["eval_dpo"], _eval_line),
    ]
    if cfg.sweep.enabled:
        stages.insert(11, Stage("sweep", ("prefs",), {**config_to_dict(cfg.sweep), "reward": config_to_dict(cfg.reward)},
                                F["sweep"], _sweep_line))  # fmt: skip
    if cfg.reproduce.enabled:
        stages += _reproduce_stages(cfg, {s.name for s in stages})
    stages.append(Stage("report", tuple(s.name for s in stages), {}, F["report"], lambda r: r.get("path", ""),
                        redo_when_stale=True))  # fmt: skip
    return stages


# ---- reproduce: the variants behind figures 8, 9 and 12 -----------------------------------------


@dataclass(frozen=True)
class AlignVariant:
    """One line of figures 8/9: a target pad, the comparison set its reward model learnt from,
    with or without preference fine-tuning; an (alignment, evaluation) stage pair per seed."""

    target: str
    comparisons: str
    pft: bool
    runs: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return f"{self.comparisons} set, {'PFT + RL' if self.pft else 'RL only'}"


@dataclass(frozen=True)
class SizeVariant:
    """One model size of figure 12: its stage for each role in SIZE_ROLES."""

    preset: str
    model: PolicyConfig
    stages: dict[str, str]


SIZE_ROLES = ("pretrain", "sft", "scratch", "eval_sft", "eval_scratch")


def _variant_name(cfg: PipelineConfig, stage: str, *key: str) -> str:
    """The stage `stage` for a variant key (pad, comparison set, pft|nopft, seed): the main run's own
    stage where the key is the main run's (its pad, the large set, PFT, seed 0), as the computation
    is the same; else the stage name with the key appended, e.g. align_right_small_nopft_s2."""
    main = (cfg.target, "large", "pft", "s0")[: len(key)]
    return stage if key == main else "_".join((stage, *key))


def reproduce_plan(cfg: PipelineConfig) -> tuple[list[AlignVariant], list[SizeVariant]]:
    """Every alignment variant and model size that `reproduce` asks for, with its stage names."""
    r = cfg.reproduce
    variants = []
    for t in r.targets:
        for c in r.comparisons:
            for pft in r.with_pft:
                names = [_variant_name(cfg, "align", t, c, "pft" if pft else "nopft", f"s{k}") for k in range(r.seeds)]
                variants.append(AlignVariant(t, c, pft, tuple((n, f"eval_{n}") for n in names)))
    sizes = []
    for preset in r.model_sizes:
        model = size_model(cfg.model, preset)
        same = model == cfg.model
        sizes.append(SizeVariant(preset, model, {role: role if same else f"size_{preset}_{role}" for role in SIZE_ROLES}))
    return variants, sizes


def _reproduce_stages(cfg: PipelineConfig, main: set[str]) -> list[Stage]:
    """The stages of reproduce_plan that the main run does not already have, each a call of the
    same stage function as its main counterpart on other inputs."""
    from agentalign import pipeline_stages as F

    r = cfg.reproduce
    # Variants are compared through their curves; a cheaper evaluation and no videos do for them.
    ev = replace(cfg.eval, episodes=r.eval_episodes or cfg.eval.episodes, videos=0)
    variants, sizes = reproduce_plan(cfg)
    stages: list[Stage] = []

    def add(name: str, deps: tuple[str, ...], config: Any, run: Callable, headline: Callable[[dict], str]) -> None:
        if name not in main and all(s.name != name for s in stages):
            stages.append(Stage(name, deps, config, run, headline))

    for t in r.targets:
        prefs = _variant_name(cfg, "prefs", t)
        add(prefs, ("rollouts",), _prefs_config(cfg, t), partial(F.preferences, name=prefs, target=t), _prefs_line)
        for c in r.comparisons:
            reward, pft = _variant_name(cfg, "reward", t, c), _variant_name(cfg, "pft", t, c)
            n = r.small_trajectories if c == "small" else None  # None: every training trajectory
            add(reward, (prefs,), {"reward": config_to_dict(cfg.reward), "trajectories": n},
                partial(F.reward_model, name=reward, prefs=prefs, trajectories=n),
                lambda res: f"{res.get('comparisons')} comparisons, {_reward_line(res)}")
            if True in r.with_pft:
                add(pft, (reward,), cfg.pft, partial(F.preference_ft, name=pft, reward=reward, prefs=prefs), _pft_line)
            for v in variants:
                if (v.target, v.comparisons) != (t, c):
                    continue
                start = pft if v.pft else "sft"
                for k, (align, evaluation) in enumerate(v.runs):
                    acfg = replace(cfg.align, target=t, seed=cfg.align.seed + k)  # seed 0: the main run's
                    add(align, (start, reward), acfg, partial(F.online_align, name=align, start=start, reward=reward, cfg=acfg),
                        partial(_align_line, t))  # fmt: skip
                    add(evaluation, (align,), ev, partial(F.evaluation, name=evaluation, model=align, ev=ev), _eval_line)
    for size in sizes:
        s = size.stages
        bc = {"pretrain": replace(cfg.pretrain, model=size.model), "sft": replace(cfg.sft, model=size.model),
              "scratch": replace(cfg.scratch, model=size.model, init=None)}  # fmt: skip
        add(s["pretrain"], ("data_pretrain",), bc["pretrain"],
            partial(F.behaviour_clone, name=s["pretrain"], cfg=bc["pretrain"], data="data_pretrain"), _loss_line)
        add(s["sft"], (s["pretrain"], "data_finetune"), bc["sft"],
            partial(F.behaviour_clone, name=s["sft"], cfg=bc["sft"], data="data_finetune", init=s["pretrain"]), _loss_line)
        add(s["scratch"], ("data_finetune",), bc["scratch"],
            partial(F.behaviour_clone, name=s["scratch"], cfg=bc["scratch"], data="data_finetune"), _loss_line)
        for model in ("sft", "scratch"):
            name = s[f"eval_{model}"]
            add(name, (s[model],), ev, partial(F.evaluation, name=name, model=s[model], ev=ev), _eval_line)
    return stages


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _refresh_stages(cfg: PipelineConfig) -> list[Stage]:
    from agentalign.pipeline_stages import STAGE_FUNCTIONS as F

    f = cfg.refresh
    if not f.enabled:
        return []
    episodes, train = f.sizes(cfg.prefs)
    return [
        Stage("rollouts_pft", ("pft",), {"episodes": episodes, "seed": cfg.seed + f.seed_offset,
                                         "temperature": cfg.prefs.temperature}, F["rollouts_pft"],
              lambda r: f"{r['episodes']} trajectories of the fine-tuned agent"),
        Stage("prefs_pft", ("rollouts_pft",), {"target": cfg.target, "train": train}, F["prefs_pft"], _prefs_line),
        Stage("reward_pft", ("prefs_pft",), cfg.reward, F["reward_pft"], _reward_line),
    ]  # fmt: skip


def _prefs_config(cfg: PipelineConfig, target: str) -> dict:
    return {"target": target, **config_to_dict(cfg.prefs)}


def _loss_line(r: dict) -> str:
    return f"loss {r['final_loss']:.3f}"


def _prefs_line(r: dict) -> str:
    return f"{r['train_comparisons']} train comparisons"


def _reward_line(r: dict) -> str:
    return f"held-out accuracy {_pct(r.get('reward/accuracy'))}"


def _pft_line(r: dict) -> str:
    return f"kept {r['kept']} trajectories"


def _align_line(target: str, r: dict) -> str:
    line = f"{target} success {_pct(r.get('final_success'))} (last 5 batches)" if r.get("episodes") else "no REINFORCE"
    if "polish" in r:
        line += f", then cloned the best {r['polish']['kept']} of the last {r['polish']['ranked']} episodes"
    for i, step in enumerate(s for s in ("rest", "sharpen") if s in r):
        k = r[step].get("rounds", 1)
        line += (f"{', and' if r.get('episodes') or i else ': cloned'} the best {r[step]['kept']} of {r[step]['ranked']} new at T = {r[step]['temperature']:g}"
                 + (f" in {k} rounds" if k > 1 else ""))  # fmt: skip
    return line


def _eval_line(r: dict) -> str:
    if "jump_pads" not in r:
        return r.get("skipped", "")
    jp = r["jump_pads"]
    line = " ".join(f"{p} {100 * jp[p]['fraction']:.0f}%" for p in ("left", "middle", "right", "none"))
    return line + (f" ({100 * r['stuck']['fraction']:.0f}% pinned at a wall)" if "stuck" in r else "")


def _sweep_line(r: dict) -> str:
    parts = []
    for enc, acc in r.get("largest", {}).items():
        parts.append(f"{enc} {_pct(acc)}")
    return "largest set: " + ", ".join(parts)


# ---- running -----------------------------------------------------------------------------------


def check_run_folder(run: Run, from_stage: str | None) -> list[str]:
    """Before any work: stages to run, or a clear error for another run's outputs."""
    names = [s.name for s in run.stages]
    if from_stage is not None and from_stage not in names:
        raise ValueError(f"unknown stage {from_stage!r}; stages: {', '.join(names)}")
    rerun_from = names.index(from_stage) if from_stage else len(names)
    todo, conflicts = [], []
    memo: dict = {}
    for k, s in enumerate(run.stages):
        m = run.marker(s.name)
        stale = m is not None and m.get("hash") != run.stage_hash(s.name, memo)
        if k >= rerun_from or m is None or (stale and s.redo_when_stale):
            todo.append(s.name)
        elif stale:
            conflicts.append(s.name)
    if conflicts:
        raise ValueError(f"{run.out} holds finished stages made with another config or inputs: "
                         f"{', '.join(conflicts)}. Use another --out, or rerun from the first of them with "
                         f"--from {conflicts[0]}")  # fmt: skip
    return todo


def _prepare_stage_dir(d: Path, stage_hash: str) -> None:
    """Keep a stage folder that an interrupted run of this very stage (same config and inputs) left,
    so it resumes from its checkpoints; clear one that another config or input made (a rerun after
    `--from` or a change), whose checkpoints would otherwise be refused or, worse, resumed."""
    started = d / "stage_started.json"
    if d.exists() and any(d.iterdir()):
        same = started.is_file() and json.loads(started.read_text()).get("hash") == stage_hash
        if not same:
            shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(started, {"hash": stage_hash})


def _fmt_time(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.1f}s"


def run_pipeline(out: str | Path, cfg: PipelineConfig, from_stage: str | None = None,
                 echo: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Run (or resume) every stage; returns {stage: headline figures}."""
    run = Run(out, cfg)
    todo = check_run_folder(run, from_stage)
    run.out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(run.out).free
    need = _disk_estimate(cfg)
    if free < need:
        raise ValueError(f"{run.out}: {free / 2**30:.1f} GiB free, the planned datasets need about {need / 2**30:.1f} GiB")
    atomic_write_json(run.out / "pipeline.json", {"config": config_to_dict(cfg), "machine": machine_info()})
    if from_stage is not None:  # forget what is downstream of the rerun point
        for name in todo:
            m = run.dir(name) / "stage.json"
            if m.exists():
                m.unlink()
    results: dict[str, dict] = {}
    memo: dict = {}
    n = len(run.stages)
    width = max(14, *(len(s.name) for s in run.stages))  # the reproduce stages' names are longer
    t_all = time.perf_counter()
    for k, s in enumerate(run.stages, 1):
        if s.name not in todo:
            marker = run.marker(s.name)
            results[s.name] = marker["result"]
            echo(f"[{k:>2}/{n}] {s.name:<{width}} done earlier ({_fmt_time(marker['seconds'])})  {s.headline(marker['result'])}")
            continue
        t0 = time.perf_counter()
        _prepare_stage_dir(run.dir(s.name), run.stage_hash(s.name, memo))
        atomic_write_json(run.dir(s.name) / "stage_config.json", _plain(s.config))
        result = json_safe(s.run(run))
        dt = time.perf_counter() - t0
        results[s.name] = result
        atomic_write_json(run.dir(s.name) / "stage.json", {"hash": run.stage_hash(s.name, memo), "seconds": dt,
                                                            "result": result, "finished": time.time()})  # fmt: skip
        echo(f"[{k:>2}/{n}] {s.name:<{width}} {_fmt_time(dt):>7}  {s.headline(result)}")
    echo(f"total {_fmt_time(time.perf_counter() - t_all)} (this invocation); report: {run.out / 'report.html'}")
    return results


def _disk_estimate(cfg: PipelineConfig) -> int:
    """Bytes the stores will take, with room: frames compress ~15x; rollouts and their copies."""
    frame = cfg.model.image_size**2 * 3
    steps = cfg.data_pretrain.episodes * 90 + cfg.data_finetune.episodes * 50 + cfg.prefs.rollout_episodes * 70
    return int(steps * frame / 15 * 2 + 200 * 2**20)


def machine_info() -> dict:
    import os

    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}  # fmt: skip


__all__ = ["PipelineConfig", "ReproduceConfig", "Run", "load_pipeline_config", "preset_table", "reproduce_plan", "run_pipeline"]
