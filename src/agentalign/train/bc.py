"""Behaviour cloning: one trainer for imitation pre-training (paper §3.2, appendix C.1), supervised
fine-tuning on curated demonstrations (§3.3, C.2), training from scratch on them (§3.3, figure 5)
and, with train_only="head", the behaviour-cloning step of preference fine-tuning (C.4).

Objective: maximise the likelihood of the recorded gamepad actions given the frames and earlier
actions of a window,

    L = -1/(N * 16) * sum_{(b,t): mask} sum_{i=1..16} log pi_i(a_{b,t,i} | o_{b,<=t}, a_{b,<t})

the cross-entropy over all 16 action components (12 buttons, 4 stick axes of 11 bins), averaged
over the N steps the window sampler keeps in the loss (agentalign.train.losses.bc_loss). Windows are `window` consecutive steps of
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

Use: BCConfig holds what a user chooses about the optimisation (BC_PRESETS: one per stage); what
is trained on what comes as arguments:

    train_bc(bc_preset("pretrain"), "runs/population", "runs/base", model=model_preset("cpu"), stage="pretrain")
    train_bc(bc_preset("sft"), "runs/curated", "runs/sft", init="runs/base", stage="sft")

Checkpoints: `OUT/model.safetensors` + `OUT/config.json` (Policy.save_pretrained: stage, parent,
dataset id, step) every `checkpoint_every` steps and at the end, plus `OUT/train_state/` for an
exact resume (see agentalign.train.common). Running train_bc again on the same folder continues
from the last checkpoint and ends bit-identical (on CPU) to an uninterrupted run; a finished run
with the same inputs returns its summary at once; different ones (OUT/run_config.json: the
config, data, model, init and stage) are an error.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from agentalign.config import config_to_dict
from agentalign.data import StoreReader, WindowConfig
from agentalign.data.torch_data import LoaderConfig, WindowLoader
from agentalign.envs.gamepad import N_BUTTONS
from agentalign.io import MetricsLogger, atomic_write_json, read_metrics, truncate_metrics
from agentalign.models.config import PolicyConfig
from agentalign.models.distribution import N_LOGITS, NVEC, OFFSETS
from agentalign.models.policy import Policy, read_checkpoint_config
from agentalign.models.reward import checkpoint_fingerprint
from agentalign.train import augment as aug
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
from agentalign.train.losses import bc_loss

# Settings that do not change what a run computes: they may differ when a run is resumed.
OPERATIONAL = ("num_workers", "checkpoint_every", "log_every")


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning's optimisation settings. Paper values (C.1 pre-training / C.2 fine-tuning)
    are noted where the default differs; BC_PRESETS holds the per-stage settings. The data, the
    model (or the checkpoint to start from) and the stage's label are train_bc's arguments."""

    steps: int = 2000
    # Paper: 256 windows of 32 steps on 8 V100s. 32 windows (1,024 frames, ~0.38 s a step on 2 cores)
    # keeps a CPU run at minutes while the gradient still averages ~900 unmasked steps.
    batch_size: int = 32
    window: int = 32  # the paper's context H = 32; at most the model's context (shortened to it from init)
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
    # A fresh model's output biases start at the data's action log-frequencies: from zero biases the
    # first updates only fit those, flattening the encoder for good. Ignored when starting from `init`.
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
        # Ranges only: types and choices are checked where a config is read (agentalign.config).
        for name, minimum in (("steps", 1), ("batch_size", 1), ("window", 1), ("log_every", 1), ("warmup", 0),
                              ("checkpoint_every", 0), ("seed", 0)):  # fmt: skip
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {getattr(self, name)!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if not 0 <= self.first_window_share <= 1:
            raise ValueError(f"first_window_share must be a number in [0, 1], got {self.first_window_share!r}")


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
    "pretrain": BCConfig(steps=2000, lr=3e-4, warmup=100),
    # §3.3 / C.2: the curated set, from a pre-trained checkpoint (paper: 1500 batches of 128, lr 1e-6,
    # 200 warm-up steps, on a 103M model).
    "sft": BCConfig(steps=400, lr=3e-5, warmup=50, checkpoint_every=200),
    # §3.3 figure 5: the same architecture trained only on the curated set, "until convergence".
    "scratch": BCConfig(steps=1000, lr=3e-4, warmup=50, checkpoint_every=250),
    # C.4: behaviour cloning of the top 20 % of rollouts by reward, head only (paper: lr 1e-5, 1/10
    # of pre-training, for 1000 updates of 256).
    "preference": BCConfig(steps=300, lr=3e-5, warmup=30, train_only="head", checkpoint_every=100),
    # Tests and smoke runs, seconds on one core with model_preset("tiny") (whose context is 8).
    "smoke": BCConfig(steps=4, batch_size=4, window=8, warmup=2, checkpoint_every=2, log_every=1),
}


