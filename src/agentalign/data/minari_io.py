"""Interchange with Minari (Farama's offline-RL dataset format), lossless both ways.

Export writes a Minari dataset directory `DST/data/{metadata.json, main_data.hdf5}` (the layout
of a local Minari dataset, loadable with `minari.MinariDataset("DST/data")`, or with
`minari.load_dataset(id)` when DST is `$MINARI_DATASETS_PATH/<id>`). Frames are stored raw
(`jpeg_encoding=False`; Minari's default would JPEG them). The dataset records the env spec of
`agentalign/SkyGarden-v0` at the store's image size, so `dataset.recover_environment()` works
(with agentalign installed). The export is atomic: it is written into a temporary sibling and
renamed into place only when complete, so a failed export leaves nothing and can simply be rerun.

Mapping between the two:
  observations  Minari holds T + 1 (the final observation after the last action); we hold T.
                Export appends a copy of the last frame; import drops the final observation.
  actions       MultiDiscrete([2]*12 + [11]*4), (T, 16) int64.
  rewards       zeros; terminations[-1] is True when the episode reached a pad, truncations[-1]
                otherwise (Minari needs them; we have no rewards in the recordings).
  infos         our per-step extras, padded to T + 1 rows like observations.
  metadata      the episode's metadata as JSON in the episode attribute "agentalign_metadata".

Needs `pip install "minari[hdf5]"` (minari >= 0.5 and h5py); without it the functions raise
ImportError saying so. Tested with minari 0.5.4, h5py 3.16, numpy 2, gymnasium 1.4.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from agentalign.data.bleeding_edge import resize_frames
from agentalign.data.episode import Episode
from agentalign.data.store import (
    StoreReader,
    StoreWriter,
    WriterConfig,
    missing_dirs,
    no_empty_store_on_failure,
    remove_made_dirs,
)
from agentalign.envs.gamepad import ACTION_NVEC
from agentalign.io import fsync_dir

METADATA_ATTR = "agentalign_metadata"
DEFAULT_ID = "agentalign/skygarden-v0"


class DestinationExists(FileExistsError, ValueError):
    """The export's destination already holds a dataset (or something else): bad input."""


def _minari():
    try:
        import h5py  # noqa: F401  (the storage backend we write; imported here for a clear error)
        import minari
        from minari.data_collector import EpisodeBuffer
        from minari.dataset.minari_storage import MinariStorage
    except ImportError as e:
        raise ImportError(
            f"Minari interchange needs the optional packages minari and h5py ({e}); "
            'install them with: pip install "minari[hdf5]"'
        ) from None
    return minari, EpisodeBuffer, MinariStorage


def env_spec(image_size: tuple[int, int]) -> Any:
    """The Gymnasium EnvSpec of SkyGarden at `image_size` (H, W): what `recover_environment` makes."""
    import gymnasium as gym

    from agentalign.envs import ENV_ID  # importing registers it

    h, w = (int(v) for v in image_size)
    return dataclasses.replace(gym.spec(ENV_ID), kwargs={"width": w, "height": h})


def export_minari(
    store: str | Path, dst: str | Path, *, dataset_id: str = DEFAULT_ID, description: str | None = None
) -> Path:
    """Write every episode of `store` as a Minari dataset in `dst`; returns dst/data (absolute).

    `dst` may be relative, and need not exist. Atomic: the dataset is written into a temporary
    sibling and renamed into place only once complete; a failure leaves nothing behind (folders
    it made are removed again, a folder that was already there stays as it was).
    """
    minari, EpisodeBuffer, MinariStorage = _minari()
    import gymnasium as gym

    reader = StoreReader(store)
    if len(reader) == 0:
        raise ValueError(f"{reader.path}: the store holds no episodes; nothing to export")
    dst = Path(dst).expanduser().resolve()
    data_path = dst / "data"
    if (data_path / "metadata.json").exists():
        raise DestinationExists(f"{data_path}: a Minari dataset is already there; choose another destination")
    if dst.exists() and not dst.is_dir():
        raise DestinationExists(f"{dst}: exists and is not a folder; choose another destination")
    if data_path.exists() and not (data_path.is_dir() and not any(data_path.iterdir())):
        raise DestinationExists(f"{data_path}: exists and is not a Minari dataset; choose another destination")

    # Stage what the final rename moves: DST itself when it does not exist yet, else DST/data.
    made = missing_dirs(dst.parent)
    if dst.exists():
        target, stage = data_path, dst / f".data.tmp-{uuid.uuid4().hex[:8]}"
        staged_data = stage
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        target, stage = dst, dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
        staged_data = stage / "data"
    try:
        staged_data.mkdir(parents=True)
        h, w = reader.image_size
        storage = MinariStorage.new(
            staged_data,
            observation_space=gym.spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8),
            action_space=gym.spaces.MultiDiscrete(ACTION_NVEC),
            env_spec=env_spec((h, w)),
            data_format="hdf5",
            jpeg_encoding=False,  # lossless, like the store
        )
        storage.update_metadata(
            {
                "dataset_id": dataset_id,
                "minari_version": minari.__version__,
                "description": description or f"Exported by agentalign from {reader.path} ({reader.dataset_id})",
                "agentalign_dataset_id": reader.dataset_id,
                "agentalign_schema_version": reader.manifest["schema_version"],
            }
        )
        storage.update_episodes(_buffers(reader, EpisodeBuffer))
        storage.update_episode_metadata(
            ({METADATA_ATTR: json.dumps(md)} for md in reader.all_metadata()), range(len(reader))
        )
        _fsync_tree(stage)
        os.rename(stage, target)  # the commit point: before it nothing is at DST, after it all
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        remove_made_dirs(made)
        raise
    return data_path


