"""Import recorded gameplay laid out like Microsoft's public Bleeding Edge sample.

The layout: a directory (searched recursively) of per-clip `.npz` files, each holding

    actions   (T, 16)  12 buttons 0/1, then left-x, left-y, right-x, right-y as bins 0..10
                       (the same format as agentalign.envs.gamepad; integer-valued floats are
                       accepted, anything else is an error)
    frames    (T, H, W, 3) uint8  -- or `obs`; or, when neither is there, a video `<stem>.mp4`
                                      beside the .npz, read with imageio/ffmpeg

Other per-step numeric arrays with T rows are kept as privileged extras. Frames are resized to
the store's resolution with an area (box) filter, as the paper resized to 128x128. Every problem
raises ClipError naming the file and the field (and, for a file that is not a clip at all, what a
clip holds). Files are read with allow_pickle=False: Python objects in a file are refused.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from agentalign.data.episode import Episode
from agentalign.data.store import StoreWriter, WriterConfig, no_empty_store_on_failure
from agentalign.envs.gamepad import ACTION_DIM, validate_actions

FRAME_KEYS = ("frames", "obs")
LAYOUT = (
    "a Bleeding Edge clip is an .npz holding 'actions' (T, 16) and 'frames' (or 'obs') (T, H, W, 3) uint8, "
    "or a video <clip>.mp4 beside it instead of frames"
)


class ClipError(ValueError):
    """A recorded clip that cannot be imported; the message names the file and the field."""


def resize_frames(frames_thw3: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8 with an area (box) filter; no-op at equal size."""
    h, w = size
    if frames_thw3.shape[1:3] == (h, w):
        return frames_thw3
    return np.stack([_resize_one(f, size) for f in frames_thw3]) if len(frames_thw3) else frames_thw3[:, :h, :w]


