"""The in-memory episode: frames, actions, per-step privileged extras and metadata.

An episode of T steps holds the observations o_0..o_{T-1} and the actions a_0..a_{T-1}, where a_t
is the action taken after seeing o_t. Privileged extras (position, yaw, ...) are kept beside the
pixels for heatmaps and labellers only; the model never sees them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agentalign.envs.gamepad import ACTION_DIM, validate_actions

# Pads an episode can end on; "none" means it timed out (DESIGN.md, the environment).
JUMP_PADS = ("left", "middle", "right", "none")

# Metadata keys the rest of the library relies on; any other JSON-able key may be added.
STANDARD_METADATA = ("seed", "player_id", "character", "spawn", "intent", "jump_pad", "length")

_EXTRA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Episode:
    """One recorded episode.

    frames:   (T, H, W, 3) uint8, observation o_t
    actions:  (T, 16) integer, a_t taken after o_t (12 buttons 0/1, then 4 stick bins 0..10)
    extras:   name -> (T, ...) numeric array, privileged per-step state (e.g. pos (T, 2) float32)
    metadata: JSON-able dict (seed, player_id, character, spawn, intent, jump_pad, length, ...)
    """

    frames: np.ndarray
    actions: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def validate(self, image_size: tuple[int, int] | None = None, *, where: str = "episode") -> None:
        """Raise ValueError naming `where` and the field for any malformed part.

        `image_size` is (H, W); None accepts any size. Metadata must be JSON-able and, where the
        standard keys are present, consistent (length == T, jump_pad one of JUMP_PADS).
        """
        f = self.frames
        if not isinstance(f, np.ndarray):
            raise ValueError(f"{where}: frames must be a numpy array, got {type(f).__name__}")
        if f.dtype != np.uint8:
            raise ValueError(f"{where}: frames must have dtype uint8, got {f.dtype}")
        if f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"{where}: frames must have shape (T, H, W, 3), got {f.shape}")
        if f.shape[0] == 0:
            raise ValueError(f"{where}: frames is empty (T = 0); an episode needs at least one step")
        if image_size is not None and tuple(f.shape[1:3]) != tuple(image_size):
            raise ValueError(
                f"{where}: frames are {f.shape[1]}x{f.shape[2]} (H x W) but the store holds "
                f"{image_size[0]}x{image_size[1]} images; resize them first"
            )
        t = f.shape[0]
        a = np.asarray(self.actions)
        if a.ndim != 2 or a.shape[1] != ACTION_DIM:
            raise ValueError(f"{where}: actions must have shape (T, {ACTION_DIM}), got {a.shape}")
        if a.shape[0] != t:
            raise ValueError(f"{where}: actions has {a.shape[0]} steps but frames has {t}")
        validate_actions(a, batch=t, name=f"{where}: actions")
        for name, arr in self.extras.items():
            if not isinstance(name, str) or not _EXTRA_NAME.match(name):
                raise ValueError(f"{where}: extras key {name!r} must be an identifier")
            if not isinstance(arr, np.ndarray):
                raise ValueError(f"{where}: extras[{name!r}] must be a numpy array, got {type(arr).__name__}")
            if arr.dtype.kind not in "biuf" or arr.dtype.hasobject:
                raise ValueError(f"{where}: extras[{name!r}] must be numeric or bool, got dtype {arr.dtype}")
            if arr.ndim == 0 or arr.shape[0] != t:
                raise ValueError(f"{where}: extras[{name!r}] must have T = {t} rows, got shape {arr.shape}")
        md = self.metadata
        if not isinstance(md, dict):
            raise ValueError(f"{where}: metadata must be a dict, got {type(md).__name__}")
        try:
            json.dumps(md, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: metadata is not JSON-able ({e}); use plain str/int/float/bool/list/dict") from None
        if "length" in md and md["length"] != t:
            raise ValueError(f"{where}: metadata['length'] = {md['length']!r} but the episode has {t} steps")
        if "jump_pad" in md and md["jump_pad"] not in JUMP_PADS:
            raise ValueError(f"{where}: metadata['jump_pad'] = {md['jump_pad']!r}, expected one of {JUMP_PADS}")
