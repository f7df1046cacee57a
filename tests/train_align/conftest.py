"""A tiny SFT policy and a reward model on its embeddings, made once per test session."""

import numpy as np
import pytest
import torch

from agentalign.models import Policy, model_preset
from agentalign.models.reward import RewardModel, RewardModelConfig, checkpoint_fingerprint


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
    other = Policy(model_preset("tiny")).save_pretrained(root / "other", stage="sft")
    return {"root": root, "sft": sft, "rm": root / "rm", "other": other}
