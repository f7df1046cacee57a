"""Fixtures for the training tests: tiny real stores, generated once per session."""

from __future__ import annotations

import os
from pathlib import Path

# Sleeping rather than spinning OpenMP threads: when other processes share the 2 cores, spinning
# threads at every parallel region make torch 10-30x slower (measured: 1.0 s vs 0.04 s for a tiny
# model's update). Takes effect only if torch is not loaded yet (pytest tests/train), and for the
# CLI subprocesses, which inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from agentalign.data import StoreWriter
from agentalign.data.testing import synthetic_episode
from agentalign.players.generate import generate, preset


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """The curated smoke set: 24 successful ninja episodes of ~50 steps at 64x64 (about a second)."""
    path = tmp_path_factory.mktemp("data") / "curated"
    generate(path, preset("smoke-finetune"))
    return path


@pytest.fixture(scope="session")
def store_32px(tmp_path_factory) -> Path:
    """A store of 32x32 frames: the wrong size for every model preset."""
    path = tmp_path_factory.mktemp("data") / "small"
    with StoreWriter(path, image_size=(32, 32)) as w:
        for seed in range(3):
            w.add(synthetic_episode(seed, length=20, size=(32, 32)))
    return path
