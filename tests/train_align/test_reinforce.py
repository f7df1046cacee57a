import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from agentalign.data import open_store
from agentalign.models import Policy
from agentalign.models.reward import RewardEnsemble, RewardModel
from agentalign.prefs.labellers import SyntheticLabeller
from agentalign.train.bc import bc_preset
from agentalign.train.preference_ft import score_trajectories
from agentalign.rollout import RandomActor, RolloutConfig, iter_waves, record_rollouts, rollout
from agentalign.train.reinforce import (ReinforceConfig, SpawnPriority, TrajectoryRewarder, ValueBaseline, _update,
                                        start_groups, train_reinforce)


def _params(d):
    return Policy.from_pretrained(d).state_dict()


@pytest.mark.parametrize("train_only,epochs,normalise",
                         [("head", 1, "none"), ("lora", 1, "none"), ("head", 3, "spawn"), ("transformer", 2, "none"),
                          ("transformer", 1, "batch")])  # fmt: skip
def test_a_few_updates_change_what_they_train(tiny_stack, tmp_path, train_only, epochs, normalise):
    cfg = ReinforceConfig(target="left", episodes=8, batch_episodes=4, lr=1e-2, train_only=train_only, epochs=epochs,
                          normalise=normalise, entropy_bonus=0.01 if train_only == "lora" else 0.0, seed=0)  # fmt: skip
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    assert summary["updates"] == 2 and summary["episodes"] == 8
    before, after = _params(tiny_stack["sft"]), _params(tmp_path / "out")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("head.") for k in changed)
    if train_only == "head":
        assert all(k.startswith("head.") for k in changed)
    else:
        assert any(k.startswith("blocks.") for k in changed)  # trained, or the merged adapters
    if train_only == "transformer":
        assert not any(k.startswith(("encoder.", "obs_proj.")) for k in changed)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["align/loss"])) for r in rows)
    assert {"align/success", "align/reward_return", "align/kl", "align/entropy"} <= set(rows[0])
    if epochs == 1:  # on-policy: the recomputed log-probabilities are those the rollout sampled with
        assert rows[0]["align/ratio_dev"] < 1e-4
    else:
        assert rows[0]["align/ratio_dev"] > 1e-4


def test_polish_clones_the_best_of_each_spawn_among_the_last_episodes(tiny_stack, tmp_path):
    bc = replace(bc_preset("smoke"), steps=3, lr=1e-2)
    cfg = ReinforceConfig(episodes=12, batch_episodes=4, lr=1e-2, polish_episodes=8, polish_fraction=0.5, polish_bc=bc,
                          seed=0)  # fmt: skip
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    polish = tmp_path / "out" / "polish"
    kept = open_store(polish / "episodes")
    assert [kept.metadata(i)["episode_index"] for i in range(len(kept))] == list(range(4, 12))  # the last 8
    scores = np.array([kept.metadata(i)["reward"] for i in range(len(kept))])
    spawns = np.array([kept.metadata(i)["spawn"] for i in range(len(kept))])
    top = open_store(polish / "top")
    # Half of each spawn's episodes (at least one), the best by the score REINFORCE used.
    want = sorted(np.sort(scores[spawns == s])[::-1][: max(1, round(0.5 * np.sum(spawns == s)))].tolist()
                  for s in np.unique(spawns))  # fmt: skip
    got = sorted(sorted((top.metadata(i)["reward"] for i in range(len(top)) if top.metadata(i)["spawn"] == s),
                        reverse=True) for s in np.unique(spawns))  # fmt: skip
    assert got == want  # the same floats: both read from the metadata
    assert summary["polish"]["kept"] == len(top) and summary["polish"]["ranked"] == 8
    rl, final = _params(polish / "reinforce"), _params(tmp_path / "out")
    assert any(not torch.equal(rl[k], final[k]) for k in rl)  # the clone moved the REINFORCE policy
    assert all(torch.equal(final[k], v) for k, v in _params(polish / "model").items())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["polished"] is True


