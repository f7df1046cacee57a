"""Labellers: who says which trajectory is better. The synthetic labeller of section 3.4 and the
interface that a person-facing labeller (the web app) implements too.

The synthetic labeller, parameterised by the target pad: target pad > another pad > no pad;
within a category the shorter trajectory wins; equal category and length is a tie. It reads only
trajectory metadata (pad reached, length), never the model or the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from agentalign.envs.skygarden import world as W


@dataclass(frozen=True)
class TrajectoryInfo:
    """What a labeller may know about a trajectory besides its pixels."""

    index: int
    jump_pad: str  # left / middle / right / none
    length: int

    @classmethod
    def from_metadata(cls, index: int, md: dict) -> "TrajectoryInfo":
        return cls(index, str(md["jump_pad"]), int(md["length"]))


class Labeller(Protocol):
    name: str

    def compare(self, a: TrajectoryInfo, b: TrajectoryInfo) -> str:
        """ "A", "B" or "tie"."""
        ...


class SyntheticLabeller:
    def __init__(self, target: str):
        W.pad_index(target)  # a clear error for an unknown pad
        self.target = target
        self.name = f"synthetic:{target}"

    def score(self, jump_pad: str, length: int) -> tuple[int, int]:
        """Lexicographic key, larger is better: (category, -length)."""
        category = 2 if jump_pad == self.target else (1 if jump_pad in W.PAD_NAMES else 0)
        return category, -int(length)

    def reward(self, jump_pad: str, length: int) -> float:
        """The same order as a return, for episodes under 500 steps: 1 for the target pad, 0.5 for
        another, 0 for none, less 0.001 a step; about the scale of the reward model's normalised
        return, so thresholds such as `clone_min_score` keep their meaning."""
        category, neg_length = self.score(jump_pad, length)
        return category / 2 + neg_length / 1000

    def scores(self, infos: Sequence[TrajectoryInfo]) -> np.ndarray:
        """(N,) float keys that order trajectories exactly as `compare` does (ties equal)."""
        return np.array([c * 1e6 + s for c, s in (self.score(t.jump_pad, t.length) for t in infos)], dtype=np.float64)

    def compare(self, a: TrajectoryInfo, b: TrajectoryInfo) -> str:
        sa, sb = self.score(a.jump_pad, a.length), self.score(b.jump_pad, b.length)
        return "A" if sa > sb else ("B" if sb > sa else "tie")
