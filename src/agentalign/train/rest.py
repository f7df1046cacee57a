"""ReST, Reinforced Self-Training (Gulcehre et al., 2023): grow a set of the agent's own episodes,
score them with the reward model, keep the best and clone them. The paper's preference
fine-tuning is one round of it (section 3.6.1, appendix C.4); repeated online it aligns the agent.

One round, from the current agent π_k:

    grow     play `episodes` fresh episodes of π_k at `temperature`, `samples_per_start` from each
             start state (spawn and initial yaw) — or, in preference fine-tuning's first round,
             take the stored preference rollouts of the SFT agent instead
    score    R(τ): the reward model's normalised return (its encoder the frozen SFT agent)
    keep     the best `keep` fraction of each group — a start state's samples when
             samples_per_start > 1, else a spawn's episodes; the stored set is ranked as one group —
             and of those only the ones with R(τ) >= `min_score` (ReST's filter threshold τ)
    clone    π_{k+1} = behaviour cloning of the kept episodes from π_k (`clone`: the BC loss of
             train/losses.py `bc_loss`), or with `soup` > 1 the mean of the weights of that many
             clones trained with other seeds (a model soup, Wortsman et al., 2022)

Departures from the paper: it runs one round on the stored rollouts and clones the top 20 % into
the head only at lr 1e-5; here the rounds go on on fresh episodes (the paper's further work,
ReST's several grow steps), fresh rounds keep the best of each start state or spawn rather than the
best overall (the labeller's taste for short episodes otherwise fills the set with the spawns
nearest the target), and the clone's settings (lr, what trains, windows at the episodes' first
steps) are the presets'. Every choice's measurements are in docs/journal.md.

A killed run resumes: each round's folder holds its episodes, its kept copy and its clone, each of
which resumes or returns at once when complete, so the rounds replay to the same agent.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from agentalign.data import StoreWriter, open_store
from agentalign.envs.skygarden import world as W
from agentalign.io import atomic_write_json, atomic_write_text, read_metrics
from agentalign.models import Policy
from agentalign.models.reward import check_reward_matches, load_encoder, load_reward_model
from agentalign.prefs import PreferenceSet
from agentalign.rollout import RolloutConfig, record_rollouts
from agentalign.train.bc import BCConfig, train_bc
from agentalign.train.reward import embed_trajectories, split_ids

# Round i of a ReST run seeded s plays its episodes with rollout seed s + i * ROUND_SEED_STEP and
# clones with that BC seed; member j of a soup adds j * SOUP_SEED_STEP. The stages keep their seeds
# apart: evaluation plays seed 1, the preference rollouts the pipeline's seed (0).
ROUND_SEED_STEP = 1000
SOUP_SEED_STEP = 104_729
PFT_SEED = 20_000  # preference fine-tuning's rounds: 20,000 + pft.seed
ALIGN_SEED = 10_000  # the alignment's rounds and sharpen: 10,000 + align.seed


@dataclass(frozen=True)
class CloneConfig:
    """The behaviour cloning of a round's kept episodes (appendix C.4: 1,000 updates of 256
    windows into the head only at lr 1e-5, sized here for a CPU)."""

    steps: int = 300
    batch_size: int = 32
    window: int = 32  # shortened to the model's context where that is shorter
    lr: float = 3e-5
    warmup: int = 30
    # "head": the paper's; "transformer" trains all but the pixel encoder (half the cost on a CPU
    # with the frames' features cached); "all" everything.
    train_only: Literal["all", "transformer", "head"] = "head"
    augment: bool = False  # a few hundred updates on the agent's own frames: nothing to generalise over
    # Share of windows that start at their episode's first step, where the route is chosen; uniform
    # windows over ~50-step episodes train the opening steps 1/19 as often as the middle.
    first_window_share: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.window < 1 or self.warmup < 0:
            raise ValueError(f"steps, batch_size and window must be >= 1 and warmup >= 0, got {self.steps}, "
                             f"{self.batch_size}, {self.window}, {self.warmup}")  # fmt: skip
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.first_window_share <= 1:
            raise ValueError(f"first_window_share must lie in [0, 1], got {self.first_window_share}")

    def bc(self, seed: int) -> BCConfig:
        return BCConfig(steps=self.steps, batch_size=self.batch_size, window=self.window, lr=self.lr, warmup=self.warmup,
                        train_only=self.train_only, augment=self.augment, first_window_share=self.first_window_share,
                        seed=seed, checkpoint_every=100)  # fmt: skip


@dataclass(frozen=True)
class RestConfig:
    """Rounds of grow, score, keep, clone. The defaults are one round of the paper's preference
    fine-tuning on fresh episodes."""

    rounds: int = 1  # 0: none
    episodes: int = 400  # fresh episodes per round
    samples_per_start: int = 1  # episodes from each start state; > 1 keeps the best of each start's
    keep: float = 0.2  # fraction kept of each group (appendix C.4: the top 20 %)
    min_score: float | None = None  # ReST's threshold: a kept episode scoring below it is not cloned
    soup: int = 1  # clones averaged per round; one clone's outcome moved ~12 points with its seed alone
    temperature: float = 1.0  # sampling temperature of the grown episodes (the paper's: 1)
    clone: CloneConfig = field(default_factory=CloneConfig)

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.episodes < 1 or self.soup < 1 or self.samples_per_start < 1:
            raise ValueError(f"rounds must be >= 0 and episodes, soup, samples_per_start >= 1, got {self.rounds}, "
                             f"{self.episodes}, {self.soup}, {self.samples_per_start}")  # fmt: skip
        if self.episodes % self.samples_per_start:
            raise ValueError(f"samples_per_start ({self.samples_per_start}) must divide episodes ({self.episodes})")
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must lie in (0, 1], got {self.keep}")
        if not 0 < self.temperature <= 1:
            raise ValueError(f"temperature must lie in (0, 1], got {self.temperature}")


# ---- score ---------------------------------------------------------------------------------------


def score_episodes(store, ids: np.ndarray, reward_dir: str | Path, encoder_policy: str | Path) -> np.ndarray:
    """(len(ids),) the reward model's normalised returns of store episodes `ids`. `encoder_policy`:
    the checkpoint whose embeddings the reward model was trained on (the SFT agent), checked by
    fingerprint; the caller names it, as the path the reward model recorded may have moved."""
    model, meta = load_reward_model(reward_dir)
    if meta["encoder"] == "agent":
        check_reward_matches(reward_dir, encoder_policy, meta)
    encoder = load_encoder(meta["encoder"], encoder_policy, store.image_size[0], int(meta.get("random_seed", 0)),
                           model.cfg.embed_dim)  # fmt: skip
    emb = embed_trajectories(encoder, store, ids, model.cfg.horizon)
    with torch.no_grad():
        return model.normalised(emb).numpy()


# ---- keep ----------------------------------------------------------------------------------------


def select_top(scores: np.ndarray, fraction: float, groups: np.ndarray | None = None) -> np.ndarray:
    """Positions of the top `fraction` of scores (at least one), best first; ties by position.
    With `groups` (one label per score), the top fraction of each group, groups in label order."""
    if groups is not None:
        members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
        return np.concatenate([m[select_top(scores[m], fraction)] for m in members])
    k = max(1, int(round(fraction * len(scores))))
    return np.argsort(-scores, kind="stable")[:k]


def _copy_episodes(src, ids: np.ndarray, dst: Path) -> None:
    """Copy store episodes `ids` to a new store at `dst`, resuming after those already durable."""
    with StoreWriter(dst, image_size=src.image_size) as w:
        if w.num_durable > len(ids):
            raise ValueError(f"{dst} holds another selection; remove it to start this stage again")
        for i in ids[w.num_durable :]:
            w.add(src.episode(int(i)))


# ---- clone ---------------------------------------------------------------------------------------


def model_soup(dirs: list[Path]) -> Policy:
    """The mean of the weights of policies cloned from one start with other seeds."""
    policies = [Policy.from_pretrained(d) for d in dirs]
    states = [p.state_dict() for p in policies]
    mean = {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) for k, v in states[0].items()}
    policies[0].load_state_dict(mean)
    return policies[0]


def clone(data: Path, init: Path, out: Path, cfg: RestConfig, seed: int, progress: bool = False) -> None:
    """Behaviour cloning of the store `data` from `init` into out/model (a soup of cfg.soup clones)."""
    if cfg.soup == 1:
        train_bc(cfg.clone.bc(seed), data, out / "model", init=init, stage="rest", progress=progress)
        return
    members = [out / "soup" / f"seed{j}" for j in range(cfg.soup)]
    for j, d in enumerate(members):
        train_bc(cfg.clone.bc(seed + SOUP_SEED_STEP * j), data, d, init=init, stage="rest", progress=progress)
    model_soup(members).save_pretrained(out / "model", stage="rest", parent=str(Path(init).resolve()),
                                        soup=[str(d) for d in members])  # fmt: skip


# ---- a round, and rounds ----------------------------------------------------------------------------


def rest_round(store, ids: np.ndarray, scores: np.ndarray, groups: np.ndarray | None, init: Path, out: Path,
               cfg: RestConfig, seed: int, progress: bool = False) -> dict:  # fmt: skip
    """Keep and clone: the best `cfg.keep` of each group of the scored episodes `ids` (of `store`)
    that reach `cfg.min_score`, copied to out/top and cloned from `init` into out/model. When none
    is good enough, `init` is saved unchanged as out/model. Returns the round's summary."""
    chosen = select_top(scores, cfg.keep, groups)
    below = 0
    if cfg.min_score is not None:
        passes = scores[chosen] >= cfg.min_score
        below, chosen = int((~passes).sum()), chosen[passes]
    top = ids[chosen]
    _copy_episodes(store, top, out / "top")
    kept = Counter(store.metadata(int(i)).get("jump_pad") for i in top)
    played = Counter(store.metadata(int(i)).get("jump_pad") for i in ids)
    if len(top):
        clone(out / "top", init, out, cfg, seed, progress)
    else:  # nothing good enough to clone: the round keeps the agent it was given
        Policy.from_pretrained(init).save_pretrained(out / "model", stage="rest", parent=str(Path(init).resolve()))
    return {"ranked": int(len(ids)), "kept": int(len(top)), "below_min_score": below,
            "kept_pads": dict(sorted(kept.items())), "played_pads": dict(sorted(played.items())),
            "mean_score_all": float(scores.mean()), "mean_score_kept": float(scores[chosen].mean()) if len(chosen) else None,
            "temperature": cfg.temperature}  # fmt: skip


