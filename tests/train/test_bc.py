"""Behaviour cloning: small real runs on a generated store, head-only training, determinism, exact
resume, and the checks on bad input (the loss itself: tests/train_align/test_losses.py)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from agentalign.config import ConfigError, build_config, config_to_dict
from agentalign.data import StoreReader
from agentalign.io import read_metrics
from agentalign.models import Policy, model_preset
from agentalign.models.distribution import N_LOGITS
from agentalign.models.reward import checkpoint_fingerprint
from agentalign.train import bc as bc_module
from agentalign.train.bc import BC_PRESETS, BCConfig, bc_preset, previous_actions, train_bc
from agentalign.train.common import adamw_param_groups, lr_at, seed_everything

TINY = model_preset("tiny")


def smoke(**kw) -> BCConfig:
    return bc_preset("smoke", **kw)


def params(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def initial_params(cfg: BCConfig, data) -> dict[str, torch.Tensor]:
    """The parameters a from-scratch run starts from (the trainer seeds, then builds the policy)."""
    seed_everything(cfg.seed)
    policy = bc_module.build_policy(cfg, TINY, torch.device("cpu"), data=data)
    return {k: v.clone() for k, v in policy.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- pieces ------------------------------------------------------------------------------------


def test_action_log_frequencies_against_hand_counts(tmp_path):
    from agentalign.data import StoreReader, StoreWriter
    from agentalign.data.testing import synthetic_episode
    from agentalign.models.distribution import NVEC, OFFSETS

    ep = synthetic_episode(0, length=4, size=(16, 16))
    ep.actions[:] = 0
    ep.actions[:, 12:] = 5
    ep.actions[:3, 0] = 1  # button 0 pressed on 3 of 4 steps
    ep.actions[0, 12] = 10  # left stick x: bin 10 once, bin 5 three times
    with StoreWriter(tmp_path / "s", image_size=(16, 16)) as w:
        w.add(ep)
    logf = bc_module.action_log_frequencies(StoreReader(tmp_path / "s"), smoothing=1.0)
    assert logf.shape == (N_LOGITS,)
    # Button 0 with add-one counts: (1 + 1, 3 + 1) / 6.
    assert logf[0:2].tolist() == pytest.approx([math.log(2 / 6), math.log(4 / 6)])
    stick = logf[OFFSETS[12]:OFFSETS[12] + NVEC[12]]  # 11 bins, 4 steps: (1, ..., 4 at bin 5, ..., 2 at bin 10) / 15
    assert stick[5].item() == pytest.approx(math.log(4 / 15)) and stick[10].item() == pytest.approx(math.log(2 / 15))
    assert stick[0].item() == pytest.approx(math.log(1 / 15))


def test_a_fresh_model_starts_at_the_data_marginal_and_an_init_model_does_not(store, tmp_path):
    from agentalign.data import StoreReader

    cfg, cpu = smoke(), torch.device("cpu")
    policy = bc_module.build_policy(cfg, TINY, cpu, data=store)
    assert torch.equal(policy.head[-1].bias.detach(), bc_module.action_log_frequencies(StoreReader(store)))
    off = bc_module.build_policy(replace(cfg, action_prior_init=False), TINY, cpu, data=store)
    assert torch.count_nonzero(off.head[-1].bias) == 0
    policy.save_pretrained(tmp_path / "p")
    policy.head[-1].bias.data.add_(1.0)
    policy.save_pretrained(tmp_path / "q")
    from_init = bc_module.build_policy(cfg, TINY, cpu, data=store, init=tmp_path / "q")
    assert torch.equal(from_init.head[-1].bias, policy.head[-1].bias)  # the checkpoint's, not the prior


def test_previous_actions_shift_right_within_the_window():
    a = torch.arange(2 * 3 * 16).view(2, 3, 16)
    p = previous_actions(a)
    assert torch.equal(p[:, 1:], a[:, :-1]) and (p[:, 0] == 0).all()


def test_schedule_and_weight_decay_groups():
    assert lr_at(0, 1.0, 4, 100) == 0.25 and lr_at(3, 1.0, 4, 100) == 1.0 and lr_at(99, 1.0, 4, 100) == 1.0
    assert lr_at(100, 1.0, 0, 100, "cosine") == pytest.approx(0.0) and lr_at(50, 1.0, 0, 100, "cosine") == 0.5
    policy = Policy(model_preset("tiny"))
    decay, keep = adamw_param_groups(policy, 0.1)
    names = {id(p): n for n, p in policy.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "blocks.0.qkv.weight" in decayed and "encoder.stem.weight" in decayed and "head.2.weight" in decayed
    assert not decayed & {"pos", "bos", "action_embed.weight", "ln_f.weight", "blocks.0.qkv.bias"}
    assert keep["weight_decay"] == 0.0


# -- configs -----------------------------------------------------------------------------------


def test_presets_are_valid_and_config_errors_name_the_field():
    for name, cfg in BC_PRESETS.items():  # each fits the model it is meant for
        model = TINY if name == "smoke" else model_preset("cpu")
        assert bc_module.resolve_model(cfg, model, None) == (cfg, model), name
    with pytest.raises(ValueError, match=r"window \(9\) is longer than the model's context \(model.context = 8\)"):
        bc_module.resolve_model(BCConfig(window=9), TINY, None)
    with pytest.raises(ValueError, match="lr"):
        BCConfig(lr=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        BCConfig(steps=0)
    with pytest.raises(ConfigError, match="train_only"):
        build_config(BCConfig, {"train_only": "trunk"})
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        build_config(BCConfig, overrides=["stepz=3"])
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        build_config(BCConfig, overrides=["batch_size=2.5"])
    for key in ("data", "model.width", "init", "stage"):  # train_bc's arguments, not settings
        with pytest.raises(ConfigError, match=f"unknown config key '{key.split('.')[0]}'"):
            build_config(BCConfig, overrides=[f"{key}=1"])
    cfg = build_config(BCConfig, {}, ["steps=7", "compile=none"], base=BC_PRESETS["smoke"])
    assert cfg.steps == 7 and cfg.window == 8 and cfg.compile is None


def test_init_gives_the_model_and_shortens_the_window(pretrained):
    _, base_dir, _ = pretrained
    cfg, model = bc_module.resolve_model(BCConfig(window=32), None, base_dir)
    assert model == TINY and cfg == BCConfig(window=8)


# -- training runs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(store, tmp_path_factory):
    """A finished smoke run: (config, folder, summary)."""
    out = tmp_path_factory.mktemp("runs") / "pretrained"
    cfg = smoke(steps=4)
    return cfg, out, train_bc(cfg, store, out, model=TINY, stage="smoke", progress=False)


def test_a_short_run_trains_and_writes_its_outputs(pretrained, store):
    cfg, out, summary = pretrained
    assert math.isfinite(summary["final_loss"]) and summary["steps"] == 4 and summary["resumed_from"] == 0
    assert summary["stage"] == "smoke"
    before, after = initial_params(cfg, store), params(out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len(before)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("train/loss", "train/accuracy", "train/lr", "train/grad_norm", "train/frames_per_s"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[0]["train/lr"] == pytest.approx(cfg.lr / cfg.warmup)  # warm-up
    meta = json.loads((out / "config.json").read_text())
    assert meta["stage"] == "smoke" and meta["step"] == 4 and meta["parent"] is None and len(meta["dataset_id"]) == 32
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config == {"bc": config_to_dict(cfg), "data": StoreReader(store).dataset_id, "model": config_to_dict(TINY), "init": None,
                          "stage": "smoke"}  # fmt: skip
    assert Policy.from_pretrained(out).cfg == TINY
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


def test_a_finished_run_returns_at_once_and_another_config_is_refused(pretrained, store, tmp_path):
    cfg, out, summary = pretrained
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = train_bc(cfg, store, out, model=TINY, stage="smoke", progress=False)
    assert again["already_finished"] and again["final_loss"] == summary["final_loss"]
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    # Loader workers or log frequency do not change results: allowed.
    assert train_bc(replace(cfg, num_workers=1, log_every=2), store, out, model=TINY, stage="smoke",
                    progress=False)["already_finished"]  # fmt: skip
    # Everything else that makes the run is part of its identity: settings, model, data, stage.
    refused = [
        (dict(cfg=replace(cfg, lr=1e-3)), r"bc.lr: 0.0003 there, 0.001 now"),
        (dict(model=model_preset("tiny", dropout=0.1)), r"model.dropout: 0.0 there, 0.1 now"),
        (dict(stage="pretrain"), r"stage: 'smoke' there, 'pretrain' now"),
    ]
    # The data and the starting checkpoint are identified by content: the same store at another path
    # (moved, or given relative) is the same run.
    shutil.copytree(store, out.parent / "elsewhere", dirs_exist_ok=True)
    assert train_bc(cfg, out.parent / "elsewhere", out, model=TINY, stage="smoke", progress=False)["already_finished"]
    for change, pattern in refused:
        kw = dict(cfg=cfg, data=store, model=TINY, stage="smoke") | change
        with pytest.raises(ValueError, match=r"different config \(" + pattern):
            train_bc(kw.pop("cfg"), kw.pop("data"), out, progress=False, **kw)


@pytest.mark.parametrize("train_only,trained", [("head", ("head.",)),
                                                 ("transformer", ("action_embed.", "bos", "pos", "blocks.", "ln_f.", "head."))])  # fmt: skip
def test_partial_training_changes_only_what_it_trains(pretrained, store, tmp_path, train_only, trained):
    _, base_dir, _ = pretrained
    cfg = smoke(steps=3, train_only=train_only)
    train_bc(cfg, store, tmp_path, init=base_dir, stage="preference", progress=False)
    assert all(math.isfinite(r["train/loss"]) for r in read_metrics(tmp_path))
    before, after = params(base_dir), params(tmp_path)
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same != k.startswith(trained), k
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["parent"] == str(base_dir.resolve()) and meta["stage"] == "preference"
    assert json.loads((tmp_path / "run_config.json").read_text())["init"] == checkpoint_fingerprint(base_dir)


def test_frame_features_are_the_encoders_output_for_every_window(pretrained, store):
    """Windows gathered from the cached features equal the encoder run on the sampler's frames,
    padding included (window 64 is longer than the ~50-step episodes)."""
    from agentalign.data import StoreReader, WindowConfig, WindowSampler
    from agentalign.data.torch_data import batch_to_torch

    _, base_dir, _ = pretrained
    policy = Policy.from_pretrained(base_dir).eval()
    features = bc_module.FrameFeatures(policy, StoreReader(store), torch.device("cpu"), autocast=False, chunk=7)
    batch = batch_to_torch(WindowSampler(store, WindowConfig(window=64, batch_size=6), seed=2).batch(0))
    assert (batch["start"] + 64 > torch.tensor(StoreReader(store).lengths)[batch["episode"]]).any()  # padded
    with torch.no_grad():
        expected = policy.encode(batch["obs"])  # (6, 64, width)
    torch.testing.assert_close(features.gather(batch["episode"], batch["start"], 64), expected, rtol=1e-5, atol=1e-5)


def test_a_clone_on_cached_features_trains_as_one_on_the_encoder(pretrained, store, tmp_path):
    """cache_features changes where z_t comes from, not what is learnt: the same run with and
    without it ends at the same parameters up to float rounding, and the encoder stays frozen."""
    _, base_dir, _ = pretrained
    cfg = smoke(steps=3, train_only="transformer", augment=False)
    assert bc_module.uses_feature_cache(cfg) and not bc_module.uses_feature_cache(replace(cfg, augment=True))
    kw = dict(init=base_dir, stage="preference", progress=False)
    train_bc(cfg, store, tmp_path / "cached", **kw)
    train_bc(replace(cfg, cache_features=False), store, tmp_path / "encoder", **kw)
    cached, plain, before = params(tmp_path / "cached"), params(tmp_path / "encoder"), params(base_dir)
    assert any(not torch.equal(cached[k], before[k]) for k in cached)
    for k in cached:
        torch.testing.assert_close(cached[k], plain[k], rtol=1e-4, atol=1e-5, msg=k)
        if k.startswith(("encoder.", "obs_proj.")):
            assert torch.equal(cached[k], before[k]), k
    train_bc(cfg, store, tmp_path / "again", **kw)  # and it is reproducible
    assert_same(cached, params(tmp_path / "again"))


def test_same_seed_same_parameters_other_seed_other_parameters(store, tmp_path):
    cfg, kw = smoke(steps=3), dict(model=TINY, progress=False)
    train_bc(cfg, store, tmp_path / "a", **kw)
    train_bc(replace(cfg, num_workers=1), store, tmp_path / "b", **kw)  # a loader process changes nothing
    train_bc(replace(cfg, seed=1), store, tmp_path / "c", **kw)
    assert_same(params(tmp_path / "a"), params(tmp_path / "b"))
    assert not torch.equal(params(tmp_path / "a")["head.2.weight"], params(tmp_path / "c")["head.2.weight"])


class Crash(Exception):
    pass


def crash_at_step(n, monkeypatch, run) -> None:
    """Run `run` (a training run) so that it dies at its n-th update, as a killed process would."""
    real, calls = bc_module.previous_actions, []

    def crash(actions):
        calls.append(1)
        if len(calls) == n:
            raise Crash
        return real(actions)

    with monkeypatch.context() as m:
        m.setattr(bc_module, "previous_actions", crash)
        with pytest.raises(Crash):
            run()


def test_resume_after_a_crash_is_bit_identical_to_an_uninterrupted_run(store, tmp_path, monkeypatch):
    # Dropout on: the resumed run must also restore the global torch RNG exactly.
    cfg, kw = smoke(steps=7, checkpoint_every=3), dict(model=model_preset("tiny", dropout=0.1), progress=False)
    straight = tmp_path / "straight"
    train_bc(cfg, store, straight, **kw)

    broken = tmp_path / "broken"
    crash_at_step(5, monkeypatch, lambda: train_bc(cfg, store, broken, **kw))  # after the checkpoint at 3 and a logged 4
    assert json.loads((broken / "train_state" / "latest.json").read_text())["step"] == 3
    assert [r["step"] for r in read_metrics(broken)] == [1, 2, 3, 4]

    summary = train_bc(cfg, store, broken, **kw)
    assert summary["resumed_from"] == 3
    assert_same(params(straight), params(broken))
    assert [r["step"] for r in read_metrics(broken)] == list(range(1, 8))  # step 4 once, not twice
    assert [r["train/loss"] for r in read_metrics(broken)] == [r["train/loss"] for r in read_metrics(straight)]
    latest = json.loads((broken / "train_state" / "latest.json").read_text())
    assert sorted(p.name for p in (broken / "train_state").iterdir()) == sorted(
        ["latest.json", latest["snapshot"], latest["previous"]])  # the newest snapshot and the one before


def test_a_damaged_latest_checkpoint_resumes_from_the_previous_one_bit_identically(store, tmp_path, monkeypatch):
    cfg, kw = smoke(steps=7, checkpoint_every=2), dict(model=model_preset("tiny", dropout=0.1), progress=False)
    straight = tmp_path / "straight"
    train_bc(cfg, store, straight, **kw)

    broken = tmp_path / "broken"
    crash_at_step(5, monkeypatch, lambda: train_bc(cfg, store, broken, **kw))  # after the checkpoints at 2 and 4
    latest = json.loads((broken / "train_state" / "latest.json").read_text())
    assert latest["step"] == 4 and latest["previous"].startswith("step-000000002-")
    damaged = broken / "train_state" / latest["snapshot"] / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a disk that filled up, a copy cut short

    with pytest.warns(UserWarning, match=rf"{damaged} is damaged .*previous checkpoint \(step 2\)"):
        summary = train_bc(cfg, store, broken, **kw)
    assert summary["resumed_from"] == 2
    assert_same(params(straight), params(broken))
    assert [r["step"] for r in read_metrics(broken)] == list(range(1, 8))
    assert [r["train/loss"] for r in read_metrics(broken)] == [r["train/loss"] for r in read_metrics(straight)]
    assert not damaged.parent.exists()


def test_a_damaged_only_checkpoint_is_an_error_naming_it(store, tmp_path, monkeypatch):
    cfg, kw = smoke(steps=4, checkpoint_every=2), dict(model=TINY, progress=False)
    real, calls = bc_module.previous_actions, []

    def crash_at_step_3(actions):
        calls.append(1)
        if len(calls) == 3:
            raise Crash
        return real(actions)

    out = tmp_path / "out"
    monkeypatch.setattr(bc_module, "previous_actions", crash_at_step_3)
    with pytest.raises(Crash):
        train_bc(cfg, store, out, **kw)
    monkeypatch.setattr(bc_module, "previous_actions", real)
    latest = json.loads((out / "train_state" / "latest.json").read_text())
    assert latest["step"] == 2 and latest.get("previous") is None
    damaged = out / "train_state" / latest["snapshot"] / "optimizer.safetensors"
    damaged.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"^{damaged} is damaged \(.+\).*delete {out} or rerun the stage"):
        train_bc(cfg, store, out, **kw)


# -- bad input, caught before any work -----------------------------------------------------------


def test_bad_inputs_are_clear_errors_before_any_work(store, store_32px, pretrained, tmp_path):
    out = tmp_path / "out"
    base_dir = pretrained[1]
    cases = [
        (dict(data=tmp_path / "missing"), r"data: no dataset at .*missing"),
        (dict(data=""), r"data: no dataset given"),
        (dict(data=tmp_path), r"data: .*manifest"),  # a folder that is not a store
        (dict(data=store_32px), r"data: .* holds 32x32 frames but the model takes 64x64 \(model.image_size = 64\)"),
        (dict(model=None, init=tmp_path / "nothing"), r"init: .*not a checkpoint"),
        (dict(init=base_dir), r"give exactly one of model .* and init .*, got both"),
        (dict(model=None), r"give exactly one of model .* and init .*, got neither"),
        (dict(cfg=smoke(window=32)), r"window \(32\) is longer than the model's context \(model.context = 8\)"),
        (dict(stage=""), r"stage must be a non-empty label"),
    ]  # fmt: skip
    for change, pattern in cases:
        kw = dict(cfg=smoke(), data=store, model=TINY, stage="smoke") | change
        with pytest.raises(ValueError, match=pattern):
            train_bc(kw.pop("cfg"), kw.pop("data"), out, progress=False, **kw)
        assert not out.exists()  # nothing was started
    with pytest.raises(ValueError, match=r"first_window_share must be a number in \[0, 1\], got -0.1"):
        replace(BC_PRESETS["smoke"], first_window_share=-0.1)
