"""Offline alignment: Direct Preference Optimisation (Rafailov et al., 2023) straight from the
preference pairs, with the SFT policy as the reference — the offline alternative the paper
names in section 3.6.2 and appendix J.

Objective over labelled pairs (τ_w preferred to τ_l), trajectory log-likelihoods
log π(τ) = Σ_t log π(a_t | context_t):

    L(θ) = -E log σ( β [ (log π_θ(τ_w) - log π_SFT(τ_w)) - (log π_θ(τ_l) - log π_SFT(τ_l)) ] )

Departures: the chosen trajectories' per-step log-likelihood is added to the loss with weight
`nll_weight` (RPO, Pang et al., 2024), which keeps DPO from lowering the likelihood of the chosen
trajectories along with the rejected ones; `nll_weight=0` is plain DPO. Only the head (the MLP after the transformer) trains, as in the paper's other
alignment stages. The frozen transformer's outputs h_t for every trajectory are then those the
reward model's agent encoder computes, so they are computed once (and shared with the reward
stage's cache), and each step only re-runs the head. Ties are left out.

`run_dpo` is the stage (`agentalign dpo` and the pipeline's dpo stage both call it).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agentalign.config import save_config
from agentalign.envs import gamepad
from agentalign.io import MetricsLogger, atomic_write_json
from agentalign.models import ActionDistribution, Policy
from agentalign.train.common import seed_everything
from agentalign.train.losses import dpo_loss
from agentalign.train.reward import load_labelled


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1  # Rafailov et al.'s default strength of the pull to the reference
    lr: float = 1e-4
    steps: int = 400
    batch_pairs: int = 64
    grad_clip: float = 1.0
    # RPO's weight on the chosen trajectories' per-step NLL: plain DPO (0) lowered both likelihoods.
    nll_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("beta", "lr", "steps", "batch_pairs", "grad_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.nll_weight < 0:
            raise ValueError(f"nll_weight must be >= 0, got {self.nll_weight}")


def trajectory_logp(head: torch.nn.Module, h: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h (N, T, width), actions (N, T, 16), mask (N, T) -> (N,) sum_t log pi(a_t) over real steps."""
    return (ActionDistribution(head(h)).log_prob(actions) * mask).sum(1)


def strict_pairs(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) index pairs of every non-tie labelled comparison in P (M, M)."""
    upper = torch.triu(torch.ones(P.shape, dtype=torch.bool), diagonal=1)
    i, j = (torch.isfinite(P) & upper & (P != 0.5)).nonzero(as_tuple=True)
    first = P[i, j] > 0.5
    return torch.where(first, i, j), torch.where(first, j, i)


def train_dpo(policy_dir: str | Path, h: torch.Tensor, actions: torch.Tensor, lengths: torch.Tensor,
              P: torch.Tensor, out_dir: str | Path, cfg: DPOConfig) -> dict:  # fmt: skip
    """Fit the SFT policy's head with DPO.

    h (M, T, width): the SFT policy's features of the M training trajectories; actions (M, T, 16);
    lengths (M,); P (M, M) the preference matrix over them (see train.reward.preference_matrix)."""
    seed_everything(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    policy = Policy.from_pretrained(policy_dir)
    for p in policy.parameters():
        p.requires_grad_(False)
    reference_head = policy.head
    policy.head = copy.deepcopy(reference_head)
    for p in policy.head.parameters():
        p.requires_grad_(True)
    mask = torch.arange(h.shape[1])[None] < lengths[:, None]  # (M, T)
    with torch.no_grad():
        ref_logp = trajectory_logp(reference_head, h, actions, mask)  # (M,)
    chosen, rejected = strict_pairs(P)
    if len(chosen) == 0:
        raise ValueError("no strict (non-tie) preference pairs to train DPO on")
    opt = torch.optim.Adam(policy.head.parameters(), lr=cfg.lr)
    log = MetricsLogger(out_dir)
    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    for step in range(cfg.steps):
        k = torch.randint(len(chosen), (min(cfg.batch_pairs, len(chosen)),), generator=g)
        c, r = chosen[k], rejected[k]
        lc = trajectory_logp(policy.head, h[c], actions[c], mask[c])
        lr_ = trajectory_logp(policy.head, h[r], actions[r], mask[r])
        loss, metrics = dpo_loss(lc, lr_, ref_logp[c], ref_logp[r], cfg.beta)
        if cfg.nll_weight > 0:
            nll = -(lc / lengths[c].clamp(min=1)).mean()  # per step, so long and short count alike
            loss = loss + cfg.nll_weight * nll
            metrics["dpo/chosen_nll"] = float(nll.detach())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.head.parameters(), cfg.grad_clip)
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            log.log(step, **{"dpo/loss": float(loss.detach()), **metrics})
    log.close()
    for p in policy.head.parameters():
        p.requires_grad_(False)
    out = Path(out_dir)
    policy.save_pretrained(out, stage="dpo", parent=str(policy_dir), reference=str(policy_dir), beta=cfg.beta)
    return {"steps": cfg.steps, "pairs": int(len(chosen)), "seconds": time.perf_counter() - t0,
            **{k: float(v) for k, v in metrics.items()}}  # fmt: skip


def run_dpo(sft: str | Path, store_path: str | Path, prefs_path: str | Path, out: str | Path, cfg: DPOConfig, *,
            cache: str | Path | None = None) -> dict:  # fmt: skip
    """DPO of the SFT checkpoint `sft` (policy and reference) on the strict training pairs of
    `prefs_path` over the store's trajectories. Saves the policy, metrics.jsonl, metrics.json and
    run_config.json in `out`; the SFT features are the reward model's agent embeddings, cached in
    `cache` (default out/cache; a reward run's cache shares them). -> the final metrics, or
    {"skipped": why} when every training comparison is a tie (nothing to learn, nothing written)."""
    out = Path(out)
    d = load_labelled(store_path, prefs_path, "agent", sft, out / "cache" if cache is None else cache)
    if len(strict_pairs(d.P_train)[0]) == 0:  # e.g. an agent that never reaches a pad
        return {"skipped": "no strict preference pairs in the training split"}
    lengths, actions = lengths_and_actions(d.store, d.train, d.emb_train.shape[1])
    summary = train_dpo(sft, d.emb_train, actions, lengths, d.P_train, out, cfg)
    save_config(cfg, out / "run_config.json")
    atomic_write_json(out / "metrics.json", summary)
    return summary


def lengths_and_actions(store, ids: np.ndarray, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) lengths and (M, horizon, 16) actions of store episodes, padded with no-ops."""

    acts = torch.as_tensor(np.tile(gamepad.noop_action(), (len(ids), horizon, 1)))
    lengths = torch.zeros(len(ids), dtype=torch.int64)
    for k, i in enumerate(ids):
        a = store.actions(int(i)).astype(np.int64)
        acts[k, : len(a)] = torch.from_numpy(a[:horizon])
        lengths[k] = min(len(a), horizon)
    return lengths, acts
