"""`agentalign eval` and `agentalign rollout`: evaluate a policy, record on-policy trajectories.

    agentalign eval runs/sft --episodes 1000 --out runs/sft/eval [--seed 0 --temperature 1 --num-envs 64 --videos 3]
    agentalign eval random --episodes 1000 --out runs/random/eval        # the random-policy baseline
    agentalign rollout runs/sft --episodes 2400 --out runs/rollouts      # resumes if killed

Thin: arguments are checked (a missing or invalid checkpoint, a non-positive count or
temperature, frames the environment cannot render: an error naming it, exit code 2) before any
episode runs; the work is `agentalign.eval.evaluate` and `agentalign.rollout.record_rollouts`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

from agentalign.cli.common import fail

_CHECKPOINT_HELP = "Policy checkpoint directory (model.safetensors + config.json), or 'random' for the baseline."


def _check_common(episodes: int, temperature: float, num_envs: int, seed: int) -> None:
    if episodes <= 0:
        fail(f"--episodes must be positive, got {episodes}")
    if not temperature > 0:
        fail(f"--temperature must be positive, got {temperature}")
    if num_envs <= 0:
        fail(f"--num-envs must be positive, got {num_envs}")
    if seed < 0:
        fail(f"--seed must be non-negative, got {seed}")


@contextmanager
def _progress(total: int, desc: str):
    """A progress callback whose bar appears with the first finished wave, so that an input error
    (raised before any work) prints alone; ValueError becomes a clean error."""
    from tqdm import tqdm

    bar = None

    def progress(done: int, _total: int) -> None:
        nonlocal bar
        bar = bar or tqdm(total=total, unit="ep", desc=desc, disable=None)
        bar.n = done
        bar.refresh()

    try:
        yield progress
    except ValueError as e:
        if bar is not None:
            bar.close()
        fail(str(e))
    if bar is not None:
        bar.close()


def eval_command(
    checkpoint: str = typer.Argument(..., help=_CHECKPOINT_HELP),
    out: Path = typer.Option(..., "--out", help="Output directory (eval.json, jump_pads.png, heatmap.png, videos/)."),
    episodes: int = typer.Option(1000, help="Evaluation episodes (the paper: 1000)."),
    seed: int = typer.Option(0, help="Episode k depends only on (seed, k)."),
    temperature: float = typer.Option(1.0, help="Softmax temperature of action sampling."),
    num_envs: int = typer.Option(64, help="Episodes run together in one batch."),
    videos: int = typer.Option(3, help="Videos of the first episodes, beside the top-down map."),
    size: int = typer.Option(64, help="Frame size of the random baseline (checkpoints carry their own)."),
) -> None:
    """Evaluate a policy: jump pads reached over N episodes, heatmap and videos.

    The paper's evaluation (§3.2): the ninja from random spawns with an empty context, until a
    pad or 100 steps. Writes eval.json, jump_pads.png (figures 3-5), heatmap.png (figure 10),
    trajectories.npz and videos/*.mp4; prints the distribution in one line."""
    from agentalign.eval import evaluate, format_distribution

    _check_common(episodes, temperature, num_envs, seed)
    if videos < 0:
        fail(f"--videos must be >= 0, got {videos}")
    with _progress(episodes, "eval") as progress:  # evaluate checks the checkpoint before any episode
        r = evaluate(checkpoint, out, episodes=episodes, seed=seed, temperature=temperature, num_envs=num_envs,
                     videos=videos, size=size, progress=progress)  # fmt: skip
    tp = r["throughput"]
    typer.echo(f"{r['label']}: {format_distribution(r)}; pinned at a wall {100 * r['stuck']['fraction']:.1f}% — "
               f"{tp['steps_per_second']:.0f} steps/s; "
               f"wrote {out / 'eval.json'}")  # fmt: skip


def rollout_command(
    checkpoint: str = typer.Argument(..., help=_CHECKPOINT_HELP),
    out: Path = typer.Option(..., "--out", help="Store directory to create, or to resume filling."),
    episodes: int = typer.Option(..., help="Episodes the store should hold when done."),
    seed: int = typer.Option(0, help="Episode k depends only on (seed, k)."),
    temperature: float = typer.Option(1.0, help="Softmax temperature of action sampling (paper §3.4: 1)."),
    num_envs: int = typer.Option(64, help="Episodes run together in one batch."),
    size: int = typer.Option(64, help="Frame size of the random baseline (checkpoints carry their own)."),
) -> None:
    """Record on-policy trajectories into a dataset store (resumable).

    Episodes as in `eval`, with frames, actions, privileged positions and metadata (jump_pad,
    length, spawn, seed, policy, temperature) for the preference stage. Episodes already durable
    in the store are skipped; resuming with other settings is refused."""
    from agentalign.rollout import RolloutConfig, record_rollouts

    _check_common(episodes, temperature, num_envs, seed)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a directory")
    cfg = RolloutConfig(episodes=episodes, seed=seed, temperature=temperature, num_envs=num_envs)
    with _progress(episodes, "rollout") as progress:  # the checkpoint and store are checked first
        s = record_rollouts(checkpoint, out, cfg, size=size, progress=progress)
    pads = ", ".join(f"{k} {v}" for k, v in s["jump_pads"].items())
    typer.echo(f"{out}: {s['episodes']} episodes ({s['written']} new, {s['steps']} steps in {s['seconds']:.1f} s, "
               f"{s['steps_per_second']:.0f} steps/s; new episodes: {pads})")  # fmt: skip


def diagnose(
    checkpoint: Path = typer.Argument(..., help="Policy checkpoint directory."),
    data: Path = typer.Option(..., help="Episode store to draw held-out windows from."),
    batches: int = typer.Option(3, min=1),
) -> None:
    """Does the policy use its pixels? BC loss with real vs black frames, encoder spread."""
    from agentalign.eval.diagnostics import pixel_reliance

    try:
        r = pixel_reliance(checkpoint, data, batches)
    except ValueError as e:
        fail(str(e))
    typer.echo(f"{checkpoint}: loss with real frames {r['loss_real_frames']:.3f}, with black frames "
               f"{r['loss_black_frames']:.3f}; encoder output std across frames {r['encoder_std_across_frames']:.4f}")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add `eval`, `rollout` and `diagnose` to the `agentalign` command line."""
    app.command("eval")(eval_command)
    app.command("rollout")(rollout_command)
    app.command("diagnose")(diagnose)


__all__ = ["register"]
