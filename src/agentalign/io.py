"""Files that readers never see half-written, and metrics that a person can open.

Imported by every layer (models, prefs, data, eval, train, pipeline); it imports none of them.

  atomic_write_json / atomic_write_text / atomic_save_safetensors: write to a temporary file in
  the same folder, fsync, then os.replace, so a crash leaves the old file or the new one. Files
  get the process's umask, as open() gives them (0644 under umask 022); an OSError names the file.
  check_writable: refuse an output folder that cannot be written, before any work.
  MetricsLogger: one JSON row per logged step in metrics.jsonl and, when the optional
  `tensorboard` extra is installed (`pip install "agentalign[tensorboard]"`), the same scalars in
  a TensorBoard event file under tb/ (`tensorboard --logdir RUN`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _named(e: OSError, path: Path) -> OSError:
    """`e` if it names a file, else the same error naming `path` (a write or fsync on a full disk
    names none), so that the top-level handler can say which file."""
    if e.filename is not None:
        return e
    named = OSError(e.errno, e.strerror or str(e), str(path))  # the errno's subclass (PermissionError, ...)
    named.__cause__ = e
    return named


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside `path`, created as open() creates files: mode 0666 less the umask (and the
    folder's default ACL), not mkstemp's 0600, so colleagues can read what this process writes."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def atomic_replace(path: Path, write) -> None:
    """Write `path` through `write(f)` on a temporary file in its folder, fsync, then os.replace;
    an OSError names `path` when the system's names nothing."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            named = _named(e, path)
            if named is not e:
                raise named from e
        raise


def check_writable(path: str | Path) -> None:
    """Raise ValueError "<path> is not writable (...)" unless a file can be created in the folder
    `path`, or, for a folder still to be created, in its nearest existing parent. It tries by
    creating (and removing) a temporary file, since permission bits alone mislead (root ignores
    them; a read-only file system keeps them)."""
    p = Path(path)
    probe = p.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{p} is not writable ({probe} is not a folder)")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".agentalign-write-test."):
            pass
    except OSError as e:
        where = "" if probe == p.absolute() else f"{probe}: "
        raise ValueError(f"{p} is not writable ({where}{e.strerror or e}); choose a folder you can write to") from None


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


def atomic_save_safetensors(tensors: "dict[str, torch.Tensor]", path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save  # torch only where tensors are saved: the data layer needs none

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
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # a full disk: name the file (the write itself names none)
            named = _named(e, self.path)
            if named is e:
                raise
            raise named from e
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


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries durable: a rename is durable only once its folder is fsynced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
