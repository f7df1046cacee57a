"""Which episodes to ask about next: at random, or where an ensemble of reward models disagrees
most (active selection), so a person's time goes where it teaches the reward model the most.

    selector = make_selector("active", run_dir, store, train_pool, seed)
    episodes = selector.choose(n, labels, exclude, rng)   # n = 2: a pair; 3..6: a ranking

`labels` are every (i, j, p_i_preferred) comparison answered so far on the training pool, by any
labeller (a tie is 0.5); `exclude` the episode sets this labeller was already asked, which are never
asked again. `choose` returns n distinct episodes of the training pool in the order to show them,
or [] when no new question of that size is left (every pair of the pool asked, or n larger than
the pool).

"random": uniform.

"active": an ensemble of `ensemble` Bradley-Terry reward models (`agentalign.train.reward`'s
`train_reward_model`, each member from its own seed) on the frozen SFT agent's trajectory
embeddings (RUN/sft/model; the random-projection encoder, with a warning, when the run has none).
Until `min_labels` comparisons exist it asks at random. Then it fits the ensemble on all the
comparisons so far (the trajectories they name; a pair labelled several times counts at its mean
preference), refits it whenever `refit_every` new comparisons have come in, and asks the pair whose
predicted preference sigma(r_i - r_j) varies most across the members, among `candidates` random
pairs of the pool (all of them when the pool has fewer pairs). A ranking starts from that pair and
adds, one at a time, the episode with the largest summed disagreement with those already chosen.
The pair's sides are shuffled (no left/right bias). Deterministic for a seed: the same labels,
exclusions and rng give the same questions (with `background=True`, which a server may prefer, a
due refit runs in a thread while the previous ensemble keeps answering, so it is not).

The embeddings depend only on the store and the encoder: they are taken from the reward stage's
cache (RUN/reward/cache, which embeds the whole store) when it holds them, else computed once for
the training pool and cached in RUN/labels/cache.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from math import comb
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

SELECTIONS = ("random", "active")
Label = tuple[int, int, float]
_BACKGROUND: weakref.WeakSet[ActiveSelector] = weakref.WeakSet()  # selectors that started a fit thread


class _Cancelled(Exception):
    pass



@atexit.register
def _stop_background_fits() -> None:
    # A daemon thread still inside torch when the interpreter finalises aborts the process
    # ("terminate called without an active exception"): stop the fits first.
    for sel in list(_BACKGROUND):
        sel.close(timeout=30)


class Selector(Protocol):
    def choose(self, n: int, labels: Sequence[Label], exclude: set[frozenset[int]],
               rng: np.random.Generator) -> list[int]: ...  # fmt: skip


def _check_pool(train_pool: Sequence[int]) -> list[int]:
    pool = [int(i) for i in train_pool]
    if len(pool) < 2:
        raise ValueError(f"the training pool holds {len(pool)} episode(s); a question needs at least 2")
    if len(set(pool)) != len(pool):
        raise ValueError("the training pool names an episode more than once")
    return pool


def _check_n(n: int) -> None:
    if int(n) != n or n < 2:
        raise ValueError(f"a question shows at least 2 episodes, got n={n}")


def random_choice(pool: list[int], n: int, exclude: set[frozenset[int]], rng: np.random.Generator) -> list[int]:
    """n distinct episodes of `pool`, uniformly, whose set is not in `exclude`; [] if none is left."""
    _check_n(n)
    if n > len(pool):
        return []
    for _ in range(100):
        pick = [pool[k] for k in rng.choice(len(pool), n, replace=False)]
        if frozenset(pick) not in exclude:
            return pick
    total = comb(len(pool), n)
    if total > 500_000:  # more than 100 rejections in a set this large: practically never
        return []
    left = [c for c in itertools.combinations(pool, n) if frozenset(c) not in exclude]
    if not left:
        return []
    pick = list(left[int(rng.integers(len(left)))])
    rng.shuffle(pick)
    return pick


class RandomSelector:
    """Uniform choice from the training pool."""

    kind = "random"

    def __init__(self, train_pool: Sequence[int]):
        self.pool = _check_pool(train_pool)

    def choose(self, n: int, labels: Sequence[Label], exclude: set[frozenset[int]],
               rng: np.random.Generator) -> list[int]:  # fmt: skip
        return random_choice(self.pool, n, exclude, rng)


class ActiveSelector:
    """Ensemble disagreement (module docstring). `embeddings`: the pool's trajectory embeddings
    (len(train_pool), horizon, E) in pool order, or a function that makes them on first need.

    After each fit: `fits` (how many), `fit_sizes` (comparisons each was fitted on),
    `fit_seconds`, `rewards` (K, len(pool)) every member's raw reward of every pool episode;
    `last` describes the last choice (`"random"` or `"active"`, and its disagreement)."""

    kind = "active"

    def __init__(self, train_pool: Sequence[int], embeddings: torch.Tensor | Callable[[], torch.Tensor], *,
                 seed: int = 0, ensemble: int = 5, refit_every: int = 20, min_labels: int = 10,
                 candidates: int = 2000, train_cfg=None, encoder: str = "agent", background: bool = False):  # fmt: skip
        from agentalign.train.reward import RewardTrainConfig

        self.pool = _check_pool(train_pool)
        self.pos = {e: k for k, e in enumerate(self.pool)}
        if ensemble < 2:
            raise ValueError(f"active selection needs an ensemble of at least 2 models to disagree, got {ensemble}")
        for name, v in (("refit_every", refit_every), ("min_labels", min_labels), ("candidates", candidates)):
            if v < 1:
                raise ValueError(f"{name} must be positive, got {v}")
        self.seed, self.ensemble, self.refit_every = int(seed), int(ensemble), int(refit_every)
        self.min_labels, self.candidates = int(min_labels), int(candidates)
        self.encoder, self.background = encoder, background
        cfg = train_cfg if train_cfg is not None else RewardTrainConfig(max_steps=100, traj_per_step=64)
        self.train_cfg = replace(cfg, encoder="random" if encoder == "random" else "agent", ensemble=self.ensemble,
                                 seed=self.seed)  # fmt: skip
        self._embeddings = embeddings if isinstance(embeddings, torch.Tensor) else None
        self._make_embeddings = None if isinstance(embeddings, torch.Tensor) else embeddings
        if self._embeddings is not None:
            self._check_embeddings(self._embeddings)
        self.fits = 0
        self.fit_sizes: list[int] = []
        self.fit_seconds: list[float] = []
        self.rewards: np.ndarray | None = None  # (K, M) raw rewards of the last fit
        self.last: dict = {}
        self._lock = threading.RLock()  # the fitted state
        self._emb_lock = threading.Lock()  # the embeddings, made once (not under _lock: a background fit makes them)
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._pending = 0  # comparisons the fit in progress (background) was started on

    # -- embeddings ----------------------------------------------------------------------------

    def _check_embeddings(self, emb: torch.Tensor) -> None:
        if emb.ndim != 3 or emb.shape[0] != len(self.pool):
            raise ValueError(f"embeddings must be (len(train_pool)={len(self.pool)}, horizon, E), "
                             f"got {tuple(emb.shape)}")  # fmt: skip

    def embeddings(self) -> torch.Tensor:
        """The pool's embeddings, computed (or loaded from a cache) on first call."""
        with self._emb_lock:
            if self._embeddings is None:
                emb = self._make_embeddings()
                self._check_embeddings(emb)
                self._embeddings = emb.float()
            return self._embeddings

    # -- fitting -------------------------------------------------------------------------------

    def usable(self, labels: Sequence[Label]) -> list[tuple[int, int, float]]:
        """The comparisons within the pool, as (pool position, pool position, p)."""
        out = []
        for i, j, p in labels:
            a, b = self.pos.get(int(i)), self.pos.get(int(j))
            if a is not None and b is not None and a != b:
                out.append((a, b, float(p)))
        return out

    def fit(self, labels: Sequence[Label]) -> None:
        """Fit the ensemble on `labels` (episode ids) now, and score the whole pool."""
        self._fit(self.usable(labels))

    def _check_cancel(self, *args, **kwargs) -> None:
        if self._cancel.is_set():
            raise _Cancelled

    def _background_fit(self, usable: list[tuple[int, int, float]]) -> None:
        try:
            self._fit(usable)
        except _Cancelled:
            pass

    def _fit(self, usable: list[tuple[int, int, float]]) -> None:
        from agentalign.train.reward import train_reward_model

        start = time.perf_counter()
        emb = self.embeddings()
        self._check_cancel()
        ids = sorted({a for a, _, _ in usable} | {b for _, b, _ in usable})
        at = {a: k for k, a in enumerate(ids)}
        total = torch.zeros(len(ids), len(ids), dtype=torch.float64)
        count = torch.zeros(len(ids), len(ids), dtype=torch.float64)
        for a, b, p in usable:
            total[at[a], at[b]] += p
            total[at[b], at[a]] += 1.0 - p
            count[at[a], at[b]] += 1
            count[at[b], at[a]] += 1
        P = torch.where(count > 0, total / count.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64)).float()
        # train_reward_model's log hook (every 50 steps) is where a background fit is stopped.
        model, _ = train_reward_model(emb[torch.tensor(ids)], P, self.train_cfg, log=self._check_cancel)
        with torch.no_grad():
            rewards = torch.stack([m(emb) for m in model.members]).numpy().astype(np.float64)  # (K, M) raw
        with self._lock:
            self.rewards = rewards
            self.fits += 1
            self.fit_sizes.append(len(usable))
            self.fit_seconds.append(time.perf_counter() - start)

    def _refit_if_due(self, usable: list[tuple[int, int, float]]) -> None:
        fitted_on = max(self.fit_sizes[-1] if self.fit_sizes else 0, self._pending)
        due = (self.fits == 0 and self._pending == 0) or len(usable) - fitted_on >= self.refit_every
        if not due:
            return
        if not self.background:
            self._fit(usable)
            return
        if self._thread is not None and self._thread.is_alive():
            return  # one fit at a time; the next is started when this one is done and still due
        self._pending = len(usable)
        self._thread = threading.Thread(target=self._background_fit, args=(usable,), name="active-selection-fit",
                                        daemon=True)  # fmt: skip
        _BACKGROUND.add(self)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a background fit in progress (tests)."""
        t = self._thread
        if t is not None:
            t.join(timeout)

    def close(self, timeout: float | None = 30) -> None:
        """Stop a background fit in progress (within 50 training steps) and wait for it; later
        choices fit in the foreground. Called at interpreter exit; a server may call it on shutdown."""
        self._cancel.set()
        self.wait(timeout)
        self.background = False
        self._cancel.clear()

    # -- disagreement --------------------------------------------------------------------------

    def disagreement(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Variance across the members of sigma(r_a - r_b) for pool positions a, b (arrays)."""
        if self.rewards is None:
            raise RuntimeError("the ensemble is not fitted yet")
        d = self.rewards[:, a] - self.rewards[:, b]  # (K, ...)
        return (0.5 + 0.5 * np.tanh(0.5 * d)).var(axis=0)  # sigmoid(d), without overflow

    def _candidate_pairs(self, exclude: set[frozenset[int]], rng: np.random.Generator) -> np.ndarray:
        """(C, 2) pool positions of distinct pairs not in `exclude`: `candidates` random ones, or
        every pair when the pool has no more (or every random one was excluded)."""
        m = len(self.pool)
        if m * (m - 1) // 2 > self.candidates:
            a = rng.integers(m, size=self.candidates)
            b = (a + rng.integers(1, m, size=self.candidates)) % m  # never a itself
            pairs = np.unique(np.sort(np.stack([a, b], 1), axis=1), axis=0)
            keep = [k for k, (x, y) in enumerate(pairs) if frozenset((self.pool[x], self.pool[y])) not in exclude]
            if keep:
                return pairs[keep]
        allp = np.array(list(itertools.combinations(range(m), 2)), dtype=np.int64).reshape(-1, 2)
        keep = [k for k, (x, y) in enumerate(allp) if frozenset((self.pool[x], self.pool[y])) not in exclude]
        return allp[keep]

    def _grow(self, first: tuple[int, int], n: int) -> list[int]:
        """A ranking of n pool positions: `first`, then the episodes of largest summed disagreement."""
        chosen = list(first)
        score = self.disagreement(np.arange(len(self.pool)), np.full(len(self.pool), chosen[0]))
        score += self.disagreement(np.arange(len(self.pool)), np.full(len(self.pool), chosen[1]))
        while len(chosen) < n:
            score[chosen] = -np.inf
            k = int(np.argmax(score))
            chosen.append(k)
            score += self.disagreement(np.arange(len(self.pool)), np.full(len(self.pool), k))
        return chosen

    # -- the question --------------------------------------------------------------------------

    def choose(self, n: int, labels: Sequence[Label], exclude: set[frozenset[int]],
               rng: np.random.Generator) -> list[int]:  # fmt: skip
        _check_n(n)
        if n > len(self.pool):
            return []
        with self._lock:
            usable = self.usable(labels)
            if len(usable) < self.min_labels:
                self.last = {"rule": "random", "labels": len(usable)}
                return random_choice(self.pool, n, exclude, rng)
            self._refit_if_due(usable)
            if self.rewards is None:  # background: the first fit is still running
                self.last = {"rule": "random", "labels": len(usable)}
                return random_choice(self.pool, n, exclude, rng)
            pairs = self._candidate_pairs(exclude if n == 2 else set(), rng)
            if len(pairs) == 0:
                return []
            d = self.disagreement(pairs[:, 0], pairs[:, 1])
            if n == 2:
                best = int(np.argmax(d))
                pick = [int(x) for x in pairs[best]]
                rng.shuffle(pick)
                self.last = {"rule": "active", "labels": len(usable), "disagreement": float(d[best]),
                             "max_candidate_disagreement": float(d.max()), "candidates": len(pairs)}  # fmt: skip
                return [self.pool[k] for k in pick]
            # A ranking: from the most disputed pairs down, the first whose grown set is new.
            for best in np.argsort(-d, kind="stable")[:20]:
                chosen = self._grow((int(pairs[best][0]), int(pairs[best][1])), n)
                eps = [self.pool[k] for k in chosen]
                if frozenset(eps) not in exclude:
                    rng.shuffle(eps)
                    self.last = {"rule": "active", "labels": len(usable), "disagreement": float(d[best])}
                    return eps
            self.last = {"rule": "random", "labels": len(usable)}
            return random_choice(self.pool, n, exclude, rng)