def test_sharpen_clones_the_best_of_fresh_low_temperature_episodes(tiny_stack, tmp_path):
    bc = replace(bc_preset("smoke"), steps=3, lr=1e-2)
    cfg = ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2, polish_episodes=4, polish_bc=bc, sharpen_episodes=6,
                          sharpen_temperature=0.3, polish_fraction=0.25, sharpen_fraction=0.5, seed=0)  # fmt: skip
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    d = tmp_path / "out" / "polish" / "sharpen"
    played = open_store(d / "episodes")
    assert len(played) == 6 and {played.metadata(i)["temperature"] for i in range(6)} == {0.3}
    # Scored afresh by the reward model; half of each spawn's kept, the best first.
    scores = score_trajectories(played, np.arange(6), tiny_stack["rm"], tiny_stack["sft"])
    spawns = np.array([played.metadata(i)["spawn"] for i in range(6)])
    assert np.isfinite(scores).all()
    top = open_store(d / "top")
    assert summary["sharpen"]["kept"] == len(top) == sum(max(1, round(0.5 * np.sum(spawns == s))) for s in np.unique(spawns))
    assert summary["sharpen"]["ranked"] == 6 and summary["sharpen"]["temperature"] == 0.3
    polished, final = _params(tmp_path / "out" / "polish" / "model"), _params(tmp_path / "out")
    assert any(not torch.equal(polished[k], final[k]) for k in polished)  # cloned from the polished policy
    assert all(torch.equal(final[k], v) for k, v in _params(d / "model").items())


def test_sharpen_rounds_each_play_the_agent_the_last_one_cloned(tiny_stack, tmp_path):
    bc = replace(bc_preset("smoke"), steps=3, lr=1e-2)
    cfg = ReinforceConfig(episodes=4, batch_episodes=4, lr=1e-2, polish_bc=bc, sharpen_episodes=7, sharpen_rounds=3,
                          seed=0)  # fmt: skip
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    dirs = [tmp_path / "out" / "polish" / d for d in ("sharpen", "sharpen2", "sharpen3")]
    assert [len(open_store(d / "episodes")) for d in dirs] == [3, 2, 2]  # 7 over 3 rounds
    # Each round starts from the last one's clone (checkpoint parent), and the stage ends on the last.
    parents = [json.loads((d / "model" / "config.json").read_text())["parent"] for d in dirs]
    assert parents[1:] == [str((d / "model").resolve()) for d in dirs[:2]]
    assert all(torch.equal(_params(tmp_path / "out")[k], v) for k, v in _params(dirs[-1] / "model").items())
    s = summary["sharpen"]
    assert s["rounds"] == 3 and s["ranked"] == 7 and s["kept"] == sum(r["kept"] for r in s["by_round"])
    assert sum(s["kept_pads"].values()) == s["kept"]
    assert [sum(r["played_pads"].values()) for r in s["by_round"]] == [3, 2, 2] and sum(s["played_pads"].values()) == 7
    # Other episodes in each round: their own seeds.
    first = [open_store(d / "episodes").metadata(0)["seed"] for d in dirs]
    assert len(set(first)) == 3


def test_rest_rounds_alone_align_without_reinforce_and_log_their_curve(tiny_stack, tmp_path):
    bc = replace(bc_preset("smoke"), steps=3, lr=1e-2)
    cfg = ReinforceConfig(episodes=0, polish_bc=bc, sharpen_episodes=8, sharpen_rounds=2, sharpen_temperature=1.0,
                          sharpen_samples_per_start=2, sharpen_fraction=0.5, seed=0)  # fmt: skip
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    assert summary["episodes"] == 0 and summary["updates"] == 0 and summary["sharpen"]["ranked"] == 8
    parent = json.loads((tmp_path / "out" / "polish" / "sharpen" / "model" / "config.json").read_text())["parent"]
    assert parent == str((tmp_path / "out" / "polish" / "reinforce").resolve())  # the start, unchanged
    assert all(torch.equal(_params(tiny_stack["sft"])[k], v) for k, v in _params(tmp_path / "out" / "polish" / "reinforce").items())
    before, after = _params(tiny_stack["sft"]), _params(tmp_path / "out")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["align/episodes"] for r in rows] == [4, 8] and [r["align/rest_round"] for r in rows] == [1, 2]
    for r, played in zip(rows, summary["sharpen"]["by_round"]):
        assert r["align/success"] == played["played_pads"].get("left", 0) / 4
    # Run again (as after a kill once the rounds were done): the rounds are logged once.
    train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2


