"""Actors: what chooses the actions inside the batched rollout loop (`agentalign.rollout.engine`).

    PolicyActor(policy, temperature)                 the transformer policy, each frame encoded once
    PolicyActor(policy, temperature, reencode=True)  the naive reference: the whole window
                                                     re-encoded every step (tests, benchmark)
    RandomActor(image_size)                          uniform random gamepad actions (the baseline)

The cache. A step needs pi(a_t | o_{t-L+1..t}, a_{t-L..t-1}) over the last L = min(t+1, context)
steps. The encoder is per frame, so `PolicyActor` runs `policy.encode` on the new frames only and
keeps every episode's per-frame embeddings z (rows, max_steps, width) and previous actions; the
transformer then runs once over the window and the head on its last position. No KV cache: the
positions are learned and absolute within the window, so once the window slides (t >= context)
every token's position changes and all keys and values must be recomputed anyway; before that a
cache would save at most the first `context` steps' short windows, which are already the cheap
ones (see benchmarks/rollout_throughput.py for the split).

Sampling. Each episode draws its own uniforms (engine: one torch.Generator per episode) and the
actor turns them into actions by inverse-CDF per head, so an episode's actions do not depend on
which row or wave it ran in, or on the batch size (up to float rounding in the batched matmuls).
The samples follow the same distribution as `ActionDistribution.sample` at `temperature`; the
recorded log-probabilities are those of that tempered distribution (what was sampled from).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from agentalign.envs import gamepad

if TYPE_CHECKING:
    from agentalign.models import Policy
    from agentalign.rollout.engine import RolloutStats

N_BUTTONS, N_STICKS, N_BINS = gamepad.N_BUTTONS, gamepad.N_STICK_AXES, gamepad.N_STICK_BINS
_BUTTON_LOGITS = 2 * N_BUTTONS  # logits 0..23: 12 heads x 2, then 24..67: 4 heads x 11
_NVEC = torch.tensor(gamepad.ACTION_NVEC, dtype=torch.float32)  # (16,)
UNIFORM_LOG_PROB = -float(np.log(gamepad.ACTION_NVEC.astype(np.float64)).sum())  # log of 1 / #actions


@dataclass
class ActorStep:
    """What an actor returns for A rows at one step."""

    actions: torch.Tensor  # (A, 16) int64
    log_prob: torch.Tensor  # (A,) float32, log-probability of `actions` under what sampled them
    h: torch.Tensor | None = None  # (A, width) float32, the transformer output the head saw
    logits: torch.Tensor | None = None  # (A, 68) float32, before temperature
    z: torch.Tensor | None = None  # (A, width) float32, the new frames' encoder embeddings


class Actor(Protocol):
    """Anything that maps the frames of the active rows to actions, one batched call per step."""

    image_size: int  # square frames it takes
    width: int | None  # size of `ActorStep.h`, None if it has none

    def begin_wave(self, episodes: Sequence[int], max_steps: int) -> None:
        """A new wave: row i of the next steps plays episode `episodes[i]`, from an empty context."""

    def act(self, t: int, rows: np.ndarray, frames: np.ndarray, uniforms: torch.Tensor,
            stats: "RolloutStats") -> ActorStep:  # fmt: skip
        """Step t of the wave for the active `rows` (A,) (ascending): frames (A, H, W, 3) uint8,
        uniforms (A, 16) in [0, 1) to sample with; adds its time to `stats`."""


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """probs (..., n), u (...) in [0, 1) -> (...) int64 index k with cdf[k-1] <= u < cdf[k]."""
    cdf = probs.cumsum(-1)
    k = (cdf < u.unsqueeze(-1) * cdf[..., -1:]).sum(-1)  # scaled by the total: cdf[-1] may be 1 - eps
    return k.clamp_(max=probs.shape[-1] - 1)


def sample_from_uniforms(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """logits (A, 68), uniforms u (A, 16) -> actions (A, 16) int64 and their log-probs (A,).

    Exactly the distribution of `ActionDistribution(logits, temperature)`, but driven by given
    uniforms, so that each row (episode) can have its own random stream. The 12 binary and the
    4 eleven-way heads are each handled as one batched op instead of 16 small ones.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    x = (logits if temperature == 1.0 else logits / temperature).float()
    lb = F.log_softmax(x[:, :_BUTTON_LOGITS].reshape(-1, N_BUTTONS, 2), -1)  # (A, 12, 2)
    ls = F.log_softmax(x[:, _BUTTON_LOGITS:].reshape(-1, N_STICKS, N_BINS), -1)  # (A, 4, 11)
    ab = _inverse_cdf(lb.exp(), u[:, :N_BUTTONS])  # (A, 12)
    as_ = _inverse_cdf(ls.exp(), u[:, N_BUTTONS:])  # (A, 4)
    logp = lb.gather(-1, ab.unsqueeze(-1)).sum((1, 2)) + ls.gather(-1, as_.unsqueeze(-1)).sum((1, 2))
    return torch.cat([ab, as_], 1), logp


