"""The whole method, chained and resumable: from nothing to an aligned agent and a report.

    data_pretrain -> pretrain --------------------------> eval_base
    data_finetune -> sft (from pretrain) ---------------> eval_sft
                  -> scratch (the paper's baseline) ----> eval_scratch
    sft -> rollouts -> prefs (synthetic, target pad) -> reward (agent encoder) ; sweep (figure 7)
        -> pft (preference fine-tuning) -> align (REINFORCE) -> eval_pft, eval_align
        -> dpo (offline, from the preferences) -> eval_dpo
    -> report (report.html, results.json)

Every stage writes into its own folder under the run folder, with its resolved config, and marks
itself done with `stage.json`: a hash of its config and of the stages it reads. Running the same
command again skips done stages whose hash still matches; a stage that was interrupted runs again
(data generation and behaviour cloning resume from their last durable episode or checkpoint);
`from_stage` reruns from a stage on. A done stage whose config changed is an error that names it,
never silently overwritten.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from agentalign.config import build_config, config_to_dict, load_toml
from agentalign.envs.skygarden import world as W
from agentalign.models import PolicyConfig, model_preset
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
    prefs: PrefsStageConfig = field(default_factory=PrefsStageConfig)
    reward: RewardTrainConfig = field(default_factory=RewardTrainConfig)
    sweep: SweepStageConfig = field(default_factory=SweepStageConfig)
    pft: PreferenceFTConfig = field(default_factory=PreferenceFTConfig)
    align: ReinforceConfig = field(default_factory=ReinforceConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)

    def __post_init__(self) -> None:
        W.pad_index(self.target)
        if self.prefs.train >= self.prefs.rollout_episodes - 1:
            raise ValueError(f"prefs.train ({self.prefs.train}) must leave held-out trajectories of the "
                             f"{self.prefs.rollout_episodes} rollouts")  # fmt: skip


def load_pipeline_config(preset: str | Path = "cpu", overrides: list[str] | None = None) -> PipelineConfig:
    """A preset name (configs/NAME.toml) or a TOML path, then key=value overrides.

    `model_preset = "cpu"` (or --set model_preset=25m) picks the model preset that `[model]` keys
    then adjust."""
    path = Path(preset)
    if not path.suffix:
        path = CONFIG_DIR / f"{preset}.toml"
        if not path.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
            raise ValueError(f"unknown pipeline preset {str(preset)!r}; choose one of {', '.join(known)} or give a .toml path")
    table = load_toml(path)
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
    # One model and one image size for every stage; the target pad everywhere it matters.
    size = cfg.model.image_size
    return replace(
        cfg,
        data_pretrain=replace(cfg.data_pretrain, size=size, seed=cfg.seed),
        data_finetune=replace(cfg.data_finetune, size=size, seed=cfg.seed + 1),
        pretrain=replace(cfg.pretrain, model=cfg.model, seed=cfg.seed),
        scratch=replace(cfg.scratch, model=cfg.model, seed=cfg.seed),
        sft=replace(cfg.sft, model=cfg.model, seed=cfg.seed),
        align=replace(cfg.align, target=cfg.target, seed=cfg.seed),
        pft=replace(cfg.pft, seed=cfg.seed),
    )


# ---- stages ------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    deps: tuple[str, ...]
    config: Any  # what the stage's hash covers
    run: Callable[["Run"], dict]  # returns its headline figures
    headline: Callable[[dict], str] = lambda r: ""


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
        Stage("pretrain", ("data_pretrain",), cfg.pretrain, F["pretrain"], lambda r: f"loss {r['final_loss']:.3f}"),
        Stage("sft", ("pretrain", "data_finetune"), cfg.sft, F["sft"], lambda r: f"loss {r['final_loss']:.3f}"),
        Stage("scratch", ("data_finetune",), cfg.scratch, F["scratch"], lambda r: f"loss {r['final_loss']:.3f}"),
        Stage("eval_base", ("pretrain",), ev, F["eval_base"], _eval_line),
        Stage("eval_sft", ("sft",), ev, F["eval_sft"], _eval_line),
        Stage("eval_scratch", ("scratch",), ev, F["eval_scratch"], _eval_line),
        Stage("rollouts", ("sft",), cfg.prefs, F["rollouts"], lambda r: f"{r['episodes']} trajectories"),
        Stage("prefs", ("rollouts",), {"target": cfg.target, **config_to_dict(cfg.prefs)}, F["prefs"],
              lambda r: f"{r['train_comparisons']} train comparisons"),
        Stage("reward", ("prefs",), cfg.reward, F["reward"],
              lambda r: f"held-out accuracy {_pct(r.get('reward/accuracy'))}"),
        Stage("pft", ("reward",), cfg.pft, F["pft"], lambda r: f"kept {r['kept']} trajectories"),
        Stage("align", ("pft",), cfg.align, F["align"],
              lambda r: f"{cfg.target} success {_pct(r.get('final_success'))} (last 5 batches)"),
        Stage("dpo", ("prefs",), cfg.dpo, F["dpo"], lambda r: r.get("skipped") or f"pair accuracy {_pct(r.get('dpo/accuracy'))}"),
        Stage("eval_pft", ("pft",), ev, F["eval_pft"], _eval_line),
        Stage("eval_align", ("align",), ev, F["eval_align"], _eval_line),
        Stage("eval_dpo", ("dpo",), ev, F["eval_dpo"], _eval_line),
    ]
    if cfg.sweep.enabled:
        stages.insert(11, Stage("sweep", ("prefs",), {**config_to_dict(cfg.sweep), "reward": config_to_dict(cfg.reward)},
                                F["sweep"], _sweep_line))  # fmt: skip
    stages.append(Stage("report", tuple(s.name for s in stages), {}, F["report"], lambda r: r.get("path", "")))
    return stages


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _eval_line(r: dict) -> str:
    if "jump_pads" not in r:
        return r.get("skipped", "")
    jp = r["jump_pads"]
    return " ".join(f"{p} {100 * jp[p]['fraction']:.0f}%" for p in ("left", "middle", "right", "none"))


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
        if k >= rerun_from or m is None:
            todo.append(s.name)
        elif m.get("hash") != run.stage_hash(s.name, memo):
            conflicts.append(s.name)
    if conflicts:
        raise ValueError(f"{run.out} holds finished stages made with another config or inputs: "
                         f"{', '.join(conflicts)}. Use another --out, or rerun from the first of them with "
                         f"--from {conflicts[0]}")  # fmt: skip
    return todo


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
    t_all = time.perf_counter()
    for k, s in enumerate(run.stages, 1):
        if s.name not in todo:
            marker = run.marker(s.name)
            results[s.name] = marker["result"]
            echo(f"[{k:>2}/{n}] {s.name:<14} done earlier ({_fmt_time(marker['seconds'])})  {s.headline(marker['result'])}")
            continue
        t0 = time.perf_counter()
        run.dir(s.name).mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.dir(s.name) / "stage_config.json", _plain(s.config))
        result = json_safe(s.run(run))
        dt = time.perf_counter() - t0
        results[s.name] = result
        atomic_write_json(run.dir(s.name) / "stage.json", {"hash": run.stage_hash(s.name, memo), "seconds": dt,
                                                            "result": result, "finished": time.time()})  # fmt: skip
        echo(f"[{k:>2}/{n}] {s.name:<14} {_fmt_time(dt):>7}  {s.headline(result)}")
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


__all__ = ["PipelineConfig", "Run", "load_pipeline_config", "run_pipeline"]
