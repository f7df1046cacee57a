"""`agentalign eval` and `agentalign rollout` as a user types them (real subprocesses)."""

import json
import os
import subprocess

import torch
from typer.testing import CliRunner

from agentalign.cli import app
from agentalign.data import open_store
from agentalign.models import Policy, model_preset


def run(*args):
    # torch and numba's renderer each bring an OpenMP runtime whose idle threads spin; on a shared
    # 2-core machine the two pools starve each other (100x slower). Passive waiting avoids that.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(["agentalign", *args], capture_output=True, text=True, timeout=300, env=env)


def test_eval_and_rollout_commands(tmp_path):
    torch.manual_seed(0)
    ckpt = str(Policy(model_preset("tiny")).save_pretrained(tmp_path / "tiny"))
    r = run("eval", ckpt, "--episodes", "4", "--num-envs", "4", "--videos", "1", "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("tiny: left ") and "none" in line and "success" in line and "(N = 4)" in line
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["episodes"] == 4 and len(result["files"]["videos"]) == 1

    store = str(tmp_path / "store")
    r = run("rollout", ckpt, "--episodes", "3", "--num-envs", "3", "--out", store, "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert "3 episodes (3 new" in r.stdout
    r = run("rollout", ckpt, "--episodes", "3", "--num-envs", "3", "--out", store, "--seed", "2")
    assert r.returncode == 0 and "(0 new" in r.stdout  # resumed: nothing left to do
    md = open_store(store).all_metadata()
    assert [m["episode_index"] for m in md] == [0, 1, 2] and all(m["rollout_seed"] == 2 for m in md)


def test_bad_input_is_a_clear_error_before_any_work(tmp_path):
    r = run("eval", str(tmp_path / "nope"), "--episodes", "10", "--out", str(tmp_path / "ev"))
    assert r.returncode == 2 and "checkpoint" in r.stderr and "nope does not exist" in r.stderr
    assert not (tmp_path / "ev").exists()
    # The rest in-process (the same Typer app, without the interpreter start-up).
    small = tmp_path / "small"
    Policy(model_preset("tiny", image_size=8, encoder_stages=0)).save_pretrained(small)
    cli = CliRunner()
    cases = [
        (["eval", "random", "--episodes", "0", "--out", str(tmp_path / "a")], "--episodes must be positive"),
        (["eval", "random", "--temperature", "0", "--out", str(tmp_path / "a")], "--temperature must be positive"),
        (["eval", str(small), "--out", str(tmp_path / "a")], "takes 8x8 frames"),
        (["rollout", str(small), "--episodes", "2", "--out", str(tmp_path / "s")], "takes 8x8 frames"),
        (["rollout", "random", "--episodes", "-1", "--out", str(tmp_path / "s")], "--episodes must be positive"),
        (["rollout", str(tmp_path), "--episodes", "2", "--out", str(tmp_path / "s")], "not a checkpoint"),
    ]
    for args, msg in cases:
        res = cli.invoke(app, args)
        assert res.exit_code == 2 and msg in res.output, (args, res.output)
    assert not (tmp_path / "a").exists() and not (tmp_path / "s").exists()
