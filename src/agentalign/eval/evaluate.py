"""`evaluate`: the paper's evaluation (section 3.2) of one policy, with its figures.

"We run each agent online in the game environment and record which jump pad is reached over 1000
episodes ... the Ninja character with an empty context buffer at one of the spawn points at
random ... until it reaches one of the jump pads or times out." Writes into `out_dir`:

    eval.json       distribution (counts, fractions, standard errors), lengths, per-spawn counts,
                    per start cell (spawn, fifth of initial yaw), timeouts pinned against a wall,
                    namespaced metrics (eval/success, eval/left, ...), throughput, provenance
    jump_pads.png   the bar chart of figures 3-5
    heatmap.png     the trajectory heatmap of figure 10, episode ends coloured by pad
    trajectories.npz  positions, actions and outcomes of every episode (no frames), to redraw
                    figures or compare runs (`agentalign.rollout.load_trajectories`)
    videos/*.mp4    the first `videos` episodes: the agent's view beside the top-down map
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agentalign.envs.skygarden import world as W
from agentalign.eval.figures import plot_heatmaps, plot_jump_pads, write_episode_videos
from agentalign.eval.metrics import by_spawn, by_start, flat_metrics, length_summary, pad_distribution, stuck
from agentalign.io import atomic_write_json, check_writable
from agentalign.rollout.engine import RolloutConfig, RolloutStats, rollout
from agentalign.rollout.recording import RANDOM, load_actor, save_trajectories

EVAL_SCHEMA = 1


def evaluate(checkpoint_or_policy: Any, out_dir: str | Path, episodes: int = 1000, seed: int = 0,
             temperature: float = 1.0, num_envs: int = 64, videos: int = 3, *,
             character: str = W.DEFAULT_CHARACTER, size: int = 64, label: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:  # fmt: skip
    """Evaluate a checkpoint directory, a `Policy`, an actor, or "random" (uniform random gamepad,
    `size` px) over `episodes` episodes; write the files above and return eval.json's content.

    All arguments are checked before any episode runs."""
    check_writable(out_dir)  # a read-only --out is refused before any work
    if isinstance(videos, bool) or not isinstance(videos, int) or videos < 0:
        raise ValueError(f"videos must be a non-negative integer, got {videos!r}")
    cfg = RolloutConfig(episodes=episodes, seed=seed, temperature=temperature, num_envs=num_envs,
                        character=character, keep_frames=min(videos, episodes))  # fmt: skip
    actor, info = load_actor(checkpoint_or_policy, temperature, size=size)
    if label is None:
        src = info["policy"]
        label = Path(src).name if isinstance(checkpoint_or_policy, (str, Path)) and src != RANDOM else src
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    stats = RolloutStats()
    trajs = rollout(actor, cfg, stats, progress)
    pads = [t.jump_pad for t in trajs]
    dist = pad_distribution(pads)

    t0 = time.perf_counter()
    plot_jump_pads(dist, out / "jump_pads.png", title=f"Jump pads reached: {label}")
    plot_heatmaps({label: trajs}, out / "heatmap.png")
    save_trajectories(out / "trajectories.npz", trajs)
    video_paths = write_episode_videos(trajs[:videos], out / "videos")
    figures_s = time.perf_counter() - t0

    result = {
        "schema": EVAL_SCHEMA,
        "label": label,
        **info,
        "config": {"episodes": episodes, "seed": seed, "temperature": float(temperature), "num_envs": num_envs,
                   "character": character, "spawn": "random", "max_steps": cfg.max_steps,
                   "image_size": int(actor.image_size)},  # fmt: skip
        **dist,
        "length": length_summary([t.length for t in trajs], pads),
        "by_spawn": by_spawn([t.spawn for t in trajs], pads),
        # Spawn and fifth of the initial yaw's jitter range, where the misses gather.
        "by_start": by_start([t.spawn for t in trajs], [float(t.yaw[0]) for t in trajs], pads,
                             W.SPAWN_YAW + W.SPAWN_YAW_JITTER * np.linspace(-1, 1, 6)),  # fmt: skip
        "stuck": stuck([t.pos for t in trajs], pads),
        "metrics": flat_metrics(dist),
        "throughput": {**stats.to_dict(), "figures_seconds": round(figures_s, 3)},
        "files": {
            "jump_pads": "jump_pads.png",
            "heatmap": "heatmap.png",
            "trajectories": "trajectories.npz",
            "videos": [str(p.relative_to(out)) for p in video_paths],
        },
    }
    atomic_write_json(out / "eval.json", result)
    return result