def test_rest_rounds_then_a_sharpen_each_clone_the_last_and_only_the_rounds_join_the_curve(tiny_stack, tmp_path):
    bc = replace(bc_preset("smoke"), steps=3, lr=1e-2)
    cfg = ReinforceConfig(episodes=0, polish_bc=bc, rest_episodes=8, rest_rounds=2, rest_samples_per_start=2, rest_fraction=0.5,
                          sharpen_episodes=3, sharpen_temperature=0.3, seed=0)  # fmt: skip
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    polish = tmp_path / "out" / "polish"
    rest, sharp = summary["rest"], summary["sharpen"]
    assert rest["rounds"] == 2 and rest["ranked"] == 8 and rest["temperature"] == 1.0
    assert [r["kept"] for r in rest["by_round"]] == [2, 2]  # the best of each start's pair
    assert sharp["ranked"] == 3 and sharp["temperature"] == 0.3
    # rest <- the start, rest2 <- rest's clone, sharpen <- rest2's clone; the stage ends on the sharpen's.
    parent = {d: json.loads((polish / d / "model" / "config.json").read_text())["parent"] for d in ("rest", "rest2", "sharpen")}
    assert parent == {"rest": str((polish / "reinforce").resolve()), "rest2": str((polish / "rest" / "model").resolve()),
                      "sharpen": str((polish / "rest2" / "model").resolve())}  # fmt: skip
    assert all(torch.equal(_params(tmp_path / "out")[k], v) for k, v in _params(polish / "sharpen" / "model").items())
    # Each step plays its own start states.
    seeds = [{open_store(polish / d / "episodes").metadata(i)["seed"] for i in range(n)}
             for d, n in (("rest", 4), ("rest2", 4), ("sharpen", 3))]  # fmt: skip
    assert len(seeds[0]) == len(seeds[1]) == 2 and not (seeds[0] & seeds[1] or seeds[1] & seeds[2] or seeds[0] & seeds[2])
    # The rounds at T = 1 continue the curve; the sharpen at T = 0.3 does not.
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["align/episodes"], r["align/rest_round"]) for r in rows] == [(4, 1), (8, 2)]


def test_the_outcome_diagnostic_scores_every_step_by_the_true_outcome_not_the_reward_model(tiny_stack, tmp_path, monkeypatch):
    import agentalign.train.reinforce as R

    def no_reward_model(*a, **k):
        raise AssertionError("the reward model scored episodes")

    monkeypatch.setattr(R, "score_trajectories", no_reward_model)
    monkeypatch.setattr(R.TrajectoryRewarder, "__call__", no_reward_model)
    bc = replace(bc_preset("smoke"), steps=3, lr=1e-2)
    cfg = ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2, polish_episodes=4, polish_bc=bc, rest_episodes=4,
                          rest_samples_per_start=2, rest_fraction=0.5, reward="outcome", target="right", seed=0)  # fmt: skip
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    assert summary["episodes"] == 8 and summary["rest"]["ranked"] == 4
    lab = SyntheticLabeller("right")
    kept = open_store(tmp_path / "out" / "polish" / "episodes")  # REINFORCE's return: the outcome's
    mds = [kept.metadata(i) for i in range(len(kept))]
    assert [m["reward"] for m in mds] == pytest.approx([lab.reward(m["jump_pad"], m["length"]) for m in mds])
    with pytest.raises(ValueError, match="reward must be model or outcome"):
        ReinforceConfig(reward="oracle")


