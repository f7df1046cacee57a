import collections
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from agentalign.data import open_store, verify
from agentalign.envs.skygarden import world as W
from agentalign.players.generate import generate, preset


def _episodes(path):
    store = open_store(path)
    return [store.episode(i) for i in range(len(store))]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.actions, y.actions)
        assert x.metadata == y.metadata


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "finetune"
    generate(path, preset("finetune"))
    return path


def test_curated_set_is_100_successful_ninja_runs_per_pad_cut_at_the_pad(curated):
    store = open_store(curated)
    md = store.all_metadata()
    assert collections.Counter(m["jump_pad"] for m in md) == {"left": 100, "middle": 100, "right": 100}
    assert all(m["intent"] == m["jump_pad"] and m["character"] == "ninja" for m in md)
    # Cut at the pad: the last action steps onto it, and no frame before it is on a pad.
    for i in range(0, len(store), 37):
        pos = store.extras(i)["pos"]
        k = W.pad_index(md[i]["jump_pad"])
        x0, y0, x1, y1 = W.PAD_BOXES[k]
        inside = (pos[:, 0] >= x0) & (pos[:, 0] < x1) & (pos[:, 1] >= y0) & (pos[:, 1] < y1)
        assert not inside.any()
        assert md[i]["pad_step"] == store.length(i) <= W.DEFAULT_MAX_STEPS
    assert verify(curated).ok


def test_population_set_is_multimodal(tmp_path):
    path = tmp_path / "pretrain"
    generate(path, preset("pretrain", episodes=160, num_envs=32))
    md = open_store(path).all_metadata()
    pads = collections.Counter(m["jump_pad"] for m in md)
    assert all(pads[p] > 0 for p in W.PAD_NAMES)
    assert pads["middle"] == max(pads.values())
    assert pads["none"] >= 0.08 * len(md)
    assert len({m["character"] for m in md}) >= 8
    intents = collections.Counter(m["intent"] for m in md)
    assert sum(v for k, v in intents.items() if k not in W.PAD_NAMES) >= 0.15 * len(md)
    assert max(m["length"] for m in md) > W.DEFAULT_MAX_STEPS  # recordings run past the eval limit
    # Not cut at the pad: most successful episodes go on after it.
    after = [m["length"] > m["pad_step"] for m in md if m["pad_step"] >= 0]
    assert np.mean(after) > 0.9


def test_generation_is_deterministic_and_independent_of_batch_size(tmp_path):
    generate(tmp_path / "a", preset("smoke-pretrain", episodes=20, num_envs=7))
    generate(tmp_path / "b", preset("smoke-pretrain", episodes=20, num_envs=16))
    _same(_episodes(tmp_path / "a"), _episodes(tmp_path / "b"))


def test_resume_continues_with_the_same_episodes(tmp_path):
    generate(tmp_path / "once", preset("smoke-pretrain", episodes=24))
    generate(tmp_path / "twice", preset("smoke-pretrain", episodes=10))
    summary = generate(tmp_path / "twice", preset("smoke-pretrain", episodes=24))
    assert summary["written"] == 14
    _same(_episodes(tmp_path / "once"), _episodes(tmp_path / "twice"))


def test_killed_generation_resumes_to_the_same_dataset(tmp_path):
    # Small chunks, so that some episodes are durable before the kill.
    script = (
        "import sys\n"
        "from agentalign.data import WriterConfig\n"
        "from agentalign.players.generate import generate, preset\n"
        "generate(sys.argv[1], preset('smoke-pretrain', episodes=400, num_envs=16),\n"
        "         writer_config=WriterConfig(chunk_bytes=2 ** 20))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "killed")])
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            if len(open_store(tmp_path / "killed")) >= 30:
                break
        except Exception:
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert verify(tmp_path / "killed").ok
    n_before = len(open_store(tmp_path / "killed"))
    assert 0 < n_before < 400
    generate(tmp_path / "killed", preset("smoke-pretrain", episodes=n_before + 20, num_envs=16))
    generate(tmp_path / "fresh", preset("smoke-pretrain", episodes=n_before + 20, num_envs=5))
    _same(_episodes(tmp_path / "killed"), _episodes(tmp_path / "fresh"))


def test_bad_presets_are_named():
    with pytest.raises(ValueError, match="unknown dataset preset 'huge'"):
        preset("huge")
    with pytest.raises(ValueError, match="multiple of 3"):
        preset("finetune", episodes=100)
    with pytest.raises(ValueError, match="episodes must be positive"):
        preset("pretrain", episodes=0)
