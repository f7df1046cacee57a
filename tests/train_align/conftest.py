"""A tiny alignment stack, made once per test session: an SFT policy, a reward model on its
embeddings, a policy of the same model whose weights differ everywhere, a policy of another model,
and the SFT agent's stored rollouts with a preference file that labels them."""

import os

# Sleeping rather than spinning OpenMP threads (see tests/train/conftest.py): takes effect when
# torch is not loaded yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from agentalign.data import open_store
from agentalign.models import Policy, model_preset
from agentalign.models.reward import RewardModel, RewardModelConfig, checkpoint_fingerprint
from agentalign.prefs import Preference, PreferenceSet
from agentalign.rollout import RolloutConfig, record_rollouts


@pytest.fixture(scope="session")
def tiny_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    torch.manual_seed(0)
    policy = Policy(model_preset("tiny"))
    sft = policy.save_pretrained(root / "sft", stage="sft")
    torch.manual_seed(1)
    rm = RewardModel(RewardModelConfig(encoder="agent", embed_dim=policy.cfg.width))
    rm.save_pretrained(root / "rm", encoder="agent", policy=str(sft), policy_fingerprint=checkpoint_fingerprint(sft))
    torch.manual_seed(2)
    other = Policy(model_preset("tiny")).save_pretrained(root / "other", stage="sft")  # same model, other weights
    torch.manual_seed(3)
    wider = Policy(model_preset("tiny", head_hidden=16)).save_pretrained(root / "wider", stage="sft")  # another model
    return {"root": root, "sft": sft, "rm": root / "rm", "other": other, "wider": wider}


@pytest.fixture(scope="session")
def stored(tiny_stack):
    """The SFT agent's stored rollouts (8 episodes) and a preference file labelling them: 6 train
    trajectories (0..5), 2 held out (6, 7)."""
    root = tiny_stack["root"]
    record_rollouts(tiny_stack["sft"], root / "rollouts", RolloutConfig(episodes=8, seed=0, num_envs=8))
    store = open_store(root / "rollouts")
    pset = PreferenceSet(store.dataset_id, [Preference((0, 1), label="A"), Preference((2, 3, 4, 5), ranking=(0, 1, 2, 3))],
                         meta={"target": "left", "train_ids": list(range(6)), "test_ids": [6, 7]})  # fmt: skip
    pset.save(root / "prefs.jsonl")
    return {"store": root / "rollouts", "prefs": root / "prefs.jsonl"}
