"""Import of clips in the public Bleeding Edge sample layout: arrays, mp4 videos and bad clips."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from agentalign.data import StoreReader
from agentalign.data.bleeding_edge import ClipError, import_bleeding_edge, load_clip, resize_frames
from agentalign.data.testing import synthetic_actions, synthetic_frames


def _clip(t: int = 12, size: tuple[int, int] = (64, 96), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return synthetic_frames(rng, t, size), synthetic_actions(rng, t)


def test_array_clip_is_resized_with_an_area_filter(tmp_path: Path) -> None:
    frames, actions = _clip()
    pos = np.arange(24, dtype=np.float32).reshape(12, 2)
    np.savez(tmp_path / "match_01.npz", actions=actions.astype(np.float32), frames=frames, pos=pos, note=np.array(3))
    ep = load_clip(tmp_path / "match_01.npz", (32, 48))
    assert ep.frames.shape == (12, 32, 48, 3) and ep.frames.dtype == np.uint8
    assert np.array_equal(ep.actions, actions) and ep.actions.dtype == np.uint8  # float bins accepted
    assert np.array_equal(ep.extras["pos"], pos) and "note" not in ep.extras
    assert ep.metadata == {"source": "bleeding_edge", "clip": "match_01", "length": 12}
    # A 2x2 box filter: each pixel is the rounded mean of its block.
    want = frames.reshape(12, 32, 2, 48, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(ep.frames.astype(np.float64) - want).max() <= 1.0


def test_obs_key_and_same_size_keep_frames_exact(tmp_path: Path) -> None:
    frames, actions = _clip(size=(32, 32))
    np.savez_compressed(tmp_path / "c.npz", actions=actions, obs=frames)
    ep = load_clip(tmp_path / "c.npz", (32, 32))
    assert np.array_equal(ep.frames, frames)


def test_mp4_clip_beside_the_npz(tmp_path: Path) -> None:
    frames, actions = _clip(t=15, size=(64, 64))
    np.savez(tmp_path / "run.npz", actions=actions)
    iio.imwrite(tmp_path / "run.mp4", frames, plugin="FFMPEG", fps=10, codec="libx264")
    ep = load_clip(tmp_path / "run.npz", (32, 32))
    assert ep.frames.shape == (15, 32, 32, 3) and ep.frames.dtype == np.uint8
    assert np.array_equal(ep.actions, actions)
    # H.264 is lossy: frames are close to the source's, not equal.
    want = resize_frames(frames, (32, 32)).astype(np.float64)
    assert np.abs(ep.frames.astype(np.float64) - want).mean() < 8.0


def test_import_directory_into_a_store_and_resume(tmp_path: Path) -> None:
    src = tmp_path / "clips"
    (src / "day2").mkdir(parents=True)
    for i, sub in enumerate(["", "", "day2/"]):
        frames, actions = _clip(t=10 + i, seed=i)
        np.savez(src / f"{sub}clip{i}.npz", actions=actions, frames=frames)
    report = import_bleeding_edge(src, tmp_path / "store", (32, 32))
    assert (report.imported, report.steps, report.skipped) == (3, 33, [])
    reader = StoreReader(tmp_path / "store")
    assert [m["clip"] for m in reader.all_metadata()] == ["clip0", "clip1", "day2/clip2"]
    # Running it again imports nothing twice.
    assert import_bleeding_edge(src, tmp_path / "store", (32, 32)).imported == 0
    assert len(StoreReader(tmp_path / "store")) == 3


def _write_bad(path: Path, kind: str) -> str:
    frames, actions = _clip()
    if kind == "no_actions":
        np.savez(path, frames=frames)
        return r"field 'actions' is missing"
    if kind == "actions_shape":
        np.savez(path, actions=actions[:, :12], frames=frames)
        return r"field 'actions' must have shape \(T, 16\), got \(12, 12\)"
    if kind == "actions_range":
        actions[4, 14] = 11
        np.savez(path, actions=actions, frames=frames)
        return r"field 'actions'\[4, 14\] = 11 is out of range for component 'right_x'"
    if kind == "actions_fraction":
        np.savez(path, actions=actions.astype(np.float32) + 0.5, frames=frames)
        return r"field 'actions'\[0, 0\] = 0.5 is not a whole number"
    if kind == "frames_dtype":
        np.savez(path, actions=actions, frames=frames.astype(np.float32))
        return r"field 'frames' must have dtype uint8, got float32"
    if kind == "frames_shape":
        np.savez(path, actions=actions, frames=frames[..., 0])
        return r"field 'frames' must have shape \(T, H, W, 3\)"
    if kind == "length_mismatch":
        np.savez(path, actions=actions, frames=frames[:-2])
        return r"field 'actions' has 12 steps but field 'frames' has 10 frames"
    if kind == "no_frames":
        np.savez(path, actions=actions)
        return r"no frames: neither a field 'frames' or 'obs' nor a video bad.mp4"
    if kind == "truncated":
        np.savez(path, actions=actions, frames=frames)
        path.write_bytes(path.read_bytes()[:200])
        return r"not a readable .npz, or truncated"
    if kind == "pickled":
        np.savez(path, actions=np.array([{"a": 1}], dtype=object), frames=frames)
        return r"field 'actions' holds Python objects \(pickled data, never loaded\)"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["no_actions", "actions_shape", "actions_range", "actions_fraction", "frames_dtype", "frames_shape",
     "length_mismatch", "no_frames", "truncated", "pickled"],
)
def test_bad_clips_name_the_file_and_field(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.npz"
    message = _write_bad(path, kind)
    with pytest.raises(ClipError, match=message) as err:
        load_clip(path, (32, 32))
    assert str(path) in str(err.value)


def test_bad_clip_stops_the_import_or_is_skipped(tmp_path: Path) -> None:
    src = tmp_path / "clips"
    src.mkdir()
    frames, actions = _clip()
    np.savez(src / "a_good.npz", actions=actions, frames=frames)
    _write_bad(src / "b_bad.npz", "actions_range")
    np.savez(src / "c_good.npz", actions=actions, frames=frames)
    with pytest.raises(ClipError, match="b_bad.npz"):
        import_bleeding_edge(src, tmp_path / "s1", (32, 32))
    assert len(StoreReader(tmp_path / "s1")) == 1  # the good clip before it is committed
    report = import_bleeding_edge(src, tmp_path / "s2", (32, 32), skip_bad=True)
    assert report.imported == 2 and len(report.skipped) == 1 and "b_bad.npz" in report.skipped[0]


def test_damaged_video_is_a_clear_error(tmp_path: Path) -> None:
    frames, actions = _clip(t=5, size=(32, 32))
    np.savez(tmp_path / "v.npz", actions=actions)
    (tmp_path / "v.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with pytest.raises(ClipError, match=r"v.mp4: (cannot open the video|the video is damaged)"):
        load_clip(tmp_path / "v.npz", (32, 32))
