"""`agentalign pft`, `agentalign align`, `agentalign dpo`: the alignment stages on their own."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from agentalign.cli.reward import store_and_prefs
from agentalign.cli.common import checked


def pft(
    sft: Path = typer.Option(..., help="The SFT checkpoint (the reward model's encoder)."),
    reward: Path = typer.Option(..., help="Reward model folder (agentalign reward train)."),
    trajectories: Path = typer.Option(..., help="Trajectory store the preferences were collected on."),
    prefs: Path = typer.Option(..., help="Preference file: its train split is ranked."),
    out: Path = typer.Option(..., help="Output folder."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set iterations=2 --set bc.steps=500."),
) -> None:
    """Preference fine-tuning (ReST): clone the top 20 % of trajectories by reward, head only."""
    from agentalign.config import build_config
    from agentalign.train.preference_ft import PreferenceFTConfig, preference_finetune
    from agentalign.train.reward import split_ids

    cfg = checked(build_config, PreferenceFTConfig, {}, set_)
    store, pset = store_and_prefs(trajectories, prefs)
    train, _ = split_ids(pset, len(store))
    s = checked(preference_finetune, sft, reward, trajectories, train, out, cfg, progress=True)
    last = s["rounds"][-1]
    typer.echo(f"{out}: {cfg.iterations} round(s); last kept {last['kept']} of {last['ranked']} ({last['kept_pads']})")


def align(
    policy: Path = typer.Option(..., help="Policy to align (the SFT or preference-fine-tuned agent)."),
    reference: Path = typer.Option(..., help="The SFT checkpoint: KL reference and the reward model's encoder."),
    reward: Path = typer.Option(..., help="Reward model folder."),
    target: str = typer.Option(..., help="Target pad (for the logged true success)."),
    out: Path = typer.Option(..., help="Output folder."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set episodes=1600 --set beta=0."),
) -> None:
    """Online REINFORCE on the reward model's return, KL-regularised to the reference; then the
    ReST steps asked for (--set polish_episodes=, rest_episodes=, sharpen_episodes=; episodes=0
    leaves REINFORCE out, as the cpu preset does)."""
    from agentalign.config import build_config
    from agentalign.train.reinforce import ReinforceConfig, train_reinforce

    cfg = checked(build_config, ReinforceConfig, {"target": target}, set_)

    def show(done: int, total: int, row: dict) -> None:
        if done % (cfg.batch_episodes * 10) == 0 or done == total:
            typer.echo(f"  {done}/{total} episodes  {target} success {100 * row['align/success']:.0f}%  "
                       f"reward {row.get('align/reward_return', float('nan')):.3f}")  # fmt: skip

    s = checked(train_reinforce, policy, reference, reward, out, cfg, progress=show)
    if s["episodes"]:
        typer.echo(f"{out}: {s['episodes']} episodes, {s['updates']} updates in {s['seconds']:.0f} s; "
                   f"{target} success over the last batches {100 * s['final_success']:.0f}%")  # fmt: skip
    if "polish" in s:
        typer.echo(f"  then cloned the best {s['polish']['kept']} of its last {s['polish']['ranked']} episodes "
                   f"(pads {s['polish']['kept_pads']})")  # fmt: skip
    for step in ("rest", "sharpen"):  # the ReST rounds, then the sharpen
        if step in s:
            k = s[step].get("rounds", 1)
            typer.echo(f"  then played {s[step]['ranked']} episodes at T = {s[step]['temperature']:g} and cloned "
                       f"the best {s[step]['kept']} (pads {s[step]['kept_pads']}){f' in {k} rounds' if k > 1 else ''}")  # fmt: skip


def dpo(
    sft: Path = typer.Option(..., help="The SFT checkpoint (policy and reference)."),
    trajectories: Path = typer.Option(..., help="Trajectory store the preferences label."),
    prefs: Path = typer.Option(..., help="Preference file (its train split is used)."),
    out: Path = typer.Option(..., help="Output folder."),
    cache: Optional[Path] = typer.Option(None, help="Embedding cache folder (e.g. a reward run's cache/)."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set beta=0.2 --set steps=800."),
) -> None:
    """Offline DPO from the preference pairs, the SFT policy as reference (head only)."""
    import numpy as np

    from agentalign.config import build_config
    from agentalign.models.reward import AgentEncoder, checkpoint_fingerprint
    from agentalign.models import Policy
    from agentalign.train.dpo import DPOConfig, lengths_and_actions, train_dpo
    from agentalign.train.reward import preference_matrix, split_ids, store_embeddings

    cfg = checked(build_config, DPOConfig, {}, set_)
    store, pset = store_and_prefs(trajectories, prefs)
    train, test = split_ids(pset, len(store))
    enc = AgentEncoder(checked(Policy.from_pretrained, sft))
    key = {"store": store.dataset_id, "encoder": "agent", "policy": checkpoint_fingerprint(sft), "seed": 0, "dim": 512}
    emb = store_embeddings(store, enc, cache or out / "cache", np.concatenate([train, test]), key)[: len(train)]
    lengths, actions = lengths_and_actions(store, train, emb.shape[1])
    s = checked(train_dpo, sft, emb, actions, lengths, preference_matrix(pset, train), out, cfg)
    typer.echo(f"{out}: {s['pairs']} strict pairs, {s['steps']} steps; pair accuracy {100 * s['dpo/accuracy']:.0f}%")


def register(app: typer.Typer) -> None:
    app.command("pft")(pft)
    app.command("align")(align)
    app.command("dpo")(dpo)