# -- embeddings of a run's pool -------------------------------------------------------------------


def _read_cached(path: Path, key: dict) -> torch.Tensor | None:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != json.dumps(key, sort_keys=True):
                return None
        return load_file(path)["embeddings"]
    except (OSError, KeyError, ValueError, SafetensorError):  # a damaged or foreign cache file: compute afresh
        return None


def pool_embeddings(run_dir: str | Path, store, pool: Sequence[int], encoder: str, policy: str | Path | None,
                    *, dim: int = 512, seed: int = 0) -> torch.Tensor:  # fmt: skip
    """(len(pool), 100, E) embeddings of the store's `pool` episodes under the reward stage's
    `encoder` (`agent`: the frozen `policy`; `random`: a projection from `seed` to `dim`). Taken
    from RUN/reward/cache when the reward stage embedded this store with this encoder (it embeds
    every episode, in store order), else computed and cached in RUN/labels/cache."""
    from agentalign.models.reward import checkpoint_fingerprint, load_encoder
    from agentalign.train.reward import store_embeddings

    run_dir, pool_arr = Path(run_dir), np.asarray(pool, dtype=np.int64)
    if encoder == "agent":
        key = {"store": store.dataset_id, "encoder": "agent", "policy": checkpoint_fingerprint(policy)}
    else:
        key = {"store": store.dataset_id, "encoder": "random", "seed": seed, "dim": dim}
    n = len(store)
    reward_cache = run_dir / "reward" / "cache" / f"embeddings-{encoder}.safetensors"
    full = _read_cached(reward_cache, {**key, "n": n, "last": n - 1})
    if full is not None and full.shape[0] == n:
        return full[torch.from_numpy(pool_arr)].clone()
    enc = load_encoder(encoder, policy, store.image_size[0], seed, dim)
    if encoder == "agent" and enc.policy.cfg.image_size != store.image_size[0]:
        raise ValueError(f"policy {policy} takes {enc.policy.cfg.image_size}px frames, the trajectories of "
                         f"{store.path} are {store.image_size[0]}px")  # fmt: skip
    digest = hashlib.blake2b(pool_arr.tobytes(), digest_size=8).hexdigest()
    return store_embeddings(store, enc, run_dir / "labels" / "cache", pool_arr, {**key, "pool": digest})