def _buffers(reader: StoreReader, EpisodeBuffer: Any) -> Iterator[Any]:
    for i in range(len(reader)):
        ep = reader.episode(i)
        t = len(ep)
        reached_pad = ep.metadata.get("jump_pad") in ("left", "middle", "right")
        ends = np.zeros(t, dtype=bool)
        ends[-1] = True
        seed = ep.metadata.get("seed")
        yield EpisodeBuffer(
            id=i,
            seed=seed if isinstance(seed, int) else None,
            observations=np.concatenate([ep.frames, ep.frames[-1:]]),  # (T + 1, H, W, 3)
            actions=ep.actions.astype(np.int64),  # (T, 16)
            rewards=np.zeros(t, dtype=np.float32),
            terminations=ends & reached_pad,
            truncations=ends & (not reached_pad),
            infos={k: np.concatenate([v, v[-1:]]) for k, v in ep.extras.items()},
        )


def _fsync_tree(root: Path) -> None:
    """Make every file under `root` durable before the rename publishes it."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def _data_path(src: str | Path) -> Path | None:
    p = Path(src)
    for candidate in (p, p / "data"):
        if (candidate / "metadata.json").is_file():
            return candidate
    return None


_UNREADABLE = (ValueError, KeyError, AssertionError, TypeError, OSError)  # what minari and h5py raise


def _open_dataset(minari: Any, src: str | Path) -> tuple[Any, str]:
    """(the dataset, how to name it in messages); every failure a ValueError naming `src`."""
    data_path = _data_path(src)
    if data_path is not None:
        try:
            return minari.MinariDataset(data_path), str(data_path)
        except _UNREADABLE as e:
            raise ValueError(f"{data_path}: not a readable Minari dataset ({e})") from None
    p = Path(src)
    if p.exists():
        raise ValueError(f"{p}: not a Minari dataset (no metadata.json in it or in {p / 'data'})")
    root = os.environ.get("MINARI_DATASETS_PATH") or "~/.minari/datasets"
    try:
        return minari.load_dataset(str(src)), str(src)
    except FileNotFoundError:
        raise ValueError(
            f"{src}: no such Minari dataset directory, nor a local Minari dataset with this id (in {root}); "
            "nothing is downloaded"
        ) from None
    except _UNREADABLE as e:
        raise ValueError(f"{src}: not a readable Minari dataset ({e})") from None


def import_minari(
    src: str | Path, dst: str | Path, *, size: tuple[int, int] | None = None, config: WriterConfig | None = None
) -> int:
    """Append every episode of a Minari dataset to the store `dst`; returns the count.

    `src` is a Minari dataset directory (holding metadata.json, or data/metadata.json) or the id
    of a dataset in the local Minari folder (nothing is downloaded). Observations must be
    (H, W, 3) uint8 images and actions MultiDiscrete([2]*12 + [11]*4). `size` resizes frames
    (area filter); default: keep the dataset's size. A missing, unreadable or empty dataset is
    a ValueError naming it; a failed import into a new store leaves no empty store behind.
    """
    minari, _, _ = _minari()
    dataset, where = _open_dataset(minari, src)
    obs_space, act_space = dataset.observation_space, dataset.action_space
    shape = getattr(obs_space, "shape", None)
    if not (shape is not None and len(shape) == 3 and shape[-1] == 3 and obs_space.dtype == np.uint8):
        raise ValueError(f"{where}: observation_space must be (H, W, 3) uint8 images, got {obs_space}")
    nvec = getattr(act_space, "nvec", None)
    if nvec is None or not np.array_equal(np.asarray(nvec).ravel(), ACTION_NVEC):
        raise ValueError(f"{where}: action_space must be MultiDiscrete({ACTION_NVEC.tolist()}), got {act_space}")
    size = tuple(size) if size is not None else (int(shape[0]), int(shape[1]))
    jpeg = bool(dataset.storage.metadata.get("jpeg_encoding", True))
    episode_ids = [int(i) for i in dataset.episode_indices]
    if not episode_ids:
        raise ValueError(f"{where}: the Minari dataset holds no episodes (an interrupted export?); nothing to import")
    metadatas = list(dataset.storage.get_episode_metadata(episode_ids))

    count = 0
    with no_empty_store_on_failure(dst), StoreWriter(dst, image_size=size, config=config) as writer:
        for ep_id, ep, md in zip(episode_ids, dataset.iterate_episodes(episode_ids), metadatas):
            t = len(ep.actions)
            frames = np.asarray(ep.observations)[:t]  # drop the final observation (no action follows it)
            if METADATA_ATTR in md:
                metadata = json.loads(md[METADATA_ATTR])
            else:
                metadata = {"source": "minari", "minari_dataset_id": dataset.id, "minari_episode": ep_id}
                if md.get("seed") is not None:
                    metadata["seed"] = int(md["seed"])
                if jpeg:
                    metadata["minari_jpeg"] = True  # frames were lossy before they reached us
            extras = {}
            for k, v in (ep.infos or {}).items():
                v = np.asarray(v)
                if v.dtype.kind in "biuf" and v.ndim >= 1 and v.shape[0] in (t, t + 1):
                    extras[k] = np.ascontiguousarray(v[:t])
            writer.add(
                Episode(
                    frames=np.ascontiguousarray(resize_frames(frames, size)),
                    actions=np.asarray(ep.actions),
                    extras=extras,
                    metadata=metadata,
                )
            )
            count += 1
    return count
