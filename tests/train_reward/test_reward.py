import json
import math

import numpy as np
import pytest
import torch

from agentalign.models import Policy, model_preset
from agentalign.models.reward import (
    AgentEncoder,
    RandomEncoder,
    RewardEnsemble,
    RewardModel,
    RewardModelConfig,
    load_reward_model,
    pad_trajectory,
)
from agentalign.prefs import Preference, PreferenceSet
from agentalign.train.losses import bt_loss
from agentalign.train.reward import RewardTrainConfig, count_comparisons, pairwise_metrics, preference_matrix, train_reward_model


def test_bt_loss_matches_hand_computation():
    r_i = torch.tensor([2.0, 0.0, 1.0])
    r_j = torch.tensor([1.0, 0.0, 3.0])
    p = torch.tensor([1.0, 0.5, 0.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(math.log(sig(1.0)) + 0.5 * math.log(0.5) + 0.5 * math.log(0.5) + math.log(sig(2.0))) / 3
    assert abs(float(bt_loss(r_i, r_j, p)) - expected) < 1e-6


def test_pairwise_metrics_by_hand():
    rewards = torch.tensor([0.9, 0.1, 0.5])
    P = torch.full((3, 3), float("nan"))
    P[0, 1], P[1, 0] = 1.0, 0.0  # 0 > 1: right
    P[1, 2], P[2, 1] = 1.0, 0.0  # 1 > 2: wrong
    P[0, 2], P[2, 0] = 0.5, 0.5  # tie
    m = pairwise_metrics(rewards, P)
    assert m["reward/accuracy"] == 0.5 and abs(m["reward/tie_share"] - 1 / 3) < 1e-9
    assert abs(m["reward/margin"] - ((0.9 - 0.1) + (0.1 - 0.5)) / 2) < 1e-6


def _ranked(m: int, e: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (m, 100, e) of trajectories that carry their score in feature 0, and the full
    ranking of them as a preference matrix (m, m)."""
    g = torch.Generator().manual_seed(seed)
    score = torch.randperm(m, generator=g).float()
    emb = torch.randn(m, 100, e, generator=g) * 0.1
    emb[:, :, 0] += score[:, None] / m
    ids = np.arange(100, 100 + m)
    prefs = PreferenceSet("x", [Preference(tuple(int(i) for i in ids), ranking=tuple(int(m - 1 - s) for s in score))])
    return emb, preference_matrix(prefs, ids)


def test_preference_matrix_and_training_learn_a_clear_signal():
    # Trajectories whose embeddings carry their score in one feature: the model must find it.
    m, e = 40, 8
    emb, P = _ranked(m, e, seed=0)
    assert count_comparisons(P) == m * (m - 1) // 2
    before = pairwise_metrics(RewardModel(RewardModelConfig("random", e))(emb).detach(), P)["reward/accuracy"]
    model, info = train_reward_model(emb, P, RewardTrainConfig(encoder="random", max_steps=200, traj_per_step=16))
    after = pairwise_metrics(model(emb).detach(), P)["reward/accuracy"]
    assert after > 0.95 and after > before
    n = model.normalised(emb).detach()
    assert float(n.min()) == 0.0 and float(n.max()) == 1.0


def test_checkpoints_that_record_the_removed_head_and_pad_options(tmp_path):
    torch.manual_seed(0)
    model = RewardModel(RewardModelConfig("random", 8))
    model.save_pretrained(tmp_path / "rm", policy=None)
    cfg_path = tmp_path / "rm" / "config.json"
    meta = json.loads(cfg_path.read_text())
    # Written before the options were removed, at the values that remain: it loads as it was.
    meta["reward_model"].update(head="concat", pad="black")
    cfg_path.write_text(json.dumps(meta))
    back, _ = load_reward_model(tmp_path / "rm")
    emb = torch.randn(2, 100, 8)
    assert back.cfg == model.cfg and torch.equal(back(emb), model(emb))
    meta["reward_model"]["head"] = "sum"
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="head='sum', an option that was removed"):
        load_reward_model(tmp_path / "rm")


def test_agent_encoder_sliding_window_matches_per_window_forward():
    cfg = model_preset("tiny")  # context 8
    policy = Policy(cfg).eval()
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, 20, 64, 64, 3), dtype=torch.uint8, generator=g)
    actions = torch.randint(0, 2, (2, 20, 16), generator=g)
    h = AgentEncoder(policy)(frames, actions)
    assert h.shape == (2, 20, cfg.width)
    prev = torch.cat([actions[:, :1], actions[:, :-1]], 1)
    with torch.no_grad():
        for t in (0, 5, 7, 8, 13, 19):
            lo = max(0, t - cfg.context + 1)
            ref = policy.embed(frames[:, lo : t + 1], prev[:, lo : t + 1])[:, -1]
            assert torch.allclose(h[:, t], ref, atol=1e-5), t


def test_padding_and_random_encoder():
    f, a = pad_trajectory(torch.ones(3, 64, 64, 3, dtype=torch.uint8), torch.ones(3, 16, dtype=torch.long))
    assert f.shape[0] == 100 and f[3:].max() == 0 and (a[3:, 12:] == 5).all() and (a[3:, :12] == 0).all()
    with pytest.raises(ValueError, match="longer than the reward model's horizon 100"):
        pad_trajectory(torch.ones(101, 64, 64, 3, dtype=torch.uint8), torch.ones(101, 16, dtype=torch.long))
    enc1, enc2 = RandomEncoder(64, 512, seed=3), RandomEncoder(64, 512, seed=3)
    x = torch.randint(0, 256, (1, 4, 64, 64, 3), dtype=torch.uint8)
    assert torch.equal(enc1(x), enc2(x)) and enc1(x).shape == (1, 4, 512)


def test_padded_embeddings_encode_each_frame_once_and_match_the_padded_frames():
    policy = Policy(model_preset("tiny")).eval()  # context 8: windows slide over the padding
    g = torch.Generator().manual_seed(2)
    lengths = [5, 12, 30]
    frames = [torch.randint(0, 256, (t, 64, 64, 3), dtype=torch.uint8, generator=g) for t in lengths]
    actions = [torch.randint(0, 2, (t, 16), generator=g) for t in lengths]
    enc = AgentEncoder(policy)
    padded = [pad_trajectory(f, a, 30) for f, a in zip(frames, actions)]
    ref = enc(torch.stack([f for f, _ in padded]), torch.stack([a for _, a in padded]))  # (3, 30, width)
    calls = []
    policy.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    got = enc.padded(frames, actions, 30)
    assert calls == [sum(lengths), 1]  # the real frames, then the black frame once
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # Embeddings a rollout kept give the same, with no frame encoded but the black one.
    z = [policy.encode(f) for f in frames]
    calls.clear()
    torch.testing.assert_close(enc.padded(frames, actions, 30, z=z), ref, atol=1e-5, rtol=0)
    assert calls == [1]
    r = RandomEncoder(64, 16, seed=1)
    assert torch.equal(r.padded(frames, actions, 30), r(torch.stack([f for f, _ in padded])))
    with pytest.raises(ValueError, match="longer than the reward model's horizon 10"):
        enc.padded(frames, actions, 10)
    with pytest.raises(ValueError, match="trajectory 1: 11 frames for 12 actions"):
        enc.padded([frames[0], frames[1][:11]], actions[:2], 30)


def test_ensemble_scores_its_members_mean_and_round_trips(tmp_path):
    emb, P = _ranked(24, 8, seed=1)
    cfg = RewardTrainConfig(encoder="random", max_steps=30, traj_per_step=8, ensemble=3, seed=5)
    ens, info = train_reward_model(emb, P, cfg)
    assert isinstance(ens, RewardEnsemble) and info["members"] == 3 and len(info["member_final_losses"]) == 3
    # Member k is the single model trained with seed + k, and the ensemble scores their mean.
    first, _ = train_reward_model(emb, P, RewardTrainConfig(encoder="random", max_steps=30, traj_per_step=8, seed=5))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), ens.members[0].state_dict().values()))
    assert not torch.equal(ens.members[0].step_mlp[0].weight, ens.members[1].step_mlp[0].weight)
    by_hand = sum(mem.normalised(emb) for mem in ens.members) / 3
    assert torch.allclose(ens.normalised(emb), by_hand, atol=1e-6) and torch.equal(ens(emb), ens.normalised(emb))
    ens.save_pretrained(tmp_path / "ens", policy=None, **info)  # as the pipeline and the CLI save it
    back, meta = load_reward_model(tmp_path / "ens")
    assert meta["members"] == 3 and isinstance(back, RewardEnsemble) and torch.equal(back(emb), ens(emb))
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ens.state_dict().values()))
    with pytest.raises(ValueError, match="ensemble of 3"):
        RewardModel.from_pretrained(tmp_path / "ens")
    ens.members[0].save_pretrained(tmp_path / "one", policy=None)  # a single model loads as before
    assert isinstance(load_reward_model(tmp_path / "one")[0], RewardModel)
    with pytest.raises(ValueError, match="ensemble"):
        RewardTrainConfig(ensemble=0)
