"""The clip renderer: WebM/VP9, 256 px wide, one video frame per stored frame, rendered once."""

from concurrent.futures import ThreadPoolExecutor

import imageio
import numpy as np
import pytest

from agentalign.data import StoreWriter, WriterConfig, open_store
from agentalign.data.testing import synthetic_episode
from agentalign.labeling.clips import clip_path

LENGTHS = (12, 7)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "store"
    with StoreWriter(path, image_size=(64, 64), config=WriterConfig()) as w:
        for seed, t in enumerate(LENGTHS):
            w.add(synthetic_episode(seed, length=t, size=(64, 64)))
    return open_store(path)


def _decode(path) -> np.ndarray:
    with imageio.get_reader(path, format="FFMPEG") as r:
        return np.stack([f for f in r])  # not list(r): its length hint is unknown (inf)


def test_clip_is_webm_256px_with_every_frame(tmp_path, store):
    path = clip_path(tmp_path, store, 1)
    assert path == tmp_path / "clips" / "1.webm"
    assert path.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"  # EBML: Matroska / WebM
    frames = _decode(path)
    want = store.frames(1)
    assert frames.shape == (len(want), 256, 256, 3)
    # Nearest neighbour, so the picture survives (up to the lossy codec): compare at 64 px.
    small = frames[:, 2::4, 2::4].astype(int)
    assert np.abs(small - want.astype(int)).mean() < 12
    assert not list((tmp_path / "clips").glob("*.tmp*"))  # no temporary file left behind


def test_clip_is_cached(tmp_path, store):
    path = clip_path(tmp_path, store, 0)
    stat = path.stat()
    assert clip_path(tmp_path, store, 0) == path
    again = path.stat()
    assert (again.st_mtime_ns, again.st_ino) == (stat.st_mtime_ns, stat.st_ino)


def test_concurrent_requests_get_a_whole_clip(tmp_path, store):
    with ThreadPoolExecutor(4) as pool:  # an exception in a thread is raised by .result()
        got = [f.result() for f in [pool.submit(lambda: clip_path(tmp_path, store, 0).read_bytes()) for _ in range(4)]]
    assert len(set(got)) == 1
    assert len(_decode(tmp_path / "clips" / "0.webm")) == LENGTHS[0]


@pytest.mark.parametrize("bad", [-1, len(LENGTHS), 99, 1.0, "0", True])
def test_bad_episode_index(tmp_path, store, bad):
    with pytest.raises(ValueError, match=f"episode {bad!r}"):
        clip_path(tmp_path, store, bad)
    assert not (tmp_path / "clips").exists() or not any((tmp_path / "clips").iterdir())
