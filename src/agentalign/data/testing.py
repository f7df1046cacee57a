"""Small synthetic episodes for tests and benchmarks of the data layer.

The frames imitate what a raycaster renders (flat-shaded walls over a sky and a floor gradient,
a flat-coloured character sprite, the camera turning smoothly), so compression figures measured
on them are close to those of real SkyGarden renders. Nothing here is used in training.
"""

from __future__ import annotations

import numpy as np

from agentalign.data.episode import Episode
from agentalign.envs.gamepad import ACTION_NVEC, N_BUTTONS, STICK_REST_BIN

_PALETTE = np.array(
    [[200, 80, 60], [70, 160, 90], [80, 90, 200], [210, 190, 80], [150, 90, 170], [90, 180, 190]],
    dtype=np.float32,
)
CHARACTERS = ("ninja", "knight", "archer", "mage")
PADS = ("left", "middle", "right", "none")


def synthetic_frames(rng: np.random.Generator, length: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """(length, H, W, 3) uint8 frames of a camera turning in a walled courtyard."""
    h, w = size
    # The camera turns smoothly: a random walk on the turn rate, not on the angle.
    turn = np.cumsum(rng.normal(0.0, 0.02, size=length)) + rng.normal(0.0, 0.05)
    yaw_t = rng.uniform(0, 2 * np.pi) + np.cumsum(turn)  # (T,)
    fov = np.pi / 3
    angle_tw = yaw_t[:, None] + fov * (np.arange(w)[None, :] / w - 0.5)  # (T, W)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    dist_tw = 2.5 + 1.2 * np.sin(3 * angle_tw + phase[0]) + 0.6 * np.sin(7 * angle_tw + phase[1])
    wall_id_tw = np.floor((angle_tw + phase[2]) * 6 / np.pi).astype(np.int64) % len(_PALETTE)
    shade_tw = 1.0 / (1.0 + 0.25 * dist_tw)
    wall_rgb_tw3 = _PALETTE[wall_id_tw] * shade_tw[..., None] * 1.6
    half_tw = np.minimum(h / 2, 0.6 * h / dist_tw)  # half wall height in rows

    rows = np.arange(h, dtype=np.float32)[:, None]  # (H, 1)
    horizon = h / 2
    t_sky = rows / horizon
    sky_h3 = (1 - t_sky) * np.array([70, 120, 220]) + t_sky * np.array([180, 210, 250])
    t_floor = (rows - horizon) / horizon
    floor_h3 = (1 - t_floor) * np.array([60, 110, 50]) + t_floor * np.array([110, 170, 80])
    background_h3 = np.where(rows < horizon, sky_h3, floor_h3)  # (H, 3)

    frames = np.empty((length, h, w, 3), dtype=np.float32)
    frames[:] = background_h3[None, :, None, :]
    is_wall_thw = np.abs(rows[None, :, :] + 0.5 - horizon) < half_tw[:, None, :]  # (T, H, W)
    frames[is_wall_thw] = np.broadcast_to(wall_rgb_tw3[:, None], (length, h, w, 3))[is_wall_thw]
    # The character, a flat sprite at the bottom centre, as in a third-person view.
    colour = _PALETTE[rng.integers(len(_PALETTE))] * 0.8
    frames[:, int(h * 0.7) : int(h * 0.95), int(w * 0.42) : int(w * 0.58)] = colour
    return np.clip(frames, 0, 255).astype(np.uint8)


def synthetic_actions(rng: np.random.Generator, length: int, noop_fraction: float = 0.2) -> np.ndarray:
    """(length, 16) uint8 actions: held sticks, occasional buttons, a share of exact no-ops."""
    actions = np.zeros((length, len(ACTION_NVEC)), dtype=np.uint8)
    actions[:, :N_BUTTONS] = rng.random((length, N_BUTTONS)) < 0.05
    actions[:, N_BUTTONS:] = rng.integers(0, 11, size=(length, 4))
    noop = rng.random(length) < noop_fraction
    actions[noop, :N_BUTTONS] = 0
    actions[noop, N_BUTTONS:] = STICK_REST_BIN
    return actions


def synthetic_episode(
    seed: int, length: int = 100, size: tuple[int, int] = (64, 64), noop_fraction: float = 0.2
) -> Episode:
    """A whole episode with privileged extras and metadata, fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    pos_t2 = np.cumsum(rng.normal(0, 0.1, size=(length, 2)), axis=0).astype(np.float32)
    yaw_t = np.cumsum(rng.normal(0, 0.05, size=length)).astype(np.float32)
    metadata = {
        "seed": seed,
        "player_id": int(rng.integers(1000)),
        "character": CHARACTERS[int(rng.integers(len(CHARACTERS)))],
        "spawn": int(rng.integers(4)),
        "intent": PADS[int(rng.integers(3))],
        "jump_pad": PADS[int(rng.integers(4))],
    }
    return Episode(
        frames=synthetic_frames(rng, length, size),
        actions=synthetic_actions(rng, length, noop_fraction),
        extras={"pos": pos_t2, "yaw": yaw_t},
        metadata=metadata,
    )
