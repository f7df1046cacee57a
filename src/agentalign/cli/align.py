"""`agentalign pft`, `agentalign align`, `agentalign dpo`: the alignment stages on their own."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from agentalign.cli.common import checked


def pft(
    sft: Path = typer.Option(..., help="The SFT checkpoint (the reward model's encoder)."),
    reward: Path = typer.Option(..., help="Reward model folder (agentalign reward train)."),
    trajectories: Path = typer.Option(..., help="Trajectory store the preferences were collected on."),
    prefs: Path = typer.Option(..., help="Preference file: its train split is ranked."),
    out: Path = typer.Option(..., help="Output folder."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set rest.rounds=2 --set rest.clone.steps=500."),
) -> None:
    """Preference fine-tuning (ReST): clone the best of the stored rollouts by reward, then grow rounds."""
    from agentalign.config import build_config
    from agentalign.train.rest import PreferenceFTConfig, run_pft

    cfg = checked(build_config, PreferenceFTConfig, {}, set_)
    s = checked(run_pft, sft, reward, trajectories, prefs, out, cfg, progress=True)
    for r in s["rounds"]:
        typer.echo(f"round {r['round']} ({r['source']}): kept {r['kept']} of {r['ranked']} ({r['kept_pads']})")
    typer.echo(f"{out}: the preference-fine-tuned agent")


def align(
    policy: Path = typer.Option(..., help="Policy to align (the SFT or preference-fine-tuned agent)."),
    sft: Path = typer.Option(..., help="The SFT checkpoint: the reward model's encoder and the KL reference."),
    reward: Path = typer.Option(..., help="Reward model folder."),
    target: str = typer.Option(..., help="Target pad (for the logged true success)."),
    out: Path = typer.Option(..., help="Output folder."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set reinforce.episodes=1600 --set rest.rounds=0."),
) -> None:
    """Online alignment: REINFORCE (when reinforce.episodes > 0), ReST rounds, then the sharpen."""
    from agentalign.config import build_config
    from agentalign.envs.skygarden import world as W
    from agentalign.train.align import AlignConfig, run_align

    cfg = checked(build_config, AlignConfig, {}, set_)
    checked(W.pad_index, target)

    def show(done: int, total: int, row: dict) -> None:
        if done % (cfg.reinforce.batch_episodes * 10) == 0 or done == total:
            typer.echo(f"  REINFORCE {done}/{total} episodes  {target} success {100 * row['align/success']:.0f}%")

    s = checked(run_align, policy, sft, reward, out, cfg, target, progress=show)
    for step in ("rest", "sharpen"):
        if step in s:
            typer.echo(f"{step}: {s[step]['rounds']} round(s) at T = {s[step]['temperature']:g}, cloned "
                       f"{s[step]['kept']} of {s[step]['ranked']} (pads {s[step]['kept_pads']})")  # fmt: skip
    typer.echo(f"{out}: aligned in {s['online_episodes']} online episodes")


def dpo(
    sft: Path = typer.Option(..., help="The SFT checkpoint (policy and reference)."),
    trajectories: Path = typer.Option(..., help="Trajectory store the preferences label."),
    prefs: Path = typer.Option(..., help="Preference file (its train split is used)."),
    out: Path = typer.Option(..., help="Output folder."),
    cache: Optional[Path] = typer.Option(None, help="Embedding cache folder (e.g. a reward run's cache/)."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set beta=0.2 --set steps=800."),
) -> None:
    """Offline DPO from the preference pairs, the SFT policy as reference (head only)."""
    from agentalign.cli.common import fail
    from agentalign.config import build_config
    from agentalign.train.dpo import DPOConfig, run_dpo

    cfg = checked(build_config, DPOConfig, {}, set_)
    s = checked(run_dpo, sft, trajectories, prefs, out, cfg, cache=cache)
    if "skipped" in s:
        fail(f"DPO did not run: {s['skipped']}")
    typer.echo(f"{out}: {s['pairs']} strict pairs, {s['steps']} steps; pair accuracy {100 * s['dpo/accuracy']:.0f}%")


def register(app: typer.Typer) -> None:
    app.command("pft")(pft)
    app.command("align")(align)
    app.command("dpo")(dpo)
