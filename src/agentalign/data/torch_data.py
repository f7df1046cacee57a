"""PyTorch glue for the window sampler: an IterableDataset and a resumable loader.

The only module of agentalign.data that imports torch. Each item the dataset yields is already
a whole batch (the sampler batches), so the DataLoader runs with batch_size=None.

Workers: with n workers, worker w computes batch numbers g = start + w, start + w + n, ... and
each batch draws from its own stream seeded by (seed, g). DataLoader returns worker outputs
round-robin in order, so the loader yields batches start, start + 1, ... exactly as a single
process would: the stream depends on the seed only, not on num_workers, and resuming at
position p reproduces what an uninterrupted run would have yielded from p on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from agentalign.data.sampler import WindowConfig, WindowSampler


def batch_to_torch(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """numpy batch -> tensors without copying: obs uint8, actions int64, mask bool, ..."""
    return {k: torch.from_numpy(v) for k, v in batch.items()}


class WindowDataset(IterableDataset):
    """Batches start_batch, start_batch + 1, ... (num_batches of them, or forever if None)."""

    def __init__(
        self,
        store_path: str | Path,
        config: WindowConfig | None = None,
        seed: int = 0,
        start_batch: int = 0,
        num_batches: int | None = None,
    ):
        super().__init__()
        self.store_path = str(store_path)  # plain data only: workers open their own reader
        self.config = config or WindowConfig()
        self.seed = seed
        self.start_batch = start_batch
        self.num_batches = num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        sampler = WindowSampler(self.store_path, self.config, self.seed)
        stop = None if self.num_batches is None else self.start_batch + self.num_batches
        g = self.start_batch + worker
        while stop is None or g < stop:
            yield batch_to_torch(sampler.batch(g))
            g += n_workers


@dataclass
class LoaderConfig:
    num_workers: int = 2  # one per core on the 2-core target; 0 loads in the training process
    prefetch_factor: int = 2  # batches queued per worker: enough to hide decode jitter
    pin_memory: bool = False  # only worth it when training on a GPU


class WindowLoader:
    """A resumable DataLoader over windows: iterate, save `state_dict()`, restore, continue.

    `position` counts the batches this loader has yielded (not those prefetched), so a state
    saved after a training step resumes with exactly the next batch.
    """

    def __init__(
        self,
        store_path: str | Path,
        config: WindowConfig | None = None,
        seed: int = 0,
        loader: LoaderConfig | None = None,
        num_batches: int | None = None,
    ):
        self.store_path = str(store_path)
        self.config = config or WindowConfig()
        self.seed = seed
        self.loader = loader or LoaderConfig()
        self.num_batches = num_batches  # total per pass; None streams forever
        self.position = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        remaining = None if self.num_batches is None else max(0, self.num_batches - self.position)
        dataset = WindowDataset(self.store_path, self.config, self.seed, self.position, remaining)
        workers = self.loader.num_workers
        dl = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=self.loader.prefetch_factor if workers > 0 else None,
            pin_memory=self.loader.pin_memory,
        )
        for batch in dl:
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "position": self.position, "store": self.store_path}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.position = int(state["position"])
