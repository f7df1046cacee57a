"""The factored gamepad action distribution: 16 independent categoricals (12 buttons x 2 and
4 sticks x 11 logits, 68 in all), as the policy's output heads.

log-prob, entropy and KL are sums over the 16 components (the joint of independent heads);
per-component values are available for logging. The RL and DPO stages need all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agentalign.envs.gamepad import ACTION_NVEC

NVEC: tuple[int, ...] = tuple(int(n) for n in ACTION_NVEC)  # (2,)*12 + (11,)*4
N_LOGITS = sum(NVEC)  # 68
OFFSETS: tuple[int, ...] = tuple(int(sum(NVEC[:i])) for i in range(len(NVEC)))


def split_logits(logits: torch.Tensor) -> list[torch.Tensor]:
    """(..., 68) -> 16 tensors (..., n_i)."""
    if logits.shape[-1] != N_LOGITS:
        raise ValueError(f"logits must have {N_LOGITS} entries in the last dim, got {logits.shape[-1]}")
    return list(torch.split(logits, NVEC, dim=-1))


class ActionDistribution:
    """Distribution over (..., 16) integer actions from (..., 68) logits."""

    def __init__(self, logits: torch.Tensor, temperature: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.logits = logits if temperature == 1.0 else logits / temperature
        self._logp = [F.log_softmax(x.float(), dim=-1) for x in split_logits(self.logits)]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """(..., 16) int64 actions, each head sampled independently."""
        outs = []
        for lp in self._logp:
            flat = lp.exp().reshape(-1, lp.shape[-1])
            outs.append(torch.multinomial(flat, 1, generator=generator).reshape(lp.shape[:-1]))
        return torch.stack(outs, dim=-1)

    def mode(self) -> torch.Tensor:
        return torch.stack([lp.argmax(-1) for lp in self._logp], dim=-1)

    def log_prob_per_head(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., 16) actions -> (..., 16) log-probabilities per component."""
        return torch.stack([lp.gather(-1, actions[..., i : i + 1]).squeeze(-1) for i, lp in enumerate(self._logp)], -1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., 16) actions -> (...) joint log-probability (sum over heads)."""
        return self.log_prob_per_head(actions).sum(-1)

    def entropy_per_head(self) -> torch.Tensor:
        return torch.stack([-(lp.exp() * lp).sum(-1) for lp in self._logp], -1)

    def entropy(self) -> torch.Tensor:
        return self.entropy_per_head().sum(-1)

    def kl_per_head(self, other: "ActionDistribution") -> torch.Tensor:
        """KL(self || other) per component, (..., 16)."""
        return torch.stack([(lp.exp() * (lp - lq)).sum(-1) for lp, lq in zip(self._logp, other._logp)], -1)

    def kl(self, other: "ActionDistribution") -> torch.Tensor:
        return self.kl_per_head(other).sum(-1)
