"""Test helpers: a tiny policy whose outputs depend strongly on its inputs, and an actor that
replays scripted navigator episodes (the only way a test reaches a pad without a trained policy)."""

from __future__ import annotations

import numpy as np
import torch

from agentalign.envs.skygarden import world as W
from agentalign.models import Policy, model_preset
from agentalign.players.navigator import NavigatorParams
from agentalign.players.scripted import run_navigators
from agentalign.rollout import ActorStep, episode_seeds

REST = np.array([0] * 12 + [5] * 4, dtype=np.int64)


def sensitive_tiny_policy(seed: int = 0) -> Policy:
    """The `tiny` preset (context 8) with large random weights: the default init (std 0.02)
    gives near-constant logits, against which a wrong window or cache could go unnoticed."""
    torch.manual_seed(seed)
    p = Policy(model_preset("tiny"))
    with torch.no_grad():
        for name, w in p.named_parameters():
            if w.ndim >= 2 or name in ("bos",):
                w.normal_(0.0, 1.0 / max(1, w.shape[-1]) ** 0.5 if w.ndim >= 2 else 1.0)
        p.pos.normal_(0.0, 1.0)
        p.action_embed.weight.normal_(0.0, 1.0)
    return p.eval()


def navigator_actions(seed: int, episodes: int, targets=("left", "middle", "right")) -> dict[int, tuple]:
    """Episode k of a rollout seeded `seed` starts where a SkyGardenVectorEnv sub-env seeded with
    its env seed starts; drive it there with a navigator -> {k: (actions (T, 16), jump_pad, pos)}."""
    out = {}
    for k in range(episodes):
        env_seed, _ = episode_seeds(seed, k)
        e = run_navigators([targets[k % len(targets)]], seed=env_seed, params=NavigatorParams(steer_noise=0.3))[0]
        out[k] = (e.actions, e.jump_pad, e.pos)
    return out


class ReplayActor:
    """Plays fixed per-episode action sequences (open loop), then rests the sticks."""

    width = None
    temperature = None

    def __init__(self, sequences: dict[int, tuple], image_size: int = 64):
        self.sequences, self.image_size = sequences, image_size

    def begin_wave(self, episodes, max_steps):
        self.episodes = list(episodes)

    def act(self, t, rows, frames, uniforms, stats):
        acts = []
        for i in rows:
            seq = self.sequences[self.episodes[i]][0]
            acts.append(seq[t] if t < len(seq) else REST)
        return ActorStep(torch.from_numpy(np.stack(acts)).long(), torch.zeros(len(rows)))


def on_pad(pos: np.ndarray) -> np.ndarray:
    """(..., 2) positions -> (...) index of the pad box they lie in, -1 for none."""
    out = np.full(pos.shape[:-1], -1)
    for k, (x0, y0, x1, y1) in enumerate(W.PAD_BOXES):
        inside = (pos[..., 0] >= x0) & (pos[..., 0] < x1) & (pos[..., 1] >= y0) & (pos[..., 1] < y1)
        out[inside] = k
    return out