def test_killed_during_the_polish_it_resumes_without_replaying_reinforce(tiny_stack, tmp_path):
    bc = replace(bc_preset("smoke"), steps=3, lr=1e-2, checkpoint_every=0)
    cfg = ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2, polish_episodes=4, polish_bc=bc, seed=0)
    args = (tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out")
    first = train_reinforce(*args, cfg)
    want = _params(tmp_path / "out")
    # As if killed in the clone: its model and the final checkpoint are gone, REINFORCE's are there.
    shutil.rmtree(tmp_path / "out" / "polish" / "model")
    (tmp_path / "out" / "model.safetensors").unlink()
    calls = []
    again = train_reinforce(*args, cfg, progress=lambda *a: calls.append(a))
    assert calls == [] and again["polish"] == first["polish"] and again["final_success"] == first["final_success"]
    got = _params(tmp_path / "out")
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2  # REINFORCE's rows, kept
    # Another config in the same folder: REINFORCE runs again, its metrics start afresh.
    train_reinforce(*args, replace(cfg, seed=1), progress=lambda *a: calls.append(a))
    assert len(calls) == 2 and len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2


def test_same_seed_same_result(tiny_stack, tmp_path):
    cfg = ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2, seed=3, polish_episodes=4,
                          polish_bc=replace(bc_preset("smoke"), steps=2, lr=1e-2))  # the polish's BC too
    train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "a", cfg)
    train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "b", cfg)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_spawn_priority_favours_the_spawns_whose_returns_disagree():
    prio = SpawnPriority(share=0.5, seed=0)
    np.testing.assert_allclose(prio.probs(), 0.25)  # nothing scored yet: uniform
    # Spawn 0: alike returns; spawn 1: two routes; spawn 2: a wall miss; spawn 3: a single episode.
    prio.update(np.array([0, 0, 1, 1, 2, 2, 3]), np.array([0.9, 0.9, 0.8, 0.4, 0.9, 0.0, 0.1]))
    np.testing.assert_allclose(prio.score[:3], [0.0, 0.2, 0.45])
    p = prio.probs()  # spawn 3 is unscored: it takes the highest score, 0.45
    np.testing.assert_allclose(p, 0.125 + 0.5 * np.array([0.0, 0.2, 0.45, 0.45]) / 1.1)
    prio.update(np.array([1, 1]), np.array([0.8, 0.8]))  # spawn 1 agrees now: its score decays
    assert prio.score[1] == pytest.approx(0.8 * 0.2)
    draws = np.array(prio(list(range(4000))))
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, prio.probs(), atol=0.03)
    assert SpawnPriority(0.5, seed=0)(list(range(8))) == SpawnPriority(0.5, seed=0)(list(range(8)))


def test_spawn_priority_draws_the_spawns_of_the_episodes(tiny_stack, tmp_path):
    cfg = ReinforceConfig(episodes=12, batch_episodes=4, lr=1e-2, spawn_priority=1.0, seed=0)
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "a", cfg)
    assert summary["updates"] == 3
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # every update logs its episodes' spawns and the next batch's spawn probabilities
        assert sum(r[f"align/spawn{k}_n"] for k in range(4)) == 4
        assert sum(r[f"align/spawn{k}_p"] for k in range(4)) == pytest.approx(1.0)
    train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "b", cfg)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sharpen_best_of_k_per_start_keeps_one_episode_of_each_start(tiny_stack, tmp_path):
    bc = replace(bc_preset("smoke"), steps=3, lr=1e-2)
    cfg = ReinforceConfig(episodes=4, batch_episodes=4, lr=1e-2, polish_bc=bc, sharpen_episodes=8,
                          sharpen_samples_per_start=4, sharpen_fraction=0.25, seed=0)  # fmt: skip
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    d = tmp_path / "out" / "polish" / "sharpen"
    played, top = open_store(d / "episodes"), open_store(d / "top")
    seeds = [played.metadata(i)["seed"] for i in range(8)]
    assert seeds[:4] == [seeds[0]] * 4 and seeds[4:] == [seeds[4]] * 4 and seeds[0] != seeds[4]  # two starts
    scores = score_trajectories(played, np.arange(8), tiny_stack["rm"], tiny_stack["sft"])
    best = {played.metadata(int(i))["sample_seed"] for i in (np.argmax(scores[:4]), 4 + np.argmax(scores[4:]))}
    assert summary["sharpen"]["kept"] == len(top) == 2
    assert {top.metadata(i)["sample_seed"] for i in range(2)} == best  # the best of each start's four
    with pytest.raises(ValueError, match="sharpen_samples_per_start must .* divides each sharpen round"):
        ReinforceConfig(sharpen_episodes=8, sharpen_rounds=2, sharpen_samples_per_start=3)