def make_selector(kind: str, run_dir: str | Path, store, train_pool: Sequence[int], seed: int = 0,
                  **options) -> RandomSelector | ActiveSelector:  # fmt: skip
    """The selector `kind` ("random" or "active") over `train_pool` (store episode ids) of `store`
    (a StoreReader or its path) in run folder `run_dir`. `options` go to ActiveSelector (ensemble,
    refit_every, min_labels, candidates, train_cfg, background). The active selector's encoder is
    the frozen SFT agent (RUN/sft/model), or the random projection, with a warning, when the run has
    no SFT model; its embeddings are made on first need, not here. Options `embeddings` (the pool's,
    in pool order) and `encoder` (which made them) replace both."""
    if kind not in SELECTIONS:
        raise ValueError(f"unknown selection {kind!r}; choose one of {', '.join(SELECTIONS)}")
    pool = _check_pool(train_pool)
    if kind == "random":
        if options:
            raise ValueError(f"random selection takes no options, got {', '.join(sorted(options))}")
        return RandomSelector(pool)
    from agentalign.data import open_store

    run_dir = Path(run_dir)
    reader = open_store(store) if isinstance(store, (str, Path)) else store
    bad = [e for e in pool if not 0 <= e < len(reader)]
    if bad:
        raise ValueError(f"the training pool names episodes {bad[:5]} that the store ({len(reader)} episodes) lacks")
    embeddings, encoder = options.pop("embeddings", None), options.pop("encoder", None)
    if embeddings is not None:  # made by the caller (a benchmark, a test): `encoder` names them
        return ActiveSelector(pool, embeddings, seed=seed, encoder=encoder or "agent", **options)
    if encoder is not None:
        raise ValueError("the encoder option names embeddings given with it; without them it is RUN/sft/model's")
    policy = run_dir / "sft" / "model"
    encoder = "agent" if (policy / "model.safetensors").is_file() else "random"
    if encoder == "random":
        warnings.warn(f"active selection: {run_dir} has no SFT model ({policy}); the ensemble uses the random "
                      f"encoder's embeddings instead of the agent's", stacklevel=2)  # fmt: skip
    embeddings = lambda: pool_embeddings(run_dir, reader, pool, encoder, policy if encoder == "agent" else None)
    return ActiveSelector(pool, embeddings, seed=seed, encoder=encoder, **options)
