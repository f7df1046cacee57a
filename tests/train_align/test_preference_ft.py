import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from agentalign.data import open_store
from agentalign.models import Policy
from agentalign.rollout import RolloutConfig, record_rollouts
from agentalign.train.bc import bc_preset
from agentalign.train.preference_ft import PreferenceFTConfig, clone_best, preference_finetune, select_top


def test_select_top_keeps_the_best_fifth():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.0, 0.4, 0.6])
    assert select_top(scores, 0.2).tolist() == [1, 6]
    assert select_top(scores[:2], 0.2).tolist() == [1]  # at least one


def test_select_top_per_spawn_keeps_the_best_of_each_group():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.0, 0.4, 0.6])
    spawns = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    # Overall the top two are 1 and 6; per spawn, the best of 0..4 (1) and of 5..9 (6), then
    # at 40 %: 1, 3 from spawn 0 and 6, 9 from spawn 1 - not 1, 6, 3, 9 by score alone.
    assert select_top(scores, 0.2, spawns).tolist() == [1, 6]
    assert select_top(scores, 0.4, spawns).tolist() == [1, 3, 6, 9]
    low = np.array([0.9, 0.8, 0.7, 0.1, 0.2])
    assert select_top(low, 0.4, np.array([0, 0, 0, 1, 1])).tolist() == [0, 4]  # one from each


def test_two_rest_iterations_clone_the_top_trajectories_into_the_head(tiny_stack, tmp_path):
    store_path = tmp_path / "traj"
    record_rollouts(tiny_stack["sft"], store_path, RolloutConfig(episodes=10, seed=0, num_envs=10))
    bc = replace(bc_preset("smoke"), steps=3, train_only="head", lr=1e-2)
    cfg = PreferenceFTConfig(iterations=2, rollout_episodes=8, bc=bc, rank="all")
    summary = preference_finetune(tiny_stack["sft"], tiny_stack["rm"], store_path, np.arange(5), tmp_path / "pft", cfg)
    # rank="all" ranks the whole store, not the 5 train ids; the grow step keeps the best of each spawn.
    fresh = open_store(tmp_path / "pft" / "iter2" / "rollouts")
    spawns = {fresh.metadata(i)["spawn"] for i in range(len(fresh))}
    assert len(spawns) > 1  # else "per spawn" would not differ from "overall"
    assert [r["ranked"] for r in summary["rounds"]] == [10, 8]
    assert [r["kept"] for r in summary["rounds"]] == [2, len(spawns)]
    kept = open_store(tmp_path / "pft" / "iter2" / "top")
    assert {kept.metadata(i)["spawn"] for i in range(len(kept))} == spawns
    assert len(open_store(tmp_path / "pft" / "iter1" / "top")) == 2
    before = Policy.from_pretrained(tiny_stack["sft"]).state_dict()
    after = Policy.from_pretrained(tmp_path / "pft").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    assert json.loads((tmp_path / "pft" / "config.json").read_text())["stage"] == "preference_ft"


def test_a_soup_of_clones_is_the_mean_of_its_members_weights(tiny_stack, tmp_path):
    store = tmp_path / "traj"
    record_rollouts(tiny_stack["sft"], store, RolloutConfig(episodes=6, seed=1, num_envs=6))
    bc = replace(bc_preset("smoke"), steps=3, train_only="transformer", lr=1e-2)
    ids, scores = np.arange(6), np.linspace(0, 1, 6)
    r = clone_best(open_store(store), ids, scores, 0.5, None, bc, tiny_stack["sft"], tmp_path / "soup", soup=3)
    single = clone_best(open_store(store), ids, scores, 0.5, None, bc, tiny_stack["sft"], tmp_path / "one")
    assert r["kept"] == single["kept"] == 3
    members = [Policy.from_pretrained(tmp_path / "soup" / "soup" / f"seed{j}").state_dict() for j in range(3)]
    soup = Policy.from_pretrained(tmp_path / "soup" / "model").state_dict()
    # Member 0 is the single clone (same seed); the others differ (other seeds), and the soup is their mean.
    one = Policy.from_pretrained(tmp_path / "one" / "model").state_dict()
    assert all(torch.equal(members[0][k], one[k]) for k in one)
    assert not torch.equal(members[0]["head.0.weight"], members[1]["head.0.weight"])
    for k, v in soup.items():
        torch.testing.assert_close(v.double(), torch.stack([m[k].double() for m in members]).mean(0).to(v.dtype).double())
    assert not torch.equal(soup["head.0.weight"], members[0]["head.0.weight"])
    assert json.loads((tmp_path / "soup" / "model" / "config.json").read_text())["parent"] == str(tiny_stack["sft"].resolve())


def test_a_min_score_drops_kept_episodes_that_score_below_it(tiny_stack, tmp_path):
    store = tmp_path / "traj"
    record_rollouts(tiny_stack["sft"], store, RolloutConfig(episodes=6, seed=1, num_envs=6))
    bc = replace(bc_preset("smoke"), steps=2, train_only="transformer", lr=1e-2)
    ids, scores = np.arange(6), np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.4])
    # The best half is 1, 3, 5; 5 (0.4) scores below 0.5 and is dropped: ReST's filter threshold.
    r = clone_best(open_store(store), ids, scores, 0.5, None, bc, tiny_stack["sft"], tmp_path / "kept", min_score=0.5)
    assert (r["kept"], r["below_min_score"]) == (2, 1)
    assert r["mean_score_kept"] == pytest.approx(0.85)
    top, src = open_store(tmp_path / "kept" / "top"), open_store(store)
    assert [top.metadata(i)["seed"] for i in range(2)] == [src.metadata(1)["seed"], src.metadata(3)["seed"]]
    # None above it: nothing is cloned and the agent comes back unchanged, bit for bit.
    r = clone_best(open_store(store), ids, scores, 0.5, None, bc, tiny_stack["sft"], tmp_path / "none", min_score=0.95)
    assert (r["kept"], r["below_min_score"], r["mean_score_kept"]) == (0, 3, None)
    before = Policy.from_pretrained(tiny_stack["sft"]).state_dict()
    after = Policy.from_pretrained(tmp_path / "none" / "model").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
