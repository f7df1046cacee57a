"""ReST (train/rest.py): keep the best of each group and clone them, round after round; preference
fine-tuning as its first round on the stored rollouts. Tiny stacks, clones of a few BC steps."""

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from agentalign.data import open_store
from agentalign.prefs import Preference, PreferenceSet
from agentalign.train.rest import (
    PFT_SEED,
    ROUND_SEED_STEP,
    CloneConfig,
    PreferenceFTConfig,
    RestConfig,
    merge_rounds,
    rest_round,  # fmt: skip
    run_pft,
    run_rest,
    score_episodes,
    select_top,
)

from .helpers import params, parent, same

CLONE = CloneConfig(steps=3, batch_size=4, window=8, warmup=1, lr=1e-2)  # head only, as the paper's


# ---- keep ----------------------------------------------------------------------------------------


def test_select_top_keeps_the_best_fraction_best_first():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.0, 0.4, 0.6])
    assert select_top(scores, 0.2).tolist() == [1, 6]
    assert select_top(scores, 0.5).tolist() == [1, 6, 3, 9, 2]
    assert select_top(scores, 1.0).tolist() == [1, 6, 3, 9, 2, 8, 5, 4, 0, 7]
    assert select_top(scores[:2], 0.2).tolist() == [1]  # at least one
    assert select_top(np.array([0.5, 0.7, 0.5, 0.7]), 0.5).tolist() == [1, 3]  # ties by position
    assert select_top(np.array([0.5, 0.7, 0.5, 0.7]), 0.75).tolist() == [1, 3, 0]


def test_select_top_per_group_keeps_the_best_of_each_group_in_label_order():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.0, 0.4, 0.6])
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert select_top(scores, 0.2, groups).tolist() == [1, 6]
    # At 40 %: 1, 3 of group 0 and 6, 9 of group 1 - by score alone it would be 1, 6, 3, 9.
    assert select_top(scores, 0.4, groups).tolist() == [1, 3, 6, 9]
    low = np.array([0.9, 0.8, 0.7, 0.1, 0.2])
    assert select_top(low, 0.4, np.array([0, 0, 0, 1, 1])).tolist() == [0, 4]  # one of each, however low
    # Interleaved labels, not in label order: groups come out in label order, each best first.
    mixed = np.array([7, 3, 7, 3, 5, 5])
    assert select_top(np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.5]), 0.5, mixed).tolist() == [3, 4, 2]


# ---- a round -------------------------------------------------------------------------------------


