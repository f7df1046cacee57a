"""Reward models of appendix C.3 and the frozen encoders they sit on.

    trajectory (T <= 100 frames, padded to 100 with black frames)
      -> frozen encoder: per-step embeddings e_t                        (100, E)
      -> step MLP (E -> 256 -> 3, GELU) per step                        (100, 3)
      -> concatenated                                                    (300,)
      -> trajectory MLP (300 -> 256 -> 1, GELU)                          scalar r

`RewardEnsemble` (a departure, `reward.ensemble` = K): K such models from other seeds, scoring the
mean of their normalised rewards; saved in one checkpoint with `members` = K in its config.json.

Two encoders:
  * `AgentEncoder`: the frozen fine-tuned policy's layer-normed transformer output h_t. A
    trajectory longer than the context is embedded with a sliding window: h_t sees the last
    `context` steps. All frames are encoded once; the transformer runs once over the first window
    (causality gives h_0..h_{C-1}) and once per later step, all in one batched pass.
  * `RandomEncoder`: a frozen random linear projection of the flattened frame (in [0, 1]) to 512,
    regenerated from its seed, so checkpoints do not carry 6M random numbers.

After training the raw output is min-max normalised to [0, 1] over the training trajectories;
the bounds are stored with the checkpoint, and `normalised` clamps to [0, 1] outside them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from agentalign.envs import gamepad
from agentalign.io import atomic_save_safetensors, atomic_write_json
from agentalign.models.policy import CHECKPOINT_SCHEMA, Policy, read_checkpoint_config

HORIZON = 100  # the paper pads every trajectory to the 100-step evaluation limit
# Settings older checkpoints record, at the only value this code implements (the others were removed).
_FIXED_SETTINGS = {"head": "concat", "pad": "black"}


@dataclass(frozen=True)
class RewardModelConfig:
    encoder: Literal["agent", "random"]
    embed_dim: int  # E: policy width (agent) or 512 (random)
    horizon: int = HORIZON
    step_hidden: int = 256
    step_out: int = 3
    traj_hidden: int = 256


class RewardModel(nn.Module):
    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        self.cfg = cfg
        self.step_mlp = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.step_hidden), nn.GELU(),
                                      nn.Linear(cfg.step_hidden, cfg.step_out))  # fmt: skip
        self.traj_mlp = nn.Sequential(nn.Linear(cfg.horizon * cfg.step_out, cfg.traj_hidden), nn.GELU(),
                                      nn.Linear(cfg.traj_hidden, 1))  # fmt: skip
        # Min-max bounds over the training trajectories, set after training.
        self.register_buffer("r_min", torch.tensor(0.0))
        self.register_buffer("r_max", torch.tensor(1.0))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, horizon, E) embeddings -> (B,) raw rewards."""
        if emb.shape[1:] != (self.cfg.horizon, self.cfg.embed_dim):
            raise ValueError(f"embeddings must be (B, {self.cfg.horizon}, {self.cfg.embed_dim}), got {tuple(emb.shape)}")
        return self.traj_mlp(self.step_mlp(emb).flatten(1)).squeeze(-1)  # step_mlp: (B, horizon, step_out)

    def set_normalisation(self, raw: torch.Tensor) -> None:
        lo, hi = raw.min().detach(), raw.max().detach()
        self.r_min.copy_(lo)
        self.r_max.copy_(torch.where(hi > lo, hi, lo + 1.0))

    def normalised(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, horizon, E) -> (B,) rewards in [0, 1]: min-max over the training trajectories."""
        return ((self(emb) - self.r_min) / (self.r_max - self.r_min)).clamp(0.0, 1.0)

    def save_pretrained(self, directory: str | Path, **info) -> Path:
        return _save_reward(self, directory, **info)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> tuple["RewardModel", dict]:
        model, meta = load_reward_model(directory)
        if not isinstance(model, cls):
            raise ValueError(f"{directory}: a reward ensemble of {meta['members']} models; load it with load_reward_model")
        return model, meta


class RewardEnsemble(nn.Module):
    """Reward models trained alike from other seeds, scoring the mean of their normalised rewards:
    one model's ranking of the aligned agent's episodes moves with its seed, the mean less.
    Its output is already in [0, 1], so `normalised` is the forward pass."""

    def __init__(self, members: list[RewardModel]):
        super().__init__()
        if len(members) < 2 or any(m.cfg != members[0].cfg for m in members):
            raise ValueError("a reward ensemble needs at least two members of one configuration")
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, horizon, E) -> (B,) the members' mean normalised reward."""
        return torch.stack([m.normalised(emb) for m in self.members]).mean(0)

    def normalised(self, emb: torch.Tensor) -> torch.Tensor:
        return self(emb)

    def save_pretrained(self, directory: str | Path, **info) -> Path:
        return _save_reward(self, directory, **{**info, "members": len(self.members)})


