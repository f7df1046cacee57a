"""Behaviour cloning: one trainer for imitation pre-training (paper §3.2, appendix C.1), supervised
fine-tuning on curated demonstrations (§3.3, C.2), training from scratch on them (§3.3, figure 5)
and, with train_only="head", the behaviour-cloning step of preference fine-tuning (C.4).

Objective: maximise the likelihood of the recorded gamepad actions given the frames and earlier
actions of a window,

    L = -1/(N * 16) * sum_{(b,t): mask} sum_{i=1..16} log pi_i(a_{b,t,i} | o_{b,<=t}, a_{b,<t})

the cross-entropy over all 16 action components (12 buttons, 4 stick axes of 11 bins), averaged
over the N steps the window sampler keeps in the loss. Windows are `window` consecutive steps of
one episode; prev_actions are the actions shifted right by one step inside the window, so the
first step of every window sees the policy's learned BOS instead of a_{t-1}.

Optimisation (appendix C.1): AdamW, weight decay on Linear/Conv weights only (not norms, biases,
embeddings, positions), gradient clipping, linear warm-up and then a constant learning rate (the
paper names only the warm-up; `schedule="cosine"` decays to zero instead). bf16 autocast on CUDA.

Departures from the paper:
  - No-op filtering masks no-op steps out of the loss but keeps them in the window as context
    (see agentalign.data.sampler): the time base then matches the 10 Hz rollouts.
  - Augmentations are VPT-like colour jitter and integer shifts, without rotation/scale/shear
    (see agentalign.train.augment).
  - The loss averages over the 16 components rather than summing (the joint NLL): a constant
    factor that keeps the loss and the clipping threshold independent of the number of heads.
  - Hyper-parameters are scaled for a 1M-parameter model on 2 CPU cores; see BC_PRESETS.

Checkpoints: `OUT/model.safetensors` + `OUT/config.json` (Policy.save_pretrained: stage, parent,
dataset id, step) every `checkpoint_every` steps and at the end, plus `OUT/train_state/` for an
exact resume (see agentalign.train.common). Running train_bc again on the same folder continues
from the last checkpoint and ends bit-identical (on CPU) to an uninterrupted run; a finished run
with the same config returns its summary at once; a different config is an error.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from agentalign.config import config_to_dict
from agentalign.data import StoreReader
from agentalign.models.config import PolicyConfig, model_preset
from agentalign.envs.gamepad import N_BUTTONS
from agentalign.models.distribution import N_LOGITS, NVEC, OFFSETS
from agentalign.models.policy import Policy, read_checkpoint_config
from agentalign.train import augment as aug
from agentalign.io import MetricsLogger, atomic_write_json, read_metrics, truncate_metrics
from agentalign.train.common import (
    FROZEN,
    adamw_param_groups,
    check_run_config,
    load_train_state,
    lr_at,
    resolve_device,
    save_train_state,
    seed_everything,
    trainable_parameters,
)

NOOP_FILTERS = ("mask", "drop", "none")
TRAIN_ONLY = ("all", "transformer", "head")
SCHEDULES = ("constant", "cosine")
# Settings that do not change what a run computes: they may differ when a run is resumed.
OPERATIONAL = ("num_workers", "checkpoint_every", "log_every")


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning. Paper values (C.1 pre-training / C.2 fine-tuning) are noted where the
    default differs; BC_PRESETS holds the per-stage settings."""

    data: str = ""  # episode store; required, but checked when training starts so presets can leave it out
    model: PolicyConfig = field(default_factory=lambda: model_preset("cpu"))
    init: str | None = None  # checkpoint to start from; its model config must equal `model` (see with_init)
    stage: str = "pretrain"  # a label written into the checkpoint's config.json
    steps: int = 2000
    # Paper: 256 windows of 32 steps on 8 V100s. 32 windows (1,024 frames, ~0.38 s a step on 2 cores)
    # keeps a CPU run at minutes while the gradient still averages ~900 unmasked steps.
    batch_size: int = 32
    window: int = 32  # the paper's context H = 32; at most model.context
    # Share of windows moved to their episode's first step (WindowConfig.first_window_share);
    # 0: uniform starts, as the paper samples its hours-long recordings.
    first_window_share: float = 0.0
    # Paper: 1e-4 for 103M parameters at batch 256. The 1M-parameter CPU model reaches the same
    # loss 3x sooner at 3e-4 (measured; see BC_PRESETS).
    lr: float = 3e-4
    weight_decay: float = 1e-4  # paper
    warmup: int = 100  # paper: 1000 updates of a ~1-epoch run on 10k hours; 5 % of a CPU run
    schedule: Literal["constant", "cosine"] = "constant"  # paper: warm-up, no decay mentioned
    grad_clip: float = 1.0  # paper; 0 turns clipping off
    noop_filter: Literal["mask", "drop", "none"] = "mask"  # see agentalign.data.sampler
    augment: bool = True  # paper: VPT's augmentations in pre-training and fine-tuning
    # "head": only the MLP after the transformer (C.4); "transformer": the frozen pixel encoder runs
    # without gradients (as online alignment trains), which halves the cost of an update on a CPU.
    train_only: Literal["all", "transformer", "head"] = "all"
    # With the encoder frozen and no augmentation (the alignment's clones) a frame's embedding z_t
    # is the same at every update: encode the store's frames once (FrameFeatures) and train on
    # those features, instead of re-running the encoder on every window (an update then costs
    # about half as much; benchmarks/bc_throughput.py). Ignored otherwise.
    cache_features: bool = True
    # A fresh model's output biases start at the log-frequencies of the data's actions. From the
    # usual zero biases the first updates only fit those frequencies, and on the noisy population
    # set they flattened the encoder to a constant that the model never left (RESULTS.md, "Behaviour
    # cloning"): the base agent used no pixels at all. Ignored when starting from `init`.
    action_prior_init: bool = True
    seed: int = 0
    # Loader processes; None: 0 when training on the CPU (loading costs ~4 % of an update there,
    # benchmarks/bc_throughput.py, and a worker process would compete with the compute threads),
    # min(8, cpus - 1) on a GPU, whose updates are too fast for one process to feed.
    num_workers: int | None = None
    checkpoint_every: int = 500  # steps; 0: only at the end
    bf16: bool = True  # autocast to bfloat16 on CUDA; ignored on CPU
    # torch.compile; None: on for CUDA, off on CPU (compiling took ~1 min for the tiny model on 2
    # busy cores, a large share of a CPU run, for a gain not measured to repay it)
    compile: bool | None = None
    device: str = "auto"  # auto: cuda when available
    log_every: int = 10  # steps between metrics.jsonl rows

    def __post_init__(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

        for name in ("steps", "batch_size", "window", "log_every"):
            positive_int(name)
        for name in ("warmup", "checkpoint_every", "seed"):
            positive_int(name, 0)
        if self.num_workers is not None:
            positive_int("num_workers", 0)
        if not isinstance(self.model, PolicyConfig):
            raise ValueError(f"model must be a PolicyConfig, got {type(self.model).__name__}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and np.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and np.isfinite(v)):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if not (isinstance(self.first_window_share, (int, float)) and 0 <= self.first_window_share <= 1):
            raise ValueError(f"first_window_share must be a number in [0, 1], got {self.first_window_share!r}")
        if self.noop_filter not in NOOP_FILTERS:
            raise ValueError(f"noop_filter must be one of {NOOP_FILTERS}, got {self.noop_filter!r}")
        if self.train_only not in TRAIN_ONLY:
            raise ValueError(f"train_only must be one of {TRAIN_ONLY}, got {self.train_only!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.window > self.model.context:
            raise ValueError(f"window ({self.window}) is longer than the model's context (model.context = "
                             f"{self.model.context}); shorten the window or lengthen the context")  # fmt: skip
        if not self.stage or not isinstance(self.stage, str):
            raise ValueError(f"stage must be a non-empty label, got {self.stage!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def with_init(self, init: str | Path) -> "BCConfig":
        """This config starting from checkpoint `init`, with the model config taken from it (and the
        window shortened to the model's context if it is longer)."""
        try:
            meta = read_checkpoint_config(init, kind="policy")
        except ValueError as e:
            raise ValueError(f"init: {e}") from None
        model = PolicyConfig.from_dict(meta["model"])
        return replace(self, init=str(init), model=model, window=min(self.window, model.context))


# Per-stage settings. Step counts are placeholders to tune for the pipeline; the learning rates
# were compared on 2 cores (cpu model, batch 32, warm-up 20; /tmp runs, not kept):
#   pre-training, 150 steps on 300 population episodes: train loss 0.425 at 1e-4 (still falling),
#     0.411 at 3e-4, 0.417 at 1e-3 (both at the action-prior plateau; 3e-4 got there 3x sooner
#     than 1e-4 and 1e-3 gained nothing) -> 3e-4.
#   SFT from that model, 80 steps on the 300 curated episodes: held-out curated loss 0.344 / 0.300
#     / 0.253 at 3e-6 / 3e-5 / 3e-4, but loss on held-out population data (what pre-training
#     taught) 0.412 / 0.430 / 0.563 against 0.411 before: 3e-4 overwrites the prior that §3.3
#     credits for recoveries, 3e-6 (the paper's 1/100 ratio) barely moves -> 3e-5 (1/10) with
#     more steps.
BC_PRESETS: dict[str, BCConfig] = {
    # §3.2 / C.1: the population set, from scratch.
    "pretrain": BCConfig(stage="pretrain", steps=2000, lr=3e-4, warmup=100),
    # §3.3 / C.2: the curated set, from a pre-trained checkpoint (paper: 1500 batches of 128, lr 1e-6,
    # 200 warm-up steps, on a 103M model).
    "sft": BCConfig(stage="sft", steps=400, lr=3e-5, warmup=50, checkpoint_every=200),
    # §3.3 figure 5: the same architecture trained only on the curated set, "until convergence".
    "scratch": BCConfig(stage="scratch", steps=1000, lr=3e-4, warmup=50, checkpoint_every=250),
    # C.4: behaviour cloning of the top 20 % of rollouts by reward, head only (paper: lr 1e-5, 1/10
    # of pre-training, for 1000 updates of 256).
    "preference": BCConfig(stage="preference", steps=300, lr=3e-5, warmup=30, train_only="head", checkpoint_every=100),
    # Tests and smoke runs: the tiny model, seconds on one core.
    "smoke": BCConfig(stage="smoke", model=model_preset("tiny"), steps=4, batch_size=4, window=8, warmup=2,
                      checkpoint_every=2, log_every=1),  # fmt: skip
}


def bc_preset(name: str, **overrides: Any) -> BCConfig:
    try:
        base = BC_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown BC preset {name!r}; choose one of {', '.join(BC_PRESETS)}") from None
    return replace(base, **overrides)


# --------------------------------------------------------------------------------------------
# The loss


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


def previous_actions(actions_btc: torch.Tensor) -> torch.Tensor:
    """(B, T, 16) actions a_t -> (B, T, 16) a_{t-1}: shifted right one step inside the window.
    Index 0 (the policy's BOS slot, ignored) gets zeros, a valid value of every component."""
    prev = torch.zeros_like(actions_btc)
    prev[:, 1:] = actions_btc[:, :-1]
    return prev


# --------------------------------------------------------------------------------------------
# Checks before any work


def _model_diffs(a: PolicyConfig, b: PolicyConfig) -> list[str]:
    """Fields that differ, except dropout (it changes no parameter, so fine-tuning may change it)."""
    return [f"{f.name} {getattr(a, f.name)!r} vs {getattr(b, f.name)!r}"
            for f in dataclasses.fields(PolicyConfig) if f.name != "dropout" and getattr(a, f.name) != getattr(b, f.name)]  # fmt: skip


def check_inputs(cfg: BCConfig) -> dict[str, Any]:
    """Validate the dataset and init checkpoint against the config; ValueError naming the culprit.

    Returns {"dataset_id", "num_episodes", "num_steps", "image_size"}."""
    if not cfg.data:
        raise ValueError("data: no dataset given; set it to an episode store folder (agentalign data generate)")
    path = Path(cfg.data)
    if not path.exists():
        raise ValueError(f"data: no dataset at {path}")
    try:
        store = StoreReader(path)
    except ValueError as e:
        raise ValueError(f"data: {e}") from None
    if len(store) == 0:
        raise ValueError(f"data: {path} holds no episodes")
    size = cfg.model.image_size
    if tuple(store.image_size) != (size, size):
        h, w = store.image_size
        raise ValueError(f"data: {path} holds {h}x{w} frames but the model takes {size}x{size} "
                         f"(model.image_size = {size}); use a dataset of that size or set model.image_size")  # fmt: skip
    if cfg.init is not None:
        try:
            meta = read_checkpoint_config(cfg.init, kind="policy")
        except ValueError as e:
            raise ValueError(f"init: {e}") from None
        try:
            init_model = PolicyConfig.from_dict(meta["model"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"init: {cfg.init}: bad model config ({e})") from None
        diffs = _model_diffs(init_model, cfg.model)
        if diffs:
            raise ValueError(f"init: {cfg.init} holds a model that differs from model ({'; '.join(diffs)}, checkpoint "
                             "vs config); take the model config from the checkpoint (the CLI's --init does; in Python "
                             "use cfg.with_init(path))")  # fmt: skip
    return {"dataset_id": store.dataset_id, "num_episodes": len(store), "num_steps": store.num_steps,
            "image_size": list(store.image_size)}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Training


def _augment_seed(seed: int, step: int) -> int:
    """The augmentation stream of update `step`: a pure function of (seed, step), so a resumed run
    draws exactly what an uninterrupted one would, with no generator state to save."""
    return int(np.random.SeedSequence([seed, step, 0xA06]).generate_state(1, np.uint64)[0] >> 1)


def action_log_frequencies(store: StoreReader, smoothing: float = 1.0) -> torch.Tensor:
    """(68,) log-frequency of every value of every action component in the store (add-`smoothing`
    counts), laid out like the policy's logits: a model whose logits equal it predicts the data's
    marginal action distribution."""
    actions = np.concatenate([store.actions_view(i) for i in range(len(store))])  # (N, 16)
    out = torch.empty(N_LOGITS)
    for k, (n, o) in enumerate(zip(NVEC, OFFSETS)):
        counts = np.bincount(actions[:, k], minlength=n).astype(np.float64) + smoothing
        out[o:o + n] = torch.from_numpy(np.log(counts / counts.sum()))
    return out


def build_policy(cfg: BCConfig, device: torch.device) -> Policy:
    """A fresh policy (seeded by the caller) or the init checkpoint's weights, with the parameters
    outside the trained part frozen."""
    from safetensors.torch import load_file

    policy = Policy(cfg.model)
    if cfg.init is None:
        if cfg.action_prior_init:
            with torch.no_grad():
                policy.head[-1].bias.copy_(action_log_frequencies(StoreReader(cfg.data)))
    else:
        state = load_file(str(Path(cfg.init) / "model.safetensors"))
        missing, unexpected = policy.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"init: {cfg.init}/model.safetensors does not match its config "
                             f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")  # fmt: skip
    policy.to(device)
    for name, p in policy.named_parameters():
        p.requires_grad_(not name.startswith(FROZEN.get(cfg.train_only, ())))
    return policy


def _set_mode(policy: Policy, train_only: str) -> None:
    """Training mode for what is trained; a frozen trunk stays in eval mode (no dropout), so the
    head learns on the features rollouts and the reward model see."""
    if train_only == "head":
        policy.eval()
        policy.head.train()
    else:
        policy.train()


def make_optimizer(policy: Policy, cfg: BCConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, decay on Linear/Conv weights only."""
    fused = next(policy.parameters()).device.type == "cuda"  # one kernel for all parameters on GPU
    return torch.optim.AdamW(adamw_param_groups(policy, cfg.weight_decay), lr=cfg.lr, fused=fused or None)


def uses_feature_cache(cfg: BCConfig) -> bool:
    """Whether a run trains on FrameFeatures: only where a frame's embedding cannot change."""
    return cfg.cache_features and cfg.train_only == "transformer" and not cfg.augment


class FrameFeatures:
    """The frozen encoder's embedding z_t of every frame of a store, computed once, and the
    windows of a batch gathered from them.

    Rows follow the store's episodes end to end; one more row holds the embedding of the all-zero
    frame the sampler pads short windows with. The features are computed as a training step would
    (under the same autocast), in batches of `chunk` frames. A batched encoder need not be
    bit-identical to a per-window one (on our CPUs it was: RESULTS.md, fifteenth session), so a
    cached run may differ from an uncached one in the last float bits. Memory: (steps + 1) x width
    floats on the device: per 1,000 steps, 0.5 MB for the cpu model, 2 MB for the paper's (bf16)."""

    def __init__(self, policy: Policy, store: StoreReader, device: torch.device, autocast: bool, chunk: int = 1024):
        lengths = torch.from_numpy(store.lengths.astype(np.int64))  # (N,)
        self.lengths = lengths.to(device)
        self.offsets = (torch.cumsum(lengths, 0) - lengths).to(device)  # (N,) first row of each episode
        self.pad_row = int(lengths.sum())
        h, w = store.image_size
        parts = []
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16) if autocast else nullcontext():
            for i in range(len(store)):
                frames = torch.from_numpy(store.frames(i)).to(device)  # (T, H, W, 3) uint8
                parts += [policy.encode(frames[k : k + chunk]) for k in range(0, len(frames), chunk)]
            parts.append(policy.encode(torch.zeros(1, h, w, 3, dtype=torch.uint8, device=device)))
        self.z = torch.cat(parts)  # (num_steps + 1, width)

    def gather(self, episode: torch.Tensor, start: torch.Tensor, window: int) -> torch.Tensor:
        """(B,) episodes and (B,) window starts -> (B, L) rows' features (B, L, width)."""
        t = start[:, None] + torch.arange(window, device=start.device)  # (B, L) step in its episode
        rows = torch.where(t < self.lengths[episode][:, None], self.offsets[episode][:, None] + t, self.pad_row)
        return self.z[rows]


class TrainStep:
    """One behaviour-cloning update: augment, forward (bf16 autocast on CUDA, torch.compile where
    asked), loss, backward, clip, AdamW step with the scheduled learning rate.

    `step(batch, n)` takes a loader batch (obs (B, L, H, W, 3) uint8, actions (B, L, 16), mask
    (B, L), episode (B,), start (B,)) and the 1-based update number n (which fixes the learning
    rate and the augmentation draw); it returns (metrics, grad_norm, lr) with tensors left on the
    device. Given `features`, the frames' embeddings come from them and the batch needs no obs."""

    def __init__(self, policy: Policy, optimizer: torch.optim.Optimizer, cfg: BCConfig, device: torch.device,
                 features: FrameFeatures | None = None):  # fmt: skip
        self.policy, self.optimizer, self.cfg, self.device = policy, optimizer, cfg, device
        self.features = features
        self.params = trainable_parameters(policy)
        use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
        self.forward = torch.compile(policy) if use_compile else policy
        self._compile_unchecked = use_compile
        self.autocast = cfg.bf16 and device.type == "cuda"

    def _forward_backward(self, obs, prev, actions, mask, z=None) -> dict[str, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext():
            if self.cfg.train_only == "transformer":  # no graph through the frozen encoder
                if z is None:
                    with torch.no_grad():
                        z = self.policy.encode(obs)  # (B, L, width)
                logits = self.policy.head(self.policy.forward_embedded(z, prev))  # (B, L, 68)
            else:
                logits = self.forward(obs, prev)  # (B, L, 68)
        loss, metrics = bc_loss(logits, actions, mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return metrics

    def __call__(self, batch: dict[str, torch.Tensor], n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
        cfg, dev = self.cfg, self.device
        actions = batch["actions"].to(dev, non_blocking=True)  # (B, L, 16) int64
        mask = batch["mask"].to(dev, non_blocking=True)  # (B, L) bool
        obs = z = None
        if self.features is not None:
            z = self.features.gather(batch["episode"].to(dev), batch["start"].to(dev), actions.shape[1])  # (B, L, width)
        else:
            obs = batch["obs"].to(dev, non_blocking=True)  # (B, L, H, W, 3) uint8
        if cfg.augment:
            obs = aug.augment(obs, torch.Generator().manual_seed(_augment_seed(cfg.seed, n)))  # float (B, L, H, W, 3)
        prev = previous_actions(actions)  # (B, L, 16) a_{t-1}
        lr = lr_at(n - 1, cfg.lr, cfg.warmup, cfg.steps, cfg.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self._compile_unchecked:
            self._compile_unchecked = False
            try:
                metrics = self._forward_backward(obs, prev, actions, mask, z)
            except Exception as e:  # a compiler failure must not cost the run: fall back to eager
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); training without it")
                self.forward = self.policy
                metrics = self._forward_backward(obs, prev, actions, mask, z)
        else:
            metrics = self._forward_backward(obs, prev, actions, mask, z)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        return metrics, grad_norm.detach(), lr


def make_loader(cfg: BCConfig, device: torch.device, num_batches: int | None = None, frames: bool = True):
    """The resumable window loader of `cfg` (batches are a pure function of (seed, batch number));
    `frames` False leaves the frames out of the batches (a run on FrameFeatures)."""
    from agentalign.data import WindowConfig
    from agentalign.data.torch_data import LoaderConfig, WindowLoader

    workers = cfg.num_workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))
    return WindowLoader(
        cfg.data,
        WindowConfig(window=cfg.window, batch_size=cfg.batch_size, noop_filter=cfg.noop_filter, frames=frames,
                     first_window_share=cfg.first_window_share),
        seed=cfg.seed,
        loader=LoaderConfig(num_workers=workers, pin_memory=device.type == "cuda"),
        num_batches=cfg.steps if num_batches is None else num_batches,
    )


def train_bc(cfg: BCConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train (or resume, or return a finished run) and return a summary dict:
    stage, steps, final_loss, final_accuracy (means over the last log interval), seconds and
    frames_per_s of this call, resumed_from, dataset_id, device, out_dir."""
    from tqdm import tqdm

    out = Path(out_dir)
    data_info = check_inputs(cfg)
    device = resolve_device(cfg.device)
    config = config_to_dict(cfg)
    state = check_run_config(out, config, ignore=OPERATIONAL)
    summary_path = out / "summary.json"
    if state == "existing" and summary_path.exists():
        return {**json.loads(summary_path.read_text()), "already_finished": True}

    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    policy = build_policy(cfg, device)
    optimizer = make_optimizer(policy, cfg)
    loader = make_loader(cfg, device, frames=not uses_feature_cache(cfg))
    start_step = 0
    resumed = load_train_state(out, policy, optimizer) if state == "existing" else None
    if resumed is not None:
        start_step = int(resumed["step"])
        loader.load_state_dict(resumed["loader"])
        if loader.position != start_step:
            raise ValueError(f"{out}/train_state: loader at batch {loader.position}, state at step {start_step}")
    truncate_metrics(out, start_step)  # rows a killed run logged after its last checkpoint
    logger = MetricsLogger(out)
    features = (FrameFeatures(policy, StoreReader(cfg.data), device, autocast=cfg.bf16 and device.type == "cuda")
                if uses_feature_cache(cfg) and start_step < cfg.steps else None)  # fmt: skip
    train_step = TrainStep(policy, optimizer, cfg, device, features)
    parent = str(Path(cfg.init).resolve()) if cfg.init is not None else None
    frames_per_step = cfg.batch_size * cfg.window

    def checkpoint(step: int) -> None:
        save_train_state(out, step, policy, optimizer, extra={"loader": loader.state_dict(), "stage": cfg.stage})
        policy.save_pretrained(out, stage=cfg.stage, parent=parent, dataset_id=data_info["dataset_id"], step=step,
                               train_only=cfg.train_only)  # fmt: skip

    _set_mode(policy, cfg.train_only)
    acc: dict[str, Any] = {}
    last: dict[str, float] = {}
    t_log, steps_since_log = time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"bc {cfg.stage}", unit="step", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    batches = iter(loader) if start_step < cfg.steps else iter(())
    try:
        for step in range(start_step + 1, cfg.steps + 1):  # step = updates done once this one is
            # The DataLoader draws a base seed from the global torch RNG when it starts (at the first
            # batch, or the first after a resume); forking keeps that draw out of the stream dropout
            # uses, so resumed and uninterrupted runs see the same random numbers.
            with torch.random.fork_rng(devices=[]):
                batch = next(batches)
            metrics, grad_norm, lr = train_step(batch, step)

            # Running sums stay on the device: one sync per log row, not per step.
            for k in ("loss", "accuracy", "exact", "nll"):
                acc[k] = acc.get(k, 0) + metrics[k]
            acc["grad_norm"] = acc.get("grad_norm", 0) + grad_norm
            acc["per_head"] = acc.get("per_head", 0) + metrics["accuracy_per_head"]
            steps_since_log += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                n = steps_since_log
                per_head = (acc["per_head"] / n).tolist()
                last = {
                    "train/loss": float(acc["loss"]) / n,
                    "train/accuracy": float(acc["accuracy"]) / n,
                    "train/accuracy_buttons": float(np.mean(per_head[:N_BUTTONS])),
                    "train/accuracy_sticks": float(np.mean(per_head[N_BUTTONS:])),
                    "train/exact": float(acc["exact"]) / n,
                    "train/nll": float(acc["nll"]) / n,
                    "train/grad_norm": float(acc["grad_norm"]) / n,
                    "train/lr": lr,
                    "train/frames_per_s": n * frames_per_step / max(now - t_log, 1e-9),
                }
                if not np.isfinite(last["train/loss"]):
                    raise RuntimeError(f"the loss became {last['train/loss']} by step {step}; lower lr "
                                       f"(now {cfg.lr}) or check the data")  # fmt: skip
                logger.log(step, **last)
                bar.set_postfix(loss=f"{last['train/loss']:.4f}", acc=f"{last['train/accuracy']:.3f}")
                acc, steps_since_log, t_log = {}, 0, now
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                checkpoint(step)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # shuts down loader workers
        bar.close()
        logger.close()

    checkpoint(cfg.steps)
    if not last:  # resumed exactly at the end: report the last logged row
        rows = [r for r in read_metrics(out) if "train/loss" in r]
        last = rows[-1] if rows else {}
    seconds = time.perf_counter() - t_start
    summary = {
        "stage": cfg.stage,
        "steps": cfg.steps,
        "final_loss": last.get("train/loss"),
        "final_accuracy": last.get("train/accuracy"),
        "seconds": seconds,
        "frames_per_s": (cfg.steps - start_step) * frames_per_step / seconds,
        "resumed_from": start_step,
        "dataset_id": data_info["dataset_id"],
        "device": str(device),
        "out_dir": str(out),
    }
    atomic_write_json(summary_path, summary)
    return summary
