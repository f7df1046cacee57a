"""Minari interchange: export then import gives the same episodes, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agentalign.data import Episode, StoreReader

from .helpers import assert_same_episode

minari = pytest.importorskip("minari")
pytest.importorskip("h5py")

from agentalign.data.minari_io import export_minari, import_minari  # noqa: E402


def test_round_trip_through_minari(tmp_path: Path, store: Path, episodes: list[Episode]) -> None:
    data_path = export_minari(store, tmp_path / "minari", dataset_id="agentalign/test-v0")
    dataset = minari.MinariDataset(data_path)
    assert len(dataset) == len(episodes) and dataset.total_steps == sum(len(e) for e in episodes)
    first = dataset[0]
    assert first.observations.shape == (len(episodes[0]) + 1, 32, 32, 3)  # Minari's final observation
    assert np.array_equal(first.observations[:-1], episodes[0].frames)
    assert np.array_equal(first.actions, episodes[0].actions)

    n = import_minari(tmp_path / "minari", tmp_path / "back")
    assert n == len(episodes)
    for got, want in zip(StoreReader(tmp_path / "back"), episodes):
        assert_same_episode(got, want)


def test_export_refuses_to_overwrite(tmp_path: Path, store: Path) -> None:
    export_minari(store, tmp_path / "m")
    with pytest.raises(FileExistsError, match="already there"):
        export_minari(store, tmp_path / "m")


def test_import_rejects_other_action_spaces(tmp_path: Path) -> None:
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    data = tmp_path / "other" / "data"
    data.mkdir(parents=True)
    storage = MinariStorage.new(
        data,
        observation_space=gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
        action_space=gym.spaces.Discrete(4),
        data_format="hdf5",
        jpeg_encoding=False,
    )
    storage.update_metadata({"dataset_id": "x/other-v0", "minari_version": minari.__version__})
    storage.update_episodes(
        [EpisodeBuffer(observations=np.zeros((3, 8, 8, 3), np.uint8), actions=np.zeros(2, np.int64),
                       rewards=np.zeros(2), terminations=np.zeros(2, bool), truncations=np.zeros(2, bool), infos={})]
    )
    with pytest.raises(ValueError, match=r"action_space must be MultiDiscrete"):
        import_minari(tmp_path / "other", tmp_path / "store")
