"""Running the stage graph (pipeline/plan.py): markers, hashes, resume, results.json.

Every stage writes into its own folder under the run folder, with its resolved config, and marks
itself done with `stage.json`: a hash of its config and of the stages it reads. Running the same
command again skips done stages whose hash still matches; a stage that was interrupted runs again
(data generation, behaviour cloning and the ReST rounds resume from what is durable on disk);
`from_stage` reruns from a stage on. A done stage whose config changed is an error that names it,
never silently overwritten (only the report, a summary of the others, is simply made again).
Before the report, the runner writes results.json: every stage's headline figures and time, which
the report reads (it never imports the pipeline).

`reproduce` (off by default, `--reproduce`) adds the variants behind figures 8, 9 and 12 as stages
of their own, reusing the main stages wherever the computation is the same; the main stages'
hashes do not cover it, so turning it on keeps a finished run's stages.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

from agentalign.config import config_to_dict
from agentalign.io import atomic_write_json, check_writable, json_safe
from agentalign.models import Policy
from agentalign.pipeline.config import PipelineConfig
from agentalign.pipeline.plan import plan, reproduce_plan


class Run:
    """A run folder and its stages."""

    def __init__(self, out: str | Path, cfg: PipelineConfig):
        self.out = Path(out)
        self.cfg = cfg
        self.stages = plan(cfg, self.out)
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

    def write_results(self) -> Path:
        """results.json: every finished stage's headline figures and seconds, and what the report
        needs to know of the plan, so that the report reads a file rather than the pipeline."""
        done = {s.name: self.marker(s.name) for s in self.stages if s.name != "report"}
        done = {k: m for k, m in done.items() if m is not None}
        reproduce = None
        if self.cfg.reproduce.enabled:
            variants, sizes = reproduce_plan(self.cfg)
            reproduce = {"variants": [{"target": v.target, "comparisons": v.comparisons, "pft": v.pft, "label": v.label,
                                       "runs": [list(r) for r in v.runs]} for v in variants],
                         "sizes": [{"preset": z.preset, "parameters": Policy(z.model).num_parameters(), "stages": z.stages}
                                   for z in sizes]}  # fmt: skip
        path = self.out / "results.json"
        atomic_write_json(path, {"target": self.cfg.target, "deploy_temperature": self.cfg.deploy.temperature,
                                 "stages": {k: m["result"] for k, m in done.items()},
                                 "seconds": {k: m["seconds"] for k, m in done.items()},
                                 "total_seconds": float(sum(m["seconds"] for m in done.values())), "reproduce": reproduce})  # fmt: skip
        return path


def _plain(x: Any) -> Any:
    """A stage's config as JSON data: dataclasses (also inside a dict) as plain dicts."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return config_to_dict(x) if dataclasses.is_dataclass(x) else x


# ---- running -----------------------------------------------------------------------------------


def check_run_folder(run: Run, from_stage: str | None, until: str | None = None) -> list[str]:
    """Before any work: stages to run, or a clear error for another run's outputs. `until`: the
    last stage to run (those after it wait for another invocation)."""
    names = [s.name for s in run.stages]
    for flag, stage in (("--from", from_stage), ("--until", until)):
        if stage is not None and stage not in names:
            raise ValueError(f"{flag}: unknown stage {stage!r}; stages: {', '.join(names)}")
    rerun_from = names.index(from_stage) if from_stage else len(names)
    last = names.index(until) if until else len(names)
    todo, conflicts = [], []
    memo: dict = {}
    for k, s in enumerate(run.stages[: last + 1]):
        m = run.marker(s.name)
        stale = m is not None and m.get("hash") != run.stage_hash(s.name, memo)
        if k >= rerun_from or m is None or s.always_redo:
            todo.append(s.name)
        elif stale:
            conflicts.append(s.name)
    if conflicts:
        raise ValueError(f"{run.out} holds finished stages made with another config or inputs: "
                         f"{', '.join(conflicts)}. Use another --out, or rerun from the first of them with "
                         f"--from {conflicts[0]}")  # fmt: skip
    return todo


def verify_outputs(d: Path) -> None:
    """Before a stage is marked done: every checkpoint it wrote (d/model/*.safetensors and
    config.json) loads. A damaged one is a ValueError naming it, and the stage stays unfinished."""
    from safetensors import safe_open

    for f in sorted((d / "model").glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    st.get_slice(k)  # reads the header and checks each tensor's extent against the file
            if f.stat().st_size < 8:
                raise ValueError("too short")
        except Exception as e:
            raise ValueError(f"{f} is damaged ({e}); run the same command again to redo its stage") from None
    for f in sorted((d / "model").glob("*.json")):
        try:
            json.loads(f.read_text())
        except ValueError as e:
            raise ValueError(f"{f} is damaged ({e}); run the same command again to redo its stage") from None


class RunFolderLocked(RuntimeError):
    """Another process holds the run folder: a failure of this invocation, not of its input."""


@contextmanager
def run_folder_lock(out: Path):
    """An advisory lock on the run folder for the whole pipeline: a second pipeline on the same
    folder is refused at once instead of training into the same stages."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunFolderLocked(f"{out} is in use by another agentalign pipeline ({holder}); wait for it to "
                                  f"finish, or choose another --out") from None  # fmt: skip
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {platform.node()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
                 echo: Callable[[str], None] = print, until: str | None = None) -> dict:  # fmt: skip
    """Run (or resume) every stage, or those up to `until`; returns {stage: headline figures}.
    Everything that can be checked is checked before any work: the stages to run, the folder's
    writability and space."""
    run = Run(out, cfg)
    todo = check_run_folder(run, from_stage, until)
    check_writable(run.out)
    run.out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(run.out).free
    need = _disk_estimate(cfg)
    if free < need:
        raise ValueError(f"{run.out}: {free / 2**30:.1f} GiB free, the planned datasets need about {need / 2**30:.1f} GiB")
    with run_folder_lock(run.out):
        results = _run_stages(run, todo, from_stage, echo)
    if until is not None:
        echo(f"stopped after {until} (--until); the same command without --until goes on from there")
    return results


def _run_stages(run: Run, todo: list[str], from_stage: str | None, echo: Callable[[str], None]) -> dict:
    atomic_write_json(run.out / "pipeline.json", {"config": config_to_dict(run.cfg), "machine": machine_info()})
    if from_stage is not None:  # the rerun point and everything after it start from nothing
        for name in todo:
            shutil.rmtree(run.dir(name), ignore_errors=True)
    results: dict[str, dict] = {}
    memo: dict = {}
    n = len(run.stages)
    width = max(14, *(len(s.name) for s in run.stages))  # the reproduce stages' names are longer
    t_all = time.perf_counter()
    for k, s in enumerate(run.stages, 1):
        if s.name not in todo and run.marker(s.name) is None:  # after --until: left for a later run
            continue
        if s.name not in todo:
            marker = run.marker(s.name)
            results[s.name] = marker["result"]
            echo(f"[{k:>2}/{n}] {s.name:<{width}} done earlier ({_fmt_time(marker['seconds'])})  {s.headline(marker['result'])}")
            continue
        t0 = time.perf_counter()
        (run.dir(s.name) / "stage.json").unlink(missing_ok=True)
        _prepare_stage_dir(run.dir(s.name), run.stage_hash(s.name, memo))
        atomic_write_json(run.dir(s.name) / "stage_config.json", _plain(s.config))
        result = json_safe(s.run(run))
        verify_outputs(run.dir(s.name))
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
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}  # fmt: skip


