"""Looking at the island: contact sheets of frames, and videos of episodes beside a top-down map.

Images are uint8 (H, W, 3); videos are written with imageio (mp4 through imageio-ffmpeg, or gif).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from agentalign.envs.skygarden import topdown


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling, so pixels stay crisp in sheets and videos."""
    return img if factor == 1 else np.repeat(np.repeat(img, factor, -3), factor, -2)


def tile(images: Sequence[np.ndarray], cols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Lay out equally sized (H, W, 3) images in a grid with `pad` pixels between them."""
    if not images:
        raise ValueError("nothing to tile")
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return out


def fit_height(img: np.ndarray, height: int) -> np.ndarray:
    """Resize (nearest) to a given height, keeping the aspect ratio."""
    h, w = img.shape[:2]
    rows = (np.arange(height) * h // height).clip(0, h - 1)
    width = max(1, round(w * height / h))
    cols = (np.arange(width) * w // width).clip(0, w - 1)
    return img[rows][:, cols]


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 10) -> Path:
    """Write frames (each (H, W, 3) uint8) as mp4 or gif, chosen by the file suffix."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.stack(frames)
    if path.suffix == ".gif":
        iio.imwrite(path, arr, duration=1000 / fps, loop=0)
    elif path.suffix == ".mp4":
        h, w = arr.shape[1:3]
        _write_mp4(path, arr[:, : h - h % 2, : w - w % 2], fps)  # yuv420p wants even sizes
    else:
        raise ValueError(f"video path must end in .mp4 or .gif, got {path.name!r}")
    return path


def _write_mp4(path: Path, arr: np.ndarray, fps: int) -> None:
    import imageio

    # macro_block_size=1: keep our size instead of padding to multiples of 16.
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error") as w:  # fmt: skip
        for f in arr:
            w.append_data(f)


def episode_panels(views: Sequence[np.ndarray], paths: Sequence[np.ndarray], pads: Sequence[str],
                   view_scale: int = 4, map_scale: int = 8) -> list[np.ndarray]:  # fmt: skip
    """Video frames: the agents' views (each (T_i, H, W, 3)) in a grid beside a top-down map
    with every agent's path so far. Episodes that ended hold their last frame."""
    base = topdown.map_image(map_scale)
    colours = [topdown.PAD_MARK_COLOURS[p] for p in pads]
    length = max(len(v) for v in views)
    cols = 2 if len(views) > 1 else 1
    out = []
    for t in range(length):
        tiles = [upscale(v[min(t, len(v) - 1)], view_scale) for v in views]
        grid = tile(tiles, cols)
        sofar = [p[: min(t, len(p) - 1) + 1] for p in paths]
        mp = fit_height(topdown.draw_paths(base, sofar, colours, map_scale), grid.shape[0])
        out.append(np.concatenate([grid, mp], 1))
    return out


def contact_sheet(frames: Sequence[np.ndarray], cols: int, scale: int = 2) -> np.ndarray:
    return tile([upscale(f, scale) for f in frames], cols)


__all__ = ["contact_sheet", "episode_panels", "fit_height", "tile", "upscale", "write_video"]
