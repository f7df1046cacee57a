"""The gamepad action format: 12 buttons, then left-stick x, y and right-stick x, y in 11 bins.

This is the layout of Microsoft's public Bleeding Edge action format, so recordings in that
format line up with our actions without conversion:

    action[0:12]   buttons, each 0 (up) or 1 (down)
    action[12:16]  left-x, left-y, right-x, right-y, each a bin in 0..10 (5 = stick at rest)

Stick values are continuous in [-1, 1]; +x is right, +y is up (forward on the left stick, camera
up on the right stick). The bins are the buckets between STICK_EDGES, so the outer bins catch
the full deflection and the centre bin (5) catches the dead zone |v| < 0.05.

Kept free of torch and of the environment so the data layer can reuse it.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

N_BUTTONS = 12
N_STICK_AXES = 4
N_STICK_BINS = 11
ACTION_DIM = N_BUTTONS + N_STICK_AXES  # 16
STICK_REST_BIN = 5

# The Bleeding Edge bucket boundaries: 12 edges, 11 bins.
STICK_EDGES = np.array(
    [-1.05, -0.95, -0.75, -0.5, -0.25, -0.05, 0.05, 0.25, 0.5, 0.75, 0.95, 1.05], dtype=np.float64
)
# The value a bin decodes to: the middle of its bucket, except the outer bins which decode to full
# deflection (-1, +1) and the centre bin which decodes to exactly 0 (at rest).
STICK_CENTRES = np.array(
    [-1.0, -0.85, -0.625, -0.375, -0.15, 0.0, 0.15, 0.375, 0.625, 0.85, 1.0], dtype=np.float64
)

# Action space sizes per component, as gymnasium.spaces.MultiDiscrete wants them.
ACTION_NVEC = np.array([2] * N_BUTTONS + [N_STICK_BINS] * N_STICK_AXES, dtype=np.int64)

# Our button meanings. Only DASH changes movement; the others have visible, harmless effects.
BUTTON_NAMES = (
    "dash",
    "jump",
    "attack",
    "heavy_attack",
    "ability_1",
    "ability_2",
    "ability_3",
    "block",
    "interact",
    "emote",
    "ping",
    "menu",
)
DASH, JUMP, ATTACK = 0, 1, 2
STICK_NAMES = ("left_x", "left_y", "right_x", "right_y")
COMPONENT_NAMES = BUTTON_NAMES + STICK_NAMES


def stick_to_bins(values: np.ndarray) -> np.ndarray:
    """Continuous stick values in [-1, 1] (any shape) -> bins 0..10 (int64, same shape).

    Values outside [-1.05, 1.05] are a caller bug, not a deflection to clip: they raise.
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("stick values must be finite")
    if np.any(np.abs(v) > STICK_EDGES[-1]):
        bad = v[np.abs(v) > STICK_EDGES[-1]].ravel()[0]
        raise ValueError(f"stick value {bad!r} is outside [-1.05, 1.05]")
    # searchsorted over the 10 inner edges gives the bin index directly.
    return np.searchsorted(STICK_EDGES[1:-1], v, side="right").astype(np.int64)


_INNER_EDGES = tuple(float(e) for e in STICK_EDGES[1:-1])


def stick_bin(value: float) -> int:
    """One stick value in [-1, 1] -> its bin: the scalar fast path of `stick_to_bins` for
    per-player loops (no array round trip). Out-of-range values raise as there."""
    if not -1.05 <= value <= 1.05:
        raise ValueError(f"stick value {value!r} is outside [-1.05, 1.05]")
    return bisect_right(_INNER_EDGES, value)


def bins_to_stick(bins: np.ndarray) -> np.ndarray:
    """Stick bins 0..10 (any shape) -> continuous values in [-1, 1] (float64)."""
    b = np.asarray(bins)
    if b.size and (b.min() < 0 or b.max() >= N_STICK_BINS):
        raise ValueError(f"stick bins must lie in 0..{N_STICK_BINS - 1}, got {int(b.min())}..{int(b.max())}")
    return STICK_CENTRES[b]


def noop_action(batch: int | None = None) -> np.ndarray:
    """No buttons, both sticks at rest: (16,) or (batch, 16) int64."""
    a = np.zeros(ACTION_DIM, dtype=np.int64)
    a[N_BUTTONS:] = STICK_REST_BIN
    return a if batch is None else np.tile(a, (batch, 1))


def is_noop(actions: np.ndarray) -> np.ndarray:
    """(..., 16) -> (...) bool: no button down and both sticks at rest (appendix C.1's no-ops)."""
    a = np.asarray(actions)
    return ~a[..., :N_BUTTONS].any(axis=-1) & (a[..., N_BUTTONS:] == STICK_REST_BIN).all(axis=-1)


def validate_actions(actions: np.ndarray, batch: int | None = None, *, name: str = "action") -> np.ndarray:
    """Check an action (16,) or batch (B, 16) against the space and return it as int64.

    Raises ValueError naming the field for a wrong shape, a non-integer dtype or an
    out-of-range component. Never clips silently.
    """
    a = np.asarray(actions)
    expected = (ACTION_DIM,) if batch is None else (batch, ACTION_DIM)
    if a.shape != expected:
        raise ValueError(f"{name} must have shape {expected}, got {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{name} must have an integer dtype, got {a.dtype}")
    a = a.astype(np.int64, copy=False)
    bad = (a < 0) | (a >= ACTION_NVEC)
    if bad.any():
        idx = np.argwhere(bad)[0]
        comp = int(idx[-1])
        raise ValueError(
            f"{name}[{', '.join(map(str, idx))}] = {int(a[tuple(idx)])} is out of range for "
            f"component '{COMPONENT_NAMES[comp]}' (0..{int(ACTION_NVEC[comp]) - 1})"
        )
    return a