def _save_reward(model: nn.Module, directory: str | Path, **info) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                            d / "model.safetensors")  # fmt: skip
    atomic_write_json(d / "config.json", {"schema": CHECKPOINT_SCHEMA, "kind": "reward",
                                          "reward_model": asdict(model.cfg), **info})  # fmt: skip
    return d


def load_reward_model(directory: str | Path) -> tuple[RewardModel | RewardEnsemble, dict]:
    """A saved reward model, or ensemble (`members` in its config.json), and its metadata."""
    from safetensors.torch import load_file

    d = Path(directory)
    meta = read_checkpoint_config(d, kind="reward")
    fields = dict(meta["reward_model"])
    for key, only in _FIXED_SETTINGS.items():
        if fields.pop(key, only) != only:
            raise ValueError(f"{d}: a reward model with {key}={meta['reward_model'][key]!r}, an option that was "
                             f"removed; retrain it (only {key}={only!r} remains)")  # fmt: skip
    cfg = RewardModelConfig(**fields)
    k = int(meta.get("members", 1))
    model = RewardEnsemble([RewardModel(cfg) for _ in range(k)]) if k > 1 else RewardModel(cfg)
    model.load_state_dict(load_file(d / "model.safetensors"))
    return model, meta


def checkpoint_fingerprint(directory: str | Path) -> str:
    """A short hash of a checkpoint's weights: ties a reward model to the policy that encoded it."""
    h = hashlib.blake2b(digest_size=8)
    h.update((Path(directory) / "model.safetensors").read_bytes())
    return h.hexdigest()


_NOOP = torch.as_tensor(gamepad.noop_action())  # (16,) int64: the padding's action


def pad_steps(x: torch.Tensor, horizon: int, fill: torch.Tensor) -> torch.Tensor:
    """(T, ...) -> (horizon, ...): `fill` (...) after step T."""
    t = x.shape[0]
    if t > horizon:
        raise ValueError(f"trajectory of {t} steps is longer than the reward model's horizon {horizon}")
    out = fill.to(x.dtype).expand(horizon, *fill.shape).clone()
    out[:t] = x
    return out


