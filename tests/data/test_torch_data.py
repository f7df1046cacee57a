"""The DataLoader wrapper: two workers give the sampler's batches in order, and resume exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agentalign.data import LoaderConfig, WindowConfig, WindowLoader, WindowSampler

CFG = WindowConfig(window=16, batch_size=4)


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in ("obs", "actions", "mask", "episode", "start"))


def test_two_workers_yield_the_sampler_batches_in_order(store: Path) -> None:
    loader = WindowLoader(store, CFG, seed=9, loader=LoaderConfig(num_workers=2), num_batches=5)
    batches = list(loader)
    assert len(batches) == 5 and loader.position == 5
    b = batches[0]
    assert b["obs"].dtype == torch.uint8 and b["obs"].shape == (4, 16, 32, 32, 3)
    assert b["actions"].dtype == torch.int64 and b["mask"].dtype == torch.bool
    sampler = WindowSampler(store, CFG, seed=9)
    for g, batch in enumerate(batches):
        assert _same(batch, sampler.batch(g))
    # Workers draw different windows, not copies of one stream.
    assert not _same(batches[0], batches[1])


def test_loader_resume_matches_an_uninterrupted_run(store: Path) -> None:
    straight = list(WindowLoader(store, CFG, seed=2, loader=LoaderConfig(num_workers=0), num_batches=6))

    first = WindowLoader(store, CFG, seed=2, loader=LoaderConfig(num_workers=2), num_batches=6)
    head = []
    for batch in first:
        head.append(batch)
        if len(head) == 3:
            break
    resumed = WindowLoader(store, CFG, loader=LoaderConfig(num_workers=2), num_batches=6)
    resumed.load_state_dict(first.state_dict())
    tail = list(resumed)
    assert len(tail) == 3
    for a, b in zip(head + tail, straight):
        assert _same(a, b)
