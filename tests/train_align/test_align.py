"""Online alignment (train/align.py): REINFORCE, then ReST rounds, then a sharpen, on a tiny stack."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from agentalign.data import open_store
from agentalign.train.align import AlignConfig, run_align
from agentalign.train.reinforce import ReinforceConfig
from agentalign.train.rest import ALIGN_SEED, ROUND_SEED_STEP, CloneConfig, RestConfig

from .helpers import params, parent, same

CLONE = CloneConfig(steps=2, batch_size=4, window=8, warmup=1, lr=1e-2, train_only="transformer", first_window_share=0.5)
CFG = AlignConfig(reinforce=ReinforceConfig(episodes=8, batch_episodes=4, lr=1e-2),
                  rest=RestConfig(rounds=2, episodes=4, samples_per_start=2, keep=0.5, clone=CLONE),
                  sharpen=RestConfig(rounds=1, episodes=4, keep=0.5, temperature=0.3, clone=CLONE), seed=0)  # fmt: skip


def _rows(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


def test_reinforce_then_rest_rounds_then_a_sharpen_and_a_resume_after_reinforce(tiny_stack, tmp_path):
    out, calls = tmp_path / "align", []
    args = (tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], out, CFG, "left")
    summary = run_align(*args, progress=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(4, 8), (8, 8)]  # REINFORCE's progress: episodes done, of
    assert {"reinforce", "rest", "sharpen"} <= set(summary) and summary["target"] == "left"
    assert summary["reinforce"]["episodes"] == 8 and summary["reinforce"]["updates"] == 2
    assert (summary["rest"]["rounds"], summary["rest"]["ranked"], summary["rest"]["temperature"]) == (2, 8, 1.0)
    assert (summary["sharpen"]["rounds"], summary["sharpen"]["ranked"], summary["sharpen"]["temperature"]) == (1, 4, 0.3)
    assert summary["online_episodes"] == 20 == CFG.online_episodes
    assert summary["online_episodes"] == summary["reinforce"]["episodes"] + summary["rest"]["ranked"] + summary["sharpen"]["ranked"]
    # Each step starts from the last: rest round 0 from REINFORCE's policy, the sharpen from round 1's clone.
    assert parent(out / "rest" / "round0" / "model") == str((out / "reinforce").resolve())
    assert parent(out / "rest" / "round1" / "model") == str((out / "rest" / "round0" / "model").resolve())
    assert parent(out / "sharpen" / "round2" / "model") == str((out / "rest" / "round1" / "model").resolve())
    assert not same(out / "reinforce", tiny_stack["sft"])
    # The sharpen's seeds continue the rounds' (round 2), at its own temperature.
    sharp = open_store(out / "sharpen" / "round2" / "episodes")
    assert {sharp.metadata(i)["rollout_seed"] for i in range(4)} == {ALIGN_SEED + 2 * ROUND_SEED_STEP}
    assert {sharp.metadata(i)["temperature"] for i in range(4)} == {0.3}
    # The final model: the sharpen's last clone.
    assert same(out, out / "sharpen" / "round2" / "model")
    meta = json.loads((out / "config.json").read_text())
    assert (meta["stage"], meta["parent"], meta["target"]) == ("align", str(tiny_stack["sft"]), "left")
    # metrics.jsonl: REINFORCE's two batches, then one row per ReST round at T = 1 (not the sharpen's).
    rows = _rows(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r["align/episodes"] for r in rows] == [4, 8, 12, 16]
    assert [r.get("align/rest_round") for r in rows] == [None, None, 1, 2]
    assert rows[:2] == _rows(out / "reinforce")
    for r, played in zip(rows[2:], summary["rest"]["by_round"]):
        assert r["align/success"] == played["played_pads"].get("left", 0) / 4
        assert r["align/reward_return"] == pytest.approx(played["mean_score_all"])
    assert json.loads((out / "align_summary.json").read_text())["online_episodes"] == 20

    # Killed after REINFORCE: the rounds and the final model are gone, REINFORCE's policy is there.
    want, metrics = params(out), (out / "metrics.jsonl").read_text()
    for d in ("rest", "sharpen"):
        shutil.rmtree(out / d)
    (out / "model.safetensors").unlink()
    (out / "align_summary.json").unlink()
    calls.clear()
    again = run_align(*args, progress=lambda *a: calls.append(a))
    assert calls == []  # REINFORCE not replayed
    assert again["reinforce"] == summary["reinforce"]
    assert again["rest"] == summary["rest"] and again["sharpen"] == summary["sharpen"]
    got = params(out)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert (out / "metrics.jsonl").read_text() == metrics  # the rounds logged once


def test_rest_rounds_alone_start_from_the_policy_and_log_their_curve(tiny_stack, tmp_path):
    cfg = replace(CFG, reinforce=ReinforceConfig(episodes=0), sharpen=RestConfig(rounds=0))
    out = tmp_path / "align"
    summary = run_align(tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], out, cfg, "left")
    assert "reinforce" not in summary and "sharpen" not in summary and summary["online_episodes"] == 8
    assert parent(out / "rest" / "round0" / "model") == str(tiny_stack["sft"].resolve())
    assert same(out, out / "rest" / "round1" / "model")
    rows = _rows(out)
    assert [(r["step"], r["align/episodes"], r["align/rest_round"]) for r in rows] == [(0, 4, 1), (1, 8, 2)]


def test_nothing_to_align_with():
    with pytest.raises(ValueError, match="nothing to align with"):
        AlignConfig(reinforce=ReinforceConfig(episodes=0), rest=RestConfig(rounds=0), sharpen=RestConfig(rounds=0))
    assert AlignConfig().reinforce.episodes == 0  # the presets align with ReST; REINFORCE is opt-in


def test_a_reward_model_of_another_agents_embeddings(tiny_stack, tmp_path):
    with pytest.raises(ValueError, match="trained on the embeddings of policy"):
        run_align(tiny_stack["other"], tiny_stack["other"], tiny_stack["rm"], tmp_path / "x", CFG, "left")
    assert not (tmp_path / "x").exists()


def test_another_reinforce_config_in_the_same_folder_runs_reinforce_again_with_fresh_metrics(tiny_stack, tmp_path):
    cfg = replace(CFG, reinforce=ReinforceConfig(episodes=4, batch_episodes=4, lr=1e-2), rest=RestConfig(rounds=0),
                  sharpen=RestConfig(rounds=0))  # fmt: skip
    args = (tiny_stack["sft"], tiny_stack["sft"], tiny_stack["rm"], tmp_path / "align")
    run_align(*args, cfg, "left")
    calls = []
    run_align(*args, replace(cfg, seed=1), "left", progress=lambda *a: calls.append(a))
    assert len(calls) == 1  # run again: its key changed
    assert len(_rows(tmp_path / "align")) == 1
