import numpy as np
import pytest
import torch

from agentalign.models import ActionDistribution, Policy, PolicyConfig, model_preset
from agentalign.models.distribution import N_LOGITS


def _batch(cfg, b=2, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (b, t, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g)
    act = torch.cat([torch.randint(0, 2, (b, t, 12), generator=g), torch.randint(0, 11, (b, t, 4), generator=g)], -1)
    return obs, act


def test_presets_have_the_papers_sizes():
    assert abs(Policy(model_preset("paper-103m")).num_parameters() / 1e6 - 103) < 2
    assert abs(Policy(model_preset("25m")).num_parameters() / 1e6 - 25) < 3
    assert abs(Policy(model_preset("4m")).num_parameters() / 1e6 - 4) < 0.5


def test_forward_shapes_and_causality():
    cfg = model_preset("tiny")
    m = Policy(cfg).eval()
    obs, act = _batch(cfg, t=6)
    logits = m(obs, act)
    assert logits.shape == (2, 6, N_LOGITS)
    obs2 = obs.clone()
    obs2[:, 4:] = 0  # changing the future must not change the past
    assert torch.allclose(m(obs2, act)[:, :4], logits[:, :4], atol=1e-6)
    assert not torch.allclose(m(obs2, act)[:, 4:], logits[:, 4:])


def test_encoding_once_equals_the_full_forward():
    cfg = model_preset("tiny")
    m = Policy(cfg).eval()
    obs, act = _batch(cfg)
    z = m.encode(obs)
    assert torch.allclose(m.head(m.forward_embedded(z, act)), m(obs, act), atol=1e-6)


def test_last_only_is_the_full_pass_at_the_last_step():
    cfg = model_preset("tiny")
    m = Policy(cfg).train()  # dropout is 0 in the preset: train mode takes the same path the update does
    obs, act = _batch(cfg, t=7)
    z = m.encode(obs)
    full = m.forward_embedded(z, act)  # (2, 7, width)
    last = m.forward_embedded(z, act, last_only=True)  # (2, 1, width)
    assert last.shape == (2, 1, cfg.width)
    assert torch.allclose(last, full[:, -1:], atol=1e-5)


def test_distribution_matches_hand_computation():
    logits = torch.zeros(1, N_LOGITS)
    logits[0, 0:2] = torch.tensor([0.0, np.log(3.0)])  # dash: p(1) = 3/4
    d = ActionDistribution(logits)
    a = torch.tensor([[1] + [0] * 11 + [5, 5, 5, 5]])
    expected = np.log(0.75) + 11 * np.log(0.5) + 4 * np.log(1 / 11)
    assert torch.allclose(d.log_prob(a), torch.tensor([expected], dtype=torch.float32), atol=1e-5)
    h_dash = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert torch.allclose(d.entropy(), torch.tensor([h_dash + 11 * np.log(2) + 4 * np.log(11)], dtype=torch.float32), atol=1e-5)
    q = ActionDistribution(torch.zeros(1, N_LOGITS))
    kl = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    assert torch.allclose(d.kl(q), torch.tensor([kl], dtype=torch.float32), atol=1e-6)
    assert d.kl(d).abs().max() < 1e-6
    s = d.sample(torch.Generator().manual_seed(0))
    assert s.shape == (1, 16) and (s[:, 12:] <= 10).all()


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    cfg = model_preset("tiny")
    m = Policy(cfg)
    m.save_pretrained(tmp_path / "ck", stage="test")
    m2 = Policy.from_pretrained(tmp_path / "ck")
    assert m2.cfg == cfg
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_inputs_are_clear(tmp_path):
    cfg = model_preset("tiny")
    m = Policy(cfg)
    obs, act = _batch(cfg, t=cfg.context + 1)
    with pytest.raises(ValueError, match="longer than the model's"):
        m(obs, act)
    with pytest.raises(ValueError, match="32x32 but the model takes 64x64"):
        m.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of 64"):
        PolicyConfig(image_size=96)
    with pytest.raises(ValueError, match="no config.json"):
        Policy.from_pretrained(tmp_path)
    m.save_pretrained(tmp_path / "ck")
    import json

    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["model"]["width"] = 64
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="size mismatch|does not match"):
        Policy.from_pretrained(tmp_path / "ck")
