"""Which questions to ask (labeling/selection.py): random stays in the pool and never repeats an
excluded pair; active asks at random until min_labels, then the pair its ensemble disputes most
(a known pair, and the maximum over every candidate), refits every refit_every comparisons, is
reproducible for a seed, and works through the server's API; embeddings come from the reward
stage's cache when it holds them."""

import itertools
import warnings

import numpy as np
import pytest
import torch

from agentalign.data import open_store
from agentalign.labeling.selection import ActiveSelector, RandomSelector, make_selector, pool_embeddings
from agentalign.train.reward import RewardTrainConfig, cached_embeddings

POOL = list(range(10))  # conftest's training pool
TINY = RewardTrainConfig(max_steps=5, traj_per_step=16)  # a fit in milliseconds


def truth(i: int, j: int) -> float:
    """A labeller who prefers the larger episode id."""
    return 1.0 if i > j else 0.0


def labels_for(pairs) -> list[tuple[int, int, float]]:
    return [(i, j, truth(i, j)) for i, j in pairs]


def some_labels(count: int, seed: int = 0, pool=POOL) -> list[tuple[int, int, float]]:
    rng = np.random.default_rng(seed)
    return labels_for(tuple(int(e) for e in rng.choice(pool, 2, replace=False)) for _ in range(count))


def tiny_embeddings(m: int = len(POOL), seed: int = 0) -> torch.Tensor:
    return torch.randn(m, 100, 8, generator=torch.Generator().manual_seed(seed))


def active(pool=POOL, **kw) -> ActiveSelector:
    kw = {"seed": 0, "ensemble": 3, "refit_every": 20, "min_labels": 10, "train_cfg": TINY, **kw}
    return ActiveSelector(pool, tiny_embeddings(len(pool)), **kw)


# -- random --------------------------------------------------------------------------------------


def test_random_covers_the_pool_without_repeating_an_excluded_pair(run_dir):
    sel = make_selector("random", run_dir, open_store(run_dir / "rollouts" / "store"), POOL, 0)
    assert isinstance(sel, RandomSelector)
    rng, exclude = np.random.default_rng(0), set()
    for _ in range(45):  # every pair of the 10-episode pool, once each
        pick = sel.choose(2, [], exclude, rng)
        assert len(pick) == 2 and len(set(pick)) == 2 and set(pick) <= set(POOL)
        assert frozenset(pick) not in exclude
        exclude.add(frozenset(pick))
    assert exclude == {frozenset(p) for p in itertools.combinations(POOL, 2)}
    assert sel.choose(2, [], exclude, rng) == []  # nothing new left
    for n in (3, 6):
        pick = sel.choose(n, [], set(), rng)
        assert len(set(pick)) == n and set(pick) <= set(POOL)
    assert sel.choose(11, [], set(), rng) == []  # larger than the pool


def test_random_with_one_pair_left_asks_it():
    exclude = {frozenset(p) for p in itertools.combinations(POOL, 2)} - {frozenset((3, 8))}
    for seed in range(5):
        assert sorted(RandomSelector(POOL).choose(2, [], exclude, np.random.default_rng(seed))) == [3, 8]


