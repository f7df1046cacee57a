
"""Reward-model training: a Bradley-Terry model of preferences over the agent's own trajectories
(paper section 3.5, appendix C.3), on the frozen agent encoder or the random-encoder baseline.

Objective: minimise the Bradley-Terry negative log-likelihood (eq. 1) of the labelled
comparisons, P(i > j) = sigmoid(r_i - r_j), ties counted as 1/2, with L2 regularisation.

Embeddings of the frozen encoder are computed once per trajectory (one batched pass each) and
cached on disk, so training touches only the two small MLPs.

Departures from the paper:
  * Minibatches are drawn by trajectories, not by pairs: each step takes up to
    `traj_per_step` trajectories and all labelled pairs among them. For a comparison set made of
    all pairs of a subset this is an unbiased sample of the full loss that costs one reward
    evaluation per trajectory, where 2048 random pairs would touch almost every trajectory.
  * The paper's epochs (200, or 50 for the largest set, of 2048-pair minibatches) set the number
    of steps, capped at `max_steps`.
  * "L2 regularisation 0.1" is applied as decoupled weight decay (AdamW): an explicit 0.1 * sum(w^2)
    penalty is ~100x the BT loss at initialisation and flattens every reward.
  * `ensemble` = K > 1 (off by default) trains K models from consecutive seeds on the same
    comparisons and scores their mean normalised reward (models.reward.RewardEnsemble): one
    model's ranking of the aligned agent's episodes moves with its seed, and ReST clones its picks.

One run function per stage, which the CLI and the pipeline both call: `label_synthetic`
(`agentalign prefs synth`), `run_reward` (`agentalign reward train`), `run_sweep` (`agentalign
reward sweep`, figure 7).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, get_args

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from agentalign.config import save_config
from agentalign.data import StoreReader, open_store
from agentalign.io import atomic_save_safetensors, atomic_write_json
from agentalign.models.reward import RewardEnsemble, RewardModel, RewardModelConfig, checkpoint_fingerprint, load_encoder
from agentalign.prefs import Preference, PreferenceSet, SyntheticLabeller, TrajectoryInfo, sweep_subset_sizes
from agentalign.train.losses import bt_loss

EMBED_BATCH = 8  # trajectories per encoder pass: 800 frames, a few hundred MB at most
Encoder = Literal["agent", "random"]


@dataclass(frozen=True)
class RewardTrainConfig:
    encoder: Encoder = "agent"
    epochs: int = 200  # appendix C.3
    epochs_largest: int = 50  # appendix C.3: the largest training set trains for 50 epochs
    largest_pairs: int = 100_000  # sets with at least this many comparisons count as "largest"
    batch_pairs: int = 2048  # appendix C.3's minibatch, used to count steps per epoch
    traj_per_step: int = 128  # trajectories sampled per step (all their labelled pairs are used)
    max_steps: int = 800  # CPU cap on the paper's epoch count
    lr: float = 1e-3  # appendix C.3 uses 1e-4 for far more steps; 1e-3 converges within the cap
    weight_decay: float = 0.1  # appendix C.3's L2 penalty, as decoupled weight decay
    random_dim: int = 512  # the random encoder's projection size (appendix C.3)
    # K models from seeds seed .. seed + K - 1 scoring their mean normalised reward; 1 is the paper's.
    ensemble: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "epochs_largest", "batch_pairs", "traj_per_step", "max_steps", "random_dim", "ensemble"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be positive and weight_decay non-negative, got {self.lr}, {self.weight_decay}")


# ---- embeddings --------------------------------------------------------------------------------


def embed_trajectories(encoder, store, indices: np.ndarray, horizon: int = 100) -> torch.Tensor:
    """Frozen per-step embeddings of store episodes, padded to `horizon`: (N, horizon, E) float32."""
    out = []
    for k in range(0, len(indices), EMBED_BATCH):
        eps = [store.episode(int(i)) for i in indices[k : k + EMBED_BATCH]]
        frames = [torch.from_numpy(ep.frames) for ep in eps]
        actions = [torch.from_numpy(ep.actions.astype(np.int64)) for ep in eps]
        out.append(encoder.padded(frames, actions, horizon).float())
    return torch.cat(out) if out else torch.zeros(0, horizon, encoder.dim)


def cached_embeddings(path: Path, key: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Load embeddings from `path` if they were made with the same `key`, else compute and save."""
    meta = {"key": json.dumps(key, sort_keys=True)}
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") == meta["key"]:
                return load_file(path)["embeddings"]
    emb = compute()
    atomic_save_safetensors({"embeddings": emb.contiguous()}, path, metadata=meta)
    return emb


