"""Online alignment with REINFORCE on the reward model's return and a KL leash to the SFT policy
(paper section 3.6, appendix A step 5, appendix C.4).

Objective, per batch of B episodes τ_1..τ_B of the current policy π_θ:

    L(θ) = -1/B Σ_i Σ_t log π_θ(a_t | context_t) (G_it - b_i)  +  β · 1/B Σ_i Σ_t KL(π_θ || π_SFT)(context_t)

with G_it = γ^(T_i-1-t) R_i, R_i the reward model's min-max normalised output for τ_i (γ = 1, the
paper's undiscounted return, gives R_i at every step) and b_i a baseline: none (the paper), the
batch mean, leave-one-out (RLOO, the default) or leave-one-out among the episodes from the same
spawn ("start"). The true jump-pad outcome is logged beside the return, never trained on.

Departures from the paper, each configurable back to it:
  * baseline: leave-one-out by default; the paper uses none (`baseline="none"`).
  * β: the paper trains the head without a KL term (`beta=0`, which loads no reference model); the
    LLM recipe it cites regularises to the SFT policy, which we default on, small.
  * `train_only`: "head" (the paper: the MLP after the transformer), "transformer" (all but the
    pixel encoder) or "all".

What is recomputed. With "head" the trunk is frozen, so the transformer outputs h_t the rollout
computed are exactly the SFT policy's: an update re-runs only the head on them, and the KL needs
only the SFT head. "transformer" re-runs the transformer on the rollout's per-frame embeddings;
"all" re-encodes the frames. An episode whose reward cannot be computed (longer than the reward
model's horizon, or non-finite) is dropped and the batch shrinks, as in appendix C.4.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from agentalign.envs.skygarden import world as W
from agentalign.io import MetricsLogger
from agentalign.models import ActionDistribution, Policy
from agentalign.models.reward import (
    AgentEncoder,
    RandomEncoder,
    check_reward_matches,
    load_reward_model,
    sliding_window_features,
    windowed_transformer,
)
from agentalign.rollout import RolloutConfig, Trajectory, iter_waves
from agentalign.train.common import FROZEN, seed_everything
from agentalign.train.losses import baseline, discounted_returns, kl_penalty, reinforce_loss


@dataclass(frozen=True)
class ReinforceConfig:
    episodes: int = 0  # online episodes (the paper: 9,600 = 600 updates x 16); 0: no REINFORCE
    batch_episodes: int = 16  # episodes per update (appendix C.4)
    lr: float = 1e-4  # appendix C.4
    train_only: Literal["head", "transformer", "all"] = "head"  # appendix C.4 trains only the head
    beta: float = 0.02  # KL(π || π_SFT) weight; 0 turns it off
    gamma: float = 1.0  # undiscounted, as the paper
    # "start" compares an episode with those from its spawn: a spawn far from the target makes
    # every return lower, which is not the policy's doing.
    baseline: Literal["none", "mean", "loo", "start"] = "loo"
    temperature: float = 1.0  # sampling temperature (the paper's: 1)
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.episodes < 0 or self.batch_episodes < 1:
            raise ValueError(f"episodes must be >= 0 and batch_episodes >= 1, got {self.episodes}, {self.batch_episodes}")
        if not self.lr > 0 or self.beta < 0 or not 0 < self.gamma <= 1 or not 0 < self.temperature <= 1:
            raise ValueError(f"need lr > 0, beta >= 0, gamma and temperature in (0, 1]; got lr {self.lr}, beta "
                             f"{self.beta}, gamma {self.gamma}, temperature {self.temperature}")  # fmt: skip


class TrajectoryRewarder:
    """The reward model's normalised return of finished trajectories (frames kept by the rollout)."""

    def __init__(self, reward_dir: Path, reference: Policy, image_size: int):
        self.model, meta = load_reward_model(reward_dir)
        self.model.eval()
        if self.model.cfg.encoder == "agent":
            self.encoder = AgentEncoder(reference)
        else:
            self.encoder = RandomEncoder(image_size, self.model.cfg.embed_dim, int(meta.get("random_seed", 0)))

    @torch.inference_mode()
    def __call__(self, trajs: list[Trajectory], z_is_reference: bool = False) -> np.ndarray:
        """(B,) normalised rewards; NaN where the reward cannot be computed. `z_is_reference`: the
        trajectories' kept per-frame embeddings are the reference encoder's own (it is frozen and
        equal), so the frames need not be encoded again."""
        out = np.full(len(trajs), np.nan)
        horizon = self.model.cfg.horizon
        ok = [i for i, tr in enumerate(trajs) if tr.length <= horizon]
        if not ok:
            return out
        frames = [torch.from_numpy(trajs[i].frames[: trajs[i].length]) for i in ok]  # (T_i, H, W, 3)
        actions = [torch.from_numpy(trajs[i].actions) for i in ok]  # (T_i, 16)
        kwargs = {}
        if z_is_reference and isinstance(self.encoder, AgentEncoder):
            kwargs["z"] = [torch.from_numpy(trajs[i].z) for i in ok]  # (T_i, width)
        out[ok] = self.model.normalised(self.encoder.padded(frames, actions, horizon, **kwargs).float()).numpy()
        return out


