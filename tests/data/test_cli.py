"""`agentalign data ...` commands, run through typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from agentalign.cli.data import data_app
from agentalign.data.testing import synthetic_actions, synthetic_frames

runner = CliRunner()


def test_info_text_and_json(store: Path) -> None:
    result = runner.invoke(data_app, ["info", str(store)])
    assert result.exit_code == 0, result.output
    assert "episodes     6" in result.output and "jump_pad" in result.output
    result = runner.invoke(data_app, ["info", str(store), "--json"])
    info = json.loads(result.output)
    assert info["n_episodes"] == 6 and info["schema_version"] == 1


def test_verify_ok_and_damaged(store: Path) -> None:
    result = runner.invoke(data_app, ["verify", str(store), "--deep"])
    assert result.exit_code == 0 and "OK" in result.output
    chunk = store / "chunks" / "chunk-000000.bin"
    chunk.write_bytes(chunk.read_bytes()[:-1])
    result = runner.invoke(data_app, ["verify", str(store)])
    assert result.exit_code == 1 and "FAILED" in result.output and "chunk-000000.bin" in result.output


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(data_app, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such store directory" in result.output  # bad input


def test_import_be(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "clips").mkdir()
    np.savez(tmp_path / "clips" / "c.npz", actions=synthetic_actions(rng, 9), frames=synthetic_frames(rng, 9, (48, 48)))
    result = runner.invoke(data_app, ["import-be", str(tmp_path / "clips"), str(tmp_path / "s"), "--size", "24"])
    assert result.exit_code == 0, result.output
    assert "imported 1 clips (9 steps)" in result.output
    info = json.loads(runner.invoke(data_app, ["info", str(tmp_path / "s"), "--json"]).output)
    assert info["image_size"] == [24, 24]


def test_minari_commands(tmp_path: Path, store: Path) -> None:
    result = runner.invoke(data_app, ["export-minari", str(store), str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(data_app, ["import-minari", str(tmp_path / "m"), str(tmp_path / "back")])
    assert result.exit_code == 0 and "imported 6 episodes" in result.output