def test_scoring_takes_the_named_encoder_not_the_path_the_reward_model_recorded(tiny_stack, tmp_path, monkeypatch):
    # A run folder moved, or resumed from another directory: the recorded (relative) path is gone.
    moved = tmp_path / "moved_rm"
    shutil.copytree(tiny_stack["rm"], moved)
    cfg_file = moved / "config.json"
    cfg_file.write_text(cfg_file.read_text().replace(str(tiny_stack["sft"]), "runs/elsewhere/sft/model"))
    monkeypatch.chdir(tmp_path)
    record_rollouts(tiny_stack["sft"], tmp_path / "played", RolloutConfig(episodes=4, num_envs=4, max_steps=10))
    store = open_store(tmp_path / "played")
    ids = np.arange(4)
    np.testing.assert_array_equal(score_trajectories(store, ids, moved, tiny_stack["sft"]),
                                  score_trajectories(store, ids, tiny_stack["rm"], tiny_stack["sft"]))  # fmt: skip
    with pytest.raises(ValueError, match="trained on the embeddings of policy"):
        score_trajectories(store, ids, moved, tiny_stack["other"])
    with pytest.raises(ValueError, match="name that policy's checkpoint"):
        score_trajectories(store, ids, moved, None)


def test_samples_per_start_groups_the_start_baseline_by_start(tiny_stack, tmp_path):
    cfg = ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2, baseline="start", samples_per_start=2, seed=0)
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    assert summary["updates"] == 2
    before, after = _params(tiny_stack["sft"]), _params(tmp_path / "out")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    trajs = rollout(RandomActor(64), RolloutConfig(episodes=4, num_envs=4, max_steps=5, samples_per_start=2))
    assert start_groups(trajs, 2).tolist() == [trajs[0].seed] * 2 + [trajs[2].seed] * 2  # pairs from one start
    assert start_groups(trajs, 1).tolist() == [t.spawn for t in trajs]  # else the spawn, as before


@pytest.mark.parametrize("train_only", ["head", "transformer"])
def test_the_value_baseline_trains_a_critic_beside_the_policy(tiny_stack, tmp_path, train_only):
    cfg = ReinforceConfig(episodes=12, batch_episodes=4, lr=1e-2, baseline="value", train_only=train_only,
                          value_lambda=0.9 if train_only == "head" else 1.0, seed=0)  # fmt: skip
    summary = train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    assert summary["updates"] == 3
    before, after = _params(tiny_stack["sft"]), _params(tmp_path / "out")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert set(after) == set(before)  # the critic is the training's, not the agent's
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["align/loss"]) and np.isfinite(r["align/value_loss"]) for r in rows)
    assert all("align/value_explained" in r for r in rows)