def _resize_one(frame_hw3: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.asarray(Image.fromarray(frame_hw3).resize((w, h), Image.Resampling.BOX))


def _read_actions(path: Path, arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 2 or arr.shape[1] != ACTION_DIM:
        raise ClipError(f"{path}: field 'actions' must have shape (T, {ACTION_DIM}), got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ClipError(f"{path}: field 'actions' holds NaN or infinite values")
        frac = arr != np.round(arr)
        if frac.any():
            t, c = np.argwhere(frac)[0]
            raise ClipError(f"{path}: field 'actions'[{t}, {c}] = {float(arr[t, c])!r} is not a whole number (expected bins)")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "biu":
        raise ClipError(f"{path}: field 'actions' must be numeric, got dtype {arr.dtype}")
    try:
        return validate_actions(arr, batch=arr.shape[0], name=f"{path}: field 'actions'").astype(np.uint8)
    except ValueError as e:
        raise ClipError(str(e)) from None


def _check_frames(path: Path, key: str, frames: np.ndarray) -> None:
    if frames.dtype != np.uint8:
        raise ClipError(f"{path}: field '{key}' must have dtype uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ClipError(f"{path}: field '{key}' must have shape (T, H, W, 3), got {frames.shape}")


def _read_video(path: Path, size: tuple[int, int]) -> np.ndarray:
    """(T, h, w, 3) uint8 from an mp4, resized frame by frame so memory stays small."""
    import imageio.v2 as imageio  # ffmpeg start-up is slow; only clips with videos pay it

    try:
        reader = imageio.get_reader(path, format="FFMPEG")
    except Exception as e:  # imageio raises several types for unreadable videos
        raise ClipError(f"{path}: cannot open the video ({e})") from None
    try:
        frames = []
        for f in reader:
            f = np.asarray(f)
            if f.ndim != 3 or f.shape[-1] != 3:
                raise ClipError(f"{path}: video frames must be RGB, got shape {f.shape}")
            frames.append(f if f.shape[:2] == tuple(size) else _resize_one(f, size))
    except ClipError:
        raise
    except Exception as e:
        raise ClipError(f"{path}: the video is damaged or truncated ({e})") from None
    finally:
        reader.close()
    if not frames:
        raise ClipError(f"{path}: the video has no frames")
    return np.stack(frames)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The clip's arrays: 'actions' and the frame field must read; other fields that do not
    (Python objects, damaged members) are left out, as extras only keep numeric arrays anyway."""
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError:  # neither .npz nor .npy magic: numpy would unpickle it, which we never do
        raise ClipError(f"{path}: not an .npz archive (nor .npy; pickled data is never loaded); {LAYOUT}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ClipError(f"{path}: not a readable .npz, or truncated ({e}); {LAYOUT}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ClipError(f"{path}: a single .npy array, not an .npz archive; {LAYOUT}")
    with npz:
        names = sorted(npz.files)
        if "actions" not in names:
            raise ClipError(f"{path}: field 'actions' is missing (the file holds {names}); {LAYOUT}")
        arrays = {}
        for key in names:
            try:
                arrays[key] = npz[key]
            except ValueError:  # an object array, which would need pickle
                if key == "actions" or key in FRAME_KEYS:
                    kind = "(T, 16) numbers" if key == "actions" else "(T, H, W, 3) uint8 images"
                    raise ClipError(
                        f"{path}: field '{key}' holds Python objects (pickled data, never loaded); expected {kind}"
                    ) from None
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ClipError(f"{path}: field '{key}' is damaged or truncated ({e})") from None
    return arrays


def load_clip(npz_path: str | Path, size: tuple[int, int], name: str | None = None) -> Episode:
    """One clip -> an Episode at `size` (H, W); raises ClipError naming file and field.

    `name` goes to metadata["clip"] (default: the file's stem).
    """
    path = Path(npz_path)
    if not path.is_file():
        raise ClipError(f"{path}: no such clip file")
    arrays = _read_npz(path)
    actions = _read_actions(path, arrays.pop("actions"))
    t = len(actions)
    if t == 0:
        raise ClipError(f"{path}: field 'actions' is empty")

    key = next((k for k in FRAME_KEYS if k in arrays), None)
    if key is not None:
        frames = arrays.pop(key)
        _check_frames(path, key, frames)
        source = f"field '{key}'"
        frames = resize_frames(frames, size)
    else:
        video = path.with_suffix(".mp4")
        if not video.is_file():
            keys = " or ".join(map(repr, FRAME_KEYS))
            raise ClipError(f"{path}: no frames: neither a field {keys} nor a video {video.name} beside it")
        frames = _read_video(video, size)
        source = f"video {video.name}"
    if len(frames) != t:
        raise ClipError(f"{path}: field 'actions' has {t} steps but {source} has {len(frames)} frames")

    extras = {
        k: np.ascontiguousarray(v)
        for k, v in arrays.items()
        if k not in FRAME_KEYS and v.ndim >= 1 and v.shape[0] == t and v.dtype.kind in "biuf"
    }
    metadata = {"source": "bleeding_edge", "clip": name or path.stem, "length": t}
    return Episode(frames=np.ascontiguousarray(frames), actions=actions, extras=extras, metadata=metadata)


def find_clips(src: str | Path) -> list[Path]:
    """Every .npz under `src`, sorted so imports are reproducible."""
    root = Path(src)
    if not root.is_dir():
        raise ClipError(f"{root}: no such directory of clips")
    return sorted(root.rglob("*.npz"))


@dataclass
class ImportReport:
    imported: int = 0
    steps: int = 0
    skipped: list[str] = field(default_factory=list)  # "file: reason" for clips left out
    already: int = 0  # clips of src that an earlier import put in the store


def import_bleeding_edge(
    src: str | Path,
    dst: str | Path,
    size: tuple[int, int] = (64, 64),
    *,
    skip_bad: bool = False,
    config: WriterConfig | None = None,
) -> ImportReport:
    """Import every clip under `src` into the store `dst` (created, or appended to).

    A bad clip raises ClipError before anything of it is written; with skip_bad=True it is
    recorded in the report instead and the import goes on. Clips already imported (same
    `clip` name, the path relative to `src` without suffix) are skipped, so a killed import
    resumes where it stopped.

    A folder with no clips, or one whose clips are all bad (skip_bad=True), raises ClipError. A
    failed import into a new store leaves no empty store behind (a folder that was already there
    stays); clips it committed before the failure stay, for a rerun to resume.
    """
    root = Path(src)
    clips = {p.relative_to(root).with_suffix("").as_posix(): p for p in find_clips(root)}
    if not clips:
        raise ClipError(f"{root}: no .npz clips in this folder or below; {LAYOUT}")
    report = ImportReport()
    with no_empty_store_on_failure(dst), StoreWriter(dst, image_size=size, config=config) as writer:
        done = {c for c in writer.durable_values("clip") if c is not None}
        report.already = len(done & clips.keys())
        for episode in _episodes(clips, size, skip_bad, report, done):
            writer.add(episode)
            report.imported += 1
            report.steps += len(episode)
        if report.imported == 0 and report.already == 0:
            raise ClipError(
                f"{root}: no clip could be imported ({len(clips)} bad); the first: {report.skipped[0]}"
            )
    return report


def _episodes(
    clips: dict[str, Path], size: tuple[int, int], skip_bad: bool, report: ImportReport, done: set[str]
) -> Iterator[Episode]:
    for name, path in clips.items():
        if name in done:
            continue
        try:
            yield load_clip(path, size, name=name)
        except ClipError as e:
            if not skip_bad:
                raise
            report.skipped.append(str(e))
