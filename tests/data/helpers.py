"""Helpers shared by the data-layer tests: small synthetic episodes, stores and comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agentalign.data import Episode, StoreWriter, WriterConfig
from agentalign.data.testing import synthetic_episode

# Varied lengths: shorter than, equal to and longer than the 32-step window, and a multiple of
# the 32-frame block plus one, so block boundaries and padding are all exercised.
LENGTHS = (100, 20, 32, 65, 7, 41)
SIZE = (32, 32)


def make_episodes(n: int = len(LENGTHS), size: tuple[int, int] = SIZE) -> list[Episode]:
    return [synthetic_episode(seed, length=LENGTHS[seed % len(LENGTHS)], size=size) for seed in range(n)]


def write_store(path: Path, episodes: list[Episode], **config) -> Path:
    # Small chunks so that even a tiny store spans several chunk files.
    cfg = WriterConfig(chunk_bytes=config.pop("chunk_bytes", 200_000), **config)
    with StoreWriter(path, image_size=episodes[0].frames.shape[1:3], config=cfg) as w:
        for ep in episodes:
            w.add(ep)
    return path


def assert_same_episode(got: Episode, want: Episode) -> None:
    assert got.frames.dtype == np.uint8 and np.array_equal(got.frames, want.frames)
    assert got.actions.dtype == np.uint8 and np.array_equal(got.actions, want.actions)
    assert set(got.extras) == set(want.extras)
    for k, v in want.extras.items():
        assert got.extras[k].dtype == v.dtype and got.extras[k].shape == v.shape
        assert np.array_equal(got.extras[k], v)
    expected_md = dict(want.metadata, length=len(want))
    assert got.metadata == expected_md
