"""Files that readers never see half-written, and metrics that a person can open.

Imported by every layer (models, prefs, data, eval, train, pipeline); it imports none of them.

  atomic_write_json / atomic_write_text / atomic_save_safetensors: write to a temporary file in
  the same folder, fsync, then os.replace, so a crash leaves the old file or the new one.
  MetricsLogger: one JSON row per logged step in metrics.jsonl and, when the optional
  `tensorboard` extra is installed (`pip install "agentalign[tensorboard]"`), the same scalars in
  a TensorBoard event file under tb/ (`tensorboard --logdir RUN`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_replace(path: Path, write) -> None:
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


def json_safe(x: Any) -> Any:
    """Valid JSON for any result: NaN and inf (an accuracy with no pairs to score, say) become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    data = json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    atomic_replace(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file so that readers see the old file or the new one, never half of one."""
    data = text.encode()
    atomic_replace(Path(path), lambda f: f.write(data))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    atomic_replace(Path(path), lambda f: f.write(data))


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


def truncate_metrics(directory: str | Path, last_step: int) -> None:
    """Drop rows logged after `last_step` (a run that died after its last checkpoint logged steps
    that its resumption will log again)."""
    path = Path(directory) / "metrics.jsonl"
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= last_step]
    if len(keep) != len(lines):
        data = "".join(ln + "\n" for ln in keep).encode()
        atomic_replace(path, lambda f: f.write(data))