class PolicyActor:
    """The policy in the loop: one `encode` of the new frames, one transformer pass over the
    window, one head call per step, for all active rows together (see the module docstring)."""

    def __init__(self, policy: "Policy", temperature: float = 1.0, *, reencode: bool = False):
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.policy = policy
        self.temperature = float(temperature)
        self.reencode = reencode
        self.image_size = int(policy.cfg.image_size)
        self.width = int(policy.cfg.width)
        self.context = int(policy.cfg.context)
        self.device = next(policy.parameters()).device
        self._n = 0

    def begin_wave(self, episodes: Sequence[int], max_steps: int) -> None:
        n, s, dev = len(episodes), max_steps, self.device
        if self._n != n or self._prev.shape[1] != s:
            if self.reencode:  # (n, S, H, W, 3) uint8: every frame, re-encoded while in the window
                self._frames = torch.zeros((n, s, self.image_size, self.image_size, 3), dtype=torch.uint8, device=dev)
            else:  # (n, S, width): each frame's embedding, computed once
                self._z = torch.zeros((n, s, self.width), device=dev)
            self._prev = torch.zeros((n, s, gamepad.ACTION_DIM), dtype=torch.int64, device=dev)  # [:, t] = a_{t-1}
            self._n = n
        # Stale values of the last wave are never read: step t reads [t-L+1, t], written this wave.

    def act(self, t: int, rows: np.ndarray, frames: np.ndarray, uniforms: torch.Tensor,
            stats: "RolloutStats") -> ActorStep:  # fmt: skip
        p = self.policy
        t0 = time.perf_counter()
        # All rows still playing: slices are views, no gather copies.
        sel = slice(0, self._n) if len(rows) == self._n else torch.from_numpy(rows).to(self.device)
        obs = torch.from_numpy(frames).to(self.device)  # (A, H, W, 3) uint8
        start = max(0, t + 1 - self.context)  # window [start, t], L = t + 1 - start tokens
        if self.reencode:
            self._frames[sel, t] = obs
            z = p.encode(self._frames[sel, start : t + 1])  # (A, L, width): L frames each step
        else:
            self._z[sel, t] = p.encode(obs)  # (A, width): the new frames only
            z = self._z[sel, start : t + 1]  # (A, L, width)
        t1 = time.perf_counter()
        h = p.forward_embedded(z, self._prev[sel, start : t + 1], last_only=True)[:, 0]  # (A, width): step t; prev[:, 0] is BOS
        logits = p.head(h)  # (A, 68)
        t2 = time.perf_counter()
        actions, logp = sample_from_uniforms(logits, uniforms.to(self.device), self.temperature)
        if t + 1 < self._prev.shape[1]:
            self._prev[sel, t + 1] = actions
        t3 = time.perf_counter()
        stats.encode_s += t1 - t0
        stats.transformer_s += t2 - t1
        stats.sample_s += t3 - t2
        return ActorStep(actions.cpu(), logp.cpu(), h.float().cpu(), logits.float().cpu(), z[:, -1].float().cpu())


class RandomActor:
    """Uniform random gamepad actions: every button and stick bin equally likely, independently.

    The baseline the paper compares against ("a randomly initialized agent ... 0 % success");
    runs through the same loop, seeds and recording as the policy."""

    width = None
    temperature = None  # not a softmax policy

    def __init__(self, image_size: int = 64):
        self.image_size = int(image_size)

    def begin_wave(self, episodes: Sequence[int], max_steps: int) -> None:
        pass

    def act(self, t: int, rows: np.ndarray, frames: np.ndarray, uniforms: torch.Tensor,
            stats: "RolloutStats") -> ActorStep:  # fmt: skip
        t0 = time.perf_counter()
        actions = (uniforms * _NVEC).long().clamp_(max=_NVEC.long() - 1)  # (A, 16): floor(u * n)
        logp = torch.full((len(rows),), UNIFORM_LOG_PROB)
        stats.sample_s += time.perf_counter() - t0
        return ActorStep(actions, logp)
