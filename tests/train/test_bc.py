"""Behaviour cloning: the loss against hand-computed values, small real runs on a generated store,
head-only training, determinism, exact resume, and the checks on bad input."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from agentalign.config import ConfigError, build_config
from agentalign.models import Policy, model_preset
from agentalign.models.distribution import N_LOGITS, ActionDistribution
from agentalign.train import bc as bc_module
from agentalign.train.bc import BC_PRESETS, BCConfig, bc_loss, bc_preset, previous_actions, train_bc
from agentalign.io import read_metrics
from agentalign.train.common import adamw_param_groups, lr_at, seed_everything


def smoke(store, **kw) -> BCConfig:
    return bc_preset("smoke", data=str(store), **kw)


def params(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def initial_params(cfg: BCConfig) -> dict[str, torch.Tensor]:
    """The parameters a from-scratch run starts from (the trainer seeds, then builds the policy)."""
    seed_everything(cfg.seed)
    return {k: v.clone() for k, v in bc_module.build_policy(cfg, torch.device("cpu")).state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- the loss ----------------------------------------------------------------------------------


def test_bc_loss_against_hand_computed_values():
    logits = torch.zeros(1, 2, N_LOGITS, requires_grad=True)
    with torch.no_grad():
        logits[0, 0, 1] = math.log(3)  # button 0: p(pressed) = 3 / (1 + 3)
        logits[0, 1] = 50.0 * torch.randn(N_LOGITS)  # a wild step that the mask leaves out
    actions = torch.zeros(1, 2, 16, dtype=torch.long)
    actions[0, 0, 0] = 1  # button 0 pressed, the others up
    actions[0, :, 12:] = 5  # sticks at rest
    mask = torch.tensor([[True, False]])

    loss, m = bc_loss(logits, actions, mask)
    # Step 0: -log(3/4) for button 0, log 2 for the 11 uniform buttons, log 11 for the 4 sticks.
    want = (math.log(4 / 3) + 11 * math.log(2) + 4 * math.log(11)) / 16
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert m["nll"].item() == pytest.approx(16 * want, rel=1e-6)
    # Argmax: button 0 -> 1 (right), other buttons tie -> 0 (right), sticks tie -> bin 0 (wrong).
    assert m["accuracy"].item() == pytest.approx(12 / 16)
    assert m["accuracy_per_head"].tolist() == [1.0] * 12 + [0.0] * 4
    assert m["exact"].item() == 0.0 and m["steps"].item() == 1
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0  # the masked step gets no gradient

    # The same numbers as the policy's own distribution.
    lp = ActionDistribution(logits.detach()).log_prob_per_head(actions)  # (1, 2, 16)
    assert loss.item() == pytest.approx(-lp[0, 0].mean().item(), rel=1e-6)


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

    cfg = smoke(store)
    policy = bc_module.build_policy(cfg, torch.device("cpu"))
    assert torch.equal(policy.head[-1].bias.detach(), bc_module.action_log_frequencies(StoreReader(store)))
    off = bc_module.build_policy(replace(cfg, action_prior_init=False), torch.device("cpu"))
    assert torch.count_nonzero(off.head[-1].bias) == 0
    policy.save_pretrained(tmp_path / "p")
    policy.head[-1].bias.data.add_(1.0)
    policy.save_pretrained(tmp_path / "q")
    from_init = bc_module.build_policy(replace(cfg, init=str(tmp_path / "q")), torch.device("cpu"))
    assert torch.equal(from_init.head[-1].bias, policy.head[-1].bias)  # the checkpoint's, not the prior


def test_bc_loss_with_nothing_masked_in_is_zero_not_nan():
    logits = torch.randn(2, 3, N_LOGITS, requires_grad=True)
    loss, m = bc_loss(logits, torch.zeros(2, 3, 16, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and torch.isfinite(m["accuracy"])
    loss.backward()


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
    for name, cfg in BC_PRESETS.items():
        assert cfg.window <= cfg.model.context, name
    with pytest.raises(ValueError, match="window"):
        BCConfig(model=model_preset("tiny"), window=9)
    with pytest.raises(ValueError, match="lr"):
        BCConfig(lr=0)
    with pytest.raises(ConfigError, match="train_only"):
        build_config(BCConfig, {"train_only": "trunk"})
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        build_config(BCConfig, overrides=["stepz=3"])
    cfg = build_config(BCConfig, {"model": {"dropout": 0.1}}, ["steps=7", "compile=none"], base=BC_PRESETS["smoke"])
    assert cfg.steps == 7 and cfg.model.dropout == 0.1 and cfg.model.width == 32 and cfg.compile is None


# -- training runs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(store, tmp_path_factory):
    """A finished smoke run: (config, folder, summary)."""
    out = tmp_path_factory.mktemp("runs") / "pretrained"
    cfg = smoke(store, steps=4)
    return cfg, out, train_bc(cfg, out, progress=False)


def test_a_short_run_trains_and_writes_its_outputs(pretrained):
    cfg, out, summary = pretrained
    assert math.isfinite(summary["final_loss"]) and summary["steps"] == 4 and summary["resumed_from"] == 0
    before, after = initial_params(cfg), params(out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len(before)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("train/loss", "train/accuracy", "train/lr", "train/grad_norm", "train/frames_per_s"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[0]["train/lr"] == pytest.approx(cfg.lr / cfg.warmup)  # warm-up
    meta = json.loads((out / "config.json").read_text())
    assert meta["stage"] == "smoke" and meta["step"] == 4 and meta["parent"] is None and len(meta["dataset_id"]) == 32
    assert json.loads((out / "run_config.json").read_text())["lr"] == cfg.lr
    assert Policy.from_pretrained(out).cfg == cfg.model
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


def test_a_finished_run_returns_at_once_and_another_config_is_refused(pretrained):
    cfg, out, summary = pretrained
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = train_bc(cfg, out, progress=False)
    assert again["already_finished"] and again["final_loss"] == summary["final_loss"]
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    # Loader workers or log frequency do not change results: allowed.
    assert train_bc(replace(cfg, num_workers=1, log_every=2), out, progress=False)["already_finished"]
    with pytest.raises(ValueError, match=r"different config \(lr: 0.0003 there, 0.001 now\)"):
        train_bc(replace(cfg, lr=1e-3), out, progress=False)


@pytest.mark.parametrize("train_only,trained", [("head", ("head.",)),
                                                 ("transformer", ("action_embed.", "bos", "pos", "blocks.", "ln_f.", "head."))])  # fmt: skip
def test_partial_training_changes_only_what_it_trains(pretrained, store, tmp_path, train_only, trained):
    _, base_dir, _ = pretrained
    cfg = smoke(store, steps=3, train_only=train_only, stage="preference").with_init(base_dir)
    train_bc(cfg, tmp_path, progress=False)
    assert all(math.isfinite(r["train/loss"]) for r in read_metrics(tmp_path))
    before, after = params(base_dir), params(tmp_path)
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same != k.startswith(trained), k
    assert json.loads((tmp_path / "config.json").read_text())["parent"] == str(base_dir.resolve())


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
    cfg = smoke(store, steps=3, train_only="transformer", augment=False, stage="preference").with_init(base_dir)
    assert bc_module.uses_feature_cache(cfg) and not bc_module.uses_feature_cache(replace(cfg, augment=True))
    train_bc(cfg, tmp_path / "cached", progress=False)
    train_bc(replace(cfg, cache_features=False), tmp_path / "encoder", progress=False)
    cached, plain, before = params(tmp_path / "cached"), params(tmp_path / "encoder"), params(base_dir)
    assert any(not torch.equal(cached[k], before[k]) for k in cached)
    for k in cached:
        torch.testing.assert_close(cached[k], plain[k], rtol=1e-4, atol=1e-5, msg=k)
        if k.startswith(("encoder.", "obs_proj.")):
            assert torch.equal(cached[k], before[k]), k
    train_bc(cfg, tmp_path / "again", progress=False)  # and it is reproducible
    assert_same(cached, params(tmp_path / "again"))


def test_same_seed_same_parameters_other_seed_other_parameters(store, tmp_path):
    cfg = smoke(store, steps=3)
    train_bc(cfg, tmp_path / "a", progress=False)
    train_bc(replace(cfg, num_workers=1), tmp_path / "b", progress=False)  # a loader process changes nothing
    train_bc(replace(cfg, seed=1), tmp_path / "c", progress=False)
    assert_same(params(tmp_path / "a"), params(tmp_path / "b"))
    assert not torch.equal(params(tmp_path / "a")["head.2.weight"], params(tmp_path / "c")["head.2.weight"])


class Crash(Exception):
    pass


def test_resume_after_a_crash_is_bit_identical_to_an_uninterrupted_run(store, tmp_path, monkeypatch):
    # Dropout on: the resumed run must also restore the global torch RNG exactly.
    cfg = smoke(store, steps=7, checkpoint_every=3, model=model_preset("tiny", dropout=0.1))
    straight = tmp_path / "straight"
    train_bc(cfg, straight, progress=False)

    broken = tmp_path / "broken"
    real, calls = bc_module.previous_actions, []

    def crash_at_step_5(actions):
        calls.append(1)
        if len(calls) == 5:  # after the checkpoint at step 3 and a logged step 4
            raise Crash
        return real(actions)

    monkeypatch.setattr(bc_module, "previous_actions", crash_at_step_5)
    with pytest.raises(Crash):
        train_bc(cfg, broken, progress=False)
    monkeypatch.setattr(bc_module, "previous_actions", real)
    assert json.loads((broken / "train_state" / "latest.json").read_text())["step"] == 3
    assert [r["step"] for r in read_metrics(broken)] == [1, 2, 3, 4]

    summary = train_bc(cfg, broken, progress=False)
    assert summary["resumed_from"] == 3
    assert_same(params(straight), params(broken))
    assert [r["step"] for r in read_metrics(broken)] == list(range(1, 8))  # step 4 once, not twice
    assert [r["train/loss"] for r in read_metrics(broken)] == [r["train/loss"] for r in read_metrics(straight)]
    assert len(list((broken / "train_state").iterdir())) == 2  # latest.json and one snapshot


# -- bad input, caught before any work -----------------------------------------------------------


def test_bad_inputs_are_clear_errors_before_any_work(store, store_32px, pretrained, tmp_path):
    out = tmp_path / "out"
    cases = [
        (smoke(tmp_path / "missing"), r"data: no dataset at .*missing"),
        (smoke(""), r"data: no dataset given"),
        (smoke(tmp_path), r"data: .*manifest"),  # a folder that is not a store
        (smoke(store_32px), r"data: .* holds 32x32 frames but the model takes 64x64 \(model.image_size = 64\)"),
        (replace(smoke(store), init=str(tmp_path / "nothing")), r"init: .*not a checkpoint"),
        (replace(BCConfig(data=str(store)), init=str(pretrained[1])),
         r"init: .* holds a model that differs from model \(width 32 vs 128"),
    ]  # fmt: skip
    for cfg, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            train_bc(cfg, out, progress=False)
        assert not out.exists()  # nothing was started
    with pytest.raises(ValueError, match=r"first_window_share must be a number in \[0, 1\], got -0.1"):
        replace(BC_PRESETS["smoke"], first_window_share=-0.1)
    with pytest.raises(ValueError, match=r"window \(32\) is longer than the model's context"):
        replace(BC_PRESETS["smoke"], window=32)
