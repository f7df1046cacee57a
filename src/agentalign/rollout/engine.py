"""Batched rollouts of an actor (the policy, or a baseline) in SkyGarden: the paper's evaluation
procedure (section 3.2) and the on-policy trajectories of the preference stage (section 3.4).

    trajs = rollout(policy, RolloutConfig(episodes=1000, seed=0, temperature=1.0))
    trajs = rollout(RandomActor(64), RolloutConfig(episodes=1000))       # the random baseline

Each episode: the ninja (by default) at a random one of the 4 spawns, an empty context, actions
sampled at `temperature` until a jump pad is reached or 100 steps pass — as the paper evaluates.
All envs of a wave are stepped and rendered in one compiled call (`IslandBatch`) and the actor
makes one batched forward pass per step for all of them (see `actors` for the embedding cache).

Waves, not refilling. `num_envs` episodes start together and run until all have ended; rows that
ended drop out of the forward pass. Within a wave every row is at the same step t, so the
transformer runs over exactly L = min(t+1, context) tokens with no padding, and the transformer
dominates the step (~75 % at the CPU preset; ~6 ms at L = 8 vs ~25 ms at L = 32 for 64 rows).
Refilling finished rows keeps the batch full, but then rows at different t share one padded
batch and every row pays for the longest window from its first step: a 100-step episode costs
sum_t min(t+1, 32) = 2,704 token-steps in a wave against 3,200 padded (+18 %). What a wave loses
instead is its tail, where few rows remain and each step runs a small batch; with the time-out
at 100 steps and most of an episode spent with a full window, the padding costs more.

Determinism. Episode k of a run depends only on (seed, k), the actor and the config: its env seed
(spawn, yaw jitter) and its sampling stream (a torch.Generator of its own, drawn up front as a
(max_steps, 16) table of uniforms) both come from `episode_seeds(seed, k)`. The same seed gives
the same trajectories bit for bit on CPU; a resumed run (`first_episode`) or another `num_envs`
gives the same episodes up to float rounding in batched matmuls of another shape.

Threads. torch's OpenMP threads spin at every barrier (and the renderer's numba pool is a second
OpenMP runtime). When other busy processes share the cores, each 2-thread op waits for its
partner to be scheduled; on the shared 2-core machine we measured 10-35x slower steps.
`OMP_WAIT_POLICY=PASSIVE` in the environment (read when torch loads) or `torch.set_num_threads(1)`
avoids it; on a machine of one's own the defaults are fine.

Departures from the paper: the paper's spawn includes a spawn animation in the game; here the
episode starts at the spawn point itself, with the camera facing the front plus a small random
yaw (the environment's reset).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from agentalign.envs.skygarden import IslandBatch
from agentalign.envs.skygarden import world as W
from agentalign.models.distribution import N_LOGITS
from agentalign.rollout.actors import Actor, PolicyActor

_SEED_DOMAIN = 0x524F4C4C  # "ROLL": rollout episode seeds differ from data-generation seeds


@dataclass(frozen=True)
class RolloutConfig:
    episodes: int
    seed: int = 0
    temperature: float = 1.0  # softmax temperature of action sampling (paper §3.4: 1)
    num_envs: int = 64  # rows per wave; 64 keeps both cores busy in encoder and renderer
    character: str = W.DEFAULT_CHARACTER  # the paper evaluates the default Ninja only
    spawn: int | None = None  # None: a random spawn per episode (the paper's evaluation)
    max_steps: int = W.DEFAULT_MAX_STEPS  # 100 steps = 10 s, the paper's time-out
    first_episode: int = 0  # index of the first episode: a resumed run continues the numbering
    keep_frames: int | None = 0  # frames kept for the first k episodes of the run; None: all
    keep_h: bool = False  # per-step transformer outputs, for head-only REINFORCE
    keep_z: bool = False  # per-frame encoder embeddings, so that REINFORCE need not encode again
    keep_logits: bool = False  # per-step logits (tests, diagnostics)
    # Consecutive episodes in groups of this size (by episode number) share their env seed, so their
    # spawn and initial yaw, and sample their own actions: k samples from one start state, as
    # RLOO and GRPO sample k completions of one prompt. 1: every episode its own start.
    samples_per_start: int = 1

    def __post_init__(self) -> None:
        for name in ("episodes", "num_envs", "max_steps", "samples_per_start"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        W.character_index(self.character)  # raises, naming the known characters
        ok_spawn = isinstance(self.spawn, (int, np.integer)) and 0 <= self.spawn < len(W.SPAWNS)
        if self.spawn is not None and not ok_spawn:
            raise ValueError(f"spawn must be None (random) or an integer in 0..{len(W.SPAWNS) - 1}, got {self.spawn!r}")
        if self.first_episode < 0:
            raise ValueError(f"first_episode must be >= 0, got {self.first_episode}")
        if self.keep_frames is not None and self.keep_frames < 0:
            raise ValueError(f"keep_frames must be >= 0 or None (all), got {self.keep_frames}")


@dataclass
class Trajectory:
    """One episode of T steps: o_0..o_T seen, a_0..a_{T-1} taken (a_t after o_t)."""

    index: int  # episode number k within the run's numbering
    seed: int  # env seed (spawn, yaw jitter); with `sample_seed`, from episode_seeds(run seed, k)
    sample_seed: int  # seed of the episode's own sampling stream
    actions: np.ndarray  # (T, 16) int64
    pos: np.ndarray  # (T + 1, 2) float64 privileged positions; pos[T] where the episode ended
    yaw: np.ndarray  # (T + 1,) float64 camera yaw
    jump_pad: str  # left / middle / right, or none (timed out)
    spawn: int
    character: str
    temperature: float
    log_prob: np.ndarray  # (T,) float32 log pi(a_t | context) at `temperature`
    frames: np.ndarray | None = None  # (T + 1, H, W, 3) uint8 if kept; frames[T] is the last view
    h: np.ndarray | None = None  # (T, width) float32 transformer output the head saw, if kept
    z: np.ndarray | None = None  # (T, width) float32 encoder embeddings of frames 0..T-1, if kept
    logits: np.ndarray | None = None  # (T, 68) float32, if kept

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class RolloutStats:
    """Where the time went (seconds), accumulated over waves."""

    episodes: int = 0
    steps: int = 0  # agent steps: one per episode per step taken
    waves: int = 0
    batch_steps: int = 0  # iterations of the batched loop (one env step + one forward pass each)
    seconds: float = 0.0
    env_s: float = 0.0  # physics + rendering
    encode_s: float = 0.0  # policy.encode (the new frames, or the whole window when re-encoding)
    transformer_s: float = 0.0  # forward_embedded over the window + head on its last position
    sample_s: float = 0.0  # softmax, inverse CDF, log-probs
    wave_seconds: list[float] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def other_s(self) -> float:
        """Bookkeeping: uniforms, recording, gathers, Python."""
        return max(0.0, self.seconds - self.env_s - self.encode_s - self.transformer_s - self.sample_s)

    def to_dict(self) -> dict:
        return {
            "episodes": self.episodes,
            "steps": self.steps,
            "waves": self.waves,
            "batch_steps": self.batch_steps,
            "seconds": round(self.seconds, 4),
            "steps_per_second": round(self.steps_per_second, 2),
            "split_seconds": {k: round(v, 4) for k, v in (("env", self.env_s), ("encoder", self.encode_s),
                              ("transformer", self.transformer_s), ("sampling", self.sample_s),
                              ("other", self.other_s))},  # fmt: skip
        }


def episode_seeds(seed: int, index: int) -> tuple[int, int]:
    """(env seed, sampling seed) of episode `index` of a run seeded `seed`: independent streams."""
    env, sample = np.random.SeedSequence([int(seed), int(index), _SEED_DOMAIN]).generate_state(2, np.uint64)
    return int(env >> 1), int(sample >> 1)  # < 2**63: valid for numpy and torch.manual_seed


def start_seeds(seed: int, index: int, samples_per_start: int = 1) -> tuple[int, int]:
    """episode_seeds, the env seed taken from the first episode of `index`'s group of
    `samples_per_start`: the group starts alike and samples apart."""
    return episode_seeds(seed, index - index % samples_per_start)[0], episode_seeds(seed, index)[1]


def as_actor(policy_or_actor, cfg: RolloutConfig) -> Actor:
    """A `Policy` becomes a `PolicyActor` at cfg.temperature; an actor is checked against cfg."""
    from agentalign.models import Policy

    if isinstance(policy_or_actor, Policy):
        return PolicyActor(policy_or_actor, cfg.temperature)
    actor = policy_or_actor
    if not all(hasattr(actor, a) for a in ("image_size", "width", "begin_wave", "act")):
        raise TypeError(f"expected a Policy or an Actor, got {type(actor).__name__}")
    t = getattr(actor, "temperature", None)
    if t is not None and t != cfg.temperature:
        raise ValueError(f"the actor samples at temperature {t} but the config says {cfg.temperature}")
    return actor


def iter_waves(policy_or_actor, cfg: RolloutConfig, stats: RolloutStats | None = None) -> Iterator[list[Trajectory]]:
    """Run `cfg.episodes` episodes, `cfg.num_envs` at a time; yield each wave's trajectories in
    episode order. Memory is bounded by one wave. Inference mode holds within a wave only, so a
    caller may train between waves."""
    actor = as_actor(policy_or_actor, cfg)
    size = int(actor.image_size)
    if size < 16:
        raise ValueError(f"the policy takes {size}x{size} frames; SkyGarden renders 16x16 or larger")
    n_envs = min(cfg.num_envs, cfg.episodes)
    batch = IslandBatch(n_envs, size, size, [cfg.character] * n_envs, cfg.max_steps, terminate_on_pad=True,
                        target_pad=None)  # fmt: skip
    stats = stats if stats is not None else RolloutStats()
    end = cfg.first_episode + cfg.episodes
    for start in range(cfg.first_episode, end, n_envs):
        episodes = list(range(start, min(start + n_envs, end)))
        yield _run_wave(batch, actor, cfg, episodes, stats, cfg.spawn)


def rollout(policy_or_actor, cfg: RolloutConfig, stats: RolloutStats | None = None,
            progress: Callable[[int, int], None] | None = None) -> list[Trajectory]:  # fmt: skip
    """All of `cfg.episodes` trajectories, in episode order; `progress(done, total)` after each wave."""
    out: list[Trajectory] = []
    for wave in iter_waves(policy_or_actor, cfg, stats):
        out += wave
        if progress:
            progress(len(out), cfg.episodes)
    return out


def _run_wave(batch: IslandBatch, actor: Actor, cfg: RolloutConfig, episodes: list[int],
              stats: RolloutStats, spawn: int | Sequence[int] | None) -> list[Trajectory]:  # fmt: skip
    policy = getattr(actor, "policy", None)
    was_training = policy.training if policy is not None else False
    if policy is not None:
        policy.eval()
    try:
        with torch.inference_mode():
            return _wave(batch, actor, cfg, episodes, stats, spawn)
    finally:
        if policy is not None:
            policy.train(was_training)


def _wave(batch: IslandBatch, actor: Actor, cfg: RolloutConfig, episodes: list[int],
          stats: RolloutStats, spawn: int | Sequence[int] | None) -> list[Trajectory]:  # fmt: skip
    wave_t0 = time.perf_counter()
    n, S, N = len(episodes), cfg.max_steps, batch.n
    rows = np.arange(n)
    seeds = [start_seeds(cfg.seed, k, cfg.samples_per_start) for k in episodes]
    st = batch.state

    t0 = time.perf_counter()
    batch.seed_rows(rows, [s[0] for s in seeds])
    batch.reset_rows(rows, spawn=spawn, character=cfg.character)
    batch.render(rows)
    stats.env_s += time.perf_counter() - t0
    # Each episode's whole random stream up front: (n, S, 16), row i from its own generator.
    uniforms = torch.stack([torch.rand(S, 16, generator=torch.Generator().manual_seed(s[1])) for s in seeds])

    pos = np.zeros((n, S + 1, 2))
    yaw = np.zeros((n, S + 1))
    pos[:, 0], yaw[:, 0] = st.pos[:n], st.yaw[:n]
    acts = np.zeros((n, S, 16), dtype=np.int64)
    logp = np.zeros((n, S), dtype=np.float32)
    width = actor.width
    h_buf = np.zeros((n, S, width), dtype=np.float32) if cfg.keep_h and width else None
    z_buf = np.zeros((n, S, width), dtype=np.float32) if cfg.keep_z and width else None
    logit_buf = np.zeros((n, S, N_LOGITS), dtype=np.float32) if cfg.keep_logits and width else None
    n_keep = n if cfg.keep_frames is None else int(np.clip(cfg.first_episode + cfg.keep_frames - episodes[0], 0, n))
    h_img = w_img = actor.image_size
    frame_buf = np.zeros((n_keep, S + 1, h_img, w_img, 3), dtype=np.uint8) if n_keep else None  # rows 0..n_keep-1
    length = np.zeros(n, dtype=np.int64)
    active = np.zeros(N, dtype=bool)
    active[:n] = True
    step_actions = np.zeros((N, 16), dtype=np.int64)  # inactive rows: ignored by step()
    actor.begin_wave(episodes, S)

    for t in range(S):
        idx = np.flatnonzero(active)  # (A,) ascending
        frames = batch.frames[:n] if len(idx) == n else batch.frames[idx]  # (A, H, W, 3)
        if frame_buf is not None:
            k = idx[idx < n_keep]
            frame_buf[k, t] = batch.frames[k]
        out = actor.act(t, idx, frames, uniforms[idx, t], stats)
        a = out.actions.numpy()
        acts[idx, t] = a
        logp[idx, t] = out.log_prob.numpy()
        if h_buf is not None:
            h_buf[idx, t] = out.h.numpy()
        if z_buf is not None:
            z_buf[idx, t] = out.z.numpy()
        if logit_buf is not None:
            logit_buf[idx, t] = out.logits.numpy()
        step_actions[idx] = a

        t0 = time.perf_counter()
        _, terminated, truncated, _ = batch.step(step_actions, active)
        batch.render(idx)  # the rows that just ended too: their last view, for videos
        stats.env_s += time.perf_counter() - t0

        pos[idx, t + 1], yaw[idx, t + 1] = st.pos[idx], st.yaw[idx]
        ended = idx[(terminated | truncated)[idx]]
        length[ended] = t + 1
        active[ended] = False
        if frame_buf is not None:
            k = ended[ended < n_keep]
            frame_buf[k, t + 1] = batch.frames[k]
        stats.batch_steps += 1
        if not active.any():
            break
    if active.any():  # cannot happen: IslandBatch truncates at max_steps
        raise RuntimeError(f"rows {np.flatnonzero(active)[:5].tolist()} did not end within {S} steps")

    trajs = []
    for i, k in enumerate(episodes):
        T = int(length[i])
        trajs.append(Trajectory(
            index=k, seed=seeds[i][0], sample_seed=seeds[i][1],
            actions=acts[i, :T].copy(), pos=pos[i, : T + 1].copy(), yaw=yaw[i, : T + 1].copy(),
            jump_pad=batch.pad_label(i), spawn=int(st.spawn[i]), character=cfg.character,
            temperature=float(cfg.temperature), log_prob=logp[i, :T].copy(),
            frames=frame_buf[i, : T + 1].copy() if i < n_keep else None,
            h=h_buf[i, :T].copy() if h_buf is not None else None,
            z=z_buf[i, :T].copy() if z_buf is not None else None,
            logits=logit_buf[i, :T].copy() if logit_buf is not None else None,
        ))  # fmt: skip
    stats.episodes += n
    stats.steps += int(length.sum())
    stats.waves += 1
    dt = time.perf_counter() - wave_t0
    stats.seconds += dt
    stats.wave_seconds.append(dt)
    return trajs
