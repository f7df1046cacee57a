"""Minari export and import as a user meets them (issue 42, item 1): relative destinations, an
atomic export, a recoverable environment, and empty datasets refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agentalign.cli.data import data_app
from agentalign.data import StoreReader, StoreWriter

minari = pytest.importorskip("minari")
pytest.importorskip("h5py")

from agentalign.data.minari_io import export_minari, import_minari  # noqa: E402

runner = CliRunner()


def test_export_to_a_relative_destination(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data_path = export_minari(store, "out/minari")
    assert data_path == (tmp_path / "out" / "minari" / "data")
    dataset = minari.MinariDataset(data_path)
    assert len(dataset) == 6 and dataset.total_episodes == 6
    assert import_minari("out/minari", "back") == 6


def test_cli_export_to_a_relative_destination_then_again(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(data_app, ["export-minari", str(store), "out/minari"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "out" / "minari" / "data") in result.output
    result = runner.invoke(data_app, ["export-minari", str(store), "out/minari"])
    assert result.exit_code == 2 and "already there" in result.output
    result = runner.invoke(data_app, ["import-minari", "out/minari", "back"])
    assert result.exit_code == 0 and "imported 6 episodes" in result.output


def test_exported_dataset_recovers_the_environment(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    export_minari(store, root / "agentalign" / "skygarden-v0")
    dataset = minari.load_dataset("agentalign/skygarden-v0")
    assert dataset.spec.env_spec is not None and dataset.spec.env_spec.id == "agentalign/SkyGarden-v0"
    env = dataset.recover_environment()
    try:
        assert env.observation_space == dataset.observation_space
        assert env.action_space == dataset.action_space
        obs, _ = env.reset(seed=0)
        assert obs.shape == (32, 32, 3) and obs.dtype == np.uint8
    finally:
        env.close()


def _no_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".") or "tmp" in p.name]


def test_failed_export_leaves_nothing_and_a_second_export_works(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = StoreReader.episode

    def broken(self: StoreReader, i: int):
        if i == 3:
            raise OSError(28, "No space left on device", str(tmp_path / "out"))
        return real(self, i)

    monkeypatch.setattr(StoreReader, "episode", broken)
    with pytest.raises(OSError, match="No space left"):
        export_minari(store, tmp_path / "out" / "minari")
    assert not (tmp_path / "out").exists()  # neither the dataset nor the parent it made
    assert _no_leftovers(tmp_path) == []

    # Into a folder the user already has: that folder stays, with nothing inside.
    (tmp_path / "mine").mkdir()
    with pytest.raises(OSError):
        export_minari(store, tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == []

    monkeypatch.setattr(StoreReader, "episode", real)
    assert len(minari.MinariDataset(export_minari(store, tmp_path / "out" / "minari"))) == 6
    assert len(minari.MinariDataset(export_minari(store, tmp_path / "mine"))) == 6
    assert _no_leftovers(tmp_path) == [] and _no_leftovers(tmp_path / "mine") == []


def test_export_of_an_empty_store_is_refused(tmp_path: Path) -> None:
    StoreWriter(tmp_path / "empty", image_size=(8, 8)).close()
    with pytest.raises(ValueError, match=r"empty: the store holds no episodes"):
        export_minari(tmp_path / "empty", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _empty_dataset(where: Path) -> None:
    """A dataset with metadata and no episodes, like the half-written export of issue 42."""
    import gymnasium as gym
    from minari.dataset.minari_storage import MinariStorage

    (where / "data").mkdir(parents=True)
    storage = MinariStorage.new(
        where / "data",
        observation_space=gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
        action_space=gym.spaces.MultiDiscrete([2] * 12 + [11] * 4),
        data_format="hdf5",
        jpeg_encoding=False,
    )
    storage.update_metadata({"dataset_id": "x/empty-v0", "minari_version": minari.__version__})


def test_import_of_an_empty_dataset_is_an_error(tmp_path: Path) -> None:
    _empty_dataset(tmp_path / "m")
    with pytest.raises(ValueError, match=r"m/data: the Minari dataset holds no episodes"):
        import_minari(tmp_path / "m", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    result = runner.invoke(data_app, ["import-minari", str(tmp_path / "m"), str(tmp_path / "s")])
    assert result.exit_code == 2 and "no episodes" in result.output
    assert not (tmp_path / "s").exists()


def test_import_of_a_missing_dataset_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    result = runner.invoke(data_app, ["import-minari", str(tmp_path / "nothing"), str(tmp_path / "s")])
    assert result.exit_code == 2 and "nothing" in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(data_app, ["import-minari", "x/absent-v0", str(tmp_path / "s")])
    assert result.exit_code == 2 and "x/absent-v0" in result.output
    (tmp_path / "folder").mkdir()
    result = runner.invoke(data_app, ["import-minari", str(tmp_path / "folder"), str(tmp_path / "s")])
    assert result.exit_code == 2 and "metadata.json" in result.output
    assert not (tmp_path / "s").exists()
