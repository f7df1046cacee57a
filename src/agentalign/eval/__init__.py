"""Evaluation: the jump-pad distribution (paper figures 3-5), trajectory heatmaps (figure 10)
and videos, from batched rollouts (`agentalign.rollout`).

    from agentalign.eval import evaluate
    result = evaluate("runs/sft", "runs/sft/eval", episodes=1000, seed=0)   # or "random"
"""

from agentalign.eval.evaluate import evaluate
from agentalign.eval.figures import plot_heatmaps, plot_jump_pads, write_episode_videos
from agentalign.eval.metrics import PAD_ORDER, flat_metrics, format_distribution, pad_distribution

__all__ = [
    "PAD_ORDER",
    "evaluate",
    "flat_metrics",
    "format_distribution",
    "pad_distribution",
    "plot_heatmaps",
    "plot_jump_pads",
    "write_episode_videos",
]
