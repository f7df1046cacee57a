"""The episode store: bit-exact round trips, appends, bad input and damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agentalign.data import (
    SCHEMA_VERSION,
    ChecksumError,
    Episode,
    StoreError,
    StoreReader,
    StoreWriter,
    WriterConfig,
    verify,
)
from agentalign.data.testing import synthetic_episode

from .helpers import SIZE, assert_same_episode, make_episodes, write_store


def test_round_trip_is_bit_exact(store: Path, episodes: list[Episode]) -> None:
    reader = StoreReader(store)
    assert len(reader) == len(episodes)
    assert reader.image_size == SIZE
    assert reader.manifest["schema_version"] == SCHEMA_VERSION
    assert len(reader.manifest["chunks"]) > 1  # the fixture spans several chunks
    for got, want in zip(reader, episodes):
        assert_same_episode(got, want)
    # Random access and partial frame reads agree with the whole episode.
    assert_same_episode(reader.episode(3), episodes[3])
    assert np.array_equal(reader.frames(0, 30, 70), episodes[0].frames[30:70])
    assert list(reader.lengths) == [len(e) for e in episodes]


def test_extras_keep_any_numeric_dtype(tmp_path: Path) -> None:
    ep = synthetic_episode(0, length=10, size=SIZE)
    ep.extras = {
        "big_endian": np.arange(10, dtype=">i4"),
        "flags": np.arange(10) % 2 == 0,
        "grid": np.random.default_rng(0).random((10, 2, 3)).astype(np.float64),
    }
    write_store(tmp_path / "s", [ep])
    got = StoreReader(tmp_path / "s").episode(0)
    assert_same_episode(got, ep)


def test_append_then_reopen(tmp_path: Path) -> None:
    eps = make_episodes(8)
    write_store(tmp_path / "s", eps[:5])
    with StoreWriter(tmp_path / "s") as w:  # no image_size needed to append
        assert w.num_durable == 5
        assert w.durable_values("seed") == [0, 1, 2, 3, 4]
        for ep in eps[5:]:
            w.add(ep)
        assert w.num_pending == 3
    reader = StoreReader(tmp_path / "s")
    assert len(reader) == 8
    for got, want in zip(reader, eps):
        assert_same_episode(got, want)
    assert verify(tmp_path / "s").ok


def test_appending_other_image_size_is_refused(tmp_path: Path) -> None:
    write_store(tmp_path / "s", make_episodes(1))
    with pytest.raises(StoreError, match="holds 32x32 images, not 64x64"):
        StoreWriter(tmp_path / "s", image_size=(64, 64))
    with StoreWriter(tmp_path / "s") as w:
        with pytest.raises(ValueError, match=r"episode 1 \(seed 0\): frames are 64x64 .* store holds 32x32"):
            w.add(synthetic_episode(0, length=5, size=(64, 64)))


def test_metadata_info_without_pixels(store: Path, episodes: list[Episode]) -> None:
    reader = StoreReader(store)
    info = reader.info()
    assert info["n_episodes"] == len(episodes)
    assert info["n_steps"] == sum(len(e) for e in episodes)
    assert sum(info["jump_pad"].values()) == len(episodes)
    assert info["length"]["max"] == max(len(e) for e in episodes)
    assert reader.cache.misses == 0  # nothing was decompressed
    assert reader.metadata(2)["seed"] == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: setattr(e, "frames", e.frames.astype(np.float32)), "frames must have dtype uint8"),
        (lambda e: setattr(e, "frames", e.frames[..., :2]), r"frames must have shape \(T, H, W, 3\)"),
        (lambda e: setattr(e, "actions", e.actions[:, :15]), r"actions must have shape \(T, 16\)"),
        (lambda e: setattr(e, "actions", e.actions[:-1]), "actions has 9 steps but frames has 10"),
        (lambda e: e.actions.__setitem__((3, 13), 11), r"actions\[3, 13\] = 11 is out of range for component 'left_y'"),
        (lambda e: e.actions.__setitem__((2, 0), 2), r"actions\[2, 0\] = 2 is out of range for component 'dash'"),
        (lambda e: e.extras.__setitem__("pos", e.extras["pos"][:4]), r"extras\['pos'\] must have T = 10 rows"),
        (lambda e: e.metadata.__setitem__("jump_pad", "top"), "jump_pad"),
        (lambda e: e.metadata.__setitem__("when", object()), "metadata is not JSON-able"),
    ],
)
def test_bad_episodes_give_clear_errors(tmp_path: Path, mutate, message: str) -> None:
    ep = synthetic_episode(7, length=10, size=SIZE)
    mutate(ep)
    with StoreWriter(tmp_path / "s", image_size=SIZE) as w:
        with pytest.raises(ValueError, match=message):
            w.add(ep)
    assert StoreReader(tmp_path / "s").__len__() == 0  # nothing half-written


def test_missing_store_and_missing_image_size(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store directory"):
        StoreReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match=r"manifest.json: missing"):
        StoreReader(tmp_path / "empty")
    with pytest.raises(StoreError, match=r"pass image_size"):
        StoreWriter(tmp_path / "new")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and not a store"):
        StoreWriter(tmp_path / "other", image_size=SIZE)


def test_unknown_schema_version(store: Path) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"manifest.json: field 'schema_version' is 99; .* reads schema 1"):
        StoreReader(store)
    with pytest.raises(StoreError, match="schema_version"):
        StoreWriter(store)


def test_damaged_manifest(store: Path) -> None:
    (store / "manifest.json").write_text('{"format": "agentalign-episode-st')
    with pytest.raises(StoreError, match="manifest.json: not valid JSON"):
        StoreReader(store)


def _first_chunk(store: Path) -> Path:
    return store / "chunks" / "chunk-000000.bin"


def test_verify_names_a_corrupted_chunk(store: Path) -> None:
    assert verify(store).ok
    chunk = _first_chunk(store)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = verify(store)
    assert not report.ok
    assert len(report.problems) == 1 and str(chunk) in report.problems[0] and "corrupted" in report.problems[0]
    with pytest.raises(ChecksumError, match="chunk-000000.bin"):
        report.raise_if_failed()
    # Reading the damaged block fails loudly (zstd's per-block checksum), naming the file.
    reader = StoreReader(store)
    with pytest.raises(ChecksumError, match="chunk-000000.bin"):
        for i in range(reader.manifest["chunks"][0]["n_episodes"]):
            reader.episode(i)


def test_verify_names_a_truncated_chunk(store: Path) -> None:
    chunk = _first_chunk(store)
    chunk.write_bytes(chunk.read_bytes()[:-100])
    report = verify(store)
    assert not report.ok and str(chunk) in report.problems[0] and "truncated" in report.problems[0]
    with pytest.raises(ChecksumError, match=r"chunk-000000.bin: \d+ bytes, the manifest says \d+; the file is truncated"):
        StoreReader(store)


def test_verify_names_a_missing_or_damaged_index(store: Path) -> None:
    index = store / "chunks" / "chunk-000001.json"
    index.write_text(index.read_text().replace('"seed"', '"seeD"'))
    report = verify(store)
    assert not report.ok and "chunk-000001.json" in report.problems[0]
    index.unlink()
    with pytest.raises(StoreError, match=r"chunk-000001.json: missing"):
        StoreReader(store)


def test_deep_verify_decodes_every_block(store: Path) -> None:
    report = verify(store, deep=True)
    assert report.ok, report.summary()
    assert report.n_steps == StoreReader(store).num_steps


def test_orphans_are_ignored_by_readers_and_removed_by_writers(store: Path, episodes: list[Episode]) -> None:
    n_chunks = len(StoreReader(store).manifest["chunks"])
    # What a crash between the chunk's rename and the manifest's rename leaves behind.
    orphan = store / "chunks" / f"chunk-{n_chunks:06d}.bin"
    orphan.write_bytes(b"half a chunk")
    (store / "chunks" / f"chunk-{n_chunks:06d}.json.tmp").write_bytes(b"{")
    (store / "manifest.json.tmp").write_bytes(b"{")
    reader = StoreReader(store)
    assert len(reader) == len(episodes)
    report = verify(store)
    assert report.ok and len(report.orphans) == 3
    with StoreWriter(store) as w:
        w.add(episodes[0])
    assert not orphan.with_suffix(".json.tmp").exists()
    report = verify(store)
    assert report.ok and report.orphans == [] and report.n_episodes == len(episodes) + 1
    assert_same_episode(StoreReader(store).episode(len(episodes)), episodes[0])


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "s", image_size=SIZE):
        with pytest.raises(StoreError, match="another writer has this store open"):
            StoreWriter(tmp_path / "s")


def test_writer_commits_whole_episodes_when_the_caller_fails(tmp_path: Path) -> None:
    eps = make_episodes(3)
    with pytest.raises(RuntimeError, match="generator broke"):
        with StoreWriter(tmp_path / "s", image_size=SIZE) as w:
            for ep in eps:
                w.add(ep)
            raise RuntimeError("generator broke")
    assert len(StoreReader(tmp_path / "s")) == 3


def test_writer_copies_the_callers_buffers(tmp_path: Path) -> None:
    ep = synthetic_episode(1, length=40, size=SIZE)
    want = Episode(ep.frames.copy(), ep.actions.copy(), {k: v.copy() for k, v in ep.extras.items()}, dict(ep.metadata))
    with StoreWriter(tmp_path / "s", image_size=SIZE) as w:
        w.add(ep)
        ep.frames[:] = 0  # a generator refilling its buffer must not change what is stored
        ep.actions[:] = 0
    assert_same_episode(StoreReader(tmp_path / "s").episode(0), want)


def test_block_cache_stays_within_budget(store: Path, episodes: list[Episode]) -> None:
    block_bytes = 32 * SIZE[0] * SIZE[1] * 3
    reader = StoreReader(store, cache_bytes=3 * block_bytes)
    for i in range(len(episodes)):
        reader.frames(i)
        assert reader.cache.nbytes <= 3 * block_bytes
    assert reader.cache.misses > 0


def test_writer_config_is_checked() -> None:
    with pytest.raises(ValueError, match="codec_level"):
        WriterConfig(codec_level=0)
    with pytest.raises(ValueError, match="frames_per_block"):
        WriterConfig(frames_per_block=0)
