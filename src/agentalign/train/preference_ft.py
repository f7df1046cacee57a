"""Preference fine-tuning: score trajectories with the reward model, keep the best, clone them
(paper section 3.6.1, appendix C.4) — Reinforced Self-Training (ReST, Gulcehre et al., 2023).

Objective per iteration: behaviour cloning (the BC loss of `agentalign.train.bc`) on the top
`top_fraction` (20 %) of trajectories ranked by the reward model, training only the MLP after the
transformer (appendix C.4: lr 1e-5, 1000 updates of 256 at paper scale; the `preference` BC preset
scales that for the CPU).

Iteration 1 ranks the training trajectories the preferences were collected on (the paper's single
"grow" step), or with `rank="all"` every rollout of the preference stage: the held-out ones are
the same policy's samples, only their labels are kept from training, and ranking them costs no
new rollout (a departure: more clean examples to clone for free). Further iterations — the
paper's suggested further work — roll out the current policy for fresh trajectories, rank them
with the same reward model and clone the best again; by default the best of each spawn
(`grow_per_spawn`), not the best overall.

The reward model's agent encoder is the frozen SFT policy, so every ranking embeds trajectories
with that policy, whatever the policy being fine-tuned has become.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from agentalign.data import StoreWriter, open_store
from agentalign.models import Policy
from agentalign.models.reward import check_reward_matches, load_encoder, load_reward_model
from agentalign.rollout import RolloutConfig, record_rollouts
from agentalign.train.bc import BCConfig, bc_preset, train_bc
from agentalign.io import atomic_write_json
from agentalign.train.reward import embed_trajectories


@dataclass(frozen=True)
class PreferenceFTConfig:
    top_fraction: float = 0.2  # appendix C.4: the top 20 % by reward
    # Iteration 1 ranks the trajectories the preferences were collected on ("train", the paper) or
    # every rollout of the preference stage ("all": the held-out ones too; their labels are never read).
    rank: Literal["train", "all"] = "train"
    # Grow steps (iterations >= 2) keep the top fraction of each spawn's fresh rollouts: best-of-n
    # per start state, as ReST keeps the best samples per prompt. Ranked overall, the labeller's
    # taste for short trajectories fills the set with the spawns nearest the target (RESULTS.md,
    # "Alignment", fourth session). Iteration 1 ranks overall: in the preference stage's set a far
    # spawn may hold too few target trajectories to fill its share.
    grow_per_spawn: bool = True
    iterations: int = 1  # ReST grow steps; the paper runs one
    rollout_episodes: int = 400  # fresh trajectories per iteration after the first
    bc: BCConfig = field(default_factory=lambda: bc_preset("preference"))
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must lie in (0, 1], got {self.top_fraction}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.rollout_episodes < 2:
            raise ValueError(f"rollout_episodes must be >= 2, got {self.rollout_episodes}")
        if self.rank not in ("train", "all"):
            raise ValueError(f"rank must be 'train' or 'all', got {self.rank!r}")


def score_trajectories(store, ids: np.ndarray, reward_dir: str | Path, encoder_policy: str | Path | None) -> np.ndarray:
    """(len(ids),) normalised rewards of store episodes under the reward model at `reward_dir`.

    `encoder_policy`: the checkpoint of the policy whose embeddings the reward model was trained on
    (checked by fingerprint), for an agent-encoder reward model; the caller names it, as the path the
    reward model recorded need not hold from another working directory or after a run folder moved."""
    model, meta = load_reward_model(reward_dir)
    if meta["encoder"] == "agent":
        if encoder_policy is None:
            raise ValueError(f"reward model {reward_dir} scores with a policy's embeddings: name that policy's checkpoint")
        check_reward_matches(reward_dir, encoder_policy, meta)
    encoder = load_encoder(meta["encoder"], encoder_policy, store.image_size[0], int(meta.get("random_seed", 0)),
                           model.cfg.embed_dim)  # fmt: skip
    emb = embed_trajectories(encoder, store, ids, model.cfg.horizon, model.cfg.pad)
    with torch.no_grad():
        return model.normalised(emb).numpy()


def select_top(scores: np.ndarray, fraction: float, groups: np.ndarray | None = None) -> np.ndarray:
    """Positions of the top `fraction` of scores (at least one), best first; ties by position.
    With `groups` (one label per score), the top fraction of each group, groups in label order."""
    if groups is not None:
        members = [np.flatnonzero(groups == g) for g in np.unique(groups)]  # positions of each group
        return np.concatenate([m[select_top(scores[m], fraction)] for m in members])
    k = max(1, int(round(fraction * len(scores))))
    return np.argsort(-scores, kind="stable")[:k]


def _copy_episodes(src, ids: np.ndarray, dst: Path) -> None:
    """Copy store episodes `ids` to a new store at `dst`; a resumed run (the selection is
    deterministic) continues after the episodes already durable there."""
    with StoreWriter(dst, image_size=src.image_size) as w:
        if w.num_durable > len(ids):
            raise ValueError(f"{dst} holds another selection; remove it to start this stage again")
        for i in ids[w.num_durable :]:
            w.add(src.episode(int(i)))


SOUP_SEED_STEP = 104_729  # member j of a soup clones with BC seed + j * this (apart from other seeds)


def clone_best(store, ids: np.ndarray, scores: np.ndarray, fraction: float, group_by: str | None, bc: BCConfig,
               init: str | Path, out: Path, progress: bool = False, soup: int = 1, min_score: float | None = None) -> dict:  # fmt: skip
    """One ReST step: keep the best `fraction` of the store episodes `ids` by `scores` (of each
    group's, with `group_by` an episode metadata key: "spawn", or "seed" for the episodes played from
    one start state), copy them to `out`/top and clone them from `init` into `out`/model.
    With `min_score`, a kept episode must also score at least that (ReST's filter threshold τ,
    Gulcehre et al., 2023); when none does, `init` is saved unchanged as `out`/model.
    With `soup` > 1, clone that many times with other BC seeds (`out`/soup/seed{j}; member 0 is
    the single clone) and keep the mean of their weights (`model_soup`)."""
    groups = np.array([store.metadata(int(i)).get(group_by, -1) for i in ids]) if group_by else None
    chosen = select_top(scores, fraction, groups)
    below = 0
    if min_score is not None:
        passes = scores[chosen] >= min_score
        below, chosen = int((~passes).sum()), chosen[passes]
    top = ids[chosen]
    _copy_episodes(store, top, out / "top")
    pads = [store.metadata(int(i)).get("jump_pad") for i in top]
    summary = {"ranked": int(len(ids)), "kept": int(len(top)), "kept_pads": {p: pads.count(p) for p in sorted(set(pads))},
               "mean_score_all": float(scores.mean()), "below_min_score": below,
               "mean_score_kept": float(scores[chosen].mean()) if len(chosen) else None}  # fmt: skip
    if not len(top):  # nothing good enough to clone: the step keeps the agent it was given
        Policy.from_pretrained(init).save_pretrained(out / "model", stage=bc.stage, parent=str(Path(init).resolve()))
        return summary
    cfg = replace(bc, data=str(out / "top")).with_init(init)
    if soup == 1:
        train_bc(cfg, out / "model", progress=progress)
    else:
        members = [out / "soup" / f"seed{j}" for j in range(soup)]
        for j, d in enumerate(members):
            train_bc(replace(cfg, seed=bc.seed + SOUP_SEED_STEP * j), d, progress=progress)
        model_soup(members).save_pretrained(out / "model", stage=bc.stage, parent=str(Path(init).resolve()),
                                            soup=[str(d) for d in members])  # fmt: skip
    return summary


def model_soup(dirs: list[Path]) -> Policy:
    """The mean of the weights of policies cloned from one start with other seeds (a "model soup",
    Wortsman et al., 2022): one clone's outcome moved 12 points with its BC seed alone, and the
    mean of clones scored above the mean of its members (RESULTS.md, tenth session)."""
    policies = [Policy.from_pretrained(d) for d in dirs]
    states = [p.state_dict() for p in policies]
    mean = {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) for k, v in states[0].items()}
    policies[0].load_state_dict(mean)
    return policies[0]


def preference_finetune(policy_dir: str | Path, reward_dir: str | Path, trajectories: str | Path,
                        train_ids: np.ndarray, out_dir: str | Path, cfg: PreferenceFTConfig,
                        progress: bool = False) -> dict:  # fmt: skip
    """Run `cfg.iterations` rounds of rank-select-clone; the final policy is saved in `out_dir`."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    current = Path(policy_dir)
    rounds = []
    for it in range(1, cfg.iterations + 1):
        d = out / f"iter{it}"
        if it == 1:
            store = open_store(trajectories)
            ids = np.asarray(train_ids) if cfg.rank == "train" else np.arange(len(store))
        else:
            roll = d / "rollouts"
            record_rollouts(current, roll, RolloutConfig(episodes=cfg.rollout_episodes, seed=cfg.seed + it))
            store = open_store(roll)
            ids = np.arange(len(store))
        scores = score_trajectories(store, ids, reward_dir, policy_dir)  # the SFT agent: the reward model's encoder
        group_by = "spawn" if it > 1 and cfg.grow_per_spawn else None
        bc = replace(cfg.bc, seed=cfg.seed + it)
        rounds.append({"iteration": it, **clone_best(store, ids, scores, cfg.top_fraction, group_by, bc, current, d,
                                                     progress)})  # fmt: skip
        current = d / "model"
    policy = Policy.from_pretrained(current)
    policy.save_pretrained(out, stage="preference_ft", parent=str(policy_dir), reward_model=str(reward_dir),
                           iterations=cfg.iterations)  # fmt: skip
    summary = {"rounds": rounds, "seconds": time.perf_counter() - t0}
    atomic_write_json(out / "pft_summary.json", summary)
    return summary
