"""Evaluation: the distribution's numbers, and what `evaluate` writes."""

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from agentalign.eval import evaluate, format_distribution, pad_distribution, plot_heatmaps, plot_jump_pads
from agentalign.eval.metrics import by_start, stuck
from agentalign.models import Policy, model_preset
from agentalign.rollout import RandomActor, RolloutConfig, load_trajectories, rollout


def test_distribution_matches_hand_computation():
    d = pad_distribution(["left", "left", "none", "middle"])
    assert d["episodes"] == 4
    assert d["jump_pads"]["left"] == {"count": 2, "fraction": 0.5, "stderr": 0.25}
    assert d["jump_pads"]["right"] == {"count": 0, "fraction": 0.0, "stderr": 0.0}
    assert d["jump_pads"]["none"]["stderr"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    assert d["success"]["count"] == 3 and d["success"]["fraction"] == 0.75
    line = format_distribution(d)
    assert line.startswith("left 50.0% ± 25.0 | middle 25.0% ± 21.7 | right 0.0% ± 0.0 | none 25.0% ± 21.7 | ")
    assert line.endswith("success 75.0% ± 21.7 (N = 4)")
    with pytest.raises(ValueError, match="unknown jump pad"):
        pad_distribution(["top"])


def test_by_start_bins_spawn_and_initial_yaw():
    edges = [0.0, 1.0, 2.0, 3.0]  # three bins; yaws outside fall in the end bins
    r = by_start([1, 1, 0, 1, 1], [0.5, 2.5, 1.5, -4.0, 1.0], ["left", "none", "right", "left", "middle"], edges)
    assert list(r) == ["0/1", "1/0", "1/1", "1/2"]  # spawn, then bin, in numeric order
    assert r["1/0"] == {"episodes": 2, "none": 0, "left": 2, "middle": 0, "right": 0}
    assert r["1/1"]["middle"] == 1 and r["1/2"]["none"] == 1 and r["0/1"]["right"] == 1


def test_stuck_counts_timeouts_pinned_in_place():
    still = np.array([[5.0, 5.0]] * 20 + [[35.0, 35.0 + 0.01 * k] for k in range(31)])  # walks, then presses a wall
    roaming = np.stack([np.linspace(0, 30, 51), np.zeros(51)], 1)  # timed out while still moving
    short = np.array([[1.0, 1.0]] * 10)  # fewer steps than the window: not judged pinned
    r = stuck([still, roaming, still, short], ["none", "none", "left", "none"], window=30, radius=2.0)
    assert r["count"] == 1 and r["fraction"] == 0.25 and r["of_none"] == pytest.approx(1 / 3)
    assert stuck([], [])["fraction"] == 0.0


def _numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


def test_evaluate_writes_json_figures_and_videos(tmp_path):
    torch.manual_seed(0)
    ckpt = Policy(model_preset("tiny")).save_pretrained(tmp_path / "tiny", stage="test")
    out = tmp_path / "eval"
    r = evaluate(ckpt, out, episodes=5, seed=1, num_envs=3, videos=2)
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(r))
    assert r["episodes"] == 5 and r["label"] == "tiny" and r["stage"] == "test"
    assert all(math.isfinite(v) for v in _numbers(r))
    assert sum(d["fraction"] for d in r["jump_pads"].values()) == pytest.approx(1.0)
    assert sum(d["count"] for d in r["jump_pads"].values()) == 5
    assert r["metrics"]["eval/success"] == r["success"]["fraction"]
    assert sum(s["episodes"] for s in r["by_spawn"].values()) == 5
    assert sum(s["episodes"] for s in r["by_start"].values()) == 5
    assert 0 <= r["stuck"]["count"] <= r["jump_pads"]["none"]["count"]
    assert r["throughput"]["steps"] == sum(t.length for t in load_trajectories(out / "trajectories.npz"))
    for png in ("jump_pads.png", "heatmap.png"):
        img = iio.imread(out / png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.std() > 10
    assert len(r["files"]["videos"]) == 2
    trajs = load_trajectories(out / "trajectories.npz")
    for name, t in zip(r["files"]["videos"], trajs):
        clip = iio.imread(out / name)
        assert clip.shape[0] == t.length + 1 and clip.shape[-1] == 3 and clip.std() > 10
        assert name.endswith(f"_{t.jump_pad}.mp4")
    # Same seed, same numbers: the evaluation is reproducible.
    again = evaluate(ckpt, tmp_path / "again", episodes=5, seed=1, num_envs=5, videos=0)
    assert again["jump_pads"] == r["jump_pads"] and again["by_spawn"] == r["by_spawn"]
    assert not (tmp_path / "again" / "videos").exists() or not any((tmp_path / "again" / "videos").iterdir())


def test_random_baseline_and_bad_input(tmp_path):
    r = evaluate("random", tmp_path / "random", episodes=3, num_envs=3, videos=0)
    assert r["label"] == "random" and r["policy"] == "random" and r["episodes"] == 3
    bad = [({"episodes": 0}, "episodes"), ({"temperature": -1.0}, "temperature"), ({"videos": -1}, "videos")]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            evaluate("random", tmp_path / "bad", **{"episodes": 3, **kw})
    with pytest.raises(ValueError, match="does not exist"):
        evaluate(tmp_path / "missing", tmp_path / "bad", episodes=3)
    assert not (tmp_path / "bad").exists()  # nothing written before the checks


def test_figures_of_several_runs(tmp_path):
    """Figure 10 puts one heatmap per stage side by side."""
    trajs = rollout(RandomActor(64), RolloutConfig(episodes=2, num_envs=2, max_steps=10))
    path = plot_heatmaps({"stage A": trajs, "stage B": trajs[:1]}, tmp_path / "h.png")
    wide = iio.imread(path)
    single = iio.imread(plot_heatmaps({"A": trajs}, tmp_path / "h1.png"))
    assert wide.shape[1] > 1.7 * single.shape[1]
    d = pad_distribution(["left"] * 3 + ["none"])
    assert np.asarray(iio.imread(plot_jump_pads(d, tmp_path / "b.png"))).std() > 10
