"""Top-down pictures of the island: the map with spawns and pads, and trajectories or a
position heatmap drawn over it — the basis of the paper's trajectory heatmaps (figure 10).

Pure NumPy (plus a matplotlib colour map for heatmaps); images are uint8 (H, W, 3) with the
front of the island (the pads) at the top, as in the map text.
"""

from __future__ import annotations

import numpy as np

from agentalign.envs.skygarden import world as W

_CELL_COLOURS = {
    W.FLOOR_GRASS: (120, 185, 100),
    W.FLOOR_PATH: (215, 200, 160),
    W.FLOOR_PAD: (60, 220, 230),
    W.FLOOR_SPAWN: (175, 110, 205),
    W.WALL_STONE: (110, 110, 120),
    W.WALL_HEDGE: (35, 90, 40),
    W.WALL_ROCK: (120, 100, 85),
}
PAD_MARK_COLOURS = {"left": (230, 60, 60), "middle": (240, 200, 40), "right": (60, 90, 230), "none": (90, 90, 90)}


def map_image(scale: int = 8) -> np.ndarray:
    """The island seen from above: (Y*scale, X*scale, 3) uint8, pads at the top."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    lut = np.zeros((max(_CELL_COLOURS) + 1, 3), dtype=np.uint8)
    for k, c in _CELL_COLOURS.items():
        lut[k] = c
    img = lut[W.GRID[::-1]]  # flip so that y grows upwards in the picture
    img = np.repeat(np.repeat(img, scale, 0), scale, 1)
    # Mark each spawn with its number's worth of dots, so the picture names them.
    for k, (x, y) in enumerate(W.SPAWNS):
        px, py = to_pixels(np.array([[x, y]]), scale)[0]
        for d in range(k + 1):
            _disc(img, px - (k * scale) // 3 + d * (2 * scale) // 3, py, max(scale // 5, 1), (60, 20, 80))
    return img


def to_pixels(pos: np.ndarray, scale: int) -> np.ndarray:
    """(N, 2) world positions -> (N, 2) int pixel (column, row) in a `map_image(scale)`."""
    pos = np.asarray(pos, dtype=np.float64)
    col = np.floor(pos[:, 0] * scale).astype(np.int64)
    row = np.floor((W.MAP_HEIGHT - pos[:, 1]) * scale).astype(np.int64)
    return np.stack([np.clip(col, 0, W.MAP_WIDTH * scale - 1), np.clip(row, 0, W.MAP_HEIGHT * scale - 1)], 1)


def _disc(img: np.ndarray, cx: int, cy: int, r: int, colour) -> None:
    y0, y1 = max(cy - r, 0), min(cy + r + 1, img.shape[0])
    x0, x1 = max(cx - r, 0), min(cx + r + 1, img.shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[y0:y1, x0:x1][m] = colour


def draw_paths(img: np.ndarray, paths: list[np.ndarray], colours: list[tuple[int, int, int]], scale: int) -> np.ndarray:
    """Draw each (T, 2) path as a polyline of dots on a copy of `img`."""
    out = img.copy()
    for path, colour in zip(paths, colours):
        if len(path) == 0:
            continue
        # Densify so consecutive steps join up at any scale.
        seg = [np.linspace(a, b, 4, endpoint=False) for a, b in zip(path[:-1], path[1:])] + [path[-1:]]
        px = to_pixels(np.concatenate(seg), scale)
        out[px[:, 1], px[:, 0]] = colour
        _disc(out, *px[-1], max(scale // 4, 1), colour)
    return out


def heatmap_image(positions: np.ndarray, scale: int = 8, cmap: str = "inferno", alpha: float = 0.75) -> np.ndarray:
    """Log-density of (N, 2) visited positions over the map, as in the paper's figure 10."""
    import matplotlib

    base = map_image(scale).astype(np.float64)
    h, w = base.shape[:2]
    counts = np.zeros((h // scale * 2, w // scale * 2))  # half-cell bins
    if len(positions):
        px = to_pixels(np.asarray(positions), 2)
        np.add.at(counts, (px[:, 1], px[:, 0]), 1.0)
    dens = np.log1p(counts)
    if dens.max() > 0:
        dens /= dens.max()
    dens = np.repeat(np.repeat(dens, scale // 2 or 1, 0), scale // 2 or 1, 1)[:h, :w]
    colour = matplotlib.colormaps[cmap](dens)[..., :3] * 255
    a = (alpha * (dens > 0))[..., None]
    return np.clip(base * (1 - a) + colour * a, 0, 255).astype(np.uint8)