def store_embeddings(store, encoder, cache_dir: Path, indices: np.ndarray, key: dict) -> torch.Tensor:
    """`embed_trajectories` of `indices`, cached in cache_dir/embeddings-<encoder>.safetensors under
    `key` (what else the embeddings depend on: store, policy, ...)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = {**key, "n": int(len(indices)), "last": int(indices[-1]) if len(indices) else -1}
    return cached_embeddings(cache_dir / f"embeddings-{encoder.kind}.safetensors", key,
                             lambda: embed_trajectories(encoder, store, indices))  # fmt: skip


@dataclass(frozen=True)
class Labelled:
    """A store's trajectories under one encoder, split as its preference file says, with the
    comparisons of each split as preference matrices (`preference_matrix`)."""

    store: StoreReader
    prefs: PreferenceSet
    train: np.ndarray  # store ids, in the order of emb_train's rows
    test: np.ndarray
    emb_train: torch.Tensor  # (len(train), horizon, E)
    emb_test: torch.Tensor
    P_train: torch.Tensor  # (len(train), len(train))
    P_test: torch.Tensor
    policy_fingerprint: str | None  # the agent encoder's policy weights (None for the random encoder)


def open_labelled_store(store_path: str | Path, prefs_path: str | Path) -> tuple[StoreReader, PreferenceSet]:
    """A trajectory store and the preference file that labels it; a ValueError naming the files if
    they do not belong together."""
    store = open_store(store_path)
    prefs = PreferenceSet.load(prefs_path)
    if prefs.dataset_id != store.dataset_id:
        raise ValueError(f"{prefs_path} labels the store {prefs.dataset_id}, but {store_path} is {store.dataset_id}")
    try:
        prefs.check_ids(len(store))
    except ValueError as e:
        raise ValueError(f"{prefs_path}: {e} ({store_path})") from None
    return store, prefs


def load_labelled(store_path: str | Path, prefs_path: str | Path, encoder: str, policy: str | Path | None,
                  cache: str | Path, *, seed: int = 0, dim: int = 512) -> Labelled:  # fmt: skip
    """Embeddings of all of a store's labelled trajectories (train split first) under `encoder`
    (`agent`: the frozen `policy`; `random`: a projection from `seed` to `dim`), cached in `cache`,
    and the comparisons of each split."""
    if encoder not in get_args(Encoder):
        raise ValueError(f"unknown reward encoder {encoder!r}; choose one of {', '.join(get_args(Encoder))}")
    store, prefs = open_labelled_store(store_path, prefs_path)
    enc = load_encoder(encoder, policy, store.image_size[0], seed, dim)
    if encoder == "agent" and enc.policy.cfg.image_size != store.image_size[0]:
        raise ValueError(f"policy {policy} takes {enc.policy.cfg.image_size}px frames, the trajectories in "
                         f"{store_path} are {store.image_size[0]}px")  # fmt: skip
    fingerprint = checkpoint_fingerprint(policy) if encoder == "agent" else None
    # The agent's embeddings depend on its weights only; the random encoder's on its seed and size.
    key = {"store": store.dataset_id, "encoder": encoder,
           **({"policy": fingerprint} if encoder == "agent" else {"seed": seed, "dim": dim})}  # fmt: skip
    train, test = split_ids(prefs, len(store))
    emb = store_embeddings(store, enc, Path(cache), np.concatenate([train, test]), key)
    return Labelled(store, prefs, train, test, emb[: len(train)], emb[len(train) :], preference_matrix(prefs, train),
                    preference_matrix(prefs, test), fingerprint)  # fmt: skip


# ---- labels ------------------------------------------------------------------------------------


def preference_matrix(prefs: PreferenceSet, ids: np.ndarray) -> torch.Tensor:
    """Dense (M, M) matrix over `ids`: P[a, b] = probability that ids[a] is preferred to ids[b]
    (1, 0 or 0.5 for a tie), NaN where no record compares them. Comparisons naming a trajectory
    outside `ids` are left out (they belong to the other split)."""
    pos = {int(t): k for k, t in enumerate(ids)}
    m = len(ids)
    P = torch.full((m, m), float("nan"))
    for pref in prefs.prefs:
        if any(int(i) not in pos for i in pref.ids):
            continue
        for a, b, p in pref.pairs():
            P[pos[a], pos[b]] = p
            P[pos[b], pos[a]] = 1.0 - p
    return P


def count_comparisons(P: torch.Tensor) -> int:
    upper = torch.triu(torch.ones(P.shape, dtype=torch.bool), diagonal=1)
    return int((torch.isfinite(P) & upper).sum())


# ---- training ----------------------------------------------------------------------------------


def train_reward_model(emb: torch.Tensor, P: torch.Tensor, cfg: RewardTrainConfig,
                       log=None) -> tuple[RewardModel | RewardEnsemble, dict]:  # fmt: skip
    """Fit a reward model to the comparisons P (M, M) over trajectories with embeddings (M, 100, E);
    with `cfg.ensemble` = K > 1, K of them from seeds seed .. seed + K - 1, as one RewardEnsemble
    (its info: the first member's, with every member's final loss)."""
    if cfg.ensemble == 1:
        return _train_one(emb, P, cfg, log)
    fits = [_train_one(emb, P, replace(cfg, seed=cfg.seed + k, ensemble=1), log) for k in range(cfg.ensemble)]
    info = {**fits[0][1], "members": cfg.ensemble, "member_final_losses": [i["final_loss"] for _, i in fits]}
    return RewardEnsemble([model for model, _ in fits]), info


def _train_one(emb: torch.Tensor, P: torch.Tensor, cfg: RewardTrainConfig, log=None) -> tuple[RewardModel, dict]:
    m = emb.shape[0]
    n_pairs = count_comparisons(P)
    if n_pairs == 0:
        raise ValueError("no comparisons to train on")
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = RewardModel(RewardModelConfig(encoder=cfg.encoder, embed_dim=emb.shape[2], horizon=emb.shape[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = cfg.epochs_largest if n_pairs >= cfg.largest_pairs else cfg.epochs
    steps = min(cfg.max_steps, epochs * math.ceil(n_pairs / cfg.batch_pairs))
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool), diagonal=1)
    known = torch.isfinite(P) & upper
    k = min(m, cfg.traj_per_step)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        sub = torch.randperm(m, generator=g)[:k] if k < m else torch.arange(m)
        mask = known[sub][:, sub] | known[sub][:, sub].T
        mask &= torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
        ii, jj = mask.nonzero(as_tuple=True)
        if len(ii) == 0:  # sparse labels: this sample holds no labelled pair
            continue
        r = model(emb[sub])  # (k,)
        loss = bt_loss(r[ii], r[jj], P[sub[ii], sub[jj]])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(step, **{"reward/train_loss": float(loss.detach())})
    with torch.no_grad():
        model.set_normalisation(model(emb))
    return model, {"steps": steps, "comparisons": n_pairs, "final_loss": float(loss.detach())}


# ---- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def pairwise_metrics(rewards: torch.Tensor, P: torch.Tensor) -> dict[str, float]:
    """Held-out metrics over every labelled pair, named as in the common RLHF libraries.

    reward/accuracy: share of non-tie pairs where the preferred trajectory gets the higher reward;
    reward/tie_share: share of labelled pairs that are ties (left out of accuracy);
    reward/margin: mean r_chosen - r_rejected; chosen/rejected means."""
    m = len(rewards)
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool), diagonal=1)
    labelled = torch.isfinite(P) & upper
    ties = labelled & (P == 0.5)
    strict = labelled & ~ties
    i, j = strict.nonzero(as_tuple=True)
    chosen = torch.where(P[i, j] > 0.5, i, j)
    rejected = torch.where(P[i, j] > 0.5, j, i)
    diff = rewards[chosen] - rewards[rejected]
    n = max(int(labelled.sum()), 1)
    return {
        "reward/accuracy": float((diff > 0).float().mean()) if len(diff) else float("nan"),
        "reward/tie_share": float(ties.sum()) / n,
        "reward/margin": float(diff.mean()) if len(diff) else float("nan"),
        "reward/chosen_mean": float(rewards[chosen].mean()) if len(diff) else float("nan"),
        "reward/rejected_mean": float(rewards[rejected].mean()) if len(diff) else float("nan"),
        "reward/pairs": float(len(diff)),
    }


# ---- labels from the synthetic labeller ----------------------------------------------------------


def synthetic_preferences(store, target: str, n_train: int) -> PreferenceSet:
    """Label a trajectory store with the synthetic labeller: one ranking over the training split
    (the first `n_train` episodes) and one over the held-out rest. A ranking of M trajectories
    stands for all M(M-1)/2 comparisons among them."""

    n = len(store)
    if not 2 <= n_train <= n - 2:
        raise ValueError(f"train split of {n_train} leaves no room in a store of {n} trajectories (need 2..{n - 2})")
    lab = SyntheticLabeller(target)
    infos = [TrajectoryInfo.from_metadata(i, store.metadata(i)) for i in range(n)]
    scores = lab.scores(infos)
    prefs = PreferenceSet(store.dataset_id, meta={"target": target, "train_ids": list(range(n_train)),
                                                  "test_ids": list(range(n_train, n)), "labeller": lab.name})  # fmt: skip
    for ids in (np.arange(n_train), np.arange(n_train, n)):
        # Dense ranks (0 = best); equal scores share a rank, i.e. are ties.
        uniq = np.unique(-scores[ids])
        ranks = np.searchsorted(uniq, -scores[ids])
        prefs.add([_ranking(ids, ranks, lab.name)])
    return prefs


def _ranking(ids: np.ndarray, ranks: np.ndarray, labeller: str):

    return Preference(tuple(int(i) for i in ids), ranking=tuple(int(r) for r in ranks), labeller=labeller)


def split_ids(prefs: PreferenceSet, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test trajectory ids from a preference set's header (default: all train)."""
    train = np.array(prefs.meta.get("train_ids", list(range(n))), dtype=np.int64)
    test = np.array(prefs.meta.get("test_ids", []), dtype=np.int64)
    return train, test