def bc_preset(name: str, **overrides: Any) -> BCConfig:
    try:
        base = BC_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown BC preset {name!r}; choose one of {', '.join(BC_PRESETS)}") from None
    return replace(base, **overrides)


# --------------------------------------------------------------------------------------------
# Windows


def previous_actions(actions_btc: torch.Tensor) -> torch.Tensor:
    """(B, T, 16) actions a_t -> (B, T, 16) a_{t-1}: shifted right one step inside the window.
    Index 0 (the policy's BOS slot, ignored) gets zeros, a valid value of every component."""
    prev = torch.zeros_like(actions_btc)
    prev[:, 1:] = actions_btc[:, :-1]
    return prev


# --------------------------------------------------------------------------------------------
# Checks before any work


def resolve_model(cfg: BCConfig, model: PolicyConfig | None,
                  init: str | Path | None) -> tuple[BCConfig, PolicyConfig]:  # fmt: skip
    """The model a run trains and the config it trains with: a fresh `model`, or the one that the
    checkpoint `init` holds, with the window shortened to that model's context if it is longer.
    Exactly one of the two; ValueError naming the culprit."""
    if (model is None) == (init is None):
        raise ValueError("give exactly one of model (a fresh model's PolicyConfig) and init (a checkpoint to start "
                         f"from), got {'both' if model is not None else 'neither'}")  # fmt: skip
    if init is not None:
        try:
            meta = read_checkpoint_config(init, kind="policy")
        except ValueError as e:
            raise ValueError(f"init: {e}") from None
        try:
            model = PolicyConfig.from_dict(meta["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"init: {init}: bad model config ({e})") from None
        return replace(cfg, window=min(cfg.window, model.context)), model
    if not isinstance(model, PolicyConfig):
        raise ValueError(f"model must be a PolicyConfig (e.g. model_preset('cpu')), got {type(model).__name__}")
    if cfg.window > model.context:
        raise ValueError(f"window ({cfg.window}) is longer than the model's context (model.context = "
                         f"{model.context}); shorten the window or lengthen the context")  # fmt: skip
    return cfg, model


def check_inputs(data: str | Path, model: PolicyConfig) -> dict[str, Any]:
    """Validate the dataset against the model; ValueError naming the culprit.

    Returns {"dataset_id", "num_episodes", "num_steps", "image_size"}."""
    if data is None or not str(data):
        raise ValueError("data: no dataset given; set it to an episode store folder (agentalign data generate)")
    path = Path(data)
    if not path.exists():
        raise ValueError(f"data: no dataset at {path}")
    try:
        store = StoreReader(path)
    except ValueError as e:
        raise ValueError(f"data: {e}") from None
    if len(store) == 0:
        raise ValueError(f"data: {path} holds no episodes")
    size = model.image_size
    if tuple(store.image_size) != (size, size):
        h, w = store.image_size
        raise ValueError(f"data: {path} holds {h}x{w} frames but the model takes {size}x{size} "
                         f"(model.image_size = {size}); use a dataset of that size or set model.image_size")  # fmt: skip
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


def build_policy(cfg: BCConfig, model: PolicyConfig, device: torch.device, *, data: str | Path | None = None,
                 init: str | Path | None = None) -> Policy:  # fmt: skip
    """A fresh `model` (seeded by the caller; with cfg.action_prior_init its output biases at the
    action log-frequencies of the store `data`) or, given `init`, that checkpoint's weights, with
    the parameters outside the trained part (cfg.train_only) frozen."""
    from safetensors.torch import load_file

    policy = Policy(model)
    if init is None:
        if cfg.action_prior_init:
            if data is None:
                raise ValueError("action_prior_init: a fresh model's output biases need the data (data=...)")
            with torch.no_grad():
                policy.head[-1].bias.copy_(action_log_frequencies(StoreReader(data)))
    else:
        state = load_file(str(Path(init) / "model.safetensors"))
        missing, unexpected = policy.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"init: {init}/model.safetensors does not match its config "
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
    bit-identical to a per-window one (on our CPUs it was), so a
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


def make_loader(cfg: BCConfig, data: str | Path, device: torch.device, num_batches: int | None = None,
                frames: bool = True):  # fmt: skip
    """The resumable window loader of `cfg` over the store `data` (batches are a pure function of
    (seed, batch number)); `frames` False leaves the frames out of the batches (a run on FrameFeatures)."""
    workers = cfg.num_workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))
    return WindowLoader(
        data,
        WindowConfig(window=cfg.window, batch_size=cfg.batch_size, noop_filter=cfg.noop_filter, frames=frames,
                     first_window_share=cfg.first_window_share),
        seed=cfg.seed,
        loader=LoaderConfig(num_workers=workers, pin_memory=device.type == "cuda"),
        num_batches=cfg.steps if num_batches is None else num_batches,
    )


