"""The stage graph: which stages a config asks for, what each reads, what its hash covers, and its
one-line headline (the variants of `reproduce` included)."""


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
from agentalign.io import atomic_write_json, json_safe
from agentalign.train.dpo import DPOConfig
from agentalign.train.preference_ft import PreferenceFTConfig
from agentalign.train.reinforce import ReinforceConfig
from agentalign.train.reward import RewardTrainConfig


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
