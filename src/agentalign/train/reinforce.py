"""Online alignment: REINFORCE on the reward model's return, with a KL leash to the SFT policy
(paper section 3.6, appendix A step 5, appendix C.4).

Objective, per batch of B episodes τ_1..τ_B of the current policy π_θ:

    L(θ) = -1/B Σ_i Σ_t log π_θ(a_t | context_t) (G_it - b_i)  +  β · 1/B Σ_i Σ_t KL(π_θ || π_SFT)(context_t)

where G_it = γ^(T_i-1-t) R_i with R_i the reward model's min-max normalised output for τ_i, the
same return at every step when γ = 1 (the paper's undiscounted REINFORCE), and b_i a baseline.
The true jump-pad outcome (from the environment's privileged info) is logged beside the reward
model's return every update and never used for training (but by `reward="outcome"`, a diagnostic
that trains on it in place of the reward model to measure the procedure's ceiling).

Departures from the paper, all configurable back to it:
  * baseline: leave-one-out by default (RLOO); the paper uses none (`baseline="none"`); "start"
    takes the leave-one-out among episodes from the same spawn; "value" subtracts a learned V(h_t)
    at every step instead of one b_i an episode (`ValueBaseline`, trained beside the policy).
  * β: the paper trains the last layer without KL (`beta=0`, which loads no reference model);
    the standard LLM recipe it cites regularises to the SFT policy, which we default on, small.
  * `train_only`: "head" (the paper: only the MLP after the transformer), "transformer" (the
    transformer and the head; the pixel encoder stays frozen), "all" or "lora".
  * Options the paper does not have, off by default: `normalise` divides the advantages by their
    standard deviation (over the batch, or per spawn as GRPO does per prompt), `schedule="linear"`
    decays the lr to 0, `entropy_bonus` rewards exploring, and `epochs > 1` reuses each batch with
    PPO's clipped ratio.
  * `samples_per_start > 1` (off by default) plays each batch as groups of episodes from one start
    state (spawn and initial yaw), each sampling its own actions, as RLOO and GRPO sample several
    completions of a prompt; the "start" baseline then compares episodes within a group.
  * `spawn_priority > 0` (off by default; the paper's spawns are uniform) draws part of each
    batch's spawns where the agent's episodes still disagree, as Prioritized Level Replay
    (Jiang et al., 2021) does over levels (`SpawnPriority`): REINFORCE flips a route only through
    the episodes from the start where the agent is torn, so it gets more of them there.
  * `polish_episodes > 0` (off by default) ends the stage with a ReST step on the episodes REINFORCE
    already played and scored: the best `polish_fraction` of each spawn's among the last
    `polish_episodes` are cloned into the aligned policy (`preference_ft.clone_best`). REINFORCE
    moves a route choice only through the rare episodes that explore the other way; cloning the
    best ones moves it at once.
  * `rest_episodes > 0` (off by default) then runs ReST rounds at the sampling temperature: each
    plays several episodes from each of its start states and clones the best of each start's by
    the reward model into the agent the next round plays (expert iteration); with `episodes = 0`
    they replace REINFORCE.
  * `sharpen_episodes > 0` (off by default) then plays that many fresh episodes at
    `sharpen_temperature` and clones the best of each spawn's the same way: the agent's
    low-temperature routes, copied into its T = 1 policy. With `sharpen_rounds` > 1 the episodes
    are split over that many such steps, each played by the agent the last one cloned.
  * These ReST clones (`polish_bc`) draw half their windows from their episodes' first steps
    (`BCConfig.first_window_share`), where the route is chosen; uniform windows would weigh them least.
  * `clone_min_score` (off by default) is ReST's filter threshold: a kept episode the reward model
    scores below it is not cloned, so a start where every sample missed does not teach its miss.

With `train_only="head"` the encoder and transformer are frozen, so the transformer outputs h_t
the rollout already computed are exactly those of the SFT policy: the update recomputes only the
head on them, the KL needs only the SFT head, and the reward model's agent encoder (the frozen SFT
policy) sees the same features. "transformer" encodes the frames once without gradients and
recomputes the transformer's sliding windows with them; "all" and "lora" recompute h_t with
gradients from the frames.
An episode whose reward cannot be computed (an error or a non-finite value) is dropped and the
batch shrinks, as in appendix C.4.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from agentalign.data import StoreWriter, open_store
from agentalign.envs.skygarden import world as W
from agentalign.models import ActionDistribution, Policy
from agentalign.models.reward import (AgentEncoder, RandomEncoder, check_reward_matches, load_reward_model,
                                     sliding_window_features, windowed_transformer)
from agentalign.prefs.labellers import SyntheticLabeller
from agentalign.rollout import RolloutConfig, Trajectory, iter_waves, record_rollouts, to_episode
from agentalign.train.bc import BCConfig, bc_preset
from agentalign.io import MetricsLogger, atomic_write_json, atomic_write_text, read_metrics
from agentalign.train.common import FROZEN, seed_everything
from agentalign.train.losses import (advantage_scale, baseline, clipped_surrogate_loss, discounted_returns,
                                     episode_sum_mean, explained_variance, kl_penalty, lambda_returns, reinforce_loss,
                                     value_loss)
from agentalign.train.preference_ft import clone_best, score_trajectories


TRAIN_ONLY = ("head", "transformer", "all", "lora")


@dataclass(frozen=True)
class ReinforceConfig:
    target: str = "left"  # the pad the designer wants; used for the logged true success only
    # Online REINFORCE episodes (paper: 9,600 = 600 updates x 16). 0 with sharpen_episodes > 0: no
    # REINFORCE, the sharpen's ReST rounds alone align the agent (at sharpen_temperature = 1, online
    # ReST or expert iteration: play, keep the best, clone, repeat).
    episodes: int = 2400
    batch_episodes: int = 16  # episodes per update (appendix C.4)
    lr: float = 1e-4  # appendix C.4
    # "linear" decays the lr to 0 over the run: large early steps, little late noise.
    schedule: Literal["constant", "linear"] = "constant"
    train_only: Literal["head", "transformer", "all", "lora"] = "head"  # appendix C.4 trains only the head
    beta: float = 0.02  # KL(pi || pi_SFT) weight; 0 turns it off and loads no reference model
    gamma: float = 1.0  # undiscounted, as the paper
    # Variance reduction; the paper uses none. "start" compares each episode with those from the
    # same spawn: a spawn far from the target makes every return lower, which is not the policy's doing.
    # "value" subtracts a learned V(h_t) at every step (`ValueBaseline`, a critic on the trunk's
    # features): per start state like "start", and once an episode's route is committed V(h_t) nears
    # its outcome, so the steps after the decision stop adding noise to the gradient.
    baseline: Literal["none", "mean", "loo", "start", "value"] = "loo"
    # The critic of baseline="value": fitted to each batch's returns after the batch's update (its
    # baseline is the V of earlier batches, so it does not bias the gradient), `value_epochs` Adam
    # steps at `value_lr`; an MLP of `value_hidden` units on the detached features.
    value_lr: float = 1e-3
    value_epochs: int = 8  # a small head on fixed features: several steps a batch are cheap and it lags less
    value_hidden: int = 128
    # With baseline="value", the policy's returns are TD(lambda) returns on the critic (GAE): below 1
    # an episode's credit goes to the steps where V(h_t) moved (the route's choice), not to every
    # step alike, at the price of V's bias. 1: Monte Carlo, REINFORCE's own return.
    value_lambda: float = 1.0
    # Divide the advantages by their standard deviation: over the batch ("batch"), or over each
    # spawn's episodes ("spawn", GRPO's per-prompt scale), so a spawn torn between two pads weighs as
    # much as one with a failure in it. "batch" ended at 89.0 / 84.0 % left on the cpu preset
    # (seeds 0 / 1) against 93.0 / 83.2 % with "none".
    normalise: Literal["none", "batch", "spawn"] = "none"
    # Start-state prioritisation (Prioritized Level Replay, Jiang et al. 2021, over the spawns): this
    # share of each batch's spawns is drawn in proportion to each spawn's recent spread of returns
    # (`SpawnPriority`), the rest uniformly. REINFORCE flips a route only through the episodes from
    # the spawn where the agent is torn; more of them there is more signal where it is missing.
    # 0: uniform spawns, the paper's. 0.5 on the cpu preset (3 seeds a pad, RESULTS.md, ninth
    # session): right pad 84.7 -> 90.9 %, left 93.3 -> 84.7 % (two seeds took the middle pad).
    spawn_priority: float = 0.0
    # Episodes played from each start state (spawn and initial yaw, one env seed) in a batch, each
    # sampling its own actions, as RLOO and GRPO sample k completions of one prompt. With k > 1 the
    # "start" baseline and "spawn" normalisation compare an episode with the others from its very
    # start: the aligned agent's misses cluster at a spawn's edge of initial yaws (RESULTS.md,
    # eleventh session), which a spawn-wide baseline averages away. 1: a start per episode.
    samples_per_start: int = 1
    # Added to each standard deviation: about the spread of the reward model's scores among one
    # spawn's successes on the cpu preset (0.05-0.12), so a group of like outcomes is not amplified.
    normalise_eps: float = 0.05
    # Weight of an entropy bonus (per-step entropy summed over the episode, like the KL): keeps the
    # agent trying other routes from the starts where its usual one misses. 0: the paper's.
    entropy_bonus: float = 0.0
    temperature: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    grad_clip: float = 1.0
    # Gradient epochs per batch. 1 is REINFORCE; more reuse each batch with PPO's clipped ratio,
    # which costs only head passes with train_only="head" (the trunk's outputs are cached).
    epochs: int = 1
    clip: float = 0.2  # PPO's ratio clip, used when epochs > 1
    # A ReST step on what REINFORCE already paid for: the last `polish_episodes` episodes are kept
    # with their reward-model scores, and after the last update the best `polish_fraction` of each
    # spawn's are cloned (`polish_bc`, from the aligned policy). No new episode is played. 0: off.
    polish_episodes: int = 0
    polish_fraction: float = 0.2  # as preference fine-tuning's top fraction
    # At 1e-3 as the cpu preset's preference fine-tuning (the head alone moved too little), but with
    # the pixel encoder frozen as REINFORCE keeps it: an update costs half as much, and the clones
    # were as good as the whole network's within the spread between BC seeds (one polish gave
    # 77.8 / 79.0 % against 89.2 / 77.4 % for two seeds; RESULTS.md, tenth session).
    # Half of each clone's windows start at their episode's first step: the opening steps choose
    # the route, and uniform windows over ~50-step episodes trained them 1 / 19 as often as the
    # middle. Right pad 85.4 / 80.6 -> 94.6 / 87.2 % (seeds 0 / 2; RESULTS.md, sixteenth session).
    polish_bc: BCConfig = field(default_factory=lambda: replace(bc_preset("preference"), lr=1e-3, train_only="transformer",
                                                                augment=False, first_window_share=0.5))  # fmt: skip
    # Then, optionally, a ReST step on fresh episodes of the (polished) agent sampled at
    # `sharpen_temperature`: the best `sharpen_fraction` of each spawn's, by the reward model, cloned
    # with `polish_bc`. It copies the routes the agent takes at a low temperature into its T = 1
    # policy: from four polished agents, left 89.2 -> 94.2 % at T = 1 with 1,000 episodes at 0.3
    # (RESULTS.md, seventh session). Online episodes beyond `episodes`. 0: off.
    sharpen_episodes: int = 0
    sharpen_temperature: float = 0.3
    # At T = 0.3 nearly every episode reaches the target, so the best half is still clean: of the
    # cpu preset's 800, the kept 400 held 396-398 target-pad episodes (RESULTS.md, ninth session).
    sharpen_fraction: float = 0.5
    # The sharpen's episodes in groups of this many from one start state (spawn and initial yaw), the
    # best `sharpen_fraction` of each group kept instead of each spawn's: with 1/k, the best of k
    # samples per start, as rejection-sampling fine-tuning keeps the best of k completions per prompt.
    # A spawn-wide quota fills with the starts where the agent already succeeds and starves those
    # where it mostly misses (RESULTS.md, eleventh session). 1: per spawn.
    sharpen_samples_per_start: int = 1
    # The polish and each sharpen round clone this many times with other BC seeds and keep the mean of
    # the clones' weights (a model soup): a clone's outcome moved 12 points with its BC seed alone,
    # and soups of 2-4 clones scored 1.4-4.2 points above their members' mean, but two agents
    # polished and sharpened with k = 2 ended no better (RESULTS.md, tenth session). Each member
    # costs one more clone.
    clone_soup: int = 1
    # ReST's filter threshold τ (Gulcehre et al., 2023): of the episodes each ReST step keeps (the
    # polish, every round, the sharpen), those the reward model scores below this (its normalised
    # return) are dropped before the clone, so a start where every sample missed does not teach the
    # miss. None: keep the best of each group whatever it scores.
    clone_min_score: float | None = None
    # The sharpen's episodes split over this many ReST rounds, each cloning into the agent the next
    # plays: the paper's further work (more than one grow step). 1: one round of all of them.
    sharpen_rounds: int = 1
    # ReST rounds at `temperature`, after REINFORCE and the polish (or in place of REINFORCE, with
    # episodes = 0) and before the sharpen: each of `rest_rounds` rounds plays its share of
    # `rest_episodes`, `rest_samples_per_start` from each start, and clones the best `rest_fraction`
    # of each start's (the best of k) into the agent the next round plays: online ReST with several
    # grow steps, the paper's further work, or expert iteration. A round moved the right pad 4-5
    # points where REINFORCE's 1,600 episodes moved it about 5 (RESULTS.md, thirteenth session).
    # Online episodes beyond `episodes`. 0: off.
    rest_episodes: int = 0
    rest_rounds: int = 1
    rest_samples_per_start: int = 4  # best of 8 did worse (74.2 against 84.8 %, 3 rounds)
    rest_fraction: float = 0.25
    # What scores the episodes: "model", the reward model (the paper); "outcome", the true jump-pad
    # outcome in the synthetic labeller's order (`SyntheticLabeller.reward`), a diagnostic only: what
    # the procedure reaches with a perfect reward, so a shortfall can be put on the reward model or
    # on the optimiser (RESULTS.md, twelfth and twenty-third sessions). The reward model is still
    # checked against the policy, then unused.
    reward: Literal["model", "outcome"] = "model"
    seed: int = 0

    def __post_init__(self) -> None:
        W.pad_index(self.target)
        if self.reward not in ("model", "outcome"):
            raise ValueError(f"reward must be model or outcome, got {self.reward!r}")
        if self.episodes < 0 or (self.episodes == 0 and self.rest_episodes <= 0 and self.sharpen_episodes <= 0):
            raise ValueError(f"episodes must be positive, or 0 with rest_episodes or sharpen_episodes > 0 (ReST alone), "
                             f"got {self.episodes} (rest_episodes {self.rest_episodes}, sharpen_episodes "
                             f"{self.sharpen_episodes})")  # fmt: skip
        if self.batch_episodes <= 0:
            raise ValueError(f"batch_episodes must be positive, got {self.batch_episodes}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0 (0 turns the KL off), got {self.beta}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")
        if self.entropy_bonus < 0:
            raise ValueError(f"entropy_bonus must be >= 0, got {self.entropy_bonus}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if not 0 < self.clip < 1:
            raise ValueError(f"clip must lie in (0, 1), got {self.clip}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.train_only not in TRAIN_ONLY:
            raise ValueError(f"train_only must be one of {', '.join(TRAIN_ONLY)}, got {self.train_only!r}")
        if self.schedule not in ("constant", "linear"):
            raise ValueError(f"schedule must be constant or linear, got {self.schedule!r}")
        if self.normalise not in ("none", "batch", "spawn"):
            raise ValueError(f"normalise must be none, batch or spawn, got {self.normalise!r}")
        if not 0 <= self.spawn_priority <= 1:
            raise ValueError(f"spawn_priority must lie in [0, 1] (0: uniform spawns), got {self.spawn_priority}")
        if isinstance(self.samples_per_start, bool) or not isinstance(self.samples_per_start, int) \
                or self.samples_per_start < 1 or self.batch_episodes % self.samples_per_start:
            raise ValueError(f"samples_per_start must be a positive integer that divides batch_episodes "
                             f"({self.batch_episodes}), got {self.samples_per_start!r}")  # fmt: skip
        if self.samples_per_start > 1 and self.spawn_priority > 0:
            raise ValueError("spawn_priority draws each episode's spawn and samples_per_start > 1 shares one start "
                             "among several: set one of them to its default")  # fmt: skip
        if self.normalise_eps < 0:
            raise ValueError(f"normalise_eps must be >= 0, got {self.normalise_eps}")
        if self.baseline not in ("none", "mean", "loo", "start", "value"):
            raise ValueError(f"baseline must be none, mean, loo, start or value, got {self.baseline!r}")
        if self.baseline == "value" and self.normalise != "none":
            raise ValueError("normalise scales each episode's advantage and baseline='value' gives one per step: "
                             "set normalise='none' with it")  # fmt: skip
        if not 0 <= self.value_lambda <= 1:
            raise ValueError(f"value_lambda must lie in [0, 1] (1: Monte Carlo returns), got {self.value_lambda}")
        if self.value_lambda < 1 and self.baseline != "value":
            raise ValueError(f"value_lambda < 1 needs the critic: set baseline='value' (got {self.baseline!r})")
        if self.value_lr <= 0 or self.value_epochs < 1 or self.value_hidden < 1:
            raise ValueError(f"value_lr must be positive and value_epochs, value_hidden >= 1, got {self.value_lr}, "
                             f"{self.value_epochs}, {self.value_hidden}")  # fmt: skip
        if not 0 <= self.polish_episodes <= self.episodes:
            raise ValueError(f"polish_episodes must lie in [0, episodes = {self.episodes}], got {self.polish_episodes}")
        if not 0 < self.polish_fraction <= 1:
            raise ValueError(f"polish_fraction must lie in (0, 1], got {self.polish_fraction}")
        if self.sharpen_episodes < 0:
            raise ValueError(f"sharpen_episodes must be >= 0 (0 turns it off), got {self.sharpen_episodes}")
        if not 0 < self.sharpen_temperature <= 1:
            raise ValueError(f"sharpen_temperature must lie in (0, 1], got {self.sharpen_temperature}")
        if not 0 < self.sharpen_fraction <= 1:
            raise ValueError(f"sharpen_fraction must lie in (0, 1], got {self.sharpen_fraction}")
        if isinstance(self.clone_soup, bool) or not isinstance(self.clone_soup, int) or self.clone_soup < 1:
            raise ValueError(f"clone_soup must be an integer >= 1 (1: a single clone), got {self.clone_soup!r}")
        if self.clone_min_score is not None and not (isinstance(self.clone_min_score, (int, float))
                                                     and math.isfinite(self.clone_min_score)):
            raise ValueError(f"clone_min_score must be a finite number or None (keep every selected episode), "
                             f"got {self.clone_min_score!r}")  # fmt: skip
        if self.rest_episodes < 0:
            raise ValueError(f"rest_episodes must be >= 0 (0 turns the ReST rounds off), got {self.rest_episodes}")
        if not 0 < self.rest_fraction <= 1:
            raise ValueError(f"rest_fraction must lie in (0, 1], got {self.rest_fraction}")
        for step in ("sharpen", "rest"):
            n, rounds, k = (getattr(self, f"{step}_{f}") for f in ("episodes", "rounds", "samples_per_start"))
            if not 1 <= rounds <= max(1, n):
                raise ValueError(f"{step}_rounds must lie in [1, {step}_episodes = {n}], got {rounds}")
            if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (k > 1 and n % (k * rounds)):
                raise ValueError(f"{step}_samples_per_start must be a positive integer that divides each {step} round's "
                                 f"episodes ({n} over {rounds}), got {k!r}")  # fmt: skip


class SpawnPriority:
    """Draws the spawns of each batch: a share `share` from P(s) ∝ score_s, the rest uniformly.
    score_s is an exponential average of the standard deviation of the reward model's returns
    among spawn s's episodes of a batch: high where the agent's episodes still disagree (two
    routes, or a route and a wall), near 0 where they are all alike. A spawn not yet scored
    takes the highest score, so each is tried early (PLR's staleness, simplified)."""

    EMA = 0.8  # about the last five batches: a route shifts over tens of updates, not one

    def __init__(self, share: float, seed: int, n_spawns: int = len(W.SPAWNS)):
        self.share = share
        self.rng = np.random.default_rng([seed, 0x5BA])  # its own stream: the episodes' seeds stay as they were
        self.score = np.full(n_spawns, np.nan)  # (S,)

    def probs(self) -> np.ndarray:
        """(S,) the probability of each spawn for the next episode."""
        seen = ~np.isnan(self.score)
        s = np.where(seen, self.score, self.score[seen].max() if seen.any() else 1.0)
        prioritised = s / s.sum() if s.sum() > 0 else np.full(len(s), 1 / len(s))
        return (1 - self.share) / len(s) + self.share * prioritised

    def __call__(self, episodes: list[int]) -> list[int]:
        return self.rng.choice(len(self.score), size=len(episodes), p=self.probs()).tolist()

    def update(self, spawns: np.ndarray, returns: np.ndarray) -> None:
        """spawns, returns: (B,) of one batch; a spawn with fewer than 2 episodes keeps its score."""
        for k in np.unique(spawns):
            r = returns[spawns == k]
            if len(r) > 1:
                old = self.score[k]
                self.score[k] = r.std() if np.isnan(old) else self.EMA * old + (1 - self.EMA) * r.std()


class ValueBaseline(nn.Module):
    """V(h_t) (B, T, width) -> (B, T): the expected return from step t's context, REINFORCE's
    state-value baseline (Sutton & Barto, 2018, section 13.4) on the policy trunk's detached features.
    Its output layer starts at zero weights and, on the first batch, the batch's mean return as its
    bias: the first update is the "mean" baseline's, not one against an untrained guess."""

    def __init__(self, width: int, hidden: int, lr: float, epochs: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        self.started = False
        self.epochs = epochs
        self.opt = torch.optim.Adam(self.parameters(), lr=lr)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)

    @torch.no_grad()
    def predict(self, h: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) V(h_t) before this batch's fit, zero on padding. h (B, T, width); returns, mask (B, T)."""
        if not self.started:
            self.net[2].bias.fill_(float(returns[mask].mean()))
            self.started = True
        return self(h) * mask

    def fit(self, h: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
        """`epochs` Adam steps of value_loss on one batch; -> the last step's loss."""
        for _ in range(self.epochs):
            loss = value_loss(self(h), returns, mask)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return float(loss.detach())


# ---- LoRA: a few lines instead of a dependency ---------------------------------------------------


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) B A x, with W frozen and B initialised to zero (Hu et al., 2021)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.T @ self.b.T) * self.scale

    def merged(self) -> nn.Linear:
        out = copy.deepcopy(self.base)
        out.weight.data += (self.b @ self.a) * self.scale
        return out


