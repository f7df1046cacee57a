import json
from dataclasses import replace

import numpy as np
import torch

from agentalign.data import open_store
from agentalign.models import Policy
from agentalign.rollout import RolloutConfig, record_rollouts
from agentalign.train.bc import bc_preset
from agentalign.train.preference_ft import PreferenceFTConfig, preference_finetune, select_top


def test_select_top_keeps_the_best_fifth():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.0, 0.4, 0.6])
    assert select_top(scores, 0.2).tolist() == [1, 6]
    assert select_top(scores[:2], 0.2).tolist() == [1]  # at least one


def test_two_rest_iterations_clone_the_top_trajectories_into_the_head(tiny_stack, tmp_path):
    store_path = tmp_path / "traj"
    record_rollouts(tiny_stack["sft"], store_path, RolloutConfig(episodes=10, seed=0, num_envs=10))
    bc = replace(bc_preset("smoke"), steps=3, train_only="head", lr=1e-2)
    cfg = PreferenceFTConfig(iterations=2, rollout_episodes=5, bc=bc)
    summary = preference_finetune(tiny_stack["sft"], tiny_stack["rm"], store_path, np.arange(10), tmp_path / "pft", cfg)
    assert [r["kept"] for r in summary["rounds"]] == [2, 1]
    assert len(open_store(tmp_path / "pft" / "iter1" / "top")) == 2
    before = Policy.from_pretrained(tiny_stack["sft"]).state_dict()
    after = Policy.from_pretrained(tmp_path / "pft").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    assert json.loads((tmp_path / "pft" / "config.json").read_text())["stage"] == "preference_ft"