def test_a_round_keeps_the_best_of_each_group_and_clones_them(tiny_stack, stored, tmp_path):
    store = open_store(stored["store"])
    ids = np.arange(8)
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.0])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    cfg = RestConfig(episodes=8, keep=0.5, clone=CLONE)
    r = rest_round(store, ids, scores, groups, tiny_stack["sft"], tmp_path / "r", cfg, seed=5)
    assert (r["ranked"], r["kept"], r["below_min_score"]) == (8, 4, 0)
    assert r["mean_score_all"] == pytest.approx(scores.mean()) and r["mean_score_kept"] == pytest.approx(0.675)
    assert sum(r["played_pads"].values()) == 8 and sum(r["kept_pads"].values()) == 4
    # out/top holds copies of episodes 1, 3, 5, 6 (the best of each pair), in that order.
    top = open_store(tmp_path / "r" / "top")
    assert [top.metadata(i)["sample_seed"] for i in range(len(top))] == [store.metadata(i)["sample_seed"] for i in (1, 3, 5, 6)]
    np.testing.assert_array_equal(top.episode(1).frames, store.episode(3).frames)
    # The clone: from the start, into out/model, only the head trained (the default clone's).
    changed = {k for k, v in params(tiny_stack["sft"]).items() if not torch.equal(v, params(tmp_path / "r" / "model")[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    assert parent(tmp_path / "r" / "model") == str(tiny_stack["sft"].resolve())
    assert json.loads((tmp_path / "r" / "model" / "config.json").read_text())["stage"] == "rest"
    # Without groups, the best half overall: 1, 6, 3, 2.
    r = rest_round(store, ids, scores, None, tiny_stack["sft"], tmp_path / "all", replace(cfg, clone=replace(CLONE, steps=1)), seed=5)
    top = open_store(tmp_path / "all" / "top")
    assert [top.metadata(i)["sample_seed"] for i in range(4)] == [store.metadata(i)["sample_seed"] for i in (1, 6, 3, 2)]


def test_a_min_score_drops_kept_episodes_below_it_and_nothing_above_it_keeps_the_start(tiny_stack, stored, tmp_path):
    store = open_store(stored["store"])
    ids, scores = np.arange(6), np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.4])
    cfg = RestConfig(episodes=6, keep=0.5, min_score=0.5, clone=replace(CLONE, steps=1))
    # The best half is 1, 3, 5; 5 (0.4) scores below 0.5 and is not cloned: ReST's filter threshold.
    r = rest_round(store, ids, scores, None, tiny_stack["sft"], tmp_path / "kept", cfg, seed=0)
    assert (r["kept"], r["below_min_score"]) == (2, 1) and r["mean_score_kept"] == pytest.approx(0.85)
    top = open_store(tmp_path / "kept" / "top")
    assert [top.metadata(i)["sample_seed"] for i in range(len(top))] == [store.metadata(i)["sample_seed"] for i in (1, 3)]
    assert not same(tmp_path / "kept" / "model", tiny_stack["sft"])
    # None good enough: nothing cloned, the start saved unchanged, bit for bit.
    r = rest_round(store, ids, scores, None, tiny_stack["sft"], tmp_path / "none", replace(cfg, min_score=0.95), seed=0)
    assert (r["kept"], r["below_min_score"], r["mean_score_kept"]) == (0, 3, None)
    assert len(open_store(tmp_path / "none" / "top")) == 0
    assert same(tmp_path / "none" / "model", tiny_stack["sft"])
    assert parent(tmp_path / "none" / "model") == str(tiny_stack["sft"].resolve())


def test_a_soup_is_the_mean_of_its_clones_weights(tiny_stack, stored, tmp_path):
    store = open_store(stored["store"])
    ids, scores = np.arange(6), np.linspace(0, 1, 6)
    cfg = RestConfig(episodes=6, keep=0.5, soup=2, clone=replace(CLONE, train_only="transformer"))
    r = rest_round(store, ids, scores, None, tiny_stack["sft"], tmp_path / "soup", cfg, seed=4)
    one = rest_round(store, ids, scores, None, tiny_stack["sft"], tmp_path / "one", replace(cfg, soup=1), seed=4)
    assert r["kept"] == one["kept"] == 3
    members = [params(tmp_path / "soup" / "soup" / f"seed{j}") for j in range(2)]
    soup = params(tmp_path / "soup" / "model")
    assert same(tmp_path / "soup" / "soup" / "seed0", tmp_path / "one" / "model")  # member 0: the single clone's seed
    assert not torch.equal(members[0]["head.0.weight"], members[1]["head.0.weight"])  # member 1: another seed
    for k, v in soup.items():
        torch.testing.assert_close(v, (members[0][k].double() + members[1][k].double()).div(2).to(v.dtype), rtol=0, atol=1e-7)
    assert not torch.equal(soup["head.0.weight"], members[0]["head.0.weight"])
    meta = json.loads((tmp_path / "soup" / "model" / "config.json").read_text())
    assert meta["parent"] == str(tiny_stack["sft"].resolve()) and len(meta["soup"]) == 2


# ---- rounds --------------------------------------------------------------------------------------


def test_rounds_rank_the_stored_set_then_play_each_the_last_rounds_clone(tiny_stack, stored, tmp_path):
    cfg = RestConfig(rounds=3, episodes=4, samples_per_start=2, keep=0.5, clone=replace(CLONE, steps=2))
    args = (tiny_stack["sft"], tiny_stack["rm"], tiny_stack["sft"])
    final, rounds = run_rest(*args, tmp_path / "a", cfg, 7, stored=(stored["store"], np.arange(6)))
    a = tmp_path / "a"
    assert final == a / "round2" / "model"
    assert [(r["round"], r["source"], r["ranked"]) for r in rounds] == [(0, "stored", 6), (1, "fresh", 4), (2, "fresh", 4)]
    # Round 0 ranks the stored set as one group (the best half overall) and plays nothing.
    assert rounds[0]["kept"] == 3 and not (a / "round0" / "episodes").exists()
    src = open_store(stored["store"])
    best = select_top(score_episodes(src, np.arange(6), tiny_stack["rm"], tiny_stack["sft"]), 0.5)
    top = open_store(a / "round0" / "top")
    assert [top.metadata(k)["sample_seed"] for k in range(3)] == [src.metadata(int(i))["sample_seed"] for i in best]
    # Fresh rounds keep the best of each start state's pair; round i plays with seed + 1000 i.
    assert rounds[1]["kept"] == rounds[2]["kept"] == 2
    for i in (1, 2):
        played = open_store(a / f"round{i}" / "episodes")
        assert {played.metadata(k)["rollout_seed"] for k in range(4)} == {7 + ROUND_SEED_STEP * i}
        starts = [played.metadata(k)["seed"] for k in range(4)]
        assert starts[0] == starts[1] != starts[2] == starts[3]
        top = open_store(a / f"round{i}" / "top")
        assert sorted(top.metadata(k)["seed"] for k in range(2)) == sorted({starts[0], starts[2]})
    # Each round clones from the one before: round 1 played round 0's clone.
    assert [parent(a / f"round{i}" / "model") for i in range(3)] == [
        str(tiny_stack["sft"].resolve()), str((a / "round0" / "model").resolve()), str((a / "round1" / "model").resolve())]
    assert not same(a / "round0" / "model", a / "round1" / "model")
    # The same seed in another folder: bit-identical.
    run_rest(*args, tmp_path / "b", cfg, 7, stored=(stored["store"], np.arange(6)))
    for i in range(3):
        assert same(a / f"round{i}" / "model", tmp_path / "b" / f"round{i}" / "model")
    # Killed in the last round's clone: it resumes, replays the rounds before, and ends bit-identical.
    want = params(final)
    shutil.rmtree(a / "round2" / "model")
    again, resumed = run_rest(*args, a, cfg, 7, stored=(stored["store"], np.arange(6)))
    got = params(again)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert resumed == rounds
    merged = merge_rounds(rounds)
    assert (merged["rounds"], merged["ranked"], merged["kept"]) == (3, 14, 7) and merged["by_round"] == rounds
    assert sum(merged["played_pads"].values()) == 14 and sum(merged["kept_pads"].values()) == 7


def test_scoring_takes_the_named_encoder_not_the_path_the_reward_model_recorded(tiny_stack, stored, tmp_path, monkeypatch):
    moved = tmp_path / "moved_rm"  # a run folder moved: the recorded (relative) path is gone
    shutil.copytree(tiny_stack["rm"], moved)
    cfg_file = moved / "config.json"
    cfg_file.write_text(cfg_file.read_text().replace(str(tiny_stack["sft"]), "runs/elsewhere/sft/model"))
    monkeypatch.chdir(tmp_path)
    store, ids = open_store(stored["store"]), np.arange(4)
    scores = score_episodes(store, ids, moved, tiny_stack["sft"])
    assert scores.shape == (4,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, score_episodes(store, ids, tiny_stack["rm"], tiny_stack["sft"]))
    with pytest.raises(ValueError, match="trained on the embeddings of policy"):
        score_episodes(store, ids, moved, tiny_stack["other"])


# ---- preference fine-tuning ----------------------------------------------------------------------


@pytest.mark.parametrize("rank", ["all", "train"])
def test_preference_fine_tuning_ranks_the_stored_rollouts_then_grows(tiny_stack, stored, tmp_path, rank):
    rest = RestConfig(rounds=2, episodes=4, keep=0.5, clone=replace(CLONE, steps=2))
    cfg = PreferenceFTConfig(rank=rank, rest=rest, seed=1)
    out = tmp_path / "pft"
    summary = run_pft(tiny_stack["sft"], tiny_stack["rm"], stored["store"], stored["prefs"], out, cfg)
    ranked = 8 if rank == "all" else 6  # "train": the 6 trajectories the preferences labelled, not the 2 held out
    assert [(r["source"], r["ranked"], r["kept"]) for r in summary["rounds"]] == [("stored", ranked, ranked // 2),
                                                                                 ("fresh", 4, summary["kept"])]  # fmt: skip
    assert summary["online_episodes"] == 4 and summary["kept"] >= 1
    assert sum(summary["kept_pads"].values()) == summary["kept"]
    played = open_store(out / "round1" / "episodes")
    assert played.metadata(0)["rollout_seed"] == PFT_SEED + 1 + ROUND_SEED_STEP
    assert same(out, out / "round1" / "model")
    meta = json.loads((out / "config.json").read_text())
    assert (meta["stage"], meta["parent"], meta["reward_model"]) == ("preference_ft", str(tiny_stack["sft"]), str(tiny_stack["rm"]))
    assert json.loads((out / "pft_summary.json").read_text())["rounds"] == summary["rounds"]
    changed = {k for k, v in params(tiny_stack["sft"]).items() if not torch.equal(v, params(out)[k])}
    assert changed and all(k.startswith("head.") for k in changed)


def test_preference_fine_tuning_refuses_a_prefs_file_of_another_store(tiny_stack, stored, tmp_path):
    other = tmp_path / "other.jsonl"
    PreferenceSet("another-store", [Preference((0, 1), label="A")]).save(other)
    cfg = PreferenceFTConfig(rest=RestConfig(rounds=1, episodes=4, clone=CLONE))
    with pytest.raises(ValueError, match=re.escape(f"{other} labels the store another-store")):
        run_pft(tiny_stack["sft"], tiny_stack["rm"], stored["store"], other, tmp_path / "pft", cfg)
    assert not (tmp_path / "pft").exists()


@pytest.mark.parametrize("kwargs, match", [({"rounds": -1}, "rounds"), ({"episodes": 0}, "episodes"), ({"soup": 0}, "soup"),
                                           ({"samples_per_start": 0}, "samples_per_start"),
                                           ({"episodes": 10, "samples_per_start": 4}, "must divide episodes"),
                                           ({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"),
                                           ({"temperature": 0.0}, "temperature"), ({"temperature": 1.5}, "temperature")])  # fmt: skip
def test_rest_config_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RestConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"warmup": -1}, "warmup"),
                                           ({"first_window_share": 1.5}, "first_window_share")])  # fmt: skip
def test_clone_config_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CloneConfig(**kwargs)


def test_preference_fine_tuning_needs_its_stored_round():
    with pytest.raises(ValueError, match="rest.rounds must be >= 1"):
        PreferenceFTConfig(rest=RestConfig(rounds=0))
