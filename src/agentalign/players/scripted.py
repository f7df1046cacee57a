"""Run scripted navigators in the batched env and collect whole episodes (frames, actions,
positions, the pad reached). Used for videos and contact sheets, and by the data generators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agentalign.envs.skygarden import SkyGardenVectorEnv
from agentalign.envs.skygarden import world as W
from agentalign.players.navigator import Navigator, NavigatorParams


@dataclass
class ScriptedEpisode:
    frames: np.ndarray  # (T + 1, H, W, 3) uint8: o_0 .. o_T, the last one where the episode ended
    actions: np.ndarray  # (T, 16) int64: a_t taken after o_t
    pos: np.ndarray  # (T + 1, 2) float64 privileged positions
    yaw: np.ndarray  # (T + 1,) float64 camera yaw
    jump_pad: str  # left / middle / right / none
    spawn: int
    character: str
    target: str


def run_navigators(targets: list[str], *, spawns: list[int] | None = None, characters: list[str] | None = None,
                   seed: int = 0, params: NavigatorParams = NavigatorParams(), width: int = 64, height: int = 64,
                   max_steps: int = W.DEFAULT_MAX_STEPS) -> list[ScriptedEpisode]:  # fmt: skip
    """One episode per target pad, all run together in one vector env; deterministic in `seed`."""
    n = len(targets)
    pads = np.array([W.pad_index(t) for t in targets])
    chars = characters or [W.DEFAULT_CHARACTER] * n
    env = SkyGardenVectorEnv(num_envs=n, width=width, height=height, character=chars, max_steps=max_steps)
    obs, info = env.reset(seed=seed)
    if spawns is not None:
        if len(spawns) != n:
            raise ValueError(f"spawns must give one spawn per target ({n}), got {len(spawns)}")
        for i, s in enumerate(spawns):  # same RNG draws as a random spawn, then moved
            env.reset(options={"reset_mask": np.arange(n) == i, "spawn": s})
        obs = env.render()
    state = env.state
    spawn0 = state.spawn.copy()  # an episode that ends early is auto-reset to a new spawn
    nav = Navigator(params, np.random.default_rng(seed), n)
    frames, actions, pos, yaw = [obs.copy()], [], [state.pos.copy()], [state.yaw.copy()]
    end = np.full(n, -1)
    labels = [""] * n
    for t in range(max_steps):
        act = nav.act(state.pos, state.yaw, pads)
        obs, _, term, trunc, info = env.step(act)
        frames.append(obs)
        actions.append(act)
        pos.append(state.pos.copy())
        yaw.append(state.yaw.copy())
        for i in np.flatnonzero((term | trunc) & (end < 0)):
            end[i] = t + 1
            labels[i] = info["jump_pad"][i]
        if (end >= 0).all():
            break
    F, A, P, Y = np.stack(frames, 1), np.stack(actions, 1), np.stack(pos, 1), np.stack(yaw, 1)
    return [
        ScriptedEpisode(F[i, : end[i] + 1], A[i, : end[i]], P[i, : end[i] + 1], Y[i, : end[i] + 1], labels[i],
                        int(spawn0[i]), chars[i], targets[i])  # fmt: skip
        for i in range(n)
    ]
