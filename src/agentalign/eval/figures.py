"""Evaluation pictures: the jump-pad bar chart of the paper's figures 3-5, the trajectory
heatmap of figure 10 (one panel per stage or run), and videos of episodes beside the top-down map.

Matplotlib through its object API on an Agg canvas (no pyplot, no global backend switch), so
this works headless and inside other programs. Departure from the paper: the heatmap also marks
where each episode ended, coloured by the pad it reached (grey: timed out), and the bars carry
standard-error whiskers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from agentalign.envs import viz
from agentalign.envs.skygarden import topdown
from agentalign.eval.metrics import PAD_ORDER, pad_distribution
from agentalign.rollout.engine import Trajectory

_PAD_COLOURS = {p: tuple(c / 255 for c in rgb) for p, rgb in topdown.PAD_MARK_COLOURS.items()}


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_jump_pads(dist: dict, path: str | Path, title: str = "Jump pads reached") -> Path:
    """Bars none/left/middle/right with the percentage on each bar, as figures 3-5."""
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot()
    fr = [100 * dist["jump_pads"][p]["fraction"] for p in PAD_ORDER]
    se = [100 * dist["jump_pads"][p]["stderr"] for p in PAD_ORDER]
    bars = ax.bar([p.capitalize() for p in PAD_ORDER], fr, yerr=se, capsize=4,
                  color=[_PAD_COLOURS[p] for p in PAD_ORDER], edgecolor="black", linewidth=0.6)  # fmt: skip
    top = max(max(v + e for v, e in zip(fr, se)), 1.0)  # highest whisker
    for b, v, e in zip(bars, fr, se):  # above the whisker, so the two never overlap
        ax.text(b.get_x() + b.get_width() / 2, v + e + 0.015 * top, f"{v:.1f}%", ha="center", va="bottom", fontsize=10)
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("episodes (%)")
    ax.set_xlabel("jump pad")
    ax.set_title(f"{title} (N = {dist['episodes']})", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def plot_heatmaps(groups: Mapping[str, Sequence[Trajectory]], path: str | Path, scale: int = 8) -> Path:
    """One top-down heatmap panel per group (e.g. per pipeline stage, as figure 10): log-density
    of all visited positions, each episode's end marked in the colour of the pad it reached."""
    if not groups:
        raise ValueError("no trajectories to draw")
    k = len(groups)
    fig = _figure(3.6 * k, 4.3)
    for j, (label, trajs) in enumerate(groups.items()):
        ax = fig.add_subplot(1, k, j + 1)
        pos = np.concatenate([t.pos for t in trajs]) if trajs else np.zeros((0, 2))
        ax.imshow(topdown.heatmap_image(pos, scale=scale), interpolation="nearest")
        dist = pad_distribution([t.jump_pad for t in trajs])
        for p in PAD_ORDER:
            ends = np.array([t.pos[-1] for t in trajs if t.jump_pad == p]).reshape(-1, 2)
            share = 100 * dist["jump_pads"][p]["fraction"]
            if len(ends):
                px = topdown.to_pixels(ends, scale) + 0.5
                ax.scatter(px[:, 0], px[:, 1], s=7, color=_PAD_COLOURS[p], edgecolors="black", linewidths=0.3,
                           label=f"{p} {share:.0f}%")  # fmt: skip
            else:
                ax.scatter([], [], s=7, color=_PAD_COLOURS[p], label=f"{p} {share:.0f}%")
        ax.set_title(f"{label} (N = {len(trajs)})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=4, fontsize=7, frameon=False,
                  handletextpad=0.1, columnspacing=0.6, title="episode ended at", title_fontsize=7)  # fmt: skip
    return _save(fig, path)


def write_episode_videos(trajs: Sequence[Trajectory], directory: str | Path, fps: int = 10) -> list[Path]:
    """One mp4 per trajectory (frames kept): the agent's view beside the top-down map with its
    path so far, named episode_<index>_<pad>.mp4."""
    out = []
    for t in trajs:
        if t.frames is None:
            raise ValueError(f"episode {t.index}: frames were not kept (RolloutConfig.keep_frames)")
        size = t.frames.shape[1]
        panels = viz.episode_panels([t.frames], [t.pos], [t.jump_pad], view_scale=max(1, 256 // size))
        out.append(viz.write_video(Path(directory) / f"episode_{t.index:04d}_{t.jump_pad}.mp4", panels, fps=fps))
    return out
