"""Does a policy use its pixels? The behaviour-cloning loss on held-out windows with the real frames
against the same windows with black frames, and how much the encoder's output varies across frames.

A policy whose loss does not change without its frames predicts actions from the marginal
distribution (and the previous actions, if it takes them): its encoder has collapsed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agentalign.data import WindowConfig, WindowSampler, open_store
from agentalign.models import Policy
from agentalign.train.bc import previous_actions
from agentalign.train.losses import bc_loss


@torch.no_grad()
def pixel_reliance(policy_dir: str | Path, store: str | Path, batches: int = 3, batch_size: int = 16,
                   seed: int = 123) -> dict[str, float]:  # fmt: skip
    policy = Policy.from_pretrained(policy_dir).eval()
    sampler = WindowSampler(open_store(store), WindowConfig(window=policy.cfg.context, batch_size=batch_size), seed=seed)
    real, black, spread = [], [], []
    for g in range(batches):
        b = sampler.batch(g)
        obs, act, mask = (torch.from_numpy(b[k]) for k in ("obs", "actions", "mask"))
        prev = previous_actions(act)
        real.append(float(bc_loss(policy(obs, prev), act, mask)[0]))
        black.append(float(bc_loss(policy(torch.zeros_like(obs), prev), act, mask)[0]))
        z = policy.encoder(obs[0].permute(0, 3, 1, 2).float() / 255.0)  # (L, out_dim)
        spread.append(float(z.std(0).mean()))
    return {"loss_real_frames": float(np.mean(real)), "loss_black_frames": float(np.mean(black)),
            "encoder_std_across_frames": float(np.mean(spread))}  # fmt: skip
