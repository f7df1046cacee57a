"""One run function per stage: the CLI command (typed as a user would), the library function and the
pipeline's stage make the same reward model, sweep and DPO policy from the same seed, bit for bit."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from agentalign.cli import app
from agentalign.config import build_config
from agentalign.data import StoreWriter, WriterConfig
from agentalign.data.testing import synthetic_episode
from agentalign.models import Policy, model_preset
from agentalign.pipeline import stages
from agentalign.prefs import Preference, PreferenceSet
from agentalign.train.dpo import DPOConfig, run_dpo
from agentalign.train.reward import RewardTrainConfig, label_synthetic, run_reward, run_sweep

SIZE = 16  # frames and policy: small enough that every run below takes a second or two
REWARD_SET = ["max_steps=25", "traj_per_step=6", "ensemble=2", "seed=3"]
DPO_SET = ["steps=15", "batch_pairs=8", "seed=1"]
cli = CliRunner()


def invoke(*args: str) -> str:
    res = cli.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A pipeline run folder as the reward, sweep and dpo stages find it: sft/model,
    rollouts/store (18 trajectories of 5-60 steps), prefs/prefs.jsonl (12 train / 6 test)."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    Policy(model_preset("tiny", image_size=SIZE, encoder_stages=0)).save_pretrained(root / "sft" / "model", stage="sft")
    with StoreWriter(root / "rollouts" / "store", image_size=(SIZE, SIZE), config=WriterConfig()) as w:
        for seed in range(18):
            w.add(synthetic_episode(seed, length=5 + (seed * 7) % 56, size=(SIZE, SIZE)))
    label_synthetic(root / "rollouts" / "store", "left", 12, root / "prefs" / "prefs.jsonl")
    return root


def stage_run(root: Path, **cfg) -> SimpleNamespace:
    """What the stage functions read of a pipeline `Run`: its folders and its config."""
    return SimpleNamespace(dir=lambda name: root / name, cfg=SimpleNamespace(**cfg))


def same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def metrics(d: Path) -> dict:
    m = json.loads((d / "metrics.json").read_text())
    m.pop("seconds")
    return m


def test_prefs_synth_cli_and_library_write_the_same_file(run_dir, tmp_path):
    out = invoke("prefs", "synth", "--trajectories", run_dir / "rollouts" / "store", "--target", "left",
                 "--out", tmp_path / "p.jsonl", "--train", "12")  # fmt: skip
    assert "12 train / 6 test trajectories (66 / 15 comparisons)" in out
    assert (tmp_path / "p.jsonl").read_text() == (run_dir / "prefs" / "prefs.jsonl").read_text()


def test_reward_cli_library_and_pipeline_stage_agree(run_dir, tmp_path):
    store, prefs, sft = run_dir / "rollouts" / "store", run_dir / "prefs" / "prefs.jsonl", run_dir / "sft" / "model"
    out = invoke("reward", "train", "--trajectories", store, "--prefs", prefs, "--out", tmp_path / "cli",
                 "--policy", sft, "--subset", 9, *[x for kv in REWARD_SET for x in ("--set", kv)])  # fmt: skip
    assert "36 comparisons" in out and "accuracy" in out
    cfg = build_config(RewardTrainConfig, {}, REWARD_SET)
    result = run_reward(store, prefs, tmp_path / "lib", cfg, policy=sft, trajectories=9)
    assert result["comparisons"] == 36 and result["members"] == 2 and 0 <= result["reward/accuracy"] <= 1
    staged = stages.reward_model(stage_run(run_dir, reward=cfg), "reward", "prefs", trajectories=9)
    assert staged == result
    for other in (tmp_path / "lib", run_dir / "reward" / "model"):
        same_weights(tmp_path / "cli", other)
        assert metrics(tmp_path / "cli") == metrics(other)
        assert json.loads((other / "run_config.json").read_text()) == json.loads((tmp_path / "cli" / "run_config.json").read_text())
    # The subset comes from (seed, subset size): another size trains on other trajectories.
    other = run_reward(store, prefs, tmp_path / "ten", cfg, policy=sft, cache=tmp_path / "lib" / "cache", trajectories=10)
    assert other["comparisons"] == 45


def test_sweep_cli_library_and_pipeline_stage_agree(run_dir, tmp_path):
    store, prefs, sft = run_dir / "rollouts" / "store", run_dir / "prefs" / "prefs.jsonl", run_dir / "sft" / "model"
    out = invoke("reward", "sweep", "--trajectories", store, "--prefs", prefs, "--out", tmp_path / "cli", "--policy", sft,
                 "--seeds", 2, "--points", 2, "--set", "max_steps=10", "--set", "traj_per_step=6")  # fmt: skip
    assert "largest set agent" in out
    cfg = build_config(RewardTrainConfig, {}, ["max_steps=10", "traj_per_step=6"])
    s = run_sweep(store, prefs, tmp_path / "lib", cfg, policy=sft, encoders=("agent", "random"), seeds=2, points=2)
    sweep_cfg = SimpleNamespace(encoders=("agent", "random"), seeds=2, points=2, max_steps=10, traj_per_step=None)
    staged = stages.sweep(stage_run(run_dir, reward=build_config(RewardTrainConfig, {}, ["traj_per_step=6"]), sweep=sweep_cfg))
    assert staged == s and s["points"] == 8 and set(s["largest"]) == {"agent", "random"}
    rows = [json.loads((d / "sweep.json").read_text())["rows"] for d in (tmp_path / "cli", tmp_path / "lib", run_dir / "sweep")]
    assert rows[0] == rows[1] == rows[2] and (tmp_path / "cli" / "sweep.png").is_file()


def test_dpo_cli_library_and_pipeline_stage_agree(run_dir, tmp_path):
    store, prefs, sft = run_dir / "rollouts" / "store", run_dir / "prefs" / "prefs.jsonl", run_dir / "sft" / "model"
    out = invoke("dpo", "--sft", sft, "--trajectories", store, "--prefs", prefs, "--out", tmp_path / "cli",
                 *[x for kv in DPO_SET for x in ("--set", kv)])  # fmt: skip
    assert "strict pairs, 15 steps" in out
    cfg = build_config(DPOConfig, {}, DPO_SET)
    result = run_dpo(sft, store, prefs, tmp_path / "lib", cfg)
    staged = stages.dpo(stage_run(run_dir, dpo=cfg))
    assert result["pairs"] > 0 and {k: v for k, v in staged.items() if k != "seconds"} == {
        k: v for k, v in result.items() if k != "seconds"}  # fmt: skip
    for other in (tmp_path / "lib", run_dir / "dpo" / "model"):
        same_weights(tmp_path / "cli", other)
        assert metrics(tmp_path / "cli") == metrics(other)
    # DPO reads the embeddings a reward run cached, whatever the reward run's seed (no re-keying).
    run_reward(store, prefs, tmp_path / "rm", RewardTrainConfig(seed=3, max_steps=1), policy=sft, cache=tmp_path / "shared")
    cached = tmp_path / "shared" / "embeddings-agent.safetensors"
    written = cached.stat().st_mtime_ns
    invoke("dpo", "--sft", sft, "--trajectories", store, "--prefs", prefs, "--out", tmp_path / "again",
           "--cache", tmp_path / "shared", *[x for kv in DPO_SET for x in ("--set", kv)])  # fmt: skip
    assert cached.stat().st_mtime_ns == written and not (tmp_path / "again" / "cache").exists()
    same_weights(tmp_path / "cli", tmp_path / "again")


def test_dpo_skips_when_every_training_comparison_is_a_tie(run_dir, tmp_path):
    store = run_dir / "rollouts" / "store"
    dataset_id = PreferenceSet.load(run_dir / "prefs" / "prefs.jsonl").dataset_id
    ties = PreferenceSet(dataset_id, [Preference(tuple(range(12)), ranking=(0,) * 12)], meta={"train_ids": list(range(12)),
                                                                                              "test_ids": []})  # fmt: skip
    ties.save(tmp_path / "ties.jsonl")
    s = run_dpo(run_dir / "sft" / "model", store, tmp_path / "ties.jsonl", tmp_path / "lib", DPOConfig(steps=2))
    assert s == {"skipped": "no strict preference pairs in the training split"}
    res = cli.invoke(app, ["dpo", "--sft", str(run_dir / "sft" / "model"), "--trajectories", str(store), "--prefs",
                           str(tmp_path / "ties.jsonl"), "--out", str(tmp_path / "cli")])  # fmt: skip
    assert res.exit_code == 2 and "DPO did not run: no strict preference pairs" in res.output


def test_bad_input_is_one_line_naming_the_files(run_dir, tmp_path):
    store, prefs, sft = run_dir / "rollouts" / "store", run_dir / "prefs" / "prefs.jsonl", run_dir / "sft" / "model"
    other = PreferenceSet("another-store", [Preference((0, 1), label="A")])
    other.save(tmp_path / "other.jsonl")
    beyond = PreferenceSet(PreferenceSet.load(prefs).dataset_id, [Preference((0, 40), label="A")])
    beyond.save(tmp_path / "beyond.jsonl")
    cases = [
        (["reward", "train", "--prefs", tmp_path / "other.jsonl", "--policy", sft],
         f"{tmp_path / 'other.jsonl'} labels the store another-store, but {store} is"),
        (["reward", "train", "--prefs", tmp_path / "beyond.jsonl", "--policy", sft], "names trajectories [40]"),
        (["reward", "train", "--prefs", prefs], "the agent encoder needs a policy checkpoint"),
        (["reward", "train", "--prefs", prefs, "--policy", sft, "--subset", 13], "must lie in 2..12, got 13"),
        (["reward", "train", "--prefs", prefs, "--encoder", "pixels"], "encoder: 'pixels' is not one of"),
        (["reward", "train", "--prefs", prefs, "--set", "head=sum"], "unknown config key 'head'"),
        (["reward", "train", "--prefs", prefs, "--set", "pad=last"], "unknown config key 'pad'"),
        (["reward", "sweep", "--prefs", prefs, "--encoders", "agent,pixels"], "encoders must be some of agent, random"),
        (["dpo", "--sft", sft, "--prefs", tmp_path / "other.jsonl"], "labels the store another-store"),
        (["dpo", "--sft", sft, "--prefs", prefs, "--set", "beta=0"], "beta must be positive"),
    ]
    for args, msg in cases:
        res = cli.invoke(app, [str(a) for a in [*args, "--trajectories", store, "--out", tmp_path / "x"]])
        assert res.exit_code == 2 and msg in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    with pytest.raises(ValueError, match="labels the store another-store"):
        run_reward(store, tmp_path / "other.jsonl", tmp_path / "y", RewardTrainConfig(), policy=sft)
