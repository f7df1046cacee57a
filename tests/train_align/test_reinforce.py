"""The paper's REINFORCE (train/reinforce.py) on a tiny stack: a few updates, seconds each."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from agentalign.models import Policy
from agentalign.models.reward import RewardEnsemble, RewardModel
from agentalign.rollout import RolloutConfig, iter_waves
from agentalign.train.common import FROZEN
from agentalign.train.reinforce import ReinforceConfig, TrajectoryRewarder, run_reinforce, shared_with_reference, update

ENCODER = ("encoder.", "obs_proj.")


def _params(d):
    return Policy.from_pretrained(d).state_dict()


def _changed(a, b):
    return {k for k in a if not torch.equal(a[k], b[k])}


def _rows(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("train_only", ["head", "transformer", "all"])
def test_a_few_updates_change_what_they_train_and_nothing_else(tiny_stack, tmp_path, train_only):
    cfg = ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2, train_only=train_only)
    summary = run_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg, "left", seed=0)
    assert (summary["episodes"], summary["updates"], summary["dropped"]) == (8, 2, 0)
    changed = _changed(_params(tiny_stack["sft"]), _params(tmp_path / "out"))
    assert any(k.startswith("head.") for k in changed)
    if train_only == "head":
        assert all(k.startswith("head.") for k in changed)
    elif train_only == "transformer":
        assert any(k.startswith("blocks.") for k in changed) and not any(k.startswith(ENCODER) for k in changed)
    else:
        assert any(k.startswith("blocks.") for k in changed) and any(k.startswith(ENCODER) for k in changed)
    rows = _rows(tmp_path / "out")
    assert [r["align/episodes"] for r in rows] == [4, 8]
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("align/loss", "align/kl", "align/entropy", "align/grad_norm", "align/reward_return"))
        assert 0 <= r["align/success"] <= 1
        assert sum(r[f"align/pad_{p}"] for p in ("left", "middle", "right", "none")) == pytest.approx(1.0)
    assert rows[0]["align/kl"] == pytest.approx(0.0, abs=1e-6)  # the first update starts at the reference
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (meta["stage"], meta["target"], meta["episodes"]) == ("reinforce", "left", 8)


def test_what_the_reference_shares_with_the_policy(tiny_stack):
    sft = Policy.from_pretrained(tiny_stack["sft"])
    assert shared_with_reference(sft, sft, "head") == "trunk"
    assert shared_with_reference(sft, sft, "transformer") == "encoder"
    assert shared_with_reference(sft, sft, "all") == "nothing"  # the encoder trains: nothing stays shared

    def moved(prefix):  # the SFT agent with the parameters under `prefix` changed
        p = Policy.from_pretrained(tiny_stack["sft"])
        with torch.no_grad():
            next(v for k, v in p.named_parameters() if k.startswith(prefix)).add_(1.0)
        return p

    assert shared_with_reference(moved("head."), sft, "head") == "trunk"  # what trains may differ
    assert shared_with_reference(moved("blocks."), sft, "head") == "encoder"
    assert shared_with_reference(moved("blocks."), sft, "transformer") == "encoder"
    assert shared_with_reference(moved("encoder."), sft, "head") == "nothing"
    assert shared_with_reference(moved("encoder."), sft, "transformer") == "nothing"
    assert shared_with_reference(Policy.from_pretrained(tiny_stack["other"]), sft, "head") == "nothing"
    assert set(FROZEN) == {"head", "transformer"}


@pytest.mark.parametrize("train_only", ["head", "transformer"])
def test_the_kl_leash_to_a_reference_that_shares_nothing_with_the_policy(tiny_stack, tmp_path, train_only):
    # A policy whose trunk moved away from the SFT agent (a preference fine-tune of everything, say):
    # the reference needs its own forward pass from the frames.
    policy, sft = Policy.from_pretrained(tiny_stack["other"]), Policy.from_pretrained(tiny_stack["sft"])
    assert shared_with_reference(policy, sft, train_only) == "nothing"
    cfg = ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2, beta=0.5, train_only=train_only)
    run_reinforce(tiny_stack["other"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg, "left", seed=0)
    changed = _changed(_params(tiny_stack["other"]), _params(tmp_path / "out"))
    assert changed and not any(k.startswith(ENCODER) for k in changed)
    rows = _rows(tmp_path / "out")
    assert all(r["align/kl"] > 0 and np.isfinite(r["align/loss"]) for r in rows)  # two different policies


def test_the_rollouts_embeddings_stand_in_for_encoding_again(tiny_stack):
    # The reward model's input from the rollout's kept per-frame embeddings equals encoding the
    # frames; the reference's h_t from the embeddings ("encoder") equals its own forward pass from
    # the frames ("nothing"): the same update either way.
    policy = Policy.from_pretrained(tiny_stack["sft"])
    wave = next(iter_waves(policy, RolloutConfig(episodes=4, num_envs=4, keep_frames=None, keep_z=True, seed=3)))
    assert all(tr.z is not None and tr.z.shape == (tr.length, policy.cfg.width) for tr in wave)
    rewarder = TrajectoryRewarder(tiny_stack["rm"], Policy.from_pretrained(tiny_stack["sft"]).eval(), 64)
    np.testing.assert_allclose(rewarder(wave, z_is_reference=True), rewarder([replace(tr, z=None) for tr in wave]),
                               atol=1e-5, rtol=0)  # fmt: skip
    cfg = ReinforceConfig(episodes=4, batch_episodes=4, lr=1e-2, train_only="transformer", beta=0.1)
    after = []
    for shared in ("encoder", "nothing"):
        p = Policy.from_pretrained(tiny_stack["sft"])
        params = [q for k, q in p.named_parameters() if not k.startswith(ENCODER)]
        for k, q in p.named_parameters():
            q.requires_grad_(not k.startswith(ENCODER))
        m = update(p, Policy.from_pretrained(tiny_stack["sft"]).eval(), wave, torch.tensor([0.1, 0.9, 0.4, 0.6]),
                   torch.optim.Adam(params, lr=1e-2), params, cfg, shared=shared)  # fmt: skip
        after.append((p.state_dict(), m))
    (sd1, m1), (sd2, m2) = after
    assert m1["align/loss"] == pytest.approx(m2["align/loss"], abs=1e-5) and m1["align/kl"] == pytest.approx(m2["align/kl"], abs=1e-6)
    for k in sd1:
        torch.testing.assert_close(sd1[k], sd2[k], atol=1e-5, rtol=0)
    assert not torch.equal(sd1["head.0.weight"], policy.state_dict()["head.0.weight"])


def test_same_seed_same_weights(tiny_stack, tmp_path):
    cfg = ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2, train_only="transformer")
    for d in ("a", "b"):
        run_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / d, cfg, "left", seed=3)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "align/seconds"} for r in rows]  # noqa: E731
    assert drop(_rows(tmp_path / "a")) == drop(_rows(tmp_path / "b"))


def test_an_ensemble_reward_model_scores_the_mean_of_its_members(tiny_stack, tmp_path):
    meta = json.loads((tiny_stack["rm"] / "config.json").read_text())
    info = {k: meta[k] for k in ("encoder", "policy", "policy_fingerprint")}
    members = [RewardModel.from_pretrained(tiny_stack["rm"])[0]]
    torch.manual_seed(7)
    members.append(RewardModel(members[0].cfg))
    members[1].save_pretrained(tmp_path / "rm1", **info)
    RewardEnsemble(members).save_pretrained(tmp_path / "ens", **info)
    wave = next(iter_waves(Policy.from_pretrained(tiny_stack["sft"]), RolloutConfig(episodes=4, num_envs=4, keep_frames=None, seed=3)))
    ref = Policy.from_pretrained(tiny_stack["sft"]).eval()
    each = [TrajectoryRewarder(d, ref, 64)(wave) for d in (tiny_stack["rm"], tmp_path / "rm1")]
    np.testing.assert_allclose(TrajectoryRewarder(tmp_path / "ens", ref, 64)(wave), np.mean(each, 0), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [({"beta": -1.0}, "beta"), ({"batch_episodes": 0}, "batch_episodes"),
                                           ({"episodes": -16}, "episodes must be"), ({"lr": 0.0}, "lr"),
                                           ({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"),
                                           ({"temperature": 0.0}, "temperature"), ({"temperature": 2.0}, "temperature")])  # fmt: skip
def test_config_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReinforceConfig(**kwargs)


def test_a_policy_and_an_sft_agent_of_different_models(tiny_stack, tmp_path):
    with pytest.raises(ValueError, match="are different models"):
        run_reinforce(tiny_stack["wider"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "x", ReinforceConfig(episodes=4), "left", 0)
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_a_reward_model_of_another_agents_embeddings(tiny_stack, tmp_path):
    with pytest.raises(ValueError, match="trained on the embeddings of policy"):
        run_reinforce(tiny_stack["other"], tiny_stack["other"], tiny_stack["rm"], tmp_path / "x", ReinforceConfig(episodes=4),
                      "left", 0)  # fmt: skip


def test_run_again_into_the_same_folder_its_metrics_start_afresh(tiny_stack, tmp_path):
    cfg = ReinforceConfig(episodes=4, batch_episodes=4, lr=1e-2)
    for _ in range(2):
        run_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg, "left", seed=0)
    assert len(_rows(tmp_path / "out")) == 1
