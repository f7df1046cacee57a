"""`agentalign prefs ...` and `agentalign reward ...`: preferences and reward models."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from agentalign.cli.common import checked

prefs_app = typer.Typer(help="Preferences over trajectories.", no_args_is_help=True)
reward_app = typer.Typer(help="Bradley-Terry reward models on frozen embeddings.", no_args_is_help=True)


@prefs_app.command("synth")
def prefs_synth(
    trajectories: Path = typer.Option(..., help="Store of on-policy trajectories (agentalign rollout)."),
    target: str = typer.Option(..., help="Target pad: left, middle or right."),
    out: Path = typer.Option(..., help="Preference file to write (.jsonl)."),
    train: int = typer.Option(1000, help="Trajectories in the training split (the paper: 1000 of 2400)."),
) -> None:
    """Label trajectories with the synthetic labeller of section 3.4 (target > other pad > none;
    shorter wins within a category), as rankings over the train and test splits."""
    from agentalign.train.reward import label_synthetic

    s = checked(label_synthetic, trajectories, target, train, out)
    typer.echo(f"wrote {out}: target {target}, {s['train']} train / {s['test']} test trajectories "
               f"({s['train_comparisons']} / {s['test_comparisons']} comparisons)")  # fmt: skip


def store_and_prefs(trajectories: Path, prefs_path: Path):
    """The trajectory store and its preference file, checked to belong together (for `pft`)."""
    from agentalign.train.reward import open_labelled_store

    return checked(open_labelled_store, trajectories, prefs_path)


@reward_app.command("train")
def reward_train(
    trajectories: Path = typer.Option(..., help="Trajectory store the preferences label."),
    prefs: Path = typer.Option(..., help="Preference file (agentalign prefs synth, or the web app)."),
    out: Path = typer.Option(..., help="Output folder for the reward model."),
    encoder: str = typer.Option("agent", help="agent (the frozen policy's embeddings) or random."),
    policy: Optional[Path] = typer.Option(None, help="Policy checkpoint for the agent encoder (the SFT agent)."),
    subset: Optional[int] = typer.Option(None, help="Train on all pairs of this many training trajectories."),
    cache: Optional[Path] = typer.Option(None, help="Embedding cache folder (default: OUT/cache)."),
    set_: List[str] = typer.Option([], "--set", help="Override a training setting, key=value."),
) -> None:
    """Train one reward model, report held-out metrics, save it with its normalisation."""
    from agentalign.config import build_config
    from agentalign.train.reward import RewardTrainConfig, run_reward

    cfg = checked(build_config, RewardTrainConfig, {"encoder": encoder}, set_)
    r = checked(run_reward, trajectories, prefs, out, cfg, policy=policy, cache=cache, trajectories=subset)
    typer.echo(f"{out}: {r['comparisons']} comparisons, {r['steps']} steps; held-out "
               + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in r.items() if k.startswith("reward/") and k != "reward/pairs"))  # fmt: skip


@reward_app.command("sweep")
def reward_sweep(
    trajectories: Path = typer.Option(..., help="Trajectory store the preferences label."),
    prefs: Path = typer.Option(..., help="Preference file with train/test splits."),
    out: Path = typer.Option(..., help="Output folder: sweep.json and sweep.png."),
    policy: Optional[Path] = typer.Option(None, help="Policy checkpoint for the agent encoder."),
    encoders: str = typer.Option("agent,random", help="Comma-separated encoders to compare."),
    seeds: int = typer.Option(3, min=1, help="Seeds per point (spread in the plot)."),
    points: int = typer.Option(6, min=1, help="Subset sizes, log-even from ~50 comparisons to all."),
    cache: Optional[Path] = typer.Option(None, help="Embedding cache folder (default: OUT/cache)."),
    set_: List[str] = typer.Option([], "--set", help="Override a training setting, key=value."),
) -> None:
    """Figure 7: held-out accuracy against the number of training comparisons, per encoder."""
    from agentalign.config import build_config
    from agentalign.train.reward import RewardTrainConfig, run_sweep

    def show(r: dict) -> None:
        typer.echo(f"  {r['encoder']:>6}  {r['comparisons']:>7} comparisons  seed {r['seed']}  "
                   f"accuracy {100 * r['reward/accuracy']:.1f}%")  # fmt: skip

    cfg = checked(build_config, RewardTrainConfig, {}, set_)
    kinds = [e.strip() for e in encoders.split(",") if e.strip()]
    s = checked(run_sweep, trajectories, prefs, out, cfg, policy=policy, encoders=kinds, seeds=seeds, points=points,
                cache=cache, progress=show)  # fmt: skip
    typer.echo(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}: largest set "
               + ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["largest"].items()))  # fmt: skip


def register(app: typer.Typer) -> None:
    app.add_typer(prefs_app, name="prefs")
    app.add_typer(reward_app, name="reward")