# ---- run functions: one per stage, called by the CLI and the pipeline alike ----------------------


def label_synthetic(store_path: str | Path, target: str, train: int, out_path: str | Path) -> dict:
    """`synthetic_preferences` for pad `target` over a store, `train` trajectories in the training
    split, saved to `out_path` (.jsonl) -> the split sizes and their comparison counts."""
    p = synthetic_preferences(open_store(store_path), target, train)
    p.save(out_path)
    n_tr, n_te = len(p.meta["train_ids"]), len(p.meta["test_ids"])
    return {"train": n_tr, "test": n_te, "train_comparisons": n_tr * (n_tr - 1) // 2,
            "test_comparisons": n_te * (n_te - 1) // 2}  # fmt: skip


def run_reward(store_path: str | Path, prefs_path: str | Path, out: str | Path, cfg: RewardTrainConfig, *,
               policy: str | Path | None, cache: str | Path | None = None, trajectories: int | None = None) -> dict:  # fmt: skip
    """Train one reward model on the training comparisons of `prefs_path` over the store's
    trajectories (`cfg.encoder`: the frozen `policy` or a random projection), all of them or, with
    `trajectories`, all pairs of that many training trajectories drawn from (cfg.seed,
    trajectories); score it on the held-out split. Saves the model (with its normalisation),
    metrics.json and run_config.json in `out`; embeddings are cached in `cache` (default out/cache).
    -> the held-out metrics and the training info (steps, comparisons, final loss)."""
    start = time.perf_counter()
    out = Path(out)
    d = load_labelled(store_path, prefs_path, cfg.encoder, policy, out / "cache" if cache is None else cache,
                      seed=cfg.seed, dim=cfg.random_dim)  # fmt: skip
    emb_tr, P_tr = d.emb_train, d.P_train
    if trajectories is not None:
        if not 2 <= trajectories <= len(d.train):
            raise ValueError(f"the subset of training trajectories must lie in 2..{len(d.train)}, got {trajectories}")
        rng = np.random.default_rng([cfg.seed, trajectories])
        sub = torch.from_numpy(np.sort(rng.choice(len(d.train), trajectories, replace=False)))
        emb_tr, P_tr = emb_tr[sub], P_tr[sub][:, sub]
    model, info = train_reward_model(emb_tr, P_tr, cfg)
    with torch.no_grad():
        metrics = pairwise_metrics(model(d.emb_test), d.P_test) if len(d.test) >= 2 else {}
    model.save_pretrained(out, stage="reward", encoder=cfg.encoder, policy=str(policy) if policy else None,
                          policy_fingerprint=d.policy_fingerprint, trajectories=d.store.dataset_id,
                          target=d.prefs.meta.get("target"), random_seed=cfg.seed, random_dim=cfg.random_dim, **info)  # fmt: skip
    save_config(cfg, out / "run_config.json")
    result = {**metrics, **info}
    atomic_write_json(out / "metrics.json", {**result, "seconds": time.perf_counter() - start})
    return result


def run_sweep(store_path: str | Path, prefs_path: str | Path, out: str | Path, cfg: RewardTrainConfig, *,
              policy: str | Path | None, encoders: tuple[str, ...] | list[str] = ("agent", "random"), seeds: int = 3,
              points: int = 6, cache: str | Path | None = None,
              progress: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """Figure 7: held-out accuracy against the number of training comparisons, for each encoder
    (`cfg` with its `encoder` replaced), `points` subset sizes log-even from ~50 comparisons to all,
    `seeds` models each. Writes sweep.json (one row per model) and sweep.png in `out`; embeddings
    are cached in `cache` (default out/cache). `progress(row)` after each model.
    -> {"largest": {encoder: mean held-out accuracy at the largest set}, "points": models trained}."""
    bad = [e for e in encoders if e not in get_args(Encoder)]
    if not encoders or bad:
        raise ValueError(f"encoders must be some of {', '.join(get_args(Encoder))}, got {', '.join(encoders) or 'none'}")
    if seeds < 1 or points < 1:
        raise ValueError(f"seeds and points must be positive, got {seeds} and {points}")
    start = time.perf_counter()
    out = Path(out)
    rows: list[dict] = []
    target = None
    for kind in encoders:
        kcfg = replace(cfg, encoder=kind)
        d = load_labelled(store_path, prefs_path, kind, policy, out / "cache" if cache is None else cache,
                          seed=kcfg.seed, dim=kcfg.random_dim)  # fmt: skip
        target = d.prefs.meta.get("target")
        sizes = sweep_subset_sizes(len(d.train), points=points)
        rows += accuracy_sweep(d.emb_train, d.P_train, d.emb_test, d.P_test, sizes, seeds, kcfg, progress)
    atomic_write_json(out / "sweep.json", {"rows": rows, "seconds": time.perf_counter() - start, "target": target})
    plot_sweep(rows, out / "sweep.png", title=f"reward models, target {target}")
    largest = {}
    for kind in encoders:
        sel = [r for r in rows if r["encoder"] == kind]
        top = max(r["comparisons"] for r in sel)
        largest[kind] = float(np.mean([r["reward/accuracy"] for r in sel if r["comparisons"] == top]))
    return {"largest": largest, "points": len(rows)}


def accuracy_sweep(emb_train: torch.Tensor, P_train: torch.Tensor, emb_test: torch.Tensor, P_test: torch.Tensor,
                   sizes: list[int], seeds: int, cfg: RewardTrainConfig, progress=None) -> list[dict]:  # fmt: skip
    """Held-out accuracy against the number of training comparisons (paper figure 7) for one
    encoder: for each subset size M and seed, train on all labelled pairs of M random training
    trajectories and evaluate on every labelled held-out pair."""
    rows = []
    for m in sizes:
        for seed in range(seeds):
            rng = np.random.default_rng([cfg.seed, m, seed])
            sub = np.sort(rng.choice(emb_train.shape[0], size=m, replace=False))
            sub_t = torch.from_numpy(sub)
            Psub = P_train[sub_t][:, sub_t]
            model, info = train_reward_model(emb_train[sub_t], Psub, replace(cfg, seed=cfg.seed * 1000 + seed, ensemble=1))
            with torch.no_grad():
                metrics = pairwise_metrics(model(emb_test), P_test)
            rows.append({"encoder": cfg.encoder, "trajectories": m, "comparisons": info["comparisons"], "seed": seed,
                         "steps": info["steps"], **metrics})  # fmt: skip
            if progress:
                progress(rows[-1])
    return rows


def plot_sweep(rows: list[dict], path: Path, title: str = "") -> Path:
    """Figure 7: held-out accuracy against training comparisons (log x), mean and spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    rows = [r for r in rows if r["reward/accuracy"] is not None and math.isfinite(r["reward/accuracy"])]
    if not rows:  # e.g. every held-out pair a tie: nothing to score
        ax.text(0.5, 0.5, "no strict held-out pairs to score", ha="center", transform=ax.transAxes)
    for enc, colour in (("agent", "tab:blue"), ("random", "tab:orange")):
        sel = [r for r in rows if r["encoder"] == enc]
        if not sel:
            continue
        xs = sorted({r["comparisons"] for r in sel})
        acc = [[100 * r["reward/accuracy"] for r in sel if r["comparisons"] == x] for x in xs]
        mean = np.array([np.mean(a) for a in acc])
        sd = np.array([np.std(a) for a in acc])
        ax.plot(xs, mean, "o-", color=colour, label=f"{enc} encoder")
        ax.fill_between(xs, mean - sd, mean + sd, color=colour, alpha=0.2)
    if rows:
        ax.set_xscale("log")
    ax.set_xlabel("training comparisons")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 101)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