def train_bc(cfg: BCConfig, data: str | Path, out_dir: str | Path, *, model: PolicyConfig | None = None,
             init: str | Path | None = None, stage: str = "bc", progress: bool = True) -> dict[str, Any]:
    """Clone the episode store `data` into `out_dir`: train (or resume, or return a finished run).

    Exactly one of `model` (a fresh model of that config) and `init` (a checkpoint folder to start
    from; its config gives the model, and a window longer than that model's context is shortened
    to it). `stage` is a label written into the checkpoint's config.json. Everything is checked
    before any work starts (ValueError naming the culprit). Returns a summary dict: stage, steps,
    final_loss, final_accuracy (means over the last log interval), seconds and frames_per_s of
    this call, resumed_from, dataset_id, device, out_dir."""
    from tqdm import tqdm

    out = Path(out_dir)
    if not isinstance(stage, str) or not stage:
        raise ValueError(f"stage must be a non-empty label, got {stage!r}")
    cfg, model = resolve_model(cfg, model, init)
    data_info = check_inputs(data, model)
    device = resolve_device(cfg.device)
    # The data and the starting checkpoint by their content, not their path: the same run given a
    # relative or an absolute path, or in a moved folder, is the same run.
    config = {"bc": config_to_dict(cfg), "data": data_info["dataset_id"], "model": config_to_dict(model),
              "init": checkpoint_fingerprint(init) if init is not None else None, "stage": stage}  # fmt: skip
    state = check_run_config(out, config, ignore=[f"bc.{k}" for k in OPERATIONAL])
    summary_path = out / "summary.json"
    if state == "existing" and summary_path.exists():
        return {**json.loads(summary_path.read_text()), "already_finished": True}

    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    policy = build_policy(cfg, model, device, data=data, init=init)
    optimizer = make_optimizer(policy, cfg)
    loader = make_loader(cfg, data, device, frames=not uses_feature_cache(cfg))
    start_step = 0
    resumed = load_train_state(out, policy, optimizer) if state == "existing" else None
    if resumed is not None:
        start_step = int(resumed["step"])
        loader.load_state_dict(resumed["loader"])
        if loader.position != start_step:
            raise ValueError(f"{out}/train_state: loader at batch {loader.position}, state at step {start_step}")
    truncate_metrics(out, start_step)  # rows a killed run logged after its last checkpoint
    logger = MetricsLogger(out)
    features = (FrameFeatures(policy, StoreReader(data), device, autocast=cfg.bf16 and device.type == "cuda")
                if uses_feature_cache(cfg) and start_step < cfg.steps else None)  # fmt: skip
    train_step = TrainStep(policy, optimizer, cfg, device, features)
    parent = str(Path(init).resolve()) if init is not None else None
    frames_per_step = cfg.batch_size * cfg.window

    def checkpoint(step: int) -> None:
        save_train_state(out, step, policy, optimizer, extra={"loader": loader.state_dict(), "stage": stage})
        policy.save_pretrained(out, stage=stage, parent=parent, dataset_id=data_info["dataset_id"], step=step,
                               train_only=cfg.train_only)  # fmt: skip

    _set_mode(policy, cfg.train_only)
    acc: dict[str, Any] = {}
    last: dict[str, float] = {}
    t_log, steps_since_log = time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"bc {stage}", unit="step", disable=not progress,
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
        "stage": stage,
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
