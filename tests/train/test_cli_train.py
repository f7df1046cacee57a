"""`agentalign pretrain` / `agentalign sft` as a user types them: real subprocesses."""

from __future__ import annotations

import json
import subprocess

from agentalign.data import StoreReader


def run(*args):
    return subprocess.run(["agentalign", *args], capture_output=True, text=True, timeout=300)


def test_pretrain_then_sft_from_the_command_line(store, tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "sft"
    toml = tmp_path / "bc.toml"
    toml.write_text('steps = 3\nlr = 1e-3\n[model]\ndropout = 0.0\n')
    r = run("pretrain", "--data", str(store), "--out", str(base), "--preset", "smoke", "--config", str(toml),
            "--set", "batch_size=2", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert "smoke 3 steps" in line and "final loss" in line and " s (" in line
    saved = json.loads((base / "run_config.json").read_text())
    assert saved["bc"]["steps"] == 3 and saved["bc"]["lr"] == 1e-3 and saved["bc"]["batch_size"] == 2
    assert saved["data"] == StoreReader(store).dataset_id and saved["model"]["width"] == 32 and saved["stage"] == "smoke"

    r = run("sft", "--data", str(store), "--out", str(tuned), "--init", str(base), "--set", "steps=2",
            "--set", "batch_size=2", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    meta = json.loads((tuned / "config.json").read_text())
    assert meta["stage"] == "sft" and meta["parent"] == str(base.resolve()) and meta["model"]["width"] == 32

    r = run("sft", "--data", str(store), "--out", str(tuned), "--init", str(base), "--set", "steps=2",
            "--set", "batch_size=2", "--no-progress")  # fmt: skip
    assert r.returncode == 0 and "already finished" in r.stdout


def test_bad_command_lines_are_clear_errors(store, tmp_path):
    out = tmp_path / "out"
    r = run("pretrain", "--data", str(store), "--out", str(out), "--preset", "smoke", "--set", "learning_rate=1")
    assert r.returncode == 2 and "unknown config key 'learning_rate'" in r.stderr
    r = run("pretrain", "--data", str(store), "--out", str(out), "--preset", "smoke", "--set", "steps=many")
    assert r.returncode == 2 and "steps: expected an integer, got 'many'" in r.stderr
    r = run("pretrain", "--data", str(store), "--out", str(out), "--preset", "smoke", "--set", "data=x")
    assert r.returncode == 2 and "unknown config key 'data'" in r.stderr
    r = run("sft", "--data", str(store), "--out", str(out))
    assert r.returncode == 2 and "exactly one of --init" in r.stderr
    r = run("sft", "--data", str(store), "--out", str(out), "--init", str(store), "--set", "model.dropout=0.1")
    assert r.returncode == 2 and "with --init the model is the checkpoint's" in r.stderr
    r = run("pretrain", "--data", str(tmp_path / "nope"), "--out", str(out))
    assert r.returncode == 2 and "data: no dataset at" in r.stderr
    assert not out.exists()