def test_clear_errors(run_dir):
    store = open_store(run_dir / "rollouts" / "store")
    with pytest.raises(ValueError, match="unknown selection 'smart'"):
        make_selector("smart", run_dir, store, POOL, 0)
    for kind in ("random", "active"):
        with pytest.raises(ValueError, match="at least 2"):
            make_selector(kind, run_dir, store, [4], 0)
    with pytest.raises(ValueError, match="more than once"):
        make_selector("random", run_dir, store, [1, 2, 2], 0)
    with pytest.raises(ValueError, match="store"):
        make_selector("active", run_dir, store, [0, 99], 0)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        RandomSelector(POOL).choose(1, [], set(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="ensemble of at least 2"):
        active(ensemble=1)
    with pytest.raises(ValueError, match="embeddings must be"):
        ActiveSelector(POOL, torch.zeros(3, 100, 8))


# -- active --------------------------------------------------------------------------------------


def test_active_asks_random_pairs_until_min_labels():
    sel, labels = active(), some_labels(9)
    for k in range(10):  # 0..9 comparisons: fewer than min_labels
        a, b = np.random.default_rng(k), np.random.default_rng(k)
        assert sel.choose(2, labels[:k], set(), a) == RandomSelector(POOL).choose(2, [], set(), b)
        assert sel.last["rule"] == "random"
    assert sel.fits == 0 and sel.rewards is None
    # Comparisons outside the pool (held-out episodes) do not count towards min_labels.
    sel.choose(2, labels[:9] + [(10, 11, 1.0), (12, 3, 0.0)], set(), np.random.default_rng(0))
    assert sel.fits == 0
    pick = sel.choose(2, some_labels(10), set(), np.random.default_rng(0))
    assert sel.fits == 1 and sel.last["rule"] == "active" and set(pick) <= set(POOL)


def test_active_asks_the_pair_the_ensemble_disputes(monkeypatch):
    """Rewards set by hand: the members agree on every pair (all far apart) except 3 vs 7."""
    sel = active()
    rewards = np.tile(np.arange(len(POOL), dtype=float) * 20.0, (3, 1))
    rewards[:, 3] = rewards[:, 7] = 1000.0
    rewards[0, 3], rewards[1, 3] = 1002.0, 998.0  # member 0 prefers 3, member 1 prefers 7, member 2 ties

    def fake_fit(usable):
        sel.rewards, sel.fits = rewards, sel.fits + 1
        sel.fit_sizes.append(len(usable))

    monkeypatch.setattr(sel, "_fit", fake_fit)
    labels = some_labels(12)
    for seed in range(4):
        assert sorted(sel.choose(2, labels, set(), np.random.default_rng(seed))) == [3, 7]
    assert sel.fits == 1
    # A ranking holds the disputed pair; excluding the pair moves a pair question elsewhere.
    ranking = sel.choose(4, labels, set(), np.random.default_rng(0))
    assert len(set(ranking)) == 4 and {3, 7} <= set(ranking) and set(ranking) <= set(POOL)
    other = sel.choose(2, labels, {frozenset((3, 7))}, np.random.default_rng(0))
    assert sorted(other) != [3, 7] and set(other) <= set(POOL)
    d = sel.disagreement(np.array([3, 0]), np.array([7, 1]))
    assert d[0] > 0.05 and d[1] < 1e-12


def test_active_choice_is_the_largest_disagreement_of_a_real_fit():
    sel, labels = active(), some_labels(15)
    exclude = {frozenset((0, 1)), frozenset((2, 5))}
    pick = sel.choose(2, labels, exclude, np.random.default_rng(0))
    assert sel.fits == 1 and sel.rewards.shape == (3, len(POOL))
    assert frozenset(pick) not in exclude
    # The pool has 45 pairs (< candidates): every non-excluded pair is a candidate.
    r = sel.rewards
    allowed = [(a, b) for a, b in itertools.combinations(range(len(POOL)), 2) if frozenset((a, b)) not in exclude]
    var = {(a, b): float(np.var(0.5 + 0.5 * np.tanh(0.5 * (r[:, a] - r[:, b])))) for a, b in allowed}
    a, b = sorted(POOL.index(e) for e in pick)
    assert var[(a, b)] == pytest.approx(max(var.values()), rel=1e-9)
    assert var[(a, b)] > 0  # the members disagree somewhere
    assert sel.last["disagreement"] == pytest.approx(var[(a, b)], rel=1e-9)


def test_active_samples_candidates_from_a_large_pool():
    pool = list(range(100, 160))  # 1770 pairs; 50 candidates
    sel = active(pool=pool, candidates=50)
    pick = sel.choose(2, some_labels(12, pool=pool), set(), np.random.default_rng(1))
    assert sel.fits == 1 and set(pick) <= set(pool) and sel.last["candidates"] <= 50


def test_active_refits_every_refit_every_comparisons():
    sel, labels = active(refit_every=20, min_labels=10), some_labels(95)
    rng = np.random.default_rng(0)
    for k in range(76):
        sel.choose(2, labels[:k], set(), rng)
    assert sel.fits == 4 and sel.fit_sizes == [10, 30, 50, 70]
    sel.choose(3, labels[:89], set(), rng)  # 19 new: not yet
    assert sel.fits == 4
    sel.choose(3, labels[:90], set(), rng)
    assert sel.fits == 5 and sel.fit_sizes[-1] == 90


def test_active_is_reproducible_for_a_seed():
    def questions(seed: int):
        sel, rng = active(seed=seed), np.random.default_rng(seed)
        labels, asked, exclude = [], [], set()
        for _ in range(45):
            pick = sel.choose(2, labels, exclude, rng)
            if not pick:
                break
            asked.append(tuple(pick))
            exclude.add(frozenset(pick))
            labels.append((pick[0], pick[1], truth(*pick)))
        return asked, sel.rewards

    (a, ra), (b, rb) = questions(3), questions(3)
    assert a == b and np.array_equal(ra, rb)
    assert len(a) == 45 and len({frozenset(p) for p in a}) == 45  # never the same pair twice
    c, _ = questions(4)
    assert c != a


def test_background_fit_keeps_answering_and_stops_on_close():
    sel, labels = active(background=True), some_labels(12)
    pick = sel.choose(2, labels, set(), np.random.default_rng(0))
    assert len(pick) == 2 and set(pick) <= set(POOL)
    sel.wait(60)
    assert sel.fits == 1
    sel.choose(2, labels, set(), np.random.default_rng(0))
    assert sel.last["rule"] == "active"
    # A long fit is stopped by close() within 50 steps and leaves the last fit in place.
    slow = active(background=True, train_cfg=RewardTrainConfig(max_steps=100_000, epochs=100_000, traj_per_step=16))
    slow.choose(2, labels, set(), np.random.default_rng(0))
    slow.close(timeout=60)
    assert not slow._thread.is_alive() and slow.fits == 0 and not slow.background


# -- a run folder --------------------------------------------------------------------------------


def test_run_without_sft_model_uses_the_random_encoder_and_caches_it(run_dir):
    store = open_store(run_dir / "rollouts" / "store")
    with pytest.warns(UserWarning, match="no SFT model"):
        sel = make_selector("active", run_dir, store, POOL, 0, train_cfg=TINY)
    assert sel.encoder == "random" and sel.train_cfg.encoder == "random"
    emb = sel.embeddings()
    assert emb.shape == (len(POOL), 100, 512)
    assert list((run_dir / "labels" / "cache").glob("embeddings-random.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = make_selector("active", run_dir, store, POOL, 0).embeddings()
    assert torch.equal(emb, again)
    pick = sel.choose(2, some_labels(10), set(), np.random.default_rng(0))
    assert sel.fits == 1 and set(pick) <= set(POOL)


def test_embeddings_come_from_the_reward_stage_cache(run_dir):
    """The reward stage embeds every episode of the store, in order, under this key."""
    store = open_store(run_dir / "rollouts" / "store")
    n = len(store)
    key = {"store": store.dataset_id, "encoder": "random", "seed": 0, "dim": 512, "n": n, "last": n - 1}
    marked = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 100, 4).clone()
    cached_embeddings(run_dir / "reward" / "cache" / "embeddings-random.safetensors", key, lambda: marked)
    emb = pool_embeddings(run_dir, store, [2, 5, 9], "random", None)
    assert torch.equal(emb[:, 0, 0], torch.tensor([2.0, 5.0, 9.0]))
    assert not (run_dir / "labels" / "cache").exists()


def test_active_selection_through_the_api(run_dir, add_labeller):
    from fastapi.testclient import TestClient

    from agentalign.labeling.server import make_app

    token = add_labeller(run_dir, "alice")
    h = {"Authorization": f"Bearer {token}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = make_app(run_dir, selection="active", seed=0)
    with TestClient(app) as client:
        for _ in range(16):
            q = client.get("/api/next?mode=pair", headers=h).json()
            i, j = q["episodes"]
            r = client.post("/api/answer", json={"id": q["id"], "choice": "left" if i > j else "right"}, headers=h)
            assert r.status_code == 200
        sel = app.state.labelling.selector
        assert isinstance(sel, ActiveSelector) and sel.background  # the server fits in a thread
        sel.wait(120)
        assert sel.fits == 1
        q = client.get("/api/next?mode=rank&n=3", headers=h).json()
        assert len(set(q["episodes"])) == 3 and sel.last["rule"] == "active"