def shared_with_reference(policy: Policy, reference: Policy, train_only: str) -> str:
    """What the reference can take from the policy's forward pass: its h_t when the whole frozen
    trunk equals the reference's ("trunk"), its per-frame embeddings when the frozen encoder does
    ("encoder"), else "nothing" (a preference fine-tune that trained everything, say)."""
    ref = reference.state_dict()

    def equal(prefixes: tuple[str, ...]) -> bool:
        return all(torch.equal(v, ref[k]) for k, v in policy.state_dict().items() if k.startswith(prefixes))

    if train_only == "head" and equal(FROZEN["head"]):
        return "trunk"
    if train_only in FROZEN and equal(FROZEN["transformer"]):
        return "encoder"
    return "nothing"


def _padded(batch: list[Trajectory], field: str, tmax: int, *shape: int, dtype=torch.float32) -> torch.Tensor:
    """(B, tmax, *shape) the trajectories' per-step `field`, zeros after each one's end."""
    out = torch.zeros(len(batch), tmax, *shape, dtype=dtype)
    for i, tr in enumerate(batch):
        out[i, : tr.length] = torch.from_numpy(getattr(tr, field)[: tr.length])
    return out


def update(policy: Policy, reference: Policy | None, batch: list[Trajectory], R_b: torch.Tensor,
           opt: torch.optim.Optimizer, params: list, cfg: ReinforceConfig, shared: str = "nothing") -> dict[str, float]:  # fmt: skip
    """One REINFORCE step on a batch of finished trajectories and their returns R_b (B,); `shared`:
    what the reference shares with the policy (`shared_with_reference`)."""
    policy.train(cfg.train_only != "head")  # dropout only where the trunk trains
    b, tmax = len(batch), max(tr.length for tr in batch)
    mask_bt = torch.zeros(b, tmax, dtype=torch.bool)
    for i, tr in enumerate(batch):
        mask_bt[i, : tr.length] = True
    actions_btc = _padded(batch, "actions", tmax, 16, dtype=torch.int64)
    if cfg.train_only == "head":
        h_btd = _padded(batch, "h", tmax, policy.cfg.width)  # the frozen trunk's outputs, as sampled
    elif cfg.train_only == "transformer":
        z_btd = _padded(batch, "z", tmax, policy.cfg.width)  # the frozen encoder's per-frame embeddings
        h_btd = windowed_transformer(policy, z_btd, actions_btc)
    else:
        h_btd = sliding_window_features(policy, _padded(batch, "frames", tmax, *batch[0].frames.shape[1:], dtype=torch.uint8),
                                        actions_btc)  # fmt: skip
    dist = ActionDistribution(policy.head(h_btd), cfg.temperature)
    logp_bt = dist.log_prob(actions_btc)
    returns_bt = discounted_returns(R_b, mask_bt, cfg.gamma)
    spawns_b = torch.tensor([tr.spawn for tr in batch])
    loss = reinforce_loss(logp_bt, returns_bt, mask_bt, baseline(R_b, cfg.baseline, spawns_b))
    kl = torch.zeros(())
    if reference is not None:
        with torch.no_grad():  # only what the reference does not share with the policy is recomputed
            if shared == "trunk":
                h_ref = h_btd
            elif shared == "encoder":
                h_ref = windowed_transformer(reference, _padded(batch, "z", tmax, policy.cfg.width), actions_btc)
            else:
                frames = _padded(batch, "frames", tmax, *batch[0].frames.shape[1:], dtype=torch.uint8)
                h_ref = sliding_window_features(reference, frames, actions_btc)
            ref = ActionDistribution(reference.head(h_ref), cfg.temperature)
        kl = kl_penalty(dist.kl(ref), mask_bt)
        loss = loss + cfg.beta * kl
    opt.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    policy.eval()
    steps = mask_bt.sum()
    return {"align/loss": float(loss.detach()), "align/kl": float(kl.detach()) / max(float(steps) / b, 1.0),
            "align/entropy": float((dist.entropy().detach() * mask_bt).sum() / steps), "align/grad_norm": float(grad_norm)}  # fmt: skip


