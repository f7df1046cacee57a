"""The stage graph: which stages a config asks for, what each reads, what its hash covers, and its
one-line headline (the variants of `reproduce` included).

    data_pretrain -> pretrain --------------------------> eval_base
    data_finetune -> sft (from pretrain) ---------------> eval_sft
                  -> scratch (the paper's baseline) ----> eval_scratch
    sft -> rollouts -> prefs (synthetic, target pad) -> reward (agent encoder) ; sweep (figure 7)
        -> pft (preference fine-tuning: ReST) -> align (ReST rounds, sharpen; REINFORCE if asked)
        -> eval_pft, eval_align, eval_deploy
        -> dpo (offline, from the preferences) -> eval_dpo
    [reproduce] prefs_PAD -> reward_PAD_SET -> pft_PAD_SET -> align_PAD_SET_[no]pft_sK -> eval_align_...
                size_PRESET_{pretrain,sft,scratch,eval_sft,eval_scratch}   (figures 8, 9, 12; app. I)
    -> report (report.html, results.json)
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from agentalign.config import config_to_dict
from agentalign.models import PolicyConfig
from agentalign.pipeline import stages as F
from agentalign.pipeline.config import PipelineConfig, size_model

if TYPE_CHECKING:
    from agentalign.pipeline.runner import Run


@dataclass
class Stage:
    name: str
    deps: tuple[str, ...]
    config: Any  # what the stage's hash covers
    run: Callable[["Run"], dict]  # returns its headline figures
    headline: Callable[[dict], str] = lambda r: ""
    # A view of other stages' outputs (the report): made again on every invocation, so it shows the
    # folder as it is now (moved, or with --reproduce's stages added), never refused as stale.
    always_redo: bool = False


def plan(cfg: PipelineConfig, out: Path | None = None) -> list[Stage]:
    """Every stage of a run with config `cfg` in the run folder `out`, in the order they run."""
    ev = cfg.eval
    stages = [
        Stage("data_pretrain", (), {"data": config_to_dict(cfg.data_pretrain), "size": cfg.model.image_size},
              F.STAGE_FUNCTIONS["data_pretrain"], lambda r: f"{r['episodes']} episodes"),
        Stage("data_finetune", (), {"data": config_to_dict(cfg.data_finetune), "size": cfg.model.image_size},
              F.STAGE_FUNCTIONS["data_finetune"], lambda r: f"{r['episodes']} episodes"),
        Stage("pretrain", ("data_pretrain",), _bc_config(cfg.pretrain, cfg.model), F.STAGE_FUNCTIONS["pretrain"], _loss_line),
        Stage("sft", ("pretrain", "data_finetune"), _bc_config(cfg.sft), F.STAGE_FUNCTIONS["sft"], _loss_line),
        Stage("scratch", ("data_finetune",), _bc_config(cfg.scratch, cfg.model), F.STAGE_FUNCTIONS["scratch"], _loss_line),
        Stage("eval_base", ("pretrain",), ev, F.STAGE_FUNCTIONS["eval_base"], _eval_line),
        Stage("eval_sft", ("sft",), ev, F.STAGE_FUNCTIONS["eval_sft"], _eval_line),
        Stage("eval_scratch", ("scratch",), ev, F.STAGE_FUNCTIONS["eval_scratch"], _eval_line),
        # Only what the rollouts depend on: a new train/test split relabels them, it does not replay them.
        Stage("rollouts", ("sft",), {"rollout_episodes": cfg.prefs.rollout_episodes, "temperature": cfg.prefs.temperature},
              F.STAGE_FUNCTIONS["rollouts"], lambda r: f"{r['episodes']} trajectories"),  # fmt: skip
        # People's labels are exported again on every run: the stages after it are stale (and say so)
        # when the labels changed since they ran.
        Stage("prefs", ("rollouts",), {**_prefs_config(cfg, cfg.target), **_labels_digest(cfg, out)}, F.STAGE_FUNCTIONS["prefs"],
              _prefs_line, always_redo=cfg.prefs.source == "labels"),  # fmt: skip
        Stage("reward", ("prefs",), cfg.reward, F.STAGE_FUNCTIONS["reward"], _reward_line),
        Stage("pft", ("reward",), cfg.pft, F.STAGE_FUNCTIONS["pft"], _pft_line),
        Stage("align", ("pft",), {"align": config_to_dict(cfg.align), "target": cfg.target}, F.STAGE_FUNCTIONS["align"],
              partial(_align_line, cfg.target)),
        Stage("dpo", ("prefs",), cfg.dpo, F.STAGE_FUNCTIONS["dpo"], lambda r: r.get("skipped") or f"pair accuracy {_pct(r.get('dpo/accuracy'))}"),
        Stage("eval_pft", ("pft",), ev, F.STAGE_FUNCTIONS["eval_pft"], _eval_line),
        Stage("eval_align", ("align",), ev, F.STAGE_FUNCTIONS["eval_align"], _eval_line),
        *([Stage("eval_deploy", ("align",), replace(ev, temperature=cfg.deploy.temperature), F.STAGE_FUNCTIONS["eval_deploy"],
                 _eval_line)] if cfg.deploy.temperature is not None else []),  # fmt: skip
        Stage("eval_dpo", ("dpo",), ev, F.STAGE_FUNCTIONS["eval_dpo"], _eval_line),
    ]
    if cfg.sweep.enabled:
        stages.insert(11, Stage("sweep", ("prefs",), {**config_to_dict(cfg.sweep), "reward": config_to_dict(cfg.reward)},
                                F.STAGE_FUNCTIONS["sweep"], _sweep_line))  # fmt: skip
    if cfg.reproduce.enabled:
        stages += _reproduce_stages(cfg, {s.name for s in stages})
    stages.append(Stage("report", tuple(s.name for s in stages), {}, F.STAGE_FUNCTIONS["report"], lambda r: r.get("path", ""),
                        always_redo=True))  # fmt: skip
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
                    acfg = replace(cfg.align, seed=cfg.align.seed + k)  # seed 0: the main run's
                    add(align, (start, reward), {"align": acfg, "target": t},
                        partial(F.online_align, name=align, start=start, reward=reward, cfg=acfg, target=t),
                        partial(_align_line, t))  # fmt: skip
                    add(evaluation, (align,), ev, partial(F.evaluation, name=evaluation, model=align, ev=ev), _eval_line)
    for size in sizes:
        s = size.stages
        add(s["pretrain"], ("data_pretrain",), _bc_config(cfg.pretrain, size.model),
            partial(F.behaviour_clone, name=s["pretrain"], cfg=cfg.pretrain, data="data_pretrain", model=size.model), _loss_line)
        add(s["sft"], (s["pretrain"], "data_finetune"), _bc_config(cfg.sft),
            partial(F.behaviour_clone, name=s["sft"], cfg=cfg.sft, data="data_finetune", init=s["pretrain"]), _loss_line)
        add(s["scratch"], ("data_finetune",), _bc_config(cfg.scratch, size.model),
            partial(F.behaviour_clone, name=s["scratch"], cfg=cfg.scratch, data="data_finetune", model=size.model), _loss_line)
        for model in ("sft", "scratch"):
            name = s[f"eval_{model}"]
            add(name, (s[model],), ev, partial(F.evaluation, name=name, model=s[model], ev=ev), _eval_line)
    return stages


def _bc_config(bc: Any, model: PolicyConfig | None = None) -> dict:
    """What a behaviour-cloning stage's hash covers: its settings, and the model where it starts a
    fresh one (a stage starting from a checkpoint takes its model, which its dependency's hash covers)."""
    return {"bc": config_to_dict(bc), **({"model": config_to_dict(model)} if model is not None else {})}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _prefs_config(cfg: PipelineConfig, target: str) -> dict:
    prefs = config_to_dict(cfg.prefs)
    if prefs["source"] == "synthetic":  # the hash of runs made before people could label
        del prefs["source"]
    return {"target": target, **prefs}


def _labels_digest(cfg: PipelineConfig, out: Path | None) -> dict:
    """With people's labels, what identifies them: how many answers, and the last one's id."""
    db = out / "labels" / "labels.sqlite" if out is not None else None
    if cfg.prefs.source != "labels" or db is None or not db.is_file():
        return {}
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        count, last = con.execute("SELECT COUNT(*), MAX(rowid) FROM answers").fetchone()
    return {"labels": [count, last]}


def _loss_line(r: dict) -> str:
    return f"loss {r['final_loss']:.3f}"


def _prefs_line(r: dict) -> str:
    line = f"{r['train_comparisons']} train comparisons"
    return line + (f" from {r['labels']} labels" if "labels" in r else "")


def _reward_line(r: dict) -> str:
    return f"held-out accuracy {_pct(r.get('reward/accuracy'))}"


def _pft_line(r: dict) -> str:
    return f"{len(r['rounds'])} ReST rounds, the last kept {r['kept']} trajectories ({r['kept_pads']})"


def _align_line(target: str, r: dict) -> str:
    parts = []
    if "reinforce" in r:
        parts.append(f"REINFORCE {r['reinforce']['episodes']} episodes ({target} {_pct(r['reinforce']['final_success'])} "
                     f"over the last 5 batches)")  # fmt: skip
    for step in ("rest", "sharpen"):
        if step in r:
            s = r[step]
            parts.append(f"{step} {s['rounds']} round{'s' if s['rounds'] > 1 else ''} at T = {s['temperature']:g}: "
                         f"cloned {s['kept']} of {s['ranked']} ({target} {s['kept_pads'].get(target, 0)})")  # fmt: skip
    return "; ".join(parts) + f"; {r['online_episodes']} online episodes"


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
