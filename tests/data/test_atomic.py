"""Crash safety: a writer killed with SIGKILL mid-write leaves a readable store of whole episodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agentalign
from agentalign.data import StoreReader, StoreWriter, verify
from agentalign.data.testing import synthetic_episode

from .helpers import assert_same_episode

# The child writes episode i = synthetic_episode(i) forever, committing a chunk every two
# episodes, so a kill at a random moment very likely lands inside a commit.
CHILD = """
import sys
from agentalign.data import StoreWriter, WriterConfig
from agentalign.data.testing import synthetic_episode
cfg = WriterConfig(chunk_bytes=2 * 24 * 16 * 16 * 3)
with StoreWriter(sys.argv[1], image_size=(16, 16), config=cfg) as w:
    i = w.num_durable
    while True:
        w.add(synthetic_episode(i, length=24, size=(16, 16)))
        i += 1
"""


def _committed(store: Path) -> int:
    try:
        return json.loads((store / "manifest.json").read_text())["n_episodes"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _run_and_kill(store: Path, at_least: int, delay: float) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(agentalign.__file__).parents[1]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(store)], env=env)
    try:
        deadline = time.monotonic() + 30
        while _committed(store) < at_least:
            assert child.poll() is None, "the writer died on its own"
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.002)
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def _check_whole_episodes(store: Path) -> int:
    report = verify(store, deep=True)
    assert report.ok, report.summary()
    reader = StoreReader(store)
    for i, ep in enumerate(reader):
        assert_same_episode(ep, synthetic_episode(i, length=24, size=(16, 16)))
    return len(reader)


@pytest.mark.parametrize("delay", [0.0, 0.003, 0.011])
def test_sigkill_mid_write_leaves_a_readable_store(tmp_path: Path, delay: float) -> None:
    store = tmp_path / "store"
    _run_and_kill(store, at_least=4, delay=delay)
    n = _check_whole_episodes(store)
    assert n >= 4 and n % 2 == 0  # whole chunks of two episodes, never a part of one

    # Resume: a second run continues from the durable count and is killed again.
    _run_and_kill(store, at_least=n + 2, delay=delay)
    assert _check_whole_episodes(store) >= n + 2

    # A normal writer afterwards cleans what the kills left and appends as usual.
    with StoreWriter(store) as w:
        m = w.num_durable
        w.add(synthetic_episode(m, length=24, size=(16, 16)))
    report = verify(store)
    assert report.ok and report.orphans == []
    assert _check_whole_episodes(store) == m + 1