def grow(policy: Path, out: Path, cfg: RestConfig, seed: int):
    """Play `cfg.episodes` fresh episodes of `policy` into out (a store, resumed if cut short);
    -> (the store, their ids, their groups: start state or spawn)."""
    record_rollouts(policy, out, RolloutConfig(episodes=cfg.episodes, seed=seed, temperature=cfg.temperature,
                                               samples_per_start=cfg.samples_per_start))  # fmt: skip
    store = open_store(out)
    ids = np.arange(len(store))
    key = "seed" if cfg.samples_per_start > 1 else "spawn"  # the episodes of one start share an env seed
    return store, ids, np.array([store.metadata(int(i))[key] for i in ids])


def run_rest(start: Path, reward_dir: Path, sft: Path, out: Path, cfg: RestConfig, seed: int, *,
             stored: tuple[Path, np.ndarray] | None = None, first_round: int = 0, progress: bool = False) -> tuple[Path, list[dict]]:  # fmt: skip
    """`cfg.rounds` ReST rounds from the policy at `start` into out/round{i}/ (i from `first_round`),
    each cloning into the agent the next one plays; `stored` = (a store, ids) makes the first
    round rank those stored episodes as one group instead of playing fresh ones. -> (the last
    round's model folder, each round's summary)."""
    current, rounds = Path(start), []
    for r in range(cfg.rounds):
        i = first_round + r
        d = out / f"round{i}"
        round_seed = seed + ROUND_SEED_STEP * i
        if r == 0 and stored is not None:
            store, ids = open_store(stored[0]), np.asarray(stored[1])
            groups, source = None, "stored"
        else:
            store, ids, groups = grow(current, d / "episodes", cfg, round_seed)
            source = "fresh"
        scores = score_episodes(store, ids, reward_dir, sft)
        summary = rest_round(store, ids, scores, groups, current, d, cfg, round_seed, progress)
        rounds.append({"round": i, "source": source, **summary})
        current = d / "model"
    return current, rounds


