"""The episode store: lossless, chunked, compressed, append-only and written atomically.

A store is a directory:

    STORE/manifest.json              header (schema version, image size, codec) and the chunk list
    STORE/chunks/chunk-000000.bin    zstd frames ("blocks") one after another
    STORE/chunks/chunk-000000.json   that chunk's episode index: metadata, block offsets, sizes
    STORE/.lock                      held with flock by the one open writer

Each episode is stored as its frames in blocks of `frames_per_block` steps (so a training window
decompresses only the blocks it overlaps), its actions as one block of (T, 16) uint8, and each
privileged extra as one block of raw bytes with its dtype and shape. Every block is an
independent zstd frame with a content checksum, so a corrupted block is caught when read.

Write protocol (crash safety): a chunk's .bin and .json are each written to a temporary name,
fsynced and renamed into place; only then is manifest.json replaced the same way. The manifest
is the commit point: a reader sees exactly the chunks it lists, so a crash or kill at any moment
leaves the previous dataset readable with no half-written episode visible. Files the manifest
does not list (temporaries, a chunk whose commit never happened) are ignored by readers and
deleted by the next writer. The manifest records the size and blake2b hash of every chunk file;
`verify` checks them.

Memory: the reader keeps the index (a few numbers and the metadata per episode) in memory and
streams pixels from disk through a byte-bounded LRU cache of decompressed blocks.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import zstandard

from agentalign.data.episode import Episode
from agentalign.envs.gamepad import ACTION_DIM
from agentalign.io import fsync_dir

SCHEMA_VERSION = 1
FORMAT = "agentalign-episode-store"
MANIFEST = "manifest.json"
CHUNK_DIR = "chunks"
LOCK = ".lock"
TMP_SUFFIX = ".tmp"
CODEC = "zstd"

PathLike = str | os.PathLike


class StoreError(ValueError):
    """A store that is missing, malformed, of another version, or used wrongly."""


class ChecksumError(StoreError):
    """A store file whose bytes do not match what the manifest or the block checksum says."""


# --------------------------------------------------------------------------------------------
# Small file helpers


def _blake2b() -> "hashlib.blake2b":
    return hashlib.blake2b(digest_size=32)


def _write_atomic(path: Path, parts: Iterable[bytes]) -> tuple[int, str]:
    """Write `parts` to `path` via temp file + fsync + rename; returns (size, blake2b hex)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    h = _blake2b()
    size = 0
    with open(tmp, "wb") as f:
        for part in parts:
            f.write(part)
            h.update(part)
            size += len(part)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return size, h.hexdigest()


def _hash_file(path: Path) -> tuple[int, str]:
    h = _blake2b()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _chunk_name(k: int) -> str:
    return f"chunk-{k:06d}"


# --------------------------------------------------------------------------------------------
# Manifest and index parsing (every error names the file and the field)

_CHUNK_FIELDS = {
    "name": str,
    "n_episodes": int,
    "n_steps": int,
    "bin_bytes": int,
    "bin_blake2b": str,
    "index_bytes": int,
    "index_blake2b": str,
}


def _read_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise StoreError(f"{root}: no such store directory")
    path = root / MANIFEST
    if not path.is_file():
        raise StoreError(f"{path}: missing; {root} is not an agentalign store (or its first commit never happened)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{path}: not valid JSON ({e}); the file is damaged") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path}: expected a JSON object at the top level")
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{path}: field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: field 'schema_version' is {version!r}; this version of agentalign reads schema "
            f"{SCHEMA_VERSION} only"
        )
    size = manifest.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise StoreError(f"{path}: field 'image_size' must be [H, W] positive integers, got {size!r}")
    if manifest.get("codec") != CODEC:
        raise StoreError(f"{path}: field 'codec' is {manifest.get('codec')!r}, expected {CODEC!r}")
    fpb = manifest.get("frames_per_block")
    if not (isinstance(fpb, int) and fpb > 0):
        raise StoreError(f"{path}: field 'frames_per_block' must be a positive integer, got {fpb!r}")
    chunks = manifest.get("chunks")
    if not isinstance(chunks, list):
        raise StoreError(f"{path}: field 'chunks' must be a list")
    for k, chunk in enumerate(chunks):
        if not isinstance(chunk, dict):
            raise StoreError(f"{path}: chunks[{k}] must be an object")
        for name, typ in _CHUNK_FIELDS.items():
            if not isinstance(chunk.get(name), typ):
                raise StoreError(f"{path}: chunks[{k}].{name} is missing or not {typ.__name__}")
    return manifest