def add_lora(policy: Policy, rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap the transformer's linear layers in LoRA adapters; return the trainable parameters
    (the adapters and the head)."""
    params = []
    for blk in policy.blocks:
        for name in ("qkv", "proj", "fc", "fc_out"):
            lora = LoRALinear(getattr(blk, name), rank, alpha)
            setattr(blk, name, lora)
            params += [lora.a, lora.b]
    return params + list(policy.head.parameters())


def merge_lora(policy: Policy) -> None:
    for blk in policy.blocks:
        for name in ("qkv", "proj", "fc", "fc_out"):
            m = getattr(blk, name)
            if isinstance(m, LoRALinear):
                setattr(blk, name, m.merged())


# ---- rewards -----------------------------------------------------------------------------------


class TrajectoryRewarder:
    """The reward model's normalised return for finished trajectories (frames kept by the rollout)."""

    def __init__(self, reward_dir: str | Path, reference: Policy | None, image_size: int):
        self.model, self.meta = load_reward_model(reward_dir)
        self.model.eval()
        self.kind = self.model.cfg.encoder
        if self.kind == "agent":
            if reference is None:
                raise ValueError("an agent-encoder reward model needs its policy")
            self.encoder = AgentEncoder(reference)
        else:
            self.encoder = RandomEncoder(image_size, self.model.cfg.embed_dim, int(self.meta.get("random_seed", 0)))

    @torch.inference_mode()
    def __call__(self, trajs: list[Trajectory], z_shared: bool = False) -> np.ndarray:
        """(B,) normalised rewards; NaN for an episode whose reward could not be computed.
        `z_shared`: the trajectories' `z` came from the reference's own encoder (frozen, equal),
        so the frames need not be encoded again."""
        out = np.full(len(trajs), np.nan)
        horizon = self.model.cfg.horizon
        ok = [i for i, tr in enumerate(trajs) if tr.frames is not None and tr.length <= horizon]
        if not ok:
            return out
        frames = [torch.from_numpy(trajs[i].frames[: trajs[i].length]) for i in ok]  # (T_i, H, W, 3)
        actions = [torch.from_numpy(trajs[i].actions) for i in ok]  # (T_i, 16)
        if z_shared and self.kind == "agent":
            z = [torch.from_numpy(trajs[i].z) for i in ok]  # (T_i, width)
            emb = self.encoder.padded(frames, actions, horizon, self.model.cfg.pad, z=z)
        else:
            emb = self.encoder.padded(frames, actions, horizon, self.model.cfg.pad)
        out[ok] = self.model.normalised(emb.float()).numpy()
        return out


class OutcomeRewarder:
    """`reward="outcome"`: the true outcome as the return (`SyntheticLabeller.reward`), in place of
    the reward model; it reads each episode's pad and length, never its pixels."""

    def __init__(self, target: str):
        self.labeller = SyntheticLabeller(target)

    def __call__(self, trajs: list[Trajectory], z_shared: bool = False) -> np.ndarray:
        return np.array([self.labeller.reward(tr.jump_pad, tr.length) for tr in trajs])

    def score_store(self, store, ids: np.ndarray) -> np.ndarray:
        """(N,) returns of the stored episodes `ids`, as `score_trajectories` gives the reward model's."""
        return np.array([self.labeller.reward(str(md["jump_pad"]), int(md["length"]))
                         for md in (store.metadata(int(i)) for i in ids)])  # fmt: skip


def _score_store(store, ids: np.ndarray, reward_dir: Path, reference_dir: Path, cfg: ReinforceConfig) -> np.ndarray:
    """(N,) scores of a ReST step's episodes: the reward model's (its encoder the reference), or the
    true outcome's with `cfg.reward="outcome"`."""
    if cfg.reward == "outcome":
        return OutcomeRewarder(cfg.target).score_store(store, ids)
    return score_trajectories(store, ids, reward_dir, reference_dir)


# ---- the stage ---------------------------------------------------------------------------------


def _frozen_matches(policy: Policy, reference: Policy, prefixes: tuple[str, ...]) -> bool:
    """Whether the parameters under `prefixes` are the reference's (so its features can be shared)."""
    ref = reference.state_dict()
    return all(torch.equal(v, ref[k]) for k, v in policy.state_dict().items() if k.startswith(prefixes))


def _shared_with_reference(policy: Policy, reference: Policy, train_only: str) -> str:
    """What the reference can take from the policy's forward pass instead of its own: its h_t when
    the whole trunk is frozen and equal to it ("trunk"), its per-frame embeddings when the encoder
    is ("encoder"), else "nothing"."""
    if train_only == "head" and _frozen_matches(policy, reference, FROZEN["head"]):
        return "trunk"
    if train_only in FROZEN and _frozen_matches(policy, reference, FROZEN["transformer"]):
        return "encoder"
    return "nothing"


def train_reinforce(policy_dir: str | Path, reference_dir: str | Path, reward_dir: str | Path, out_dir: str | Path,
                    cfg: ReinforceConfig, progress=None) -> dict:  # fmt: skip
    """Align the policy at `policy_dir` (the SFT or preference-fine-tuned agent) towards the reward
    model, regularised to `reference_dir` (the SFT agent the reward model's encoder is), then
    polish it when `cfg.polish_episodes` > 0, run ReST rounds when `cfg.rest_episodes` > 0 and
    sharpen it when `cfg.sharpen_episodes` > 0.

    A run killed during the polish, the ReST rounds or the sharpen resumes them: REINFORCE's policy, summary and
    episodes are on disk by then. Killed during REINFORCE, it starts again from the beginning."""
    out = Path(out_dir)
    reference_dir, reward_dir = Path(reference_dir), Path(reward_dir)
    check_reward_matches(reward_dir, reference_dir)
    polish_dir = out / "polish"
    marker = polish_dir / "reinforce_done.json"  # written once REINFORCE's outputs are all on disk
    key = json.loads(json.dumps({"cfg": asdict(cfg), "policy": str(policy_dir), "reference": str(reference_dir),
                                 "reward": str(reward_dir)}))  # fmt: skip
    finished = json.loads(marker.read_text()) if marker.exists() else None
    if finished is not None and finished["key"] == key:
        summary, info = finished["summary"], finished["info"]
    else:
        shutil.rmtree(polish_dir, ignore_errors=True)  # another run's, or a half-written one
        (out / "metrics.jsonl").unlink(missing_ok=True)
        if cfg.episodes:
            policy, summary, info = _reinforce(Path(policy_dir), reference_dir, reward_dir, out, cfg, progress)
        else:  # ReST rounds alone: they start from the agent as it came
            policy = Policy.from_pretrained(policy_dir)
            summary = {"episodes": 0, "updates": 0, "dropped": 0, "seconds": 0.0, "final_success": None, "target": cfg.target}
            info = dict(stage="align", parent=str(policy_dir), reference=str(reference_dir), reward_model=str(reward_dir),
                        target=cfg.target, episodes=0)  # fmt: skip
        if not (cfg.polish_episodes or cfg.rest_episodes or cfg.sharpen_episodes):
            policy.save_pretrained(out, **info)
            atomic_write_json(out / "align_summary.json", summary)
            return summary
        policy.save_pretrained(polish_dir / "reinforce", **info)
        atomic_write_json(marker, {"key": key, "summary": summary, "info": info})
    t0 = time.perf_counter()
    final = polish_dir / "reinforce"
    if cfg.polish_episodes:
        summary["polish"] = polish(final, polish_dir, cfg)
        final = polish_dir / "model"
    logged = []  # rounds sampled as REINFORCE samples: the same curve goes on through them
    if cfg.rest_episodes:  # the sharpen's rounds, at REINFORCE's temperature and with the rest_ keys
        rest = replace(cfg, sharpen_episodes=cfg.rest_episodes, sharpen_rounds=cfg.rest_rounds, sharpen_temperature=cfg.temperature,
                       sharpen_samples_per_start=cfg.rest_samples_per_start, sharpen_fraction=cfg.rest_fraction)  # fmt: skip
        final, rounds = _rounds(final, polish_dir / "rest", reward_dir, reference_dir, rest, first=0)
        summary["rest"] = _merge_rounds(rounds)
        logged += rounds
    if cfg.sharpen_episodes:  # after the ReST rounds, on the start states their next round would have played
        final, rounds = _rounds(final, polish_dir / "sharpen", reward_dir, reference_dir, cfg,
                                first=cfg.rest_rounds if cfg.rest_episodes else 0)  # fmt: skip
        summary["sharpen"] = _merge_rounds(rounds)
        logged += rounds if cfg.sharpen_temperature == cfg.temperature else []
    if logged:
        _log_rounds(out, logged, cfg)
    summary["seconds"] += time.perf_counter() - t0
    Policy.from_pretrained(final).save_pretrained(out, **info, polished=True)
    atomic_write_json(out / "align_summary.json", summary)
    return summary


def _reinforce(policy_dir: Path, reference_dir: Path, reward_dir: Path, out: Path, cfg: ReinforceConfig,
               progress=None) -> tuple[Policy, dict, dict]:  # fmt: skip
    """The REINFORCE updates: -> (the aligned policy, a summary, its checkpoint info). With
    `cfg.polish_episodes`, the last episodes are written to out/polish/episodes as they come."""
    seed_everything(cfg.seed)
    policy = Policy.from_pretrained(policy_dir)
    reference = Policy.from_pretrained(reference_dir).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    if policy.cfg != reference.cfg:
        raise ValueError(f"{policy_dir} and the reference {reference_dir} are different models")
    rewarder = (OutcomeRewarder(cfg.target) if cfg.reward == "outcome"
                else TrajectoryRewarder(reward_dir, reference, policy.cfg.image_size))  # fmt: skip

    for p in policy.parameters():
        p.requires_grad_(False)
    if cfg.train_only == "lora":
        params = add_lora(policy, cfg.lora_rank, cfg.lora_alpha)
    else:
        frozen = FROZEN.get(cfg.train_only, ())
        params = [p for k, p in policy.named_parameters() if not k.startswith(frozen)]
    shared = _shared_with_reference(policy, reference, cfg.train_only)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    critic = ValueBaseline(policy.cfg.width, cfg.value_hidden, cfg.value_lr, cfg.value_epochs) if cfg.baseline == "value" else None
    updates = math.ceil(cfg.episodes / cfg.batch_episodes)
    decay = (lambda u: 1.0 - u / updates) if cfg.schedule == "linear" else (lambda u: 1.0)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    log = MetricsLogger(out)
    # Waves of one batch each: every update is on-policy. Frames are kept for the reward model.
    roll = RolloutConfig(episodes=cfg.episodes, seed=cfg.seed, temperature=cfg.temperature,
                         num_envs=cfg.batch_episodes, samples_per_start=cfg.samples_per_start,
                         keep_frames=None, keep_h=cfg.train_only == "head",
                         keep_z=cfg.train_only == "transformer" or shared != "nothing")  # fmt: skip
    history = []
    done = dropped = 0
    kept = StoreWriter(out / "polish" / "episodes", image_size=(policy.cfg.image_size,) * 2) if cfg.polish_episodes else None
    prio = SpawnPriority(cfg.spawn_priority, cfg.seed) if cfg.spawn_priority > 0 else None
    t0 = time.perf_counter()
    for update, wave in enumerate(iter_waves(policy, roll, spawn_of=prio)):
        rewards = rewarder(wave, z_shared=shared != "nothing")  # the reference's encoder is the policy's
        keep = [i for i in range(len(wave)) if np.isfinite(rewards[i])]
        if prio is not None:
            prio.update(np.array([wave[i].spawn for i in keep], dtype=np.int64), rewards[keep])
        dropped += len(wave) - len(keep)
        if kept is not None:  # the episodes of the last `polish_episodes`, scored, for the ReST step
            for i in keep:
                if wave[i].index >= cfg.episodes - cfg.polish_episodes:
                    kept.add(to_episode(wave[i], reward=float(rewards[i])))
        done += len(wave)
        succ = float(np.mean([tr.jump_pad == cfg.target for tr in wave]))
        row = {"align/episodes": done, "align/success": succ, "align/dropped": dropped,
               "align/length": float(np.mean([tr.length for tr in wave]))}  # fmt: skip
        for name in W.PAD_NAMES:
            row[f"align/pad_{name}"] = float(np.mean([tr.jump_pad == name for tr in wave]))
        row["align/pad_none"] = float(np.mean([tr.jump_pad == "none" for tr in wave]))
        row.update({f"align/spawn{k}_n": sum(tr.spawn == k for tr in wave) for k in range(len(W.SPAWNS))})
        if prio is not None:  # the next batch's
            row.update({f"align/spawn{k}_p": float(p) for k, p in enumerate(prio.probs())})
        if keep:
            batch = [wave[i] for i in keep]
            R = torch.tensor(rewards[keep], dtype=torch.float32)
            metrics = _update(policy, reference, batch, R, opt, params, cfg, shared, critic)
            row.update(metrics)
            row["align/lr"] = sched.get_last_lr()[0]
            sched.step()
            row["align/reward_return"] = float(R.mean())
        row["align/seconds"] = time.perf_counter() - t0
        history.append(row)
        log.log(update, **row)
        if progress:
            progress(done, cfg.episodes, row)
    if cfg.train_only == "lora":
        merge_lora(policy)
    for p in policy.parameters():
        p.requires_grad_(False)
    info = dict(stage="align", parent=str(policy_dir), reference=str(reference_dir), reward_model=str(reward_dir),
                target=cfg.target, episodes=done)  # fmt: skip
    log.close()
    summary = {"episodes": done, "updates": len(history), "dropped": dropped, "seconds": time.perf_counter() - t0,
               "final_success": float(np.mean([h["align/success"] for h in history[-5:]])), "target": cfg.target}  # fmt: skip
    if kept is not None:
        kept.close()
    return policy, summary, info


def start_groups(batch: list[Trajectory], samples_per_start: int) -> torch.Tensor:
    """(B,) the start-state group of each episode, for the "start" baseline: its env seed where
    several episodes share one (samples_per_start > 1), else its spawn."""
    return torch.tensor([tr.seed if samples_per_start > 1 else tr.spawn for tr in batch], dtype=torch.int64)


def polish(reinforced: Path, out: Path, cfg: ReinforceConfig) -> dict:
    """Clone the best `cfg.polish_fraction` of each spawn's kept episodes (out/episodes) by the
    reward model's scores the update used, from the REINFORCE policy: out/top, out/model."""
    store = open_store(out / "episodes")
    ids = np.arange(len(store))
    if not len(ids):
        raise ValueError(f"no episode with a finite reward among the last {cfg.polish_episodes}: nothing to polish with")
    scores = np.array([store.metadata(int(i))["reward"] for i in ids])
    return clone_best(store, ids, scores, cfg.polish_fraction, "spawn", replace(cfg.polish_bc, seed=cfg.seed), reinforced, out,
                      soup=cfg.clone_soup, min_score=cfg.clone_min_score)  # fmt: skip


SHARPEN_SEED = 10_000  # the sharpen step's episode seeds (+ cfg.seed), apart from the evaluation's
ROUND_SEED_STEP = 1000  # sharpen round i plays (and clones) with cfg.seed + i * this: its own episodes


def sharpen(start: Path, reward_dir: Path, reference_dir: Path, out: Path, cfg: ReinforceConfig) -> dict:
    """Play `cfg.sharpen_episodes` fresh episodes of the policy at `start` at
    `cfg.sharpen_temperature` (out/episodes), and clone the best `cfg.sharpen_fraction` of each
    spawn's by the reward model (its encoder the reference, `reference_dir`) into it (out/top, out/model)."""
    k = cfg.sharpen_samples_per_start
    record_rollouts(start, out / "episodes", RolloutConfig(episodes=cfg.sharpen_episodes, seed=SHARPEN_SEED + cfg.seed,
                                                           temperature=cfg.sharpen_temperature, samples_per_start=k))  # fmt: skip
    store = open_store(out / "episodes")
    ids = np.arange(len(store))
    scores = _score_store(store, ids, reward_dir, reference_dir, cfg)
    r = clone_best(store, ids, scores, cfg.sharpen_fraction, "seed" if k > 1 else "spawn", replace(cfg.polish_bc, seed=cfg.seed), start, out,
                   soup=cfg.clone_soup, min_score=cfg.clone_min_score)  # fmt: skip
    played = Counter(store.metadata(int(i)).get("jump_pad") for i in ids)  # the round's outcomes, before the clone
    return {**r, "temperature": cfg.sharpen_temperature, "played_pads": dict(sorted(played.items()))}


def _rounds(start: Path, base: Path, reward_dir: Path, reference_dir: Path, cfg: ReinforceConfig, first: int) -> tuple[Path, list[dict]]:
    """`cfg.sharpen_rounds` sharpen steps over `cfg.sharpen_episodes` (base, base2, ...), each played
    by the agent the last one cloned, round i with the seeds of round `first` + i; the last clone
    and each round's summary."""
    rounds = []
    for i, n in enumerate(_split(cfg.sharpen_episodes, cfg.sharpen_rounds)):
        d = base.with_name(f"{base.name}{i + 1 if i else ''}")
        one = replace(cfg, sharpen_episodes=n, sharpen_rounds=1, seed=cfg.seed + ROUND_SEED_STEP * (first + i))
        rounds.append(sharpen(start, reward_dir, reference_dir, d, one))
        start = d / "model"
    return start, rounds


def _log_rounds(out: Path, rounds: list[dict], cfg: ReinforceConfig) -> None:
    """Append a metrics row per ReST round at REINFORCE's temperature (its episodes' outcomes,
    before its clone) after REINFORCE's rows, so figures 8/9 follow the online success through the
    ReST rounds. Rewritten whole, so a resumed run does not log a round twice."""
    rows = [r for r in read_metrics(out) if "align/rest_round" not in r]
    done = cfg.episodes
    for i, r in enumerate(rounds):
        n = sum(r["played_pads"].values())
        done += n
        row = {"step": len(rows), "align/episodes": done, "align/rest_round": i + 1,
               "align/success": r["played_pads"].get(cfg.target, 0) / n, "align/reward_return": r["mean_score_all"]}  # fmt: skip
        row.update({f"align/pad_{p}": r["played_pads"].get(p, 0) / n for p in (*W.PAD_NAMES, "none")})
        rows.append(row)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _split(n: int, k: int) -> list[int]:
    """n episodes over k rounds, as evenly as they go, the first rounds taking the remainder."""
    return [n // k + (i < n % k) for i in range(k)]


def _merge_rounds(rounds: list[dict]) -> dict:
    """One summary of the sharpen's rounds: their totals, and each round's own."""
    pads = sum((Counter(r["kept_pads"]) for r in rounds), Counter())
    played = sum((Counter(r["played_pads"]) for r in rounds), Counter())
    out = {**rounds[-1], "ranked": sum(r["ranked"] for r in rounds), "kept": sum(r["kept"] for r in rounds),
           "below_min_score": sum(r.get("below_min_score", 0) for r in rounds),
           "kept_pads": dict(sorted(pads.items())), "played_pads": dict(sorted(played.items())), "rounds": len(rounds)}  # fmt: skip
    if len(rounds) > 1:
        out["by_round"] = rounds
    return out


def _stack_frames(batch: list[Trajectory], tmax: int) -> torch.Tensor:
    """(B, tmax, H, W, 3) uint8 frames 0..T-1 of each trajectory, zeros after."""
    frames = torch.zeros(len(batch), tmax, *batch[0].frames.shape[1:], dtype=torch.uint8)
    for i, tr in enumerate(batch):
        frames[i, : tr.length] = torch.from_numpy(tr.frames[: tr.length])
    return frames


@torch.no_grad()
def _frame_embeddings(policy: Policy, batch: list[Trajectory], tmax: int) -> torch.Tensor:
    """(B, tmax, width) per-frame embeddings of the (frozen) encoder: kept by the rollout, or encoded."""
    if any(tr.z is None for tr in batch):
        return policy.encode(_stack_frames(batch, tmax))
    z = torch.zeros(len(batch), tmax, policy.cfg.width)
    for i, tr in enumerate(batch):
        z[i, : tr.length] = torch.from_numpy(tr.z)
    return z


def _update(policy: Policy, reference: Policy, batch: list[Trajectory], R: torch.Tensor, opt, params,
            cfg: ReinforceConfig, shared: str = "nothing", critic: ValueBaseline | None = None) -> dict[str, float]:  # fmt: skip
    policy.train(cfg.train_only != "head")  # dropout only matters where the trunk trains
    b, tmax = len(batch), max(tr.length for tr in batch)
    mask = torch.zeros(b, tmax, dtype=torch.bool)
    actions = torch.zeros(b, tmax, 16, dtype=torch.int64)
    logp_old = torch.zeros(b, tmax)  # log pi_old(a_t), as the rollout sampled it
    for i, tr in enumerate(batch):
        mask[i, : tr.length] = True
        actions[i, : tr.length] = torch.from_numpy(tr.actions)
        logp_old[i, : tr.length] = torch.from_numpy(tr.log_prob)
    # The frozen encoder's per-frame embeddings, where the trunk trains on them or the reference
    # shares them: the rollout's (it encoded each frame once), else encoded now.
    z = None  # (B, T, width)
    if cfg.train_only == "transformer" or (cfg.beta > 0 and shared == "encoder"):
        z = _frame_embeddings(policy, batch, tmax)
    frames = None  # (B, T, H, W, 3) uint8, gathered only where something reads the pixels
    if cfg.train_only not in ("head", "transformer") or (cfg.beta > 0 and shared == "nothing"):
        frames = _stack_frames(batch, tmax)
    if cfg.train_only == "head":
        h = torch.zeros(b, tmax, policy.cfg.width)
        for i, tr in enumerate(batch):
            h[i, : tr.length] = torch.from_numpy(tr.h)
        features = lambda: h  # noqa: E731  (B, T, width), fixed: the trunk is frozen
    elif cfg.train_only == "transformer":
        features = lambda: windowed_transformer(policy, z, actions)  # noqa: E731  z frozen: for every epoch
    else:
        features = lambda: sliding_window_features(policy, frames, actions)  # noqa: E731
    returns = discounted_returns(R, mask, cfg.gamma)  # (B, T)
    starts = start_groups(batch, cfg.samples_per_start)  # (B,)
    base = None if critic is not None else baseline(R, cfg.baseline, starts)  # (B,); the critic's (B, T) below
    if cfg.normalise != "none":
        scale = advantage_scale(R, base, starts if cfg.normalise == "spawn" else None, cfg.normalise_eps)  # (B,)
        returns, base = returns * scale[:, None], base * scale
    ref = None
    if cfg.beta > 0:
        with torch.no_grad():
            if shared == "trunk":
                h_ref = h
            elif shared == "encoder":
                h_ref = windowed_transformer(reference, z, actions)
            else:
                h_ref = sliding_window_features(reference, frames, actions)
            ref = ActionDistribution(reference.head(h_ref), cfg.temperature)
    extra = {}
    for epoch in range(cfg.epochs):
        h_t = features()  # (B, T, width)
        if critic is not None and epoch == 0:
            h_critic = h_t.detach()
            base = critic.predict(h_critic, returns, mask)  # (B, T)
            extra["align/value_explained"] = explained_variance(base, returns, mask)
            targets = returns  # (B, T) Monte Carlo: what the critic fits
            if cfg.value_lambda < 1:
                returns = lambda_returns(R, base, mask, cfg.gamma, cfg.value_lambda)
        dist = ActionDistribution(policy.head(h_t), cfg.temperature)
        logp = dist.log_prob(actions)  # (B, T)
        if cfg.epochs == 1:
            loss = reinforce_loss(logp, returns, mask, base)
        else:
            loss = clipped_surrogate_loss(logp, logp_old, returns, mask, base, cfg.clip)
        kl = kl_penalty(dist.kl(ref), mask) if ref is not None else torch.zeros(())
        loss = loss + cfg.beta * kl
        if cfg.entropy_bonus > 0:
            loss = loss - cfg.entropy_bonus * episode_sum_mean(dist.entropy(), mask)
        opt.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
    if critic is not None:  # after the update: this batch's returns never enter its own baseline
        extra["align/value_loss"] = critic.fit(h_critic, targets, mask)
    policy.eval()
    steps = mask.sum()
    return {**extra,
        "align/loss": float(loss.detach()),
        "align/kl": float(kl.detach()) / max(float(steps) / b, 1.0),  # per step
        "align/entropy": float((dist.entropy().detach() * mask).sum() / steps),
        "align/grad_norm": float(gn),
        # How far the last epoch's policy moved from the one that sampled the batch.
        "align/ratio_dev": float(((logp.detach() - logp_old).abs() * mask).sum() / steps),
    }
