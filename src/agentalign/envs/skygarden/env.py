"""SkyGarden as Gymnasium environments: `SkyGardenEnv` (one island) and `SkyGardenVectorEnv`
(N islands stepped and rendered in one compiled call).

Task: from one of 4 spawns at the back of the island, reach one of 3 jump pads at the front.
The episode terminates when a pad is reached (`info["jump_pad"]` = left/middle/right) and is
truncated at `max_steps` (100 at 10 Hz, `jump_pad` = none). With `terminate_on_pad=False` the
episode runs on to `max_steps` and `jump_pad` is the first pad reached — how the pre-training
recordings run past the pad.

Observation: RGB uint8 (H, W, 3) from a third-person camera behind the character. Action:
`MultiDiscrete([2]*12 + [11]*4)` (see `agentalign.envs.gamepad`). Reward: 0, or 1 on reaching
`target_pad` when one is given — the pipeline learns its reward from preferences instead.
Privileged state (`pos`, `yaw`, `character`, `spawn`, `t`) is in `info` for labellers and
heatmaps and never in the observation.

Same seed and actions give the same frames bit for bit. Sub-env i of a vector env reset with
seed s behaves exactly like a single env reset with seed s + i (Gymnasium's convention).
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from agentalign.envs import gamepad
from agentalign.envs.skygarden import core
from agentalign.envs.skygarden import world as W


def _check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value < 16:
        raise ValueError(f"{name} must be at least 16 pixels, got {value}")
    return int(value)


def _check_spawn(spawn: Any) -> int:
    if isinstance(spawn, bool) or not isinstance(spawn, (int, np.integer)) or not 0 <= spawn < len(W.SPAWNS):
        raise ValueError(f"spawn must be an integer in 0..{len(W.SPAWNS) - 1}, got {spawn!r}")
    return int(spawn)


class IslandBatch:
    """N SkyGarden worlds without the Gymnasium protocol: the hot loop of rollouts and data generation.

    Both Gymnasium envs are thin wrappers over it. Callers drive it directly when they need
    what the protocol cannot say: stepping only some worlds (`active`), rendering only some
    (`rows`), seeding each world on its own (`seed_rows`), per-world characters at reset.
    """

    def __init__(self, n: int, width: int, height: int, characters: Sequence[str], max_steps: int,
                 terminate_on_pad: bool, target_pad: str | None):  # fmt: skip
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps <= 0:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        if len(characters) != n:
            raise ValueError(f"characters must name one character per env ({n}), got {len(characters)}")
        self.n = n
        self.width, self.height = _check_size("width", width), _check_size("height", height)
        self.char_idx = np.array([W.character_index(c) for c in characters], dtype=np.int64)
        self.max_steps = int(max_steps)
        self.terminate_on_pad = bool(terminate_on_pad)
        self.target_pad = None if target_pad is None else W.pad_index(target_pad)
        self.state = core.WorldState.zeros(n)
        self.tables = core.render_tables(self.height, self.width)
        self.grid = W.GRID.astype(np.int8)
        self.frames = np.zeros((n, self.height, self.width, 3), dtype=np.uint8)  # (N, H, W, 3)
        self._zbuf = np.zeros((n, self.width))
        self._walltop = np.zeros((n, self.width), dtype=np.int64)
        self._wallbot = np.zeros((n, self.width), dtype=np.int64)
        self._rowdist = np.zeros((n, self.height))
        self._rowfog = np.zeros((n, self.height), dtype=np.int64)
        self._all_rows = np.arange(n, dtype=np.int64)
        self.rngs: list[np.random.Generator] | None = None  # set by seed(), on the first reset at the latest

    def seed_rows(self, rows: Sequence[int], seeds: Sequence[int]) -> None:
        """Give worlds `rows` their own RNG streams (e.g. one seed per recorded episode)."""
        if self.rngs is None:
            self.seed(None)
        for i, sd in zip(rows, seeds, strict=True):
            self.rngs[i] = np.random.default_rng(int(sd))

    def seed(self, seed: int | None) -> None:
        if seed is None:
            self.rngs = [np.random.default_rng(ss) for ss in np.random.SeedSequence().spawn(self.n)]
        else:
            self.rngs = [np.random.default_rng(int(seed) + i) for i in range(self.n)]

    def reset_rows(self, rows: np.ndarray, spawn: int | Sequence[int] | None = None,
                   character: str | Sequence[str] | None = None) -> None:  # fmt: skip
        """Start new episodes in worlds `rows`; spawn and character: one for all rows or one per row."""
        if self.rngs is None:
            self.seed(None)
        spawns = np.empty(len(rows), dtype=np.int64)
        yaws = np.empty(len(rows))
        for j, i in enumerate(rows):
            rng = self.rngs[i]
            spawns[j] = rng.integers(len(W.SPAWNS))  # always drawn, so `spawn=` does not shift the RNG stream
            yaws[j] = W.SPAWN_YAW + rng.uniform(-W.SPAWN_YAW_JITTER, W.SPAWN_YAW_JITTER)
        if spawn is not None:
            spawns[:] = [_check_spawn(s) for s in np.broadcast_to(np.asarray(spawn, dtype=object), len(rows))]
        if character is not None:
            names = [character] * len(rows) if isinstance(character, str) else list(character)
            if len(names) != len(rows):
                raise ValueError(f"character must be one name or one per reset env ({len(rows)}), got {len(names)}")
            self.char_idx[rows] = [W.character_index(c) for c in names]
        self.state.reset_rows(rows, spawns, yaws, self.char_idx[rows])

    def step(self, actions: np.ndarray, active: np.ndarray | None = None):
        """Step the `active` worlds (all by default); returns reward, terminated, truncated and
        newly_reached_pad, each (N,); inactive worlds are untouched and report nothing."""
        s = self.state
        if active is None:
            active = np.ones(self.n, dtype=bool)
        had_pad = s.pad.copy()
        core.step_batch(actions, active, s.pos, s.yaw, s.pitch, s.facing, s.moving, s.dash_left, s.dash_cooldown,
                        s.buttons, s.t, s.pad, s.character, self.tables.char_params, self.grid, W.PAD_BOXES,
                        gamepad.STICK_CENTRES)  # fmt: skip
        reached = (had_pad < 0) & (s.pad >= 0)
        reward = np.zeros(self.n, dtype=np.float64)
        if self.target_pad is not None:
            reward[reached & (s.pad == self.target_pad)] = 1.0
        terminated = reached if self.terminate_on_pad else np.zeros(self.n, dtype=bool)
        truncated = (s.t >= self.max_steps) & ~terminated & active
        return reward, terminated, truncated, reached

    def render(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Render worlds `rows` (all by default) into self.frames (N, H, W, 3) and return it."""
        rows = self._all_rows if rows is None else np.asarray(rows, dtype=np.int64)
        s, tb = self.state, self.tables
        core.render_batch(self.frames, rows, s.pos, s.yaw, s.pitch, s.facing, s.moving, s.dash_left, s.buttons, s.t,
                          s.character, self.grid, tb.floorcode, W.PAD_CENTRES, tb.cam_x, tb.focal, tb.sky, tb.floor,
                          tb.walls, tb.beam, tb.char_params, tb.char_colours, self._zbuf, self._walltop, self._wallbot,
                          self._rowdist, self._rowfog)  # fmt: skip
        return self.frames

    def info_row(self, i: int) -> dict[str, Any]:
        s = self.state
        return {
            "pos": s.pos[i].copy(),
            "yaw": float(s.yaw[i]),
            "t": int(s.t[i]),
            "character": W.CHARACTER_NAMES[s.character[i]],
            "spawn": int(s.spawn[i]),
        }

    def pad_label(self, i: int) -> str:
        return W.JUMP_PAD_LABELS[self.state.pad[i]] if self.state.pad[i] >= 0 else "none"


