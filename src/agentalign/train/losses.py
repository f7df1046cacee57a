"""The alignment objectives as pure functions of tensors, tested against hand-computed values.

Shapes: B episodes (or pairs), T steps; `logp` are log pi(a_t | context) summed over the 16 action
heads; masks are True on real steps.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


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


def advantage_scale(returns: torch.Tensor, base: torch.Tensor, groups: torch.Tensor | None = None,
                    eps: float = 1e-3) -> torch.Tensor:  # fmt: skip
    """(B,) returns and baselines -> (B,) factors 1 / (std of the advantages R_i - b_i + eps): over
    the batch, or with `groups` (B,) ints over each episode's group (GRPO's per-prompt scale; an
    episode alone in its group takes the batch's).

    Multiplying the advantages by it keeps the update's size as the policy improves (near the goal
    most episodes succeed, R - b shrinks, and Adam's long second-moment memory would turn that into
    ever smaller steps); per group, a start state whose outcomes differ a little (two pads scored
    0.8 and 0.65) weighs as much as one where an episode failed outright (scored 0). `eps` keeps a
    group of equal returns from turning the reward model's noise into signal."""
    adv = returns - base
    b = adv.shape[0]
    if b < 2:
        return torch.ones_like(adv)
    whole = torch.full_like(adv, float(adv.std()))
    if groups is None:
        return 1.0 / (whole + eps)
    same = (groups[:, None] == groups[None, :]).to(adv.dtype)  # (B, B)
    n = same.sum(1)
    mean = same @ adv / n
    var = (same @ adv**2 / n - mean**2) * n / (n - 1).clamp(min=1)  # each group's unbiased variance
    std = torch.where(n > 1, var.clamp(min=0).sqrt(), whole)
    return 1.0 / (std + eps)


def value_loss(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The critic's regression: mean over real steps of (V(h_t) - G_t)^2.

    values, returns, mask (B, T) -> scalar."""
    return ((values - returns) ** 2 * mask).sum() / mask.sum().clamp(min=1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(G - V) / Var(G) over real steps: 1 when V predicts every return, 0 when it does no
    better than their mean, negative when worse. values, returns, mask (B, T) -> float."""
    g, v = returns[mask], values[mask]
    var = g.var() if g.numel() > 1 else torch.zeros(())
    return float(1 - (g - v).var() / var) if var > 0 else float("nan")


def discounted_returns(final_reward: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-step returns when the only reward comes at the end: G_t = gamma^(T-1-t) * R.

    final_reward (B,), mask (B, T) -> (B, T); gamma = 1 gives R at every step (the paper)."""
    lengths = mask.sum(1, keepdim=True)  # (B, 1)
    t = torch.arange(mask.shape[1], device=mask.device)[None]  # (1, T)
    return final_reward[:, None] * gamma ** (lengths - 1 - t).clamp(min=0) * mask


def lambda_returns(final_reward: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                   lam: float) -> torch.Tensor:  # fmt: skip
    """TD(lambda) returns when the only reward comes at the end (GAE's targets, Schulman et al.,
    2016): G_t = r_t + gamma ((1 - lam) V_{t+1} + lam G_{t+1}), r_t = R on the last step, 0 before,
    and nothing after it. lam = 1 gives `discounted_returns`; lam < 1 moves an episode's credit to
    the steps where V(h_t) changed, at the price of V's bias.

    final_reward (B,), values (B, T) V(h_t), mask (B, T) -> (B, T), zero on padding."""
    b, t_max = mask.shape
    last = mask.sum(1) - 1  # (B,)
    out = torch.zeros(b, t_max, dtype=values.dtype)
    g_next = v_next = torch.zeros(b, dtype=values.dtype)
    for t in reversed(range(t_max)):
        r = torch.where(last == t, final_reward, torch.zeros_like(final_reward))
        g = (r + gamma * ((1 - lam) * v_next + lam * g_next)) * mask[:, t]
        out[:, t] = g
        g_next, v_next = g, values[:, t] * mask[:, t]
    return out


def _per_step(base: torch.Tensor) -> torch.Tensor:
    """A baseline of (B,), one per episode, or (B, T), one per step (a learned V(h_t)), as (B, 1 or T)."""
    return base[:, None] if base.dim() == 1 else base


def reinforce_loss(logp: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """REINFORCE (Williams, 1992): -mean_episodes sum_t log pi(a_t) * (G_t - b).

    logp (B, T), returns (B, T) per-step returns, mask (B, T), base (B,) or (B, T) -> scalar."""
    adv = (returns - _per_step(base)) * mask
    return -(logp * adv).sum(1).mean()


def clipped_surrogate_loss(logp: torch.Tensor, logp_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                           base: torch.Tensor, clip: float) -> torch.Tensor:  # fmt: skip
    """PPO's clipped surrogate (Schulman et al., 2017) with REINFORCE's per-episode advantage, so a
    batch can be reused for several epochs: -mean_episodes sum_t min(rho A, clip(rho, 1-e, 1+e) A),
    rho = pi(a_t) / pi_old(a_t). At rho = 1 (the first epoch) its gradient is REINFORCE's.

    logp, logp_old, returns, mask (B, T); base (B,) or (B, T) -> scalar."""
    adv = (returns - _per_step(base)) * mask
    rho = torch.exp(logp - logp_old) * mask
    surrogate = torch.minimum(rho * adv, rho.clamp(1.0 - clip, 1.0 + clip) * adv)
    return -surrogate.sum(1).mean()


def episode_sum_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over episodes of a per-step quantity summed over each episode: (B, T), (B, T) -> scalar."""
    return (x * mask).sum(1).mean()


def kl_penalty(kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over episodes of the summed per-step KL(pi || pi_ref): (B, T), (B, T) -> scalar."""
    return episode_sum_mean(kl, mask)


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
