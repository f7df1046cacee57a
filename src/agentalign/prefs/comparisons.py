"""Comparison sets as in the paper: all pairs of a subset of the training trajectories, with
subset sizes giving a sweep from about 50 comparisons to as many as the split allows."""

from __future__ import annotations

import math

import numpy as np


def all_pairs(ids: np.ndarray) -> np.ndarray:
    """(M,) trajectory ids -> (M(M-1)/2, 2) every unordered pair once."""
    ids = np.asarray(ids)
    i, j = np.triu_indices(len(ids), k=1)
    return np.stack([ids[i], ids[j]], 1)


def subset_size_for(comparisons: int) -> int:
    """Smallest M with M(M-1)/2 >= comparisons."""
    return max(2, math.ceil((1 + math.sqrt(1 + 8 * comparisons)) / 2))


def sweep_subset_sizes(n_train: int, points: int = 6, smallest: int = 50) -> list[int]:
    """Subset sizes whose pair counts run log-evenly from ~`smallest` to all pairs of n_train."""
    if n_train < 2:
        raise ValueError(f"need at least 2 training trajectories, got {n_train}")
    lo = subset_size_for(smallest)
    if lo >= n_train:
        return [n_train]
    most = n_train * (n_train - 1) // 2
    targets = np.geomspace(lo * (lo - 1) / 2, most, points)
    return sorted({min(n_train, subset_size_for(int(round(c)))) for c in targets})