class SkyGardenEnv(gym.Env):
    """One SkyGarden island. See the module docstring for the task, spaces and info."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, width: int = 64, height: int = 64, character: str = W.DEFAULT_CHARACTER,
                 max_steps: int = W.DEFAULT_MAX_STEPS, terminate_on_pad: bool = True,
                 target_pad: str | None = None, render_mode: str | None = "rgb_array"):  # fmt: skip
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode = render_mode
        self._islands = IslandBatch(1, width, height, [character], max_steps, terminate_on_pad, target_pad)
        self.observation_space = gym.spaces.Box(0, 255, (self._islands.height, self._islands.width, 3), np.uint8)
        self.action_space = gym.spaces.MultiDiscrete(gamepad.ACTION_NVEC)
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        spawn = options.pop("spawn", None)
        character = options.pop("character", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: spawn, character")
        if seed is not None:
            self._islands.seed(seed)
        self._islands.reset_rows(np.array([0]), spawn, character)
        self._needs_reset = False
        return self._islands.render()[0].copy(), self._islands.info_row(0)

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("call reset() before step(), and again after an episode ends")
        actions = gamepad.validate_actions(action, name="action")[None]  # (1, 16)
        reward, terminated, truncated, _ = self._islands.step(actions)
        obs = self._islands.render()[0].copy()
        info = self._islands.info_row(0)
        term, trunc = bool(terminated[0]), bool(truncated[0])
        if term or trunc:
            info["jump_pad"] = self._islands.pad_label(0)
            self._needs_reset = True
        return obs, float(reward[0]), term, trunc, info

    def render(self):
        return self._islands.frames[0].copy() if self.render_mode == "rgb_array" else None

    @property
    def state(self) -> core.WorldState:
        """The privileged world state (for navigators and tests; never for the agent)."""
        return self._islands.state


class SkyGardenVectorEnv(VectorEnv):
    """N SkyGarden islands stepped and rendered in one compiled call (all cores).

    Autoreset (`autoreset_mode`):
      * NEXT_STEP (the default, Gymnasium's): the step that ends an episode returns its last
        frame with terminated/truncated set; on the *next* step that sub-env is reset, its
        action is ignored, and it returns the first frame of a new episode with reward 0 and
        `info["t"] == 0`. So a rollout always sees the last frame and can tell it from the next
        episode's first frame.
      * DISABLED: nothing resets by itself; call `reset(options={"reset_mask": mask})`.
    `info["jump_pad"]` is a string array, with the mask `info["_jump_pad"]` true where an episode
    ended on this step.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 16, width: int = 64, height: int = 64,
                 character: str | Sequence[str] = W.DEFAULT_CHARACTER, max_steps: int = W.DEFAULT_MAX_STEPS,
                 terminate_on_pad: bool = True, target_pad: str | None = None,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 render_mode: str | None = "rgb_array"):  # fmt: skip
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs <= 0:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        mode = AutoresetMode(autoreset_mode)
        if mode == AutoresetMode.SAME_STEP:
            raise ValueError("autoreset_mode SAME_STEP is not supported; use NEXT_STEP or DISABLED")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.autoreset_mode = mode
        self.render_mode = render_mode
        self.num_envs = int(num_envs)
        characters = [character] * self.num_envs if isinstance(character, str) else list(character)
        self._islands = IslandBatch(self.num_envs, width, height, characters, max_steps, terminate_on_pad, target_pad)
        self.single_observation_space = gym.spaces.Box(0, 255, (self._islands.height, self._islands.width, 3), np.uint8)
        self.single_action_space = gym.spaces.MultiDiscrete(gamepad.ACTION_NVEC)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._done = np.zeros(self.num_envs, dtype=bool)  # ended on the previous step
        self._started = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        spawn = options.pop("spawn", None)
        character = options.pop("character", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: reset_mask, spawn, character")
        if mask is None:
            rows = np.arange(self.num_envs)
        else:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"reset_mask must be a bool array of shape ({self.num_envs},), got {mask.dtype} {mask.shape}")
            rows = np.flatnonzero(mask)
        if seed is not None:
            self._islands.seed(seed)
        self._started = True
        self._islands.reset_rows(rows, spawn, character)
        self._done[rows] = False
        # Only the reset worlds change; the others keep their current frame in the buffer.
        return self._islands.render(rows).copy(), self._info(np.zeros(self.num_envs, dtype=bool))

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = gamepad.validate_actions(actions, self.num_envs, name="actions")
        if self.autoreset_mode == AutoresetMode.DISABLED and self._done.any():
            raise RuntimeError(f"sub-envs {np.flatnonzero(self._done).tolist()} ended; reset them with reset_mask")
        resetting = self._done.copy()
        if resetting.any():
            self._islands.reset_rows(np.flatnonzero(resetting))
        # Worlds just reset keep their first frame: their action is ignored, as NEXT_STEP says.
        reward, terminated, truncated, _ = self._islands.step(actions, active=~resetting)
        self._done = terminated | truncated
        return self._islands.render().copy(), reward, terminated, truncated, self._info(self._done)

    def _info(self, ended: np.ndarray) -> dict[str, Any]:
        s = self._islands.state
        labels = np.array([self._islands.pad_label(i) if ended[i] else "" for i in range(self.num_envs)], dtype=object)
        return {
            "pos": s.pos.copy(),
            "yaw": s.yaw.copy(),
            "t": s.t.copy(),
            "character": np.array([W.CHARACTER_NAMES[c] for c in s.character], dtype=object),
            "spawn": s.spawn.copy(),
            "jump_pad": labels,
            "_jump_pad": ended.copy(),
        }

    def render(self):
        return self._islands.frames.copy() if self.render_mode == "rgb_array" else None

    @property
    def state(self) -> core.WorldState:
        """The privileged world state of all N worlds (for navigators and tests)."""
        return self._islands.state