def _read_index(root: Path, chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """The episode records of one chunk, checked against the manifest's size and hash."""
    path = root / CHUNK_DIR / (chunk["name"] + ".json")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path}: missing (listed in {root / MANIFEST})") from None
    if len(data) != chunk["index_bytes"]:
        raise ChecksumError(
            f"{path}: {len(data)} bytes, the manifest says {chunk['index_bytes']}; the file is truncated or damaged"
        )
    h = _blake2b()
    h.update(data)
    if h.hexdigest() != chunk["index_blake2b"]:
        raise ChecksumError(f"{path}: blake2b checksum does not match the manifest; the file is corrupted")
    index = json.loads(data)
    episodes = index.get("episodes")
    if not isinstance(episodes, list) or len(episodes) != chunk["n_episodes"]:
        raise StoreError(f"{path}: field 'episodes' must list {chunk['n_episodes']} episodes")
    return episodes


# --------------------------------------------------------------------------------------------
# Writer


@dataclass(frozen=True)
class WriterConfig:
    """How a new store compresses and groups data. Appends use the values in the store's header."""

    # zstd level 1: on raycaster-like frames, ratio ~34 at 64x64 (~60 at 128x128) at ~110k (55k)
    # frames/s per core; level 3 is slower and no smaller at 128x128, zlib is 3x slower and
    # compresses worse, lz4 is 2x faster but half the ratio (benchmarks/data_store.py).
    codec_level: int = 1
    # 32 steps per block: a 32-step window overlaps at most 2 blocks; bigger blocks gain < 3 % ratio.
    frames_per_block: int = 32
    # Uncompressed bytes gathered before a chunk is committed: ~5,400 frames at 64x64, so a
    # killed generation loses at most a few seconds of work and the file count stays small.
    chunk_bytes: int = 64 * 2**20
    # Compression threads (zstd releases the GIL); 2 matches the 2-core target machine.
    threads: int = 2
    # Episodes handed to the threads but not yet compressed; bounds the writer's memory.
    max_inflight: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.codec_level <= 22:
            raise ValueError(f"codec_level must lie in 1..22, got {self.codec_level}")
        for name in ("frames_per_block", "chunk_bytes", "threads", "max_inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class _Compressed:
    frames: list[bytes]  # one zstd frame per block of frames_per_block steps
    actions: bytes
    extras: dict[str, tuple[str, list[int], bytes]]  # name -> (dtype str, shape, zstd frame)


_thread_state = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor is not thread-safe: one per thread, reused across blocks.
    cctx = getattr(_thread_state, "cctx", None)
    if cctx is None or _thread_state.level != level:
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        _thread_state.cctx, _thread_state.level = cctx, level
    return cctx


def _compress_episode(
    frames_thw3: np.ndarray, actions_t16: np.ndarray, extras: dict[str, np.ndarray], block: int, level: int
) -> _Compressed:
    cctx = _compressor(level)
    t = frames_thw3.shape[0]
    return _Compressed(
        frames=[cctx.compress(frames_thw3[s : s + block].data) for s in range(0, t, block)],
        actions=cctx.compress(actions_t16.data),
        extras={
            name: (arr.dtype.str, list(arr.shape), cctx.compress(arr.data)) for name, arr in extras.items()
        },
    )


@dataclass
class _Pending:
    metadata: dict[str, Any]
    length: int
    raw_bytes: int
    future: Future


class StoreWriter:
    """Append episodes to a store, creating it if needed; one writer per store at a time.

        with StoreWriter("runs/data", image_size=(64, 64)) as w:
            start = w.num_durable          # resume: episodes already committed
            for i in range(start, n):
                w.add(make_episode(i))

    `add` validates an episode, copies its arrays and hands them to a compression thread;
    episodes become durable (visible to readers, safe from a crash) when their chunk is
    committed: automatically once `chunk_bytes` are pending, on `flush()`, and on `close()`.
    Leaving the `with` block by an exception still commits the whole episodes already added.
    """

    def __init__(self, path: PathLike, *, image_size: tuple[int, int] | None = None, config: WriterConfig | None = None):
        self.path = Path(path)
        self.config = config or WriterConfig()
        self._closed = False
        is_store = (self.path / MANIFEST).is_file()
        if not is_store and image_size is None:
            raise StoreError(f"{self.path}: no store here; pass image_size=(H, W) to create one")
        if not is_store and self.path.exists():
            if not self.path.is_dir():
                raise StoreError(f"{self.path}: exists and is not a directory")
            # Leftovers of a creation that never committed its manifest are fine; anything else
            # means the directory belongs to something else.
            foreign = {p.name for p in self.path.iterdir()} - {LOCK, CHUNK_DIR, MANIFEST + TMP_SUFFIX}
            if foreign:
                raise StoreError(f"{self.path}: not empty and not a store (holds {sorted(foreign)[:3]}); pick an empty directory")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CHUNK_DIR).mkdir(exist_ok=True)
        self._lock_fd = self._take_lock()
        try:
            if (self.path / MANIFEST).is_file():
                self._manifest = _read_manifest(self.path)
                stored = tuple(self._manifest["image_size"])
                if image_size is not None and tuple(image_size) != stored:
                    raise StoreError(
                        f"{self.path}: the store holds {stored[0]}x{stored[1]} images, not "
                        f"{image_size[0]}x{image_size[1]}"
                    )
            else:
                self._manifest = self._new_manifest(image_size)  # type: ignore[arg-type]
                _write_atomic(self.path / MANIFEST, [_json_bytes(self._manifest)])
                fsync_dir(self.path)
                fsync_dir(self.path.parent)  # the new store directory's own entry
            self._remove_orphans()
            self._durable_metadata: list[dict[str, Any]] = [
                rec["metadata"] for chunk in self._manifest["chunks"] for rec in _read_index(self.path, chunk)
            ]
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.image_size: tuple[int, int] = tuple(self._manifest["image_size"])  # type: ignore[assignment]
        self._block = int(self._manifest["frames_per_block"])
        self._level = int(self._manifest["codec_level"])
        self._pool = ThreadPoolExecutor(self.config.threads, thread_name_prefix="store-compress")
        self._pending: list[_Pending] = []

    # -- setup --------------------------------------------------------------------------------

    def _take_lock(self) -> int:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreError(f"{self.path}: another writer has this store open ({self.path / LOCK} is locked)") from None
            raise
        return fd

    def _new_manifest(self, image_size: tuple[int, int]) -> dict[str, Any]:
        h, w = (int(v) for v in image_size)
        if h <= 0 or w <= 0:
            raise StoreError(f"image_size must be positive, got {image_size}")
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "dataset_id": uuid.uuid4().hex,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "image_size": [h, w],
            "channels": 3,
            "action_dim": ACTION_DIM,
            "codec": CODEC,
            "codec_level": self.config.codec_level,
            "frames_per_block": self.config.frames_per_block,
            "n_episodes": 0,
            "n_steps": 0,
            "chunks": [],
        }

    def _remove_orphans(self) -> None:
        """Delete temporaries and chunk files from commits that never happened."""
        listed = {c["name"] for c in self._manifest["chunks"]}
        for p in (self.path / CHUNK_DIR).iterdir():
            ours = p.name.startswith("chunk-")  # never delete files the store did not write
            if ours and (p.name.endswith(TMP_SUFFIX) or p.name.split(".")[0] not in listed):
                p.unlink()
        (self.path / (MANIFEST + TMP_SUFFIX)).unlink(missing_ok=True)

    # -- what is durable (for resumable generation) --------------------------------------------

    @property
    def num_durable(self) -> int:
        """Episodes committed to disk; a resumed generation starts at this index."""
        return int(self._manifest["n_episodes"])

    @property
    def num_pending(self) -> int:
        """Episodes added but not yet committed (lost if the process dies now)."""
        return len(self._pending)

    def durable_metadata(self) -> list[dict[str, Any]]:
        """Metadata of every committed episode, in store order (copies)."""
        return copy.deepcopy(self._durable_metadata)

    def durable_values(self, key: str) -> list[Any]:
        """metadata[key] of every committed episode (None where absent), e.g. key="seed"."""
        return [md.get(key) for md in self._durable_metadata]

    # -- writing ------------------------------------------------------------------------------

    def add(self, episode: Episode) -> int:
        """Queue one episode; returns the index it will have in the store."""
        if self._closed:
            raise StoreError(f"{self.path}: writer is closed")
        index = self.num_durable + len(self._pending)
        md = episode.metadata
        where = f"episode {index}" + (f" (seed {md['seed']})" if isinstance(md, dict) and "seed" in md else "")
        episode.validate(self.image_size, where=where)
        t = len(episode)
        metadata = copy.deepcopy(episode.metadata)
        metadata["length"] = t
        # Copies: the caller may refill its buffers while a thread still compresses these.
        frames = np.array(episode.frames, dtype=np.uint8, order="C", copy=True)
        actions = np.array(episode.actions, dtype=np.uint8, order="C", copy=True)
        extras = {k: np.array(v, order="C", copy=True) for k, v in episode.extras.items()}
        future = self._pool.submit(_compress_episode, frames, actions, extras, self._block, self._level)
        raw = frames.nbytes + actions.nbytes + sum(a.nbytes for a in extras.values())
        self._pending.append(_Pending(metadata, t, raw, future))
        # Back-pressure: never hold more than max_inflight uncompressed episodes.
        inflight = [p.future for p in self._pending if not p.future.done()]
        if len(inflight) > self.config.max_inflight:
            inflight[0].result()
        if sum(p.raw_bytes for p in self._pending) >= self.config.chunk_bytes:
            self.flush()
        return index

    def add_many(self, episodes: Iterable[Episode]) -> None:
        for ep in episodes:
            self.add(ep)

    def flush(self) -> None:
        """Commit all pending episodes as one chunk (no-op when nothing is pending)."""
        if not self._pending:
            return
        name = _chunk_name(len(self._manifest["chunks"]))
        parts: list[bytes] = []
        records: list[dict[str, Any]] = []
        offset = 0

        def place(blob: bytes) -> list[int]:
            nonlocal offset
            parts.append(blob)
            offset += len(blob)
            return [offset - len(blob), len(blob)]

        for p in self._pending:
            c: _Compressed = p.future.result()
            records.append(
                {
                    "length": p.length,
                    "metadata": p.metadata,
                    "frames": [place(b) for b in c.frames],
                    "actions": place(c.actions),
                    "extras": {
                        k: {"dtype": dt, "shape": shape, "block": place(blob)} for k, (dt, shape, blob) in c.extras.items()
                    },
                }
            )
        chunks_dir = self.path / CHUNK_DIR
        bin_bytes, bin_hash = _write_atomic(chunks_dir / f"{name}.bin", parts)
        index = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "chunk": f"{name}.bin", "episodes": records}
        index_bytes, index_hash = _write_atomic(chunks_dir / f"{name}.json", [_json_bytes(index)])
        fsync_dir(chunks_dir)
        n_steps = sum(p.length for p in self._pending)
        manifest = dict(self._manifest)
        manifest["chunks"] = self._manifest["chunks"] + [
            {
                "name": name,
                "n_episodes": len(records),
                "n_steps": n_steps,
                "bin_bytes": bin_bytes,
                "bin_blake2b": bin_hash,
                "index_bytes": index_bytes,
                "index_blake2b": index_hash,
            }
        ]
        manifest["n_episodes"] = self._manifest["n_episodes"] + len(records)
        manifest["n_steps"] = self._manifest["n_steps"] + n_steps
        # The commit point: before this rename the chunk is an orphan, after it a part of the store.
        _write_atomic(self.path / MANIFEST, [_json_bytes(manifest)])
        fsync_dir(self.path)
        self._manifest = manifest
        self._durable_metadata.extend(p.metadata for p in self._pending)
        self._pending = []

    def close(self) -> None:
        """Commit what is pending, stop the threads and release the lock."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)
            os.close(self._lock_fd)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep the caller's exception as the one that propagates
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# Reader


class BlockCache:
    """LRU cache of decompressed blocks, bounded by the total bytes of the arrays it holds."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        arr = self._items.get(key)
        if arr is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return arr

    def put(self, key: tuple[int, int], arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes or key in self._items:
            return
        self._items[key] = arr
        self.nbytes += arr.nbytes
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


class StoreReader:
    """Read a store: episodes bit-exactly, windows of frames through a block cache, metadata.

    Opening reads the manifest and the chunk indices only (metadata queries never touch
    pixels) and checks that every chunk file is present with the size the manifest records.
    One reader is meant for one thread; after a fork it reopens its files on first use.
    """

    def __init__(self, path: PathLike, *, cache_bytes: int = 128 * 2**20, check_files: bool = True):
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        self.image_size: tuple[int, int] = tuple(self.manifest["image_size"])  # type: ignore[assignment]
        self.frames_per_block = int(self.manifest["frames_per_block"])
        self._chunk_paths = [self.path / CHUNK_DIR / (c["name"] + ".bin") for c in self.manifest["chunks"]]
        if check_files:
            for chunk, p in zip(self.manifest["chunks"], self._chunk_paths):
                try:
                    size = p.stat().st_size
                except FileNotFoundError:
                    raise StoreError(f"{p}: missing (listed in {self.path / MANIFEST})") from None
                if size != chunk["bin_bytes"]:
                    raise ChecksumError(
                        f"{p}: {size} bytes, the manifest says {chunk['bin_bytes']}; the file is truncated or damaged"
                    )

        self._metadata: list[dict[str, Any]] = []
        self._extras: list[dict[str, Any]] = []
        chunk_of, lengths, actions_loc, block_start = [], [], [], [0]
        block_loc: list[list[int]] = []
        for k, chunk in enumerate(self.manifest["chunks"]):
            for rec in _read_index(self.path, chunk):
                self._metadata.append(rec["metadata"])
                self._extras.append(rec["extras"])
                chunk_of.append(k)
                lengths.append(rec["length"])
                actions_loc.append(rec["actions"])
                block_loc.extend(rec["frames"])
                block_start.append(len(block_loc))
        # Compact arrays for the sampling hot path: per episode its chunk, length and blocks.
        self._chunk_of = np.asarray(chunk_of, dtype=np.int64)  # (N,)
        self._lengths = np.asarray(lengths, dtype=np.int64)  # (N,)
        self._lengths.flags.writeable = False
        self._actions_loc = np.asarray(actions_loc, dtype=np.int64).reshape(-1, 2)  # (N, 2) offset, nbytes
        self._block_start = np.asarray(block_start, dtype=np.int64)  # (N + 1,) into _block_loc
        self._block_loc = np.asarray(block_loc, dtype=np.int64).reshape(-1, 2)  # (M, 2) offset, nbytes

        self.cache = BlockCache(cache_bytes)
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()
        self._dctx = zstandard.ZstdDecompressor()

    # -- sizes and metadata -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._lengths)

    @property
    def num_steps(self) -> int:
        return int(self.manifest["n_steps"])

    @property
    def dataset_id(self) -> str:
        return str(self.manifest["dataset_id"])

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64 episode lengths, read-only."""
        return self._lengths

    def length(self, i: int) -> int:
        return int(self._lengths[self._check(i)])

    def metadata(self, i: int) -> dict[str, Any]:
        return copy.deepcopy(self._metadata[self._check(i)])

    def all_metadata(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self._metadata)

    def info(self) -> dict[str, Any]:
        """Counts, pad and character distributions and length statistics, from metadata only."""
        lengths = self._lengths
        disk = sum(c["bin_bytes"] + c["index_bytes"] for c in self.manifest["chunks"])
        h, w = self.image_size
        raw = int(lengths.sum()) * h * w * 3
        return {
            "path": str(self.path),
            "dataset_id": self.dataset_id,
            "schema_version": self.manifest["schema_version"],
            "image_size": list(self.image_size),
            "n_chunks": len(self.manifest["chunks"]),
            "n_episodes": len(self),
            "n_steps": int(lengths.sum()),
            "bytes_on_disk": disk,
            "frame_compression_ratio": round(raw / disk, 2) if disk else None,
            "length": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
                "median": float(np.median(lengths)) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
            "jump_pad": dict(sorted(Counter(str(m.get("jump_pad", "unknown")) for m in self._metadata).items())),
            "character": dict(sorted(Counter(str(m.get("character", "unknown")) for m in self._metadata).items())),
            # Recorded intent (pads or undesirable modes), where the recorder knew it.
            "intent": dict(sorted(Counter(str(m["intent"]) for m in self._metadata if "intent" in m).items())),
        }

    # -- pixels and actions --------------------------------------------------------------------

    def episode(self, i: int) -> Episode:
        """Episode i, bit-exact and freshly allocated (bypasses the cache)."""
        i = self._check(i)
        t = int(self._lengths[i])
        h, w = self.image_size
        frames = np.empty((t, h, w, 3), dtype=np.uint8)
        b = self.frames_per_block
        for k in range(self._block_start[i + 1] - self._block_start[i]):
            frames[k * b : (k + 1) * b] = self._decode_frames(i, k, cache=False)
        return Episode(frames=frames, actions=self.actions(i), extras=self.extras(i), metadata=self.metadata(i))

    def __getitem__(self, i: int) -> Episode:
        return self.episode(i)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.episode(i)

    def actions(self, i: int) -> np.ndarray:
        """(T, 16) uint8 actions of episode i (a writable copy)."""
        return self.actions_view(i).copy()

    def actions_view(self, i: int) -> np.ndarray:
        """(T, 16) uint8 actions of episode i, read-only and cached (for samplers)."""
        i = self._check(i)
        chunk = int(self._chunk_of[i])
        off, n = (int(v) for v in self._actions_loc[i])
        key = (chunk, off)
        arr = self.cache.get(key)
        if arr is None:
            arr = self._decode(chunk, off, n, np.dtype(np.uint8), (int(self._lengths[i]), ACTION_DIM), f"episode {i} actions")
            self.cache.put(key, arr)
        return arr

    def extras(self, i: int) -> dict[str, np.ndarray]:
        """Privileged per-step arrays of episode i (writable copies, bit-exact dtype and shape)."""
        i = self._check(i)
        chunk = int(self._chunk_of[i])
        out = {}
        for name, spec in self._extras[i].items():
            off, n = spec["block"]
            arr = self._decode(chunk, off, n, np.dtype(spec["dtype"]), tuple(spec["shape"]), f"episode {i} extras[{name!r}]")
            out[name] = arr.copy()
        return out

    def frames(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - start, H, W, 3) uint8 frames of episode i, through the block cache."""
        i = self._check(i)
        stop = int(self._lengths[i]) if stop is None else stop
        h, w = self.image_size
        out = np.empty((stop - start, h, w, 3), dtype=np.uint8)
        self.read_frames_into(i, start, out)
        return out

    def read_frames_into(self, i: int, start: int, out: np.ndarray) -> None:
        """Fill out (n, H, W, 3) with frames start .. start + n of episode i."""
        t = int(self._lengths[i])
        stop = start + len(out)
        if len(out) == 0:
            return
        if not 0 <= start < stop <= t:
            raise IndexError(f"frames {start}:{stop} out of range for episode {i} of length {t}")
        b = self.frames_per_block
        for k in range(start // b, (stop - 1) // b + 1):
            block = self._decode_frames(i, k, cache=True)  # (<= b, H, W, 3)
            lo, hi = max(start, k * b), min(stop, k * b + len(block))
            out[lo - start : hi - start] = block[lo - k * b : hi - k * b]

    # -- internals -----------------------------------------------------------------------------

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range for a store of {n} episodes")
        return int(i) % n

    def _decode_frames(self, i: int, k: int, *, cache: bool) -> np.ndarray:
        chunk = int(self._chunk_of[i])
        off, n = (int(v) for v in self._block_loc[self._block_start[i] + k])
        key = (chunk, off)
        arr = self.cache.get(key) if cache else None
        if arr is None:
            b = self.frames_per_block
            rows = min(b, int(self._lengths[i]) - k * b)
            h, w = self.image_size
            arr = self._decode(chunk, off, n, np.dtype(np.uint8), (rows, h, w, 3), f"episode {i} frame block {k}")
            if cache:
                self.cache.put(key, arr)
        return arr

    def _fd(self, chunk: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to share
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._pid = os.getpid()
            self._dctx = zstandard.ZstdDecompressor()
        fd = self._fds.get(chunk)
        if fd is None:
            try:
                fd = os.open(self._chunk_paths[chunk], os.O_RDONLY)
            except FileNotFoundError:
                raise StoreError(f"{self._chunk_paths[chunk]}: missing (listed in {self.path / MANIFEST})") from None
            self._fds[chunk] = fd
            if len(self._fds) > 64:  # stay well under the open-file limit on huge stores
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(chunk)
        return fd

    def _decode(self, chunk: int, offset: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
        path = self._chunk_paths[chunk]
        data = os.pread(self._fd(chunk), nbytes, offset)
        if len(data) != nbytes:
            raise ChecksumError(f"{path}: truncated; {what} needs bytes {offset}..{offset + nbytes}, the file ends earlier")
        want = int(np.prod(shape)) * dtype.itemsize
        try:
            raw = self._dctx.decompress(data, max_output_size=want)
        except zstandard.ZstdError as e:
            raise ChecksumError(
                f"{path}: {what} at byte {offset} is corrupt ({e}); run `agentalign data verify {self.path}`"
            ) from None
        if len(raw) != want:
            raise ChecksumError(f"{path}: {what} decodes to {len(raw)} bytes, expected {want}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds.clear()
        self.cache.clear()

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# Verification


@dataclass
class VerifyReport:
    """What `verify` found. `ok` is False when any committed file is missing or damaged."""

    path: str
    n_chunks: int = 0
    n_episodes: int = 0
    n_steps: int = 0
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # uncommitted leftovers: harmless, not errors

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (
            f"{self.path}: {'OK' if self.ok else 'FAILED'} - {self.n_chunks} chunks, "
            f"{self.n_episodes} episodes, {self.n_steps} steps"
        )
        lines = [head] + [f"  problem: {p}" for p in self.problems]
        lines += [f"  ignored (uncommitted leftover): {o}" for o in self.orphans]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise ChecksumError(self.summary())


def verify(path: PathLike, *, deep: bool = False) -> VerifyReport:
    """Check every committed file against the manifest's sizes and blake2b hashes.

    Names each missing, truncated or corrupted file in `report.problems`. With deep=True every
    block is also decompressed (zstd checksum) and its size checked. Never raises for damage;
    call `report.raise_if_failed()` for that. Raises StoreError only if there is no readable
    manifest at all (nothing to check against).
    """
    root = Path(path)
    manifest = _read_manifest(root)
    report = VerifyReport(path=str(root), n_chunks=len(manifest["chunks"]))
    listed = set()
    for chunk in manifest["chunks"]:
        listed.add(chunk["name"])
        bin_path = root / CHUNK_DIR / (chunk["name"] + ".bin")
        chunk_ok = True
        if not bin_path.is_file():
            report.problems.append(f"{bin_path}: missing")
            chunk_ok = False
        else:
            size, digest = _hash_file(bin_path)
            if size != chunk["bin_bytes"]:
                report.problems.append(f"{bin_path}: truncated or extended: {size} bytes, the manifest says {chunk['bin_bytes']}")
                chunk_ok = False
            elif digest != chunk["bin_blake2b"]:
                report.problems.append(f"{bin_path}: corrupted: blake2b checksum does not match the manifest")
                chunk_ok = False
        try:
            records = _read_index(root, chunk)
        except (StoreError, json.JSONDecodeError) as e:
            report.problems.append(str(e))
            continue
        report.n_episodes += len(records)
        report.n_steps += sum(r["length"] for r in records)
        if deep and chunk_ok:
            report.problems.extend(_decode_all(bin_path, records, manifest))
    for p in sorted((root / CHUNK_DIR).iterdir()) if (root / CHUNK_DIR).is_dir() else []:
        if p.name.endswith(TMP_SUFFIX) or p.name.split(".")[0] not in listed:
            report.orphans.append(str(p))
    if (root / (MANIFEST + TMP_SUFFIX)).exists():
        report.orphans.append(str(root / (MANIFEST + TMP_SUFFIX)))
    if report.n_episodes != manifest["n_episodes"] and not report.problems:
        report.problems.append(
            f"{root / MANIFEST}: n_episodes is {manifest['n_episodes']} but the chunks hold {report.n_episodes}"
        )
    return report


def _decode_all(bin_path: Path, records: list[dict[str, Any]], manifest: dict[str, Any]) -> list[str]:
    dctx = zstandard.ZstdDecompressor()
    data = bin_path.read_bytes()
    h, w = manifest["image_size"]
    b = manifest["frames_per_block"]
    problems = []
    for e, rec in enumerate(records):
        t = rec["length"]
        blocks = [(loc, min(b, t - k * b) * h * w * 3) for k, loc in enumerate(rec["frames"])]
        blocks.append((rec["actions"], t * ACTION_DIM))
        for spec in rec["extras"].values():
            blocks.append((spec["block"], int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize))
        for (off, n), want in blocks:
            try:
                got = len(dctx.decompress(data[off : off + n], max_output_size=want))
            except zstandard.ZstdError as err:
                problems.append(f"{bin_path}: episode {e} of this chunk: block at byte {off} does not decode ({err})")
                break
            if got != want:
                problems.append(
                    f"{bin_path}: episode {e} of this chunk: block at byte {off} decodes to {got} bytes, expected {want}"
                )
                break
    return problems


# --------------------------------------------------------------------------------------------
# Imports that fail leave no empty store behind


def missing_dirs(path: PathLike) -> list[Path]:
    """`path` (made absolute) and those of its ancestors that do not exist yet, deepest first."""
    out = []
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def remove_made_dirs(made: list[Path]) -> None:
    """Remove the folders of `missing_dirs` that are still empty, deepest first."""
    for d in made:
        try:
            d.rmdir()
        except OSError:  # not empty (someone else's now), or already gone
            if d.exists():
                break


@contextlib.contextmanager
def no_empty_store_on_failure(path: PathLike) -> Iterator[None]:
    """Around filling the store `path`: if that fails before any episode is committed to a store
    it created, remove what it created (the store's files, and the folders it made) and re-raise.

    A folder the user already had is kept (only the store's own files go); a store that existed
    before, or one that committed episodes (a rerun resumes it), is left as it is.
    """
    root = Path(os.path.abspath(path))
    if (root / MANIFEST).is_file():
        yield
        return
    made = missing_dirs(root)
    had = {p.name for p in root.iterdir()} if root.is_dir() else set()
    try:
        yield
    except BaseException:
        _remove_empty_store(root, made, had)
        raise


def _remove_empty_store(root: Path, made: list[Path], had: set[str]) -> None:
    if not root.is_dir():
        remove_made_dirs(made)
        return
    try:
        if _read_manifest(root)["n_episodes"] > 0:
            return
    except StoreError:
        pass  # no committed manifest: nothing of value was written
    lock = root / LOCK
    try:
        fd: int | None = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another writer has it open (it made the store meanwhile): not ours to remove
        if made and made[0] == root:
            shutil.rmtree(root, ignore_errors=True)
            remove_made_dirs(made[1:])
            return
        for name in sorted({MANIFEST, MANIFEST + TMP_SUFFIX, CHUNK_DIR, LOCK} - had):
            p = root / name
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)


def open_store(path: PathLike, **kwargs: Any) -> StoreReader:
    """Shorthand for StoreReader(path, **kwargs)."""
    return StoreReader(path, **kwargs)
