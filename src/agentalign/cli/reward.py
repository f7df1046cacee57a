"""`agentalign prefs ...` and `agentalign reward ...`: preferences and reward models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from agentalign.cli.common import checked, fail

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
    from agentalign.data import open_store
    from agentalign.train.reward import synthetic_preferences

    store = checked(open_store, trajectories)
    prefs = checked(synthetic_preferences, store, target, train)
    prefs.save(out)
    n_tr, n_te = len(prefs.meta["train_ids"]), len(prefs.meta["test_ids"])
    typer.echo(f"wrote {out}: target {target}, {n_tr} train / {n_te} test trajectories "
               f"({n_tr * (n_tr - 1) // 2} / {n_te * (n_te - 1) // 2} comparisons)")  # fmt: skip


def store_and_prefs(trajectories: Path, prefs_path: Path):
    """The trajectory store and its preference file, checked to belong together."""
    from agentalign.data import open_store
    from agentalign.prefs import PreferenceSet

    store = checked(open_store, trajectories)
    prefs = checked(PreferenceSet.load, prefs_path)
    if prefs.dataset_id != store.dataset_id:
        fail(f"{prefs_path} labels the store {prefs.dataset_id}, but {trajectories} is {store.dataset_id}")
    checked(prefs.check_ids, len(store))
    return store, prefs


def _embeddings(store, prefs, encoder_kind: str, policy: Optional[Path], cache: Path, seed: int, dim: int,
                pad: str = "black"):
    import numpy as np

    from agentalign.models.reward import checkpoint_fingerprint, load_encoder
    from agentalign.train.reward import preference_matrix, split_ids, store_embeddings

    if encoder_kind == "agent" and policy is None:
        fail("--policy is required for the agent encoder")
    encoder = checked(load_encoder, encoder_kind, policy, store.image_size[0], seed, dim)
    if encoder_kind == "agent" and encoder.policy.cfg.image_size != store.image_size[0]:
        fail(f"policy {policy} takes {encoder.policy.cfg.image_size}px frames, the trajectories are {store.image_size[0]}px")
    key = {"store": store.dataset_id, "encoder": encoder_kind,
           "policy": checkpoint_fingerprint(policy) if encoder_kind == "agent" else None, "seed": seed, "dim": dim}  # fmt: skip
    train, test = split_ids(prefs, len(store))
    ids = np.concatenate([train, test])
    emb = store_embeddings(store, encoder, cache, ids, key, pad)
    emb_tr, emb_te = emb[: len(train)], emb[len(train) :]
    return key, emb_tr, preference_matrix(prefs, train), emb_te, preference_matrix(prefs, test)


@reward_app.command("train")
def reward_train(
    trajectories: Path = typer.Option(..., help="Trajectory store the preferences label."),
    prefs: Path = typer.Option(..., help="Preference file (agentalign prefs synth, or the web app)."),
    out: Path = typer.Option(..., help="Output folder for the reward model."),
    encoder: str = typer.Option("agent", help="agent (the frozen policy's embeddings) or random."),
    policy: Optional[Path] = typer.Option(None, help="Policy checkpoint for the agent encoder (the SFT agent)."),
    subset: Optional[int] = typer.Option(None, help="Train on all pairs of this many training trajectories."),
    set_: List[str] = typer.Option([], "--set", help="Override a training setting, key=value."),
) -> None:
    """Train one reward model, report held-out metrics, save it with its normalisation."""
    import numpy as np
    import torch

    from agentalign.config import build_config, save_config
    from agentalign.io import atomic_write_json
    from agentalign.train.reward import RewardTrainConfig, pairwise_metrics, train_reward_model

    cfg = checked(build_config, RewardTrainConfig, {"encoder": encoder}, set_)
    store, pset = store_and_prefs(trajectories, prefs)
    start = time.perf_counter()
    key, emb_tr, P_tr, emb_te, P_te = _embeddings(store, pset, cfg.encoder, policy, out / "cache", cfg.seed, cfg.random_dim, cfg.pad)
    if subset is not None:
        if not 2 <= subset <= emb_tr.shape[0]:
            fail(f"--subset must lie in 2..{emb_tr.shape[0]}, got {subset}")
        sub = torch.from_numpy(np.sort(np.random.default_rng(cfg.seed).choice(emb_tr.shape[0], subset, replace=False)))
        emb_tr, P_tr = emb_tr[sub], P_tr[sub][:, sub]
    model, info = checked(train_reward_model, emb_tr, P_tr, cfg)
    with torch.no_grad():
        metrics = pairwise_metrics(model(emb_te), P_te) if emb_te.shape[0] >= 2 else {}
    model.save_pretrained(out, stage="reward", encoder=cfg.encoder, policy=str(policy) if policy else None,
                          policy_fingerprint=key["policy"], trajectories=store.dataset_id, target=pset.meta.get("target"),
                          random_seed=cfg.seed, random_dim=cfg.random_dim, **info)  # fmt: skip
    save_config(cfg, out / "run_config.json")
    atomic_write_json(out / "metrics.json", {**metrics, **info, "seconds": time.perf_counter() - start})
    typer.echo(f"{out}: {info['comparisons']} comparisons, {info['steps']} steps; held-out "
               + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items() if k != "reward/pairs"))  # fmt: skip


@reward_app.command("sweep")
def reward_sweep(
    trajectories: Path = typer.Option(..., help="Trajectory store the preferences label."),
    prefs: Path = typer.Option(..., help="Preference file with train/test splits."),
    out: Path = typer.Option(..., help="Output folder: sweep.json and sweep.png."),
    policy: Optional[Path] = typer.Option(None, help="Policy checkpoint for the agent encoder."),
    encoders: str = typer.Option("agent,random", help="Comma-separated encoders to compare."),
    seeds: int = typer.Option(3, min=1, help="Seeds per point (spread in the plot)."),
    points: int = typer.Option(6, min=1, help="Subset sizes, log-even from ~50 comparisons to all."),
    set_: List[str] = typer.Option([], "--set", help="Override a training setting, key=value."),
) -> None:
    """Figure 7: held-out accuracy against the number of training comparisons, per encoder."""
    from agentalign.config import build_config
    from agentalign.prefs import sweep_subset_sizes
    from agentalign.io import atomic_write_json
    from agentalign.train.reward import RewardTrainConfig, plot_sweep, sweep

    store, pset = store_and_prefs(trajectories, prefs)
    kinds = [e.strip() for e in encoders.split(",") if e.strip()]
    cfgs = {k: checked(build_config, RewardTrainConfig, {"encoder": k}, set_) for k in kinds}
    rows = []
    start = time.perf_counter()
    for kind, cfg in cfgs.items():
        _, emb_tr, P_tr, emb_te, P_te = _embeddings(store, pset, kind, policy, out / "cache", cfg.seed, cfg.random_dim, cfg.pad)
        sizes = sweep_subset_sizes(emb_tr.shape[0], points=points)

        def show(r):
            typer.echo(f"  {r['encoder']:>6}  {r['comparisons']:>7} comparisons  seed {r['seed']}  "
                       f"accuracy {100 * r['reward/accuracy']:.1f}%")  # fmt: skip

        rows += sweep(emb_tr, P_tr, emb_te, P_te, sizes, seeds, cfg, progress=show)
    atomic_write_json(out / "sweep.json", {"rows": rows, "seconds": time.perf_counter() - start,
                                           "target": pset.meta.get("target")})  # fmt: skip
    plot_sweep(rows, out / "sweep.png", title=f"reward models, target {pset.meta.get('target')}")
    typer.echo(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'} ({time.perf_counter() - start:.0f} s)")


def register(app: typer.Typer) -> None:
    app.add_typer(prefs_app, name="prefs")
    app.add_typer(reward_app, name="reward")


