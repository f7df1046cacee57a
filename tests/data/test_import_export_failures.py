"""Failures a user meets importing and exporting (issue 42, items 1 and 7): each is one clear line
naming the file, exit code 2 for bad input, and a failed import or export leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agentalign.cli.common import main
from agentalign.cli.data import data_app
from agentalign.data import StoreReader, StoreWriter
from agentalign.data.bleeding_edge import ClipError, import_bleeding_edge, load_clip
from agentalign.data.testing import synthetic_actions, synthetic_frames

runner = CliRunner()


def _good_clip(path: Path, t: int = 6, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, actions=synthetic_actions(rng, t), frames=synthetic_frames(rng, t, (16, 16)))


def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


# --------------------------------------------------------------------------------------------
# Bleeding Edge import


def test_random_npz_names_the_file_and_the_layout(tmp_path: Path) -> None:
    path = tmp_path / "random.npz"
    np.savez(path, x=np.array([object()], dtype=object))
    with pytest.raises(ClipError) as err:
        load_clip(path, (16, 16))
    msg = str(err.value)
    assert str(path) in msg and "allow_pickle" not in msg and "pickled" not in msg
    assert "'actions' (T, 16)" in msg and "'frames'" in msg and "\n" not in msg


def test_npz_without_the_expected_arrays(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros((3, 3)), bias=np.zeros(3))
    with pytest.raises(ClipError, match=r"field 'actions' is missing.*'bias', 'weights'.*'actions' \(T, 16\)"):
        load_clip(path, (16, 16))


def test_pickled_actions_are_refused_without_numpy_advice(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, actions=np.array([{"a": 1}], dtype=object), frames=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ClipError, match=r"p.npz: field 'actions' holds Python objects") as err:
        load_clip(path, (16, 16))
    assert "allow_pickle" not in str(err.value)


def test_a_plain_npy_named_npz(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((4, 16)))
    with pytest.raises(ClipError, match=r"a.npz: a single .npy array, not an .npz archive"):
        load_clip(path, (16, 16))


def test_empty_folder_is_an_error_and_creates_no_store(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    with pytest.raises(ClipError, match=r"clips: no \.npz clips"):
        import_bleeding_edge(tmp_path / "clips", tmp_path / "s", (16, 16))
    assert not (tmp_path / "s").exists()


def test_all_clips_bad_with_skip_bad_is_an_error_and_leaves_no_store(tmp_path: Path) -> None:
    src = tmp_path / "clips"
    src.mkdir()
    np.savez(src / "a.npz", x=np.zeros(3))
    np.savez(src / "b.npz", actions=np.zeros((4, 3)))
    with pytest.raises(ClipError, match=r"clips: no clip could be imported \(2 bad\); the first: .*a.npz"):
        import_bleeding_edge(src, tmp_path / "deep" / "s", (16, 16), skip_bad=True)
    assert not (tmp_path / "deep").exists()  # neither the store nor the parent it made


def test_failed_import_keeps_a_folder_the_user_had(tmp_path: Path) -> None:
    src = tmp_path / "clips"
    src.mkdir()
    np.savez(src / "a.npz", x=np.zeros(3))
    (tmp_path / "mine").mkdir()
    with pytest.raises(ClipError, match="a.npz"):
        import_bleeding_edge(src, tmp_path / "mine", (16, 16))
    assert (tmp_path / "mine").is_dir() and os.listdir(tmp_path / "mine") == []


def test_failed_import_into_an_existing_store_keeps_it(tmp_path: Path) -> None:
    src = tmp_path / "clips"
    src.mkdir()
    _good_clip(src / "a.npz")
    import_bleeding_edge(src, tmp_path / "s", (16, 16))
    np.savez(src / "b.npz", x=np.zeros(3))
    with pytest.raises(ClipError, match="b.npz"):
        import_bleeding_edge(src, tmp_path / "s", (16, 16))
    assert len(StoreReader(tmp_path / "s")) == 1


def test_rerun_with_everything_imported_is_fine(tmp_path: Path) -> None:
    src = tmp_path / "clips"
    src.mkdir()
    _good_clip(src / "a.npz")
    import_bleeding_edge(src, tmp_path / "s", (16, 16))
    report = import_bleeding_edge(src, tmp_path / "s", (16, 16))
    assert (report.imported, report.already) == (0, 1)


# --------------------------------------------------------------------------------------------
# Exit codes of `agentalign data ...`: 2 for bad input, 1 only for `verify` finding damage


def test_import_be_of_a_random_npz_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    np.savez(tmp_path / "clips" / "r.npz", x=np.array([object()], dtype=object))
    result = runner.invoke(data_app, ["import-be", str(tmp_path / "clips"), str(tmp_path / "s")])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert line.startswith("error: ") and str(tmp_path / "clips" / "r.npz") in line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("skip_bad", [False, True])
def test_import_be_of_nothing_exits_2(tmp_path: Path, skip_bad: bool) -> None:
    (tmp_path / "clips").mkdir()
    if skip_bad:
        np.savez(tmp_path / "clips" / "bad.npz", x=np.zeros(2))
    args = ["import-be", str(tmp_path / "clips"), str(tmp_path / "s")] + (["--skip-bad"] if skip_bad else [])
    result = runner.invoke(data_app, args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and not (tmp_path / "s").exists()


def test_bad_arguments_exit_2(tmp_path: Path, store: Path) -> None:
    (tmp_path / "clips").mkdir()
    _good_clip(tmp_path / "clips" / "a.npz")
    assert runner.invoke(data_app, ["import-be", str(tmp_path / "clips"), str(tmp_path / "s"), "--size", "0"]).exit_code == 2
    # The store holds 32x32 images: importing at another size into it is bad input.
    result = runner.invoke(data_app, ["import-be", str(tmp_path / "clips"), str(store), "--size", "16"])
    assert result.exit_code == 2 and "32x32" in result.output


@pytest.mark.parametrize("command", ["info", "verify", "sheet"])
def test_missing_or_invalid_store_exits_2(tmp_path: Path, command: str) -> None:
    result = runner.invoke(data_app, [command, str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such store directory" in _one_line(result.output)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    result = runner.invoke(data_app, [command, str(tmp_path / "junk")])
    assert result.exit_code == 2 and "manifest.json" in _one_line(result.output)


def test_verify_exits_1_only_for_damage(store: Path) -> None:
    chunk = store / "chunks" / "chunk-000000.bin"
    chunk.write_bytes(chunk.read_bytes()[:-1])
    result = runner.invoke(data_app, ["verify", str(store)])
    assert result.exit_code == 1 and "FAILED" in result.output
    help_text = runner.invoke(data_app, ["verify", "--help"]).output
    assert "1" in help_text and "2" in help_text and "damage" in help_text


def test_sheet_of_an_empty_store_exits_2(tmp_path: Path) -> None:
    StoreWriter(tmp_path / "empty", image_size=(8, 8)).close()
    result = runner.invoke(data_app, ["sheet", str(tmp_path / "empty"), "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 2 and "no episodes" in result.output


def test_the_entry_point_exits_2_for_a_bad_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "clips").mkdir()
    np.savez(tmp_path / "clips" / "r.npz", x=np.zeros(3))
    with pytest.raises(SystemExit) as exit_:
        main(["data", "import-be", str(tmp_path / "clips"), str(tmp_path / "s")])
    assert exit_.value.code == 2
    assert "r.npz" in _one_line(capsys.readouterr().err)
