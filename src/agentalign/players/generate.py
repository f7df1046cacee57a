"""Record gameplay datasets: the unfiltered population set and the curated demonstrations.

Presets (`GENERATE_PRESETS`):
    pretrain  the population set (paper §3.2): every character, undesirable modes, recoveries,
              episodes that run past the 100-step limit and on past the pad.
    finetune  the curated task set (paper §3.3): 100 successful ninja trajectories per pad from a
              skilled demonstrator, cut at the step the pad is reached.
    smoke / tiny versions of both for tests.

Every episode k is determined by its own seed (derived from the dataset seed and k): plan,
player noise, spawn and frames. Episodes are written to the store in index order, so a generation
that was killed resumes at the store's durable count and produces the very episodes it would have.
The model never sees `metadata` or `extras` (positions, yaw); they serve heatmaps and labellers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from agentalign.data import Episode, StoreWriter, WriterConfig
from agentalign.envs.skygarden import IslandBatch
from agentalign.envs.skygarden import world as W
from agentalign.players.population import (
    EpisodePlan,
    PlayerDriver,
    PopulationConfig,
    demonstrator,
    plan_episode,
    sample_population,
)


@dataclass(frozen=True)
class GenerateConfig:
    episodes: int
    curated: bool = False  # True: skilled ninja demonstrations, successful only, cut at the pad
    seed: int = 0
    num_envs: int = 64  # worlds stepped together; 64 keeps both cores busy in the renderer
    population: PopulationConfig = field(default_factory=PopulationConfig)
    max_attempts: int = 20  # curated: retries of an episode whose demonstrator missed its pad

    def __post_init__(self) -> None:
        if self.episodes <= 0:
            raise ValueError(f"episodes must be positive, got {self.episodes}")
        if self.num_envs <= 0:
            raise ValueError(f"num_envs must be positive, got {self.num_envs}")
        if self.curated and self.episodes % 3:
            raise ValueError(f"curated episodes must be a multiple of 3 (equal per pad), got {self.episodes}")


GENERATE_PRESETS: dict[str, GenerateConfig] = {
    # A few thousand episodes: enough for the CPU model to learn the multi-modal prior.
    "pretrain": GenerateConfig(episodes=3000),
    "finetune": GenerateConfig(episodes=300, curated=True),
    "smoke-pretrain": GenerateConfig(episodes=48, num_envs=16, population=PopulationConfig(num_players=20)),
    "smoke-finetune": GenerateConfig(episodes=24, curated=True, num_envs=12),
}


def episode_seed(dataset_seed: int, index: int, attempt: int = 0) -> int:
    """The seed of episode `index` (and of its retries): independent streams per episode."""
    return int(np.random.SeedSequence([dataset_seed, index, attempt]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class _Job:
    index: int
    attempt: int
    seed: int
    plan: EpisodePlan
    frames: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    pos: list = field(default_factory=list)
    yaw: list = field(default_factory=list)
    spawn: int = 0
    pad_step: int = -1  # index of the first frame on a pad, -1 if none


def _job(cfg: GenerateConfig, players, index: int, attempt: int) -> tuple[_Job, np.random.Generator]:
    seed = episode_seed(cfg.seed, index, attempt)
    rng = np.random.default_rng(seed)
    if cfg.curated:
        plan = plan_episode(demonstrator(), rng, W.DEFAULT_MAX_STEPS, intent=W.PAD_NAMES[index % 3])
    else:
        player = players[int(rng.integers(len(players)))]
        plan = plan_episode(player, rng, cfg.population.max_length)
    return _Job(index, attempt, seed, plan), rng


def generate(path: str | Path, cfg: GenerateConfig, progress: Callable[[int, int], None] | None = None,
             writer_config: WriterConfig | None = None, size: int = 64) -> dict:  # fmt: skip
    """Record `cfg.episodes` episodes of `size` x `size` frames (128: the paper's) into the store at
    `path`, resuming where it stopped.

    Returns a summary (episodes written now, durable total, frames recorded, attempts).
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    players = sample_population(cfg.population, np.random.default_rng([cfg.seed, 2**31]))
    with StoreWriter(path, image_size=(size, size), config=writer_config) as writer:
        start = writer.num_durable
        if start > cfg.episodes:
            raise ValueError(f"{path} already holds {start} episodes, more than the {cfg.episodes} asked for")
        n = min(cfg.num_envs, cfg.episodes - start) or 1
        # Curated runs stop at the pad and at the evaluation limit; population runs go on.
        batch = IslandBatch(n, size, size, [W.DEFAULT_CHARACTER] * n,
                            max_steps=W.DEFAULT_MAX_STEPS if cfg.curated else cfg.population.max_length + 1,
                            terminate_on_pad=cfg.curated, target_pad=None)  # fmt: skip
        driver = PlayerDriver(n)
        state = batch.state
        rows: list[_Job | None] = [None] * n
        todo = list(range(start, cfg.episodes))[::-1]  # a stack: pop() gives the next index
        retry: list[tuple[int, int]] = []
        done: dict[int, Episode] = {}
        next_to_write = start
        written = frames_recorded = attempts = 0

        def assign(free: list[int]) -> None:
            nonlocal attempts
            starting = []
            for i in free:
                if retry:
                    index, attempt = retry.pop()
                elif todo:
                    index, attempt = todo.pop(), 0
                else:
                    continue
                job, rng = _job(cfg, players, index, attempt)
                rows[i] = job
                starting.append((i, job, rng))
                attempts += 1
            if not starting:
                return
            idx = np.array([i for i, _, _ in starting])
            batch.seed_rows(idx, [j.seed for _, j, _ in starting])
            batch.reset_rows(idx, character=[j.plan.player.character for _, j, _ in starting])
            batch.render(idx)
            for i, job, rng in starting:
                job.spawn = int(state.spawn[i])
                driver.start(i, job.plan, rng, state.pos[i], float(state.yaw[i]))

        def finish(i: int, jump_pad: str) -> None:
            nonlocal next_to_write, written, frames_recorded
            job = rows[i]
            rows[i] = None
            driver.slots[i] = None
            t = len(job.actions)
            if cfg.curated and jump_pad != job.plan.intent:
                if job.attempt + 1 >= cfg.max_attempts:
                    raise RuntimeError(f"curated episode {job.index}: no success in {cfg.max_attempts} attempts")
                retry.append((job.index, job.attempt + 1))
                return
            if t == 0:  # a plan that ended before its first action: record it again, reseeded
                retry.append((job.index, job.attempt + 1))
                return
            done[job.index] = Episode(
                frames=np.stack(job.frames),
                actions=np.stack(job.actions).astype(np.uint8),
                extras={"pos": np.stack(job.pos).astype(np.float32), "yaw": np.array(job.yaw, dtype=np.float32)},
                metadata={
                    "seed": job.seed,
                    "episode_index": job.index,
                    "attempt": job.attempt,
                    "player_id": job.plan.player.player_id,
                    "skill": round(job.plan.player.skill, 4),
                    "character": job.plan.player.character,
                    "spawn": job.spawn,
                    "intent": job.plan.intent,
                    "jump_pad": jump_pad,
                    "pad_step": job.pad_step,
                    "curated": cfg.curated,
                },
            )
            frames_recorded += t
            while next_to_write in done:  # write in index order, so a resume starts at num_durable
                writer.add(done.pop(next_to_write))
                next_to_write += 1
                written += 1
                if progress:
                    progress(writer.num_durable + writer.num_pending, cfg.episodes)

        assign(list(range(n)))
        while any(r is not None for r in rows):
            actions = driver.act(state.pos, state.yaw, state.t, state.pad)
            for i, job in enumerate(rows):
                if job is not None and driver.slots[i].done:  # the plan ended before this step
                    finish(i, _pad_name(state.pad[i]))
            active = np.array([r is not None for r in rows])
            live = np.flatnonzero(active)
            # One gathered copy per step; each job keeps views into it (no per-row copies).
            frames, acts, pos = batch.frames[live], actions[live], state.pos[live]
            for j, i in enumerate(live):
                job = rows[i]
                job.frames.append(frames[j])
                job.actions.append(acts[j])
                job.pos.append(pos[j])
                job.yaw.append(float(state.yaw[i]))
            _, term, trunc, reached = batch.step(actions, active)
            for i in np.flatnonzero(reached):
                rows[i].pad_step = len(rows[i].actions)
            batch.render(np.flatnonzero(active))
            for i in np.flatnonzero(active & (term | trunc)):  # curated: at the pad, or timed out
                finish(i, _pad_name(state.pad[i]))
            free = [i for i, r in enumerate(rows) if r is None]
            if free and (todo or retry):
                assign(free)
        if done:
            raise RuntimeError(f"episodes {sorted(done)[:5]} were recorded but never written")
        return {
            "written": written,
            "episodes": writer.num_durable + writer.num_pending,
            "frames": frames_recorded,
            "attempts": attempts,
        }


def _pad_name(k: int) -> str:
    return W.PAD_NAMES[k] if k >= 0 else "none"


def preset(name: str, **overrides) -> GenerateConfig:
    try:
        base = GENERATE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset preset {name!r}; choose one of {', '.join(GENERATE_PRESETS)}") from None
    return replace(base, **overrides)
