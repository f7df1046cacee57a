"""Clips people can watch: each trajectory of a store rendered once as a WebM/VP9 video.

The model sees 64 px frames; people get them upscaled to 256 px wide with nearest neighbour (the
pixels stay crisp, as in `envs.viz`), at 10 fps. VP9 in WebM, not H.264: Debian's Chromium, the
browser of the page's tests, cannot play H.264. The encoder is the ffmpeg that `imageio-ffmpeg`
bundles, so no system ffmpeg is needed.

A clip is written to a temporary file in the clip folder and renamed into place, so a request that
arrives while another renders the same clip never sees half a file; later calls return the file.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import numpy as np

from agentalign.envs import viz

WIDTH = 256
FPS = 10
# Constant quality (crf, with no bitrate cap), and the encoder's fastest settings: a clip is
# rendered while a person waits for the page, and 256 px pixel art compresses well anyway.
_VP9_PARAMS = ["-crf", "24", "-b:v", "0", "-deadline", "realtime", "-cpu-used", "8"]

_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def clip_file(labels_dir: str | Path, episode: int) -> Path:
    """Where episode `episode`'s clip lives (rendered or not)."""
    return Path(labels_dir) / "clips" / f"{int(episode)}.webm"


def clip_path(labels_dir: str | Path, store, episode: int) -> Path:
    """The clip of episode `episode` of `store` (a `StoreReader`), rendering it on the first call:
    `labels_dir/clips/{episode}.webm`, WebM/VP9, 256 px wide (nearest neighbour), 10 fps, one video
    frame per stored frame. ValueError for an episode the store does not have."""
    n = len(store)
    if isinstance(episode, bool) or not isinstance(episode, (int, np.integer)) or not 0 <= episode < n:
        raise ValueError(f"episode {episode!r} is not in the store (it has episodes 0..{n - 1})")
    path = clip_file(labels_dir, episode)
    if path.is_file():
        return path
    with _lock_for(path):  # one render per clip in this process; others wait for it
        if not path.is_file():
            write_webm(path, _clip_frames(store.frames(int(episode))), fps=FPS)
    return path


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path.resolve(), threading.Lock())


def _clip_frames(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) -> (T, H', 256, 3), nearest neighbour, H' even (VP9's 4:2:0 wants it)."""
    if len(frames) == 0:
        raise ValueError("the episode has no frames")
    h, w = frames.shape[1:3]
    if WIDTH % w == 0:
        out = viz.upscale(frames, WIDTH // w)
    else:  # a width that does not divide 256: pick source rows and columns
        height = max(2, round(h * WIDTH / w))
        rows = np.arange(height) * h // height
        cols = np.arange(WIDTH) * w // WIDTH
        out = frames[:, rows][:, :, cols]
    return out[:, : out.shape[1] - out.shape[1] % 2]


def write_webm(path: str | Path, frames: np.ndarray, fps: int = FPS) -> Path:
    """Write (T, H, W, 3) uint8 frames as a WebM/VP9 video, atomically (temp file, then rename)."""
    import imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.webm")
    try:
        # macro_block_size=1: keep our size instead of padding to multiples of 16.
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libvpx-vp9", quality=None,
                                macro_block_size=1, ffmpeg_log_level="error", output_params=_VP9_PARAMS) as w:  # fmt: skip
            for f in frames:
                w.append_data(np.ascontiguousarray(f))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