def run_reinforce(policy_dir: Path, sft: Path, reward_dir: Path, out: Path, cfg: ReinforceConfig, target: str, seed: int,
                  progress: Callable[[int, int, dict], None] | None = None) -> dict:  # fmt: skip
    """REINFORCE from the policy at `policy_dir` towards the reward model (its encoder the SFT agent
    at `sft`, also the KL reference); the result is saved in `out`. `target`: the pad whose true
    share is logged. Killed, it starts again from the beginning."""
    check_reward_matches(reward_dir, sft)
    seed_everything(seed)
    policy = Policy.from_pretrained(policy_dir)
    encoder_ref = Policy.from_pretrained(sft).eval()
    for p in encoder_ref.parameters():
        p.requires_grad_(False)
    if policy.cfg != encoder_ref.cfg:
        raise ValueError(f"{policy_dir} and the SFT agent {sft} are different models")
    rewarder = TrajectoryRewarder(reward_dir, encoder_ref, policy.cfg.image_size)
    reference = encoder_ref if cfg.beta > 0 else None
    frozen = FROZEN.get(cfg.train_only, ())
    params = [p for k, p in policy.named_parameters() if not k.startswith(frozen)]
    for k, p in policy.named_parameters():
        p.requires_grad_(not k.startswith(frozen))
    opt = torch.optim.Adam(params, lr=cfg.lr)
    shared = shared_with_reference(policy, encoder_ref, cfg.train_only)
    (out / "metrics.jsonl").unlink(missing_ok=True)  # a rerun starts from the beginning: so do its metrics
    shutil.rmtree(out / "tb", ignore_errors=True)
    log = MetricsLogger(out)
    # One wave a batch, so every update is on-policy; frames kept for the reward model.
    roll = RolloutConfig(episodes=cfg.episodes, seed=seed, temperature=cfg.temperature, num_envs=cfg.batch_episodes,
                         keep_frames=None, keep_h=cfg.train_only == "head", keep_z=cfg.train_only == "transformer" or shared != "nothing")  # fmt: skip
    done = dropped = 0
    history = []
    t0 = time.perf_counter()
    for step, wave in enumerate(iter_waves(policy, roll)):
        rewards = rewarder(wave, z_is_reference=shared != "nothing")
        keep = [i for i in range(len(wave)) if np.isfinite(rewards[i])]
        done, dropped = done + len(wave), dropped + len(wave) - len(keep)
        row = {"align/episodes": done, "align/dropped": dropped, "align/success": float(np.mean([tr.jump_pad == target for tr in wave])),
               "align/length": float(np.mean([tr.length for tr in wave]))}  # fmt: skip
        row.update({f"align/pad_{p}": float(np.mean([tr.jump_pad == p for tr in wave])) for p in (*W.PAD_NAMES, "none")})
        if keep:
            R_b = torch.tensor(rewards[keep], dtype=torch.float32)
            row.update(update(policy, reference, [wave[i] for i in keep], R_b, opt, params, cfg, shared))
            row["align/reward_return"] = float(R_b.mean())
        row["align/seconds"] = time.perf_counter() - t0
        history.append(row)
        log.log(step, **row)
        if progress:
            progress(done, cfg.episodes, row)
    log.close()
    for p in policy.parameters():
        p.requires_grad_(False)
    policy.save_pretrained(out, stage="reinforce", parent=str(policy_dir), reference=str(sft), reward_model=str(reward_dir),
                           target=target, episodes=done)  # fmt: skip
    return {"episodes": done, "updates": len(history), "dropped": dropped, "seconds": time.perf_counter() - t0,
            "final_success": float(np.mean([h["align/success"] for h in history[-5:]]))}  # fmt: skip
