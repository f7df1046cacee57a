"""A tiny run folder (RUN/rollouts/store of synthetic 64 px episodes and the RUN/pipeline.json that
names the training pool, as the pipeline leaves them before people label), labeller tokens, and
`agentalign label serve` in a subprocess."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentalign.data import StoreWriter, WriterConfig
from agentalign.data.testing import synthetic_episode
from agentalign.labeling.db import LabelDB

EPISODES, TRAIN = 16, 10  # episodes 0..9 the training pool, 10..15 held out


def _make_run(root: Path, episodes: int = EPISODES, train: int = TRAIN, length: int = 6) -> Path:
    run = root / "run"
    with StoreWriter(run / "rollouts" / "store", image_size=(64, 64), config=WriterConfig()) as w:
        for seed in range(episodes):
            w.add(synthetic_episode(seed, length=length + seed % 5, size=(64, 64)))
    (run / "pipeline.json").write_text(json.dumps({"config": {"prefs": {"train": train}, "target": "left"}}))
    return run


@pytest.fixture
def make_run(tmp_path):
    """make_run(episodes=16, train=10, length=6) -> a run folder under tmp_path."""
    return lambda **kw: _make_run(tmp_path, **kw)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return _make_run(tmp_path)


@pytest.fixture
def add_labeller():
    """add_labeller(run, name) -> the new labeller's token."""

    def add(run: Path, name: str) -> str:
        with LabelDB(run) as db:
            return db.add_labeller(name)

    return add


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {proc.stdout.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/progress", timeout=2).status_code == 401:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no server on port {port} after {timeout} s")


@pytest.fixture
def label_server():
    """label_server(run, *args) -> (process, base URL): `agentalign label serve RUN --port P` on a
    free 127.0.0.1 port, returned once it answers; every one still running is killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(run: Path, *args: str) -> tuple[subprocess.Popen, str]:
        port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-c", "from agentalign.cli import main; main()", "label", "serve",
                                 str(run), "--port", str(port), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        procs.append(proc)
        _wait_until_up(port, proc)
        return proc, f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
