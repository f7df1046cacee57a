"""Mechanics shared by the training stages: seeding, atomic files, metrics logging.

Nothing here knows about a particular objective; each stage module owns its loss and loop.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy's legacy global and torch; return a NumPy Generator to pass around."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _atomic_replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    data = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    _atomic_replace(Path(path), lambda f: f.write(data))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    _atomic_replace(Path(path), lambda f: f.write(data))


class MetricsLogger:
    """Appends namespaced metrics (`train/loss`, `eval/success_left`, ...) to metrics.jsonl, and to
    TensorBoard when it is installed."""

    def __init__(self, directory: str | Path, tensorboard: bool = True):
        self.path = Path(directory) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(directory) / "tb"))
            except Exception:  # tensorboard not installed: jsonl only
                self._tb = None

    def log(self, step: int, **metrics: float) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(directory: str | Path) -> list[dict[str, float]]:
    path = Path(directory) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
