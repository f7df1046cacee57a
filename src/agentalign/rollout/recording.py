"""On-policy trajectories into the dataset store (paper §3.4: "we use the evaluation procedure
... to generate a dataset of 2400 on-policy trajectories"), and loading what to roll out.

`record_rollouts` is resumable like `agentalign.players.generate`: episode k depends only on
(seed, k) (see `engine`), episodes are written in order, so a run that was killed resumes at the
store's durable count and records the episodes it would have recorded (up to float rounding in
batched matmuls, see `engine`). Resuming with another policy, seed, temperature, character,
spawn or time-out is refused: the store would mix two distributions.

Per episode the store holds the frames o_0..o_{T-1}, the actions, and privileged extras for the
preference stage and heatmaps, never for the model: `pos` (T, 2) and `yaw` (T,) before each
action, and `log_prob` (T,), the behaviour policy's log-probabilities of its actions. Metadata:
jump_pad, length, spawn, seed (the env seed), pad_step, final_pos (where the episode ended),
temperature, policy (the checkpoint) and policy_sha (a hash of its weights).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from agentalign.data import Episode, StoreWriter, WriterConfig
from agentalign.rollout.actors import Actor, PolicyActor, RandomActor
from agentalign.rollout.engine import RolloutConfig, RolloutStats, Trajectory, iter_waves

RANDOM = "random"  # the name that stands for the random-policy baseline where a checkpoint goes
MIN_IMAGE_SIZE = 16  # the smallest frame SkyGarden renders


def policy_fingerprint(policy) -> str:
    """A short hash of a policy's weights (names, dtypes, shapes, bytes): which policy made a store."""
    h = hashlib.blake2b(digest_size=8)
    for name, v in sorted(policy.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return h.hexdigest()


def load_actor(source: Any, temperature: float = 1.0, *, size: int = 64) -> tuple[Actor, dict[str, Any]]:
    """A checkpoint directory, a `Policy`, an actor, or "random" -> (actor, provenance info).

    Raises ValueError naming the checkpoint when it is missing, not a policy checkpoint, or takes
    frames the environment cannot render; `size` is the frame size of the random baseline."""
    from agentalign.models import Policy
    from agentalign.models.policy import read_checkpoint_config

    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if isinstance(source, str) and source == RANDOM:
        if size < MIN_IMAGE_SIZE:
            raise ValueError(f"size must be at least {MIN_IMAGE_SIZE} pixels, got {size}")
        return RandomActor(size), {"policy": RANDOM, "policy_sha": RANDOM}
    if isinstance(source, Policy):
        _check_size(source.cfg.image_size, "the policy")
        return PolicyActor(source, temperature), {"policy": "<in memory>", "policy_sha": policy_fingerprint(source)}
    if isinstance(source, (str, Path)):
        d = Path(source)
        if not d.exists():
            raise ValueError(f"checkpoint {d} does not exist")
        if not d.is_dir():
            raise ValueError(f"checkpoint {d} is not a directory (expected model.safetensors + config.json)")
        try:
            meta = read_checkpoint_config(d, kind="policy")
            size = meta.get("model", {}).get("image_size")
            if isinstance(size, int):  # checked before the weights are read
                _check_size(size, f"checkpoint {d}")
            policy = Policy.from_pretrained(d)
        except Exception as e:  # bad JSON, a config of the wrong types, a truncated or foreign weights file
            msg = str(e) if str(d) in str(e) else f"checkpoint {d} cannot be loaded: {type(e).__name__}: {e}"
            raise ValueError(msg) from None
        _check_size(policy.cfg.image_size, f"checkpoint {d}")
        info = {"policy": str(d), "policy_sha": policy_fingerprint(policy)}
        if "stage" in meta:
            info["stage"] = meta["stage"]
        return PolicyActor(policy, temperature), info
    if all(hasattr(source, a) for a in ("image_size", "width", "begin_wave", "act")):
        return source, {"policy": type(source).__name__, "policy_sha": type(source).__name__}
    raise TypeError(f"expected a checkpoint directory, a Policy, an actor or {RANDOM!r}; got {type(source).__name__}")


def _check_size(size: int, what: str) -> None:
    if size < MIN_IMAGE_SIZE:
        m = MIN_IMAGE_SIZE
        raise ValueError(f"{what} takes {size}x{size} frames, but SkyGarden renders {m}x{m} or larger")


def to_episode(traj: Trajectory, **metadata: Any) -> Episode:
    """A trajectory with frames -> a store `Episode` (frames o_0..o_{T-1}, privileged extras)."""
    if traj.frames is None:
        raise ValueError(f"episode {traj.index}: frames were not kept (RolloutConfig.keep_frames)")
    t = traj.length
    pad_step = t if traj.jump_pad != "none" else -1  # the last action steps onto the pad
    return Episode(
        frames=traj.frames[:t],
        actions=traj.actions.astype(np.uint8),
        extras={
            "pos": traj.pos[:t].astype(np.float32),
            "yaw": traj.yaw[:t].astype(np.float32),
            "log_prob": traj.log_prob.astype(np.float32),
        },
        metadata={
            "seed": traj.seed,
            "sample_seed": traj.sample_seed,
            "episode_index": traj.index,
            "character": traj.character,
            "spawn": traj.spawn,
            "jump_pad": traj.jump_pad,
            "pad_step": pad_step,
            "final_pos": [round(float(v), 5) for v in traj.pos[t]],
            "temperature": traj.temperature,
            **metadata,
        },
    )


# Keys that must agree between the episodes already in a store and a run that resumes it.
_RUN_KEYS = ("source", "policy_sha", "rollout_seed", "temperature", "character", "spawn_mode", "max_steps")


def record_rollouts(source: Any, path: str | Path, cfg: RolloutConfig, *, size: int = 64,
                    progress: Callable[[int, int], None] | None = None,
                    writer_config: WriterConfig | None = None) -> dict[str, Any]:  # fmt: skip
    """Roll out `source` (see `load_actor`) until the store at `path` holds `cfg.episodes`
    episodes, resuming after the durable ones (the store's count decides where to start;
    cfg.first_episode and cfg.keep_frames are not used). Returns a summary (written now, total,
    steps, seconds, steps/s, the pads of the new episodes, the policy's provenance)."""
    actor, info = load_actor(source, cfg.temperature, size=size)
    run_md = {
        "source": "rollout",
        "rollout_seed": cfg.seed,
        "max_steps": cfg.max_steps,
        "spawn_mode": "random" if cfg.spawn is None else int(cfg.spawn),
        "temperature": float(cfg.temperature),
        "character": cfg.character,
        **info,
    }
    stats = RolloutStats()
    pads: dict[str, int] = {"left": 0, "middle": 0, "right": 0, "none": 0}
    s = actor.image_size
    with StoreWriter(path, image_size=(s, s), config=writer_config) as writer:
        start = writer.num_durable
        if start > cfg.episodes:
            raise ValueError(f"{path} already holds {start} episodes, more than the {cfg.episodes} asked for")
        if start:
            old = writer.durable_metadata()[0]
            for key in _RUN_KEYS:
                want = run_md[key]
                if old.get(key) != want:
                    raise ValueError(f"{path} holds rollouts with {key} = {old.get(key)!r}, not {want!r}; "
                                     f"resume with the same settings or pick another store")  # fmt: skip
        todo = cfg.episodes - start
        if todo:
            run = replace(cfg, episodes=todo, first_episode=start, keep_frames=None)
            for wave in iter_waves(actor, run, stats):
                for tr in wave:
                    writer.add(to_episode(tr, **run_md))
                    pads[tr.jump_pad] += 1
                if progress:
                    progress(start + stats.episodes, cfg.episodes)
        total = writer.num_durable + writer.num_pending
    return {"written": stats.episodes, "episodes": total, "steps": stats.steps, "seconds": stats.seconds,
            "steps_per_second": stats.steps_per_second, "jump_pads": pads, **info}  # fmt: skip


# -- compact trajectory files (no frames): what figures and comparisons across runs need ------

_PAD_CODES = {"left": 0, "middle": 1, "right": 2, "none": -1}


def save_trajectories(path: str | Path, trajs: list[Trajectory]) -> Path:
    """Positions, yaw, actions, log-probs and outcomes of trajectories (not frames, h or logits)
    in one .npz of flat arrays (no pickle); `load_trajectories` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([t.length for t in trajs], dtype=np.int64)
    cat = lambda xs, shape, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt)  # noqa: E731
    np.savez_compressed(
        path,
        index=np.array([t.index for t in trajs], dtype=np.int64),
        seed=np.array([t.seed for t in trajs], dtype=np.int64),
        sample_seed=np.array([t.sample_seed for t in trajs], dtype=np.int64),
        length=lengths,
        spawn=np.array([t.spawn for t in trajs], dtype=np.int64),
        jump_pad=np.array([_PAD_CODES[t.jump_pad] for t in trajs], dtype=np.int8),
        temperature=np.array([t.temperature for t in trajs], dtype=np.float64),
        character=np.array([t.character for t in trajs], dtype=np.str_),
        pos=cat([t.pos for t in trajs], (0, 2), np.float64),  # (sum (T + 1), 2)
        yaw=cat([t.yaw for t in trajs], (0,), np.float64),  # (sum (T + 1),)
        actions=cat([t.actions for t in trajs], (0, 16), np.uint8),  # (sum T, 16)
        log_prob=cat([t.log_prob for t in trajs], (0,), np.float32),  # (sum T,)
    )
    return path


def load_trajectories(path: str | Path) -> list[Trajectory]:
    names = {v: k for k, v in _PAD_CODES.items()}
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    out, a, p = [], 0, 0  # running offsets into the step arrays (T each) and position arrays (T + 1)
    for i, t in enumerate(d["length"].tolist()):
        out.append(Trajectory(
            index=int(d["index"][i]), seed=int(d["seed"][i]), sample_seed=int(d["sample_seed"][i]),
            actions=d["actions"][a : a + t].astype(np.int64), pos=d["pos"][p : p + t + 1], yaw=d["yaw"][p : p + t + 1],
            jump_pad=names[int(d["jump_pad"][i])], spawn=int(d["spawn"][i]), character=str(d["character"][i]),
            temperature=float(d["temperature"][i]), log_prob=d["log_prob"][a : a + t],
        ))  # fmt: skip
        a, p = a + t, p + t + 1
    return out
