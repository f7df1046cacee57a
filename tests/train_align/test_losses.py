import math

import torch

from agentalign.train.losses import (advantage_scale, baseline, clipped_surrogate_loss, discounted_returns, dpo_loss,
                                     explained_variance, kl_penalty, lambda_returns, reinforce_loss, value_loss)


def test_baselines():
    r = torch.tensor([1.0, 2.0, 6.0])
    assert torch.equal(baseline(r, "none"), torch.zeros(3))
    assert torch.allclose(baseline(r, "mean"), torch.full((3,), 3.0))
    assert torch.allclose(baseline(r, "loo"), torch.tensor([4.0, 3.5, 1.5]))
    r4 = torch.tensor([1.0, 2.0, 6.0, 10.0])
    # groups {0, 2} and {1}: 0 and 2 see each other; 1 is alone, so it gets the batch LOO (17/3).
    assert torch.allclose(baseline(r4, "start", torch.tensor([7, 3, 7, 9])), torch.tensor([6.0, 17 / 3, 1.0, 3.0]))


def test_advantage_scale_by_hand():
    r, b = torch.tensor([1.0, 2.0, 6.0]), torch.tensor([0.0, 1.0, 2.0])  # advantages 1, 1, 4: std sqrt(3)
    assert torch.allclose(advantage_scale(r, b, eps=0.0), torch.full((3,), 1 / math.sqrt(3)))
    assert torch.allclose(advantage_scale(r, r, eps=1e-3), torch.full((3,), 1e3))  # no signal: bounded
    assert torch.equal(advantage_scale(r[:1], b[:1]), torch.ones(1))  # one episode has no spread
    # groups {0, 1}: advantages 1, 1 -> std 0; {2, 3}: 4, 0 -> std sqrt(8); {4} alone: the batch's
    r5, b5 = torch.tensor([1.0, 2.0, 6.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 2.0, 0.0, 3.0])
    batch_std = float(torch.tensor([1.0, 1.0, 4.0, 0.0, 0.0]).std())
    expected = torch.tensor([1 / 0.5, 1 / 0.5, 1 / (math.sqrt(8) + 0.5), 1 / (math.sqrt(8) + 0.5), 1 / (batch_std + 0.5)])
    assert torch.allclose(advantage_scale(r5, b5, torch.tensor([3, 3, 1, 1, 7]), eps=0.5), expected, atol=1e-6)


def test_discounted_returns():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    g = discounted_returns(torch.tensor([1.0, 2.0]), mask, 0.5)
    assert torch.allclose(g, torch.tensor([[0.25, 0.5, 1.0], [1.0, 2.0, 0.0]]))
    assert torch.allclose(discounted_returns(torch.tensor([3.0]), mask[:1], 1.0), torch.full((1, 3), 3.0))


def test_reinforce_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    returns = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    base = torch.tensor([0.25, 0.25])
    # episode 0: -(-1 - 2) * 0.75 = 2.25; episode 1: -(-0.5) * (-0.25) = -0.125
    assert abs(float(reinforce_loss(logp, returns, mask, base)) - (2.25 - 0.125) / 2) < 1e-6
    assert abs(float(kl_penalty(torch.tensor([[0.1, 0.2], [0.3, 5.0]]), mask)) - (0.3 + 0.3) / 2) < 1e-6


def test_a_per_step_baseline_by_hand():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    returns = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    base = torch.tensor([[0.5, 1.0], [0.25, 9.0]])  # V(h_t): step 1 of episode 0 already knows its outcome
    # episode 0: -(-1 * 0.5 + -2 * 0) = 0.5; episode 1: -(-0.5 * -0.25) = -0.125; padding counts nothing
    assert abs(float(reinforce_loss(logp, returns, mask, base)) - (0.5 - 0.125) / 2) < 1e-6
    # A (B,) baseline is the same as that baseline at every step.
    flat = torch.tensor([0.25, 0.5])
    assert torch.allclose(reinforce_loss(logp, returns, mask, flat), reinforce_loss(logp, returns, mask, flat[:, None].expand(2, 2)))


def test_value_loss_and_explained_variance_by_hand():
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    returns = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    values = torch.tensor([[0.5, 1.0], [0.5, 7.0]])
    assert abs(float(value_loss(values, returns, mask)) - (0.25 + 0 + 0.25) / 3) < 1e-6
    # real-step returns 1, 1, 0 (var 1/3); residuals 0.5, 0, -0.5 (var 1/4): 1 - 3/4
    assert abs(explained_variance(values, returns, mask) - 0.25) < 1e-6
    assert explained_variance(returns, returns, mask) == 1.0
    assert math.isnan(explained_variance(values, torch.ones(2, 2), mask))  # equal returns: nothing to explain


def test_lambda_returns_by_hand():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    R = torch.tensor([1.0, 2.0])
    V = torch.tensor([[0.2, 0.4, 0.8], [0.5, 0.6, 9.0]])
    # lam = 1: the Monte Carlo returns; lam = 0: the next step's V, and R on the last step
    assert torch.allclose(lambda_returns(R, V, mask, 0.5, 1.0), discounted_returns(R, mask, 0.5))
    assert torch.allclose(lambda_returns(R, V, mask, 1.0, 0.0), torch.tensor([[0.4, 0.8, 1.0], [0.6, 2.0, 0.0]]))
    # lam = 0.5, gamma = 1, episode 0: G_2 = 1; G_1 = 0.5 * 0.8 + 0.5 * 1 = 0.9; G_0 = 0.5 * 0.4 + 0.5 * 0.9 = 0.65
    assert torch.allclose(lambda_returns(R, V, mask, 1.0, 0.5)[0], torch.tensor([0.65, 0.9, 1.0]))


def test_clipped_surrogate_by_hand():
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    returns = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    base = torch.tensor([0.5, 0.5])  # advantages: +0.5 (episode 0), -0.5 (episode 1)
    old = torch.zeros(2, 2)
    new = torch.tensor([[math.log(2.0), math.log(0.5)], [math.log(0.5), 3.0]])
    # episode 0 (A = +0.5): rho 2 -> clipped to 1.2 -> 0.6; rho 0.5 -> min(0.25, 0.4) = 0.25
    # episode 1 (A = -0.5): rho 0.5 -> min(-0.25, -0.4) = -0.4; the masked step counts nothing
    expected = -((0.6 + 0.25) + (-0.4)) / 2
    assert abs(float(clipped_surrogate_loss(new, old, returns, mask, base, 0.2)) - expected) < 1e-6
    # At rho = 1 its gradient is REINFORCE's.
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    clipped_surrogate_loss(logp, logp.detach(), returns, mask, base, 0.2).backward()
    g1 = logp.grad.clone()
    logp.grad = None
    reinforce_loss(logp, returns, mask, base).backward()
    assert torch.allclose(g1, logp.grad)


def test_dpo_loss_by_hand():
    loss, m = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), 0.5)
    z = 0.5 * ((-10 + 11) - (-12 + 11))  # = 1
    assert abs(float(loss) - (-math.log(1 / (1 + math.exp(-z))))) < 1e-6
    assert m["dpo/accuracy"] == 1.0 and abs(m["dpo/margin"] - 1.0) < 1e-6