def merge_rounds(rounds: list[dict]) -> dict:
    """One summary of several rounds: their totals, and each round's own under by_round."""
    kept = sum((Counter(r["kept_pads"]) for r in rounds), Counter())
    played = sum((Counter(r["played_pads"]) for r in rounds), Counter())
    return {"rounds": len(rounds), "ranked": sum(r["ranked"] for r in rounds), "kept": sum(r["kept"] for r in rounds),
            "below_min_score": sum(r["below_min_score"] for r in rounds), "kept_pads": dict(sorted(kept.items())),
            "played_pads": dict(sorted(played.items())), "temperature": rounds[-1]["temperature"],
            "mean_score_all": float(np.mean([r["mean_score_all"] for r in rounds])), "by_round": rounds}  # fmt: skip


# ---- preference fine-tuning: ReST on the stored preference rollouts ----------------------------------


@dataclass(frozen=True)
class PreferenceFTConfig:
    """Preference fine-tuning (section 3.6.1): the first round ranks the preference stage's stored
    rollouts; `rest.rounds - 1` grow rounds on fresh episodes follow."""

    # "train": the trajectories the preferences labelled (the paper); "all": every stored rollout,
    # the held-out ones too (they are the same policy's samples; their labels are never read).
    rank: Literal["train", "all"] = "train"
    rest: RestConfig = field(default_factory=RestConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rest.rounds < 1:
            raise ValueError("rest.rounds must be >= 1: the first round ranks the stored rollouts")


def run_pft(sft: str | Path, reward_dir: str | Path, trajectories: str | Path, prefs: str | Path, out: str | Path,
            cfg: PreferenceFTConfig, progress: bool = False) -> dict:  # fmt: skip
    """Preference fine-tuning of the SFT agent at `sft` with the reward model at `reward_dir`, from
    the stored rollouts `trajectories` that the preference file `prefs` labels; the final policy is
    saved in `out`."""
    sft, out, t0 = Path(sft), Path(out), time.perf_counter()
    store, pset = open_store(trajectories), PreferenceSet.load(prefs)
    if pset.dataset_id != store.dataset_id:
        raise ValueError(f"{prefs} labels the store {pset.dataset_id}, but {trajectories} is {store.dataset_id}")
    pset.check_ids(len(store))
    ids = split_ids(pset, len(store))[0] if cfg.rank == "train" else np.arange(len(store))
    final, rounds = run_rest(sft, Path(reward_dir), sft, out, cfg.rest, PFT_SEED + cfg.seed,
                             stored=(Path(trajectories), ids), progress=progress)  # fmt: skip
    Policy.from_pretrained(final).save_pretrained(out, stage="preference_ft", parent=str(sft.resolve()),
                                                    reward_model=str(Path(reward_dir).resolve()))  # fmt: skip
    summary = {"rounds": rounds, "kept": rounds[-1]["kept"], "kept_pads": rounds[-1]["kept_pads"],
               "online_episodes": sum(r["ranked"] for r in rounds if r["source"] == "fresh"),
               "seconds": time.perf_counter() - t0}  # fmt: skip
    atomic_write_json(out / "pft_summary.json", summary)
    return summary


def log_rounds(out: Path, rounds: list[dict], target: str, episodes_before: int) -> None:
    """A metrics row per round (its episodes' outcomes, before its clone) after REINFORCE's rows, so
    the online success curve (figures 8/9) goes on through the rounds. Rewritten whole: a resumed
    run does not log a round twice."""
    rows = [r for r in read_metrics(out) if "align/rest_round" not in r]
    done = episodes_before
    for r in rounds:
        n = sum(r["played_pads"].values())
        done += n
        row = {"step": len(rows), "align/episodes": done, "align/rest_round": r["round"] + 1,
               "align/success": r["played_pads"].get(target, 0) / n, "align/reward_return": r["mean_score_all"]}  # fmt: skip
        row.update({f"align/pad_{p}": r["played_pads"].get(p, 0) / n for p in (*W.PAD_NAMES, "none")})
        rows.append(row)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