def test_the_critic_starts_at_the_mean_return_and_fits_the_returns():
    torch.manual_seed(0)
    critic = ValueBaseline(width=8, hidden=16, lr=1e-2, epochs=200)
    h = torch.randn(4, 3, 8)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[3, 2] = False
    returns = torch.tensor([1.0, 0.0, 1.0, 0.0])[:, None].expand(4, 3) * mask
    v0 = critic.predict(h, returns, mask)
    assert torch.allclose(v0[mask], torch.full((11,), float(returns[mask].mean())))  # "mean" at first
    assert v0[3, 2] == 0  # padding
    first = float(((v0 - returns)[mask] ** 2).mean())
    assert critic.fit(h, returns, mask) < 0.1 * first


def test_linear_schedule_decays_the_lr(tiny_stack, tmp_path):
    cfg = ReinforceConfig(episodes=12, batch_episodes=4, lr=3e-3, schedule="linear", seed=0)
    train_reinforce(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["align/lr"] for r in rows] == pytest.approx([3e-3, 2e-3, 1e-3])  # 3 updates: 1, 2/3, 1/3


def test_bad_input_before_any_rollout(tiny_stack, tmp_path):
    for kwargs, match in [({"beta": -1.0}, "beta"), ({"batch_episodes": 0}, "batch_episodes"),
                          ({"episodes": 0}, "or 0 with rest_episodes or sharpen_episodes > 0"), ({"episodes": -16}, "episodes must be"),
                          ({"target": "top"}, "unknown jump pad 'top'"),
                          ({"epochs": 0}, "epochs"), ({"clip": 1.5}, "clip"),
                          ({"schedule": "cosine"}, "schedule"), ({"normalise": "group"}, "normalise"),
                          ({"entropy_bonus": -0.1}, "entropy_bonus"), ({"episodes": 8, "polish_episodes": 9}, "polish_episodes"),
                          ({"polish_fraction": 0.0}, "polish_fraction"), ({"sharpen_episodes": -1}, "sharpen_episodes"),
                          ({"sharpen_temperature": 0.0}, "sharpen_temperature"), ({"sharpen_fraction": 1.5}, "sharpen_fraction"),
                          ({"sharpen_episodes": 4, "sharpen_rounds": 5}, "sharpen_rounds"),
                          ({"clone_soup": 0}, "clone_soup"), ({"clone_min_score": float("nan")}, "clone_min_score"),
                          ({"rest_episodes": -1}, "rest_episodes"),
                          ({"rest_episodes": 4, "rest_rounds": 5}, "rest_rounds"), ({"rest_fraction": 0.0}, "rest_fraction"),
                          ({"rest_episodes": 12, "rest_rounds": 2}, "rest_samples_per_start"),
                          ({"spawn_priority": -0.1}, "spawn_priority"),
                          ({"batch_episodes": 16, "samples_per_start": 3}, "samples_per_start must .* divides batch_episodes"),
                          ({"samples_per_start": 2, "spawn_priority": 0.5}, "spawn_priority draws"),
                          ({"baseline": "value", "normalise": "batch"}, "normalise='none'"),
                          ({"baseline": "critic"}, "baseline must be"), ({"value_epochs": 0}, "value_epochs"),
                          ({"value_lambda": 1.5}, "value_lambda"),
                          ({"value_lambda": 0.9, "baseline": "start"}, "needs the critic")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ReinforceConfig(**kwargs)
    with pytest.raises(ValueError, match="trained on the embeddings of policy"):
        train_reinforce(tiny_stack["other"], tiny_stack["other"], tiny_stack["rm"], tmp_path / "x", ReinforceConfig(episodes=4))
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_head_only_from_a_policy_whose_trunk_moved_away_from_the_reference(tiny_stack, tmp_path):
    # A preference fine-tune of the whole network no longer shares h_t with the SFT reference: the
    # KL then needs the reference's own forward pass.
    cfg = ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2, train_only="head", seed=0)
    train_reinforce(tiny_stack["other"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "out", cfg)
    before, after = _params(tiny_stack["other"]), _params(tmp_path / "out")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["align/kl"] > 0  # two different policies


def test_the_rollouts_frame_embeddings_stand_in_for_encoding_again(tiny_stack):
    # REINFORCE reuses the embeddings the rollout computed: in the reward model's input (when the
    # reference's encoder is the policy's) and in a transformer-only update. Same numbers as encoding.
    policy = Policy.from_pretrained(tiny_stack["sft"])
    wave = next(iter_waves(policy, RolloutConfig(episodes=4, num_envs=4, keep_frames=None, keep_z=True, seed=3)))
    assert all(tr.z is not None and tr.z.shape == (tr.length, policy.cfg.width) for tr in wave)
    bare = [replace(tr, z=None) for tr in wave]
    rewarder = TrajectoryRewarder(tiny_stack["rm"], Policy.from_pretrained(tiny_stack["sft"]).eval(), 64)
    np.testing.assert_allclose(rewarder(wave, z_shared=True), rewarder(bare), atol=1e-5, rtol=0)
    cfg = ReinforceConfig(episodes=4, batch_episodes=4, lr=1e-2, train_only="transformer", beta=0.1, seed=0)
    after = []
    for batch in (wave, bare):
        p = Policy.from_pretrained(tiny_stack["sft"])
        params = [q for k, q in p.named_parameters() if not k.startswith(("encoder.", "obs_proj."))]
        for k, q in p.named_parameters():
            q.requires_grad_(not k.startswith(("encoder.", "obs_proj.")))
        m = _update(p, Policy.from_pretrained(tiny_stack["sft"]).eval(), batch, torch.tensor([0.1, 0.9, 0.4, 0.6]),
                    torch.optim.Adam(params, lr=1e-2), params, cfg, shared="encoder")  # fmt: skip
        after.append((p.state_dict(), m))
    (sd1, m1), (sd2, m2) = after
    assert m1["align/loss"] == pytest.approx(m2["align/loss"], abs=1e-5) and m1["align/kl"] == pytest.approx(m2["align/kl"], abs=1e-6)
    for k in sd1:
        torch.testing.assert_close(sd1[k], sd2[k], atol=1e-5, rtol=0)
    assert not torch.equal(sd1["head.0.weight"], Policy.from_pretrained(tiny_stack["sft"]).state_dict()["head.0.weight"])


def test_an_ensemble_reward_model_scores_the_mean_of_its_members_in_both_paths(tiny_stack, tmp_path):
    # ReST ranks through score_trajectories, REINFORCE through TrajectoryRewarder: both take an ensemble.
    meta = json.loads((tiny_stack["rm"] / "config.json").read_text())
    info = {k: meta[k] for k in ("encoder", "policy", "policy_fingerprint")}
    members = [RewardModel.from_pretrained(tiny_stack["rm"])[0]]
    torch.manual_seed(7)
    members.append(RewardModel(members[0].cfg))
    members[1].save_pretrained(tmp_path / "rm1", **info)
    RewardEnsemble(members).save_pretrained(tmp_path / "ens", **info)
    record_rollouts(tiny_stack["sft"], tmp_path / "played", RolloutConfig(episodes=4, num_envs=4, max_steps=10))
    store, ids = open_store(tmp_path / "played"), np.arange(4)
    each = [score_trajectories(store, ids, d, tiny_stack["sft"]) for d in (tiny_stack["rm"], tmp_path / "rm1")]
    np.testing.assert_allclose(score_trajectories(store, ids, tmp_path / "ens", tiny_stack["sft"]), np.mean(each, 0), atol=1e-6)
    wave = next(iter_waves(Policy.from_pretrained(tiny_stack["sft"]), RolloutConfig(episodes=4, num_envs=4, keep_frames=None, seed=3)))
    ref = Policy.from_pretrained(tiny_stack["sft"]).eval()
    each = [TrajectoryRewarder(d, ref, 64)(wave) for d in (tiny_stack["rm"], tmp_path / "rm1")]
    np.testing.assert_allclose(TrajectoryRewarder(tmp_path / "ens", ref, 64)(wave), np.mean(each, 0), atol=1e-6)
