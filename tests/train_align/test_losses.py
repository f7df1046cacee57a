"""The training objectives of agentalign.train.losses against hand-computed values."""

import math

import pytest
import torch

from agentalign.models.distribution import N_LOGITS, ActionDistribution
from agentalign.train.losses import baseline, bc_loss, bt_loss, discounted_returns, dpo_loss, kl_penalty, reinforce_loss


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


def test_bc_loss_with_nothing_masked_in_is_zero_not_nan():
    logits = torch.randn(2, 3, N_LOGITS, requires_grad=True)
    loss, m = bc_loss(logits, torch.zeros(2, 3, 16, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and torch.isfinite(m["accuracy"])
    loss.backward()


def test_bt_loss_by_hand():
    r_i, r_j = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    p = torch.tensor([1.0, 1.0, 0.5])  # i preferred, i preferred (against the rewards), a tie
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1)) + math.log(2)) / 3
    assert abs(float(bt_loss(r_i, r_j, p)) - expected) < 1e-6


def test_baselines():
    r = torch.tensor([1.0, 2.0, 6.0])
    assert torch.equal(baseline(r, "none"), torch.zeros(3))
    assert torch.allclose(baseline(r, "mean"), torch.full((3,), 3.0))
    assert torch.allclose(baseline(r, "loo"), torch.tensor([4.0, 3.5, 1.5]))
    r4 = torch.tensor([1.0, 2.0, 6.0, 10.0])
    # groups {0, 2} and {1}: 0 and 2 see each other; 1 is alone, so it gets the batch LOO (17/3).
    assert torch.allclose(baseline(r4, "start", torch.tensor([7, 3, 7, 9])), torch.tensor([6.0, 17 / 3, 1.0, 3.0]))


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
    # One baseline per episode: episode 0: -(-1 - 2) * 0.5 = 1.5; episode 1: -(-0.5) * 0.5 = 0.25
    assert abs(float(reinforce_loss(logp, returns, mask, torch.tensor([0.5, -0.5]))) - (1.5 + 0.25) / 2) < 1e-6
    assert abs(float(kl_penalty(torch.tensor([[0.1, 0.2], [0.3, 5.0]]), mask)) - (0.3 + 0.3) / 2) < 1e-6


def test_dpo_loss_by_hand():
    loss, m = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), 0.5)
    z = 0.5 * ((-10 + 11) - (-12 + 11))  # = 1
    assert abs(float(loss) - (-math.log(1 / (1 + math.exp(-z))))) < 1e-6
    assert m["dpo/accuracy"] == 1.0 and abs(m["dpo/margin"] - 1.0) < 1e-6
