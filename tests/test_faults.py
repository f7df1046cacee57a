"""Faults a user meets, injected into the smoke pipeline: after each, the same command again (or the
one the error message names) finishes with the same results.json as a clean run, timings aside."""

import errno
import json
import os
import subprocess

import pytest

from agentalign.io import MetricsLogger
from agentalign.pipeline import load_pipeline_config, run_pipeline
from agentalign.pipeline.runner import RunFolderLocked, run_folder_lock

# The smoke preset, lighter where no fault lands (no sweep, no videos, no deployment evaluation),
# with pre-training checkpoints every 2 of its 6 steps so that a damaged one has one before it.
OVERRIDES = ["sweep.enabled=false", "eval.videos=0", "deploy.temperature=none", "pretrain.checkpoint_every=2"]
CFG = load_pipeline_config("smoke", OVERRIDES)
TIMINGS = ("seconds", "total_seconds", "frames_per_s", "throughput", "steps_per_second", "finished")


class Crash(Exception):
    """The process dies here."""


def _quiet(line: str) -> None:
    pass


def comparable(out) -> dict:
    """results.json without what depends on the clock."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not any(t in k for t in TIMINGS)}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(json.loads((out / "results.json").read_text()))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "run"
    run_pipeline(out, CFG, echo=_quiet)
    return comparable(out)


def test_disk_full_while_pretraining_names_the_file_and_the_rerun_resumes(clean, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_log, rows = MetricsLogger.log, []

    def full_disk(self, step, **metrics):
        if "train/loss" in metrics and len(rows) == 3:  # the 4th row of pre-training: after a checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        rows.append(step)
        real_log(self, step, **metrics)

    with monkeypatch.context() as m:
        m.setattr(MetricsLogger, "log", full_disk)
        with pytest.raises(OSError) as e:
            run_pipeline(out, CFG, echo=_quiet)
    assert e.value.errno == errno.ENOSPC and e.value.filename.endswith("pretrain/model/metrics.jsonl")
    assert not (out / "pretrain" / "stage.json").exists()
    run_pipeline(out, CFG, echo=_quiet)
    assert comparable(out) == clean


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(clean, tmp_path, monkeypatch):
    from agentalign.train import bc

    out = tmp_path / "run"
    real_save, saved = bc.save_train_state, []

    def save_then_crash(out_dir, step, *args, **kwargs):
        snap = real_save(out_dir, step, *args, **kwargs)
        saved.append(step)
        if "pretrain" in str(out_dir) and step == 4:  # the disk damages the newest snapshot, then the run dies
            model = snap / "model.safetensors"
            model.write_bytes(model.read_bytes()[:100])
            raise Crash
        return snap

    with monkeypatch.context() as m:
        m.setattr(bc, "save_train_state", save_then_crash)
        with pytest.raises(Crash):
            run_pipeline(out, CFG, echo=_quiet)
    with pytest.warns(UserWarning, match="model.safetensors"):
        run_pipeline(out, CFG, echo=_quiet)
    assert comparable(out) == clean


def test_a_crash_between_rest_rounds_resumes_them(clean, tmp_path, monkeypatch):
    from agentalign.train import rest

    out = tmp_path / "run"
    real_round, calls = rest.rest_round, []

    def crash_after_one(*args, **kwargs):
        if len(calls) == 3 and "align" in str(args[5]):  # pft's two rounds and the alignment's first done
            raise RuntimeError("the machine went away")
        calls.append(1)
        return real_round(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(rest, "rest_round", crash_after_one)
        with pytest.raises(RuntimeError, match="went away"):
            run_pipeline(out, CFG, echo=_quiet)
    assert (out / "pft" / "stage.json").exists() and not (out / "align" / "stage.json").exists()
    run_pipeline(out, CFG, echo=_quiet)
    assert comparable(out) == clean


def test_a_truncated_final_model_is_named_and_from_its_stage_redoes_it(clean, tmp_path):
    out = tmp_path / "run"
    run_pipeline(out, CFG, echo=_quiet)
    model = out / "sft" / "model" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["agentalign", "pipeline", "--config", "smoke", "--out", str(out)]
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    r = subprocess.run([*cmd, *sets, "--from", "eval_sft"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and str(model) in r.stderr and "Traceback" not in r.stderr  # one line naming it
    run_pipeline(out, CFG, from_stage="sft", echo=_quiet)
    assert comparable(out) == clean


def test_two_pipelines_on_one_folder(tmp_path):
    out = tmp_path / "run"
    with run_folder_lock(out):
        with pytest.raises(RunFolderLocked, match="in use by another agentalign pipeline"):
            run_pipeline(out, CFG, echo=_quiet)
        cmd = ["agentalign", "pipeline", "--config", "smoke", "--out", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "in use by another agentalign pipeline" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "data_pretrain").exists()  # refused before any work


def test_a_moved_run_folder_resumes_and_reruns_from_a_stage(clean, tmp_path):
    first = tmp_path / "first"
    run_pipeline(first, CFG, echo=_quiet)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    first.rename(moved)
    lines = []
    run_pipeline(moved, CFG, echo=lines.append)
    stages = [line for line in lines if line.startswith("[") and " report " not in line]
    assert stages and all("done earlier" in line for line in stages)  # the same run, moved
    assert str(moved) in (moved / "report.html").read_text()  # the report, made again, shows where it is now
    run_pipeline(moved, CFG, from_stage="pretrain", echo=_quiet)
    assert comparable(moved) == clean
