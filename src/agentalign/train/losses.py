"""The training objectives as pure functions of tensors, each tested against hand-computed values.
The stages own their loops; here is only what they minimise.

  bc_loss         behaviour cloning (pre-training, SFT, the from-scratch baseline, ReST's clones):
                  the mean cross-entropy of the 16 action components on the masked-in steps
  reinforce_loss  REINFORCE on whole episodes, with a `baseline` (none, batch mean, leave-one-out,
                  leave-one-out per start state), `discounted_returns` of the final reward, and the
                  KL leash to the reference policy (`kl_penalty`)
  bt_loss         the reward model's Bradley-Terry likelihood of the preference labels (eq. 1)
  dpo_loss        Direct Preference Optimisation on whole trajectories

Shapes outside bc_loss: B episodes (or pairs), T steps; `logp` are log pi(a_t | context) summed
over the 16 action heads; masks are True on real steps.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F

from agentalign.models.distribution import NVEC

# --------------------------------------------------------------------------------------------
# Behaviour cloning


def _head_groups() -> list[tuple[int, int, int]]:
    """Runs of equal-sized heads in the logit layout: (first logit, number of heads, head size).
    12 buttons x 2 then 4 sticks x 11, so two log_softmax calls serve all 16 heads."""
    groups, offset = [], 0
    for n, run in itertools.groupby(NVEC):
        k = len(list(run))
        groups.append((offset, k, n))
        offset += k * n
    return groups


_GROUPS = _head_groups()


def bc_loss(logits_btl: torch.Tensor, actions_btc: torch.Tensor,
            mask_bt: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Mean cross-entropy over the 16 action components on the steps where mask is True.

    logits (B, T, 68), actions (B, T, 16) int64, mask (B, T) bool -> (loss, metrics). metrics
    (detached): accuracy (argmax right, averaged over components), accuracy_per_head (16,),
    exact (all 16 right), nll (joint -log pi(a_t) per step, the sum over components) and steps
    (the number of masked-in steps). With no masked-in step the loss is 0 (with a gradient)."""
    nll_parts, hit_parts = [], []
    comp = 0
    for first, k, n in _GROUPS:
        lg = logits_btl[..., first : first + k * n].float().unflatten(-1, (k, n))  # (B, T, k, n)
        lp = torch.log_softmax(lg, dim=-1)
        a = actions_btc[..., comp : comp + k, None]  # (B, T, k, 1)
        nll_parts.append(-lp.gather(-1, a)[..., 0])  # (B, T, k)
        hit_parts.append(lg.argmax(-1) == a[..., 0])
        comp += k
    nll_btc = torch.cat(nll_parts, -1)  # (B, T, 16)
    hit_btc = torch.cat(hit_parts, -1)  # (B, T, 16)
    m = mask_bt.to(nll_btc.dtype)  # (B, T)
    steps = m.sum()
    denom = steps.clamp(min=1)
    loss = (nll_btc.mean(-1) * m).sum() / denom
    with torch.no_grad():
        hit = hit_btc.to(nll_btc.dtype)
        per_head = (hit * m[..., None]).sum((0, 1)) / denom  # (16,)
        metrics = {
            "loss": loss.detach(),
            "accuracy": per_head.mean(),
            "accuracy_per_head": per_head,
            "exact": (hit.prod(-1) * m).sum() / denom,
            "nll": (nll_btc.detach().sum(-1) * m).sum() / denom,
            "steps": steps,
        }
    return loss, metrics


# --------------------------------------------------------------------------------------------
# REINFORCE


def baseline(returns: torch.Tensor, kind: Literal["none", "mean", "loo", "start"],
             groups: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """(B,) returns -> (B,) baselines: none (0), the batch mean, leave-one-out (the mean of the
    other episodes' returns, which keeps the estimator unbiased), or "start": leave-one-out among
    the episodes that began in the same start state (`groups` (B,) ints, e.g. the spawn), a baseline
    b(s_0) like RLOO's samples of one prompt; an episode alone in its group gets the batch's LOO."""
    if kind == "start":
        if groups is None:
            raise ValueError("the 'start' baseline needs each episode's start-state group")
        same = groups[:, None] == groups[None, :]  # (B, B)
        n_other = same.sum(1) - 1
        other = (same.float() @ returns - returns) / n_other.clamp(min=1)
        return torch.where(n_other > 0, other, baseline(returns, "loo"))
    if kind == "none":
        return torch.zeros_like(returns)
    if kind == "mean":
        return returns.mean().expand_as(returns)
    if kind == "loo":
        b = returns.shape[0]
        if b < 2:
            return torch.zeros_like(returns)
        return (returns.sum() - returns) / (b - 1)
    raise ValueError(f"unknown baseline {kind!r}; choose none, mean, loo or start")


def discounted_returns(final_reward: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-step returns when the only reward comes at the end: G_t = gamma^(T-1-t) * R.

    final_reward (B,), mask (B, T) -> (B, T); gamma = 1 gives R at every step (the paper)."""
    lengths = mask.sum(1, keepdim=True)  # (B, 1)
    t = torch.arange(mask.shape[1], device=mask.device)[None]  # (1, T)
    return final_reward[:, None] * gamma ** (lengths - 1 - t).clamp(min=0) * mask


def reinforce_loss(logp: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """REINFORCE (Williams, 1992): -mean_episodes sum_t log pi(a_t) * (G_t - b).

    logp (B, T), returns (B, T) per-step returns, mask (B, T), base (B,) one per episode -> scalar."""
    adv = (returns - base[:, None]) * mask
    return -(logp * adv).sum(1).mean()


def episode_sum_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over episodes of a per-step quantity summed over each episode: (B, T), (B, T) -> scalar."""
    return (x * mask).sum(1).mean()


def kl_penalty(kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over episodes of the summed per-step KL(pi || pi_ref): (B, T), (B, T) -> scalar."""
    return episode_sum_mean(kl, mask)


# --------------------------------------------------------------------------------------------
# Preferences


def bt_loss(r_i: torch.Tensor, r_j: torch.Tensor, p_i: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood (paper eq. 1), mean over pairs.

    r_i, r_j: (P,) rewards; p_i: (P,) probability that i is preferred (1, 0, or 0.5 for a tie)."""
    d = r_i - r_j
    return -(p_i * F.logsigmoid(d) + (1 - p_i) * F.logsigmoid(-d)).mean()


def dpo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Direct Preference Optimisation (Rafailov et al., 2023) on whole trajectories.

    Each argument is (P,) trajectory log-likelihoods sum_t log pi(a_t | ...). Returns the mean loss
    -log sigmoid(beta * ((c - c_ref) - (r - r_ref))) and the implied-reward metrics."""
    chosen = beta * (logp_chosen - ref_chosen)
    rejected = beta * (logp_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen - rejected).mean()
    chosen, rejected = chosen.detach(), rejected.detach()
    return loss, {
        "dpo/accuracy": float((chosen > rejected).float().mean()),
        "dpo/margin": float((chosen - rejected).mean()),
        "dpo/chosen_reward": float(chosen.mean()),
        "dpo/rejected_reward": float(rejected.mean()),
    }