def pad_trajectory(frames: torch.Tensor, actions: torch.Tensor,
                   horizon: int = HORIZON) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(T, H, W, 3), (T, 16) -> (horizon, H, W, 3), (horizon, 16): black frames and no-op actions
    after T (appendix C.3)."""
    black = torch.zeros(frames.shape[1:], dtype=torch.uint8)
    return pad_steps(frames, horizon, black), pad_steps(actions, horizon, _NOOP)


class AgentEncoder:
    """Per-step embeddings from a frozen policy: h_t with a sliding `context`-step window."""

    kind = "agent"

    def __init__(self, policy: Policy):
        self.policy = policy.eval()
        for p in self.policy.parameters():
            p.requires_grad_(False)
        self.dim = policy.cfg.width

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8, (B, T, 16) actions a_t -> (B, T, width) embeddings h_t."""
        return sliding_window_features(self.policy, frames, actions)

    @torch.inference_mode()
    def padded(self, frames: list[torch.Tensor], actions: list[torch.Tensor], horizon: int = HORIZON,
               z: list[torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
        """Trajectories as `pad_trajectory` pads them -> (B, horizon, width), with each distinct
        frame encoded once: the padding repeats the black frame, whose embedding is repeated
        instead of re-encoded, which halves the encoder's work on ~50-step episodes.
        frames[i] (T_i, H, W, 3) uint8, actions[i] (T_i, 16); z[i] (T_i, width), optional: the
        frames' embeddings already computed by this policy's (frozen) encoder, as a rollout does."""
        if not actions:
            return torch.zeros(0, horizon, self.dim)
        for i, (f, a) in enumerate(zip(z if z is not None else frames, actions)):
            if f.shape[0] != a.shape[0]:
                raise ValueError(f"trajectory {i}: {f.shape[0]} frames for {a.shape[0]} actions")
        if z is None:
            z = self.policy.encode(torch.cat(frames)).split([len(a) for a in actions])  # (T_i, width) each
        side = self.policy.cfg.image_size
        black = self.policy.encode(torch.zeros((1, side, side, 3), dtype=torch.uint8))[0]  # (width,)
        zp = torch.stack([pad_steps(zi, horizon, black) for zi in z])  # (B, horizon, width)
        ap = torch.stack([pad_steps(ai, horizon, _NOOP) for ai in actions])  # (B, horizon, 16)
        return windowed_transformer(self.policy, zp, ap)


def sliding_window_features(policy: Policy, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """h_t for every step of whole trajectories, as the policy saw them in a rollout: each h_t
    from the window of the last `context` steps, with BOS at the window's first position.

    frames (B, T, H, W, 3) uint8, actions (B, T, 16) a_t -> (B, T, width). Differentiable (the
    caller chooses grad or inference mode). Every frame is encoded once; the transformer runs once
    over the first window (causality gives h_0..h_{C-1}) and once per later step, batched."""
    return windowed_transformer(policy, policy.encode(frames), actions)


def windowed_transformer(policy: Policy, z: torch.Tensor, actions: torch.Tensor, last_only: bool = True) -> torch.Tensor:
    """The transformer half of `sliding_window_features`, on per-frame embeddings z (B, T, width)
    already computed (by a frozen encoder, say): -> h (B, T, width). `last_only=False` runs every
    window's last block on all its tokens (the same h, slower; the benchmark's reference)."""
    b, t = z.shape[:2]
    c = policy.cfg.context
    prev = torch.cat([actions[:, :1], actions[:, :-1]], 1)  # a_{t-1}; index 0 is BOS anyway
    first = min(t, c)
    out = [policy.forward_embedded(z[:, :first], prev[:, :first])]  # h_0 .. h_{first-1}
    if t > c:
        # The window ending at step s (s = c .. t-1) covers s-c+1 .. s.
        idx = torch.arange(1, t - c + 1)[:, None] + torch.arange(c)[None]  # (t-c, c)
        zw = z[:, idx].reshape(b * (t - c), c, -1)
        pw = prev[:, idx].reshape(b * (t - c), c, prev.shape[-1])
        out.append(policy.forward_embedded(zw, pw, last_only=last_only)[:, -1].reshape(b, t - c, -1))
    return torch.cat(out, 1)


class RandomEncoder:
    """A frozen random linear projection of the flattened frame (appendix C.3's baseline)."""

    kind = "random"

    def __init__(self, image_size: int, dim: int = 512, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        fan_in = image_size * image_size * 3
        self.weight = torch.randn(fan_in, dim, generator=g) / fan_in**0.5  # (HW3, dim)
        self.dim, self.seed, self.image_size = dim, seed, image_size

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 -> (B, T, dim)."""
        x = frames.reshape(*frames.shape[:2], -1).float() / 255.0
        return x @ self.weight

    def padded(self, frames: list[torch.Tensor], actions: list[torch.Tensor], horizon: int = HORIZON) -> torch.Tensor:
        """As `AgentEncoder.padded`: (B, horizon, dim). A projection costs little; no shortcut."""
        if not frames:
            return torch.zeros(0, horizon, self.dim)
        return self(torch.stack([pad_trajectory(f, a, horizon)[0] for f, a in zip(frames, actions)]))


def check_reward_matches(reward_dir: str | Path, reference_dir: str | Path, meta: dict | None = None) -> dict:
    """Refuse a reward model trained on another policy's embeddings; -> its metadata (`meta`, when
    the caller has already read it)."""
    meta = read_checkpoint_config(reward_dir, kind="reward") if meta is None else meta  # no need for the weights
    if meta.get("encoder") == "agent":
        fp = checkpoint_fingerprint(reference_dir)
        if meta.get("policy_fingerprint") != fp:
            raise ValueError(f"reward model {reward_dir} was trained on the embeddings of policy "
                             f"{meta.get('policy')!r} (fingerprint {meta.get('policy_fingerprint')}), "
                             f"not of the reference {reference_dir} (fingerprint {fp})")  # fmt: skip
    return meta


def load_encoder(kind: str, policy_dir: str | Path | None, image_size: int, seed: int = 0, dim: int = 512):
    """The encoder a reward model needs: `agent` (from a policy checkpoint) or `random`."""
    if kind == "agent":
        if policy_dir is None:
            raise ValueError("the agent encoder needs a policy checkpoint")
        return AgentEncoder(Policy.from_pretrained(policy_dir))
    if kind == "random":
        return RandomEncoder(image_size, dim, seed)
    raise ValueError(f"unknown reward encoder {kind!r}; choose 'agent' or 'random'")

