"""The SkyGarden launch island: its map, spawn points, jump pads and characters.

Everything here is plain data (NumPy arrays and dataclasses) that the compiled kernels in
`core.py` read. The world is a grid of 1×1 cells seen from above; continuous positions are in
cell units with x to the right and y forward, from the spawns at the back (small y) to the jump
pads at the front (large y). Yaw is the heading angle in radians, 0 along +x, π/2 along +y.

The map is written as text so that it can be read and edited as a picture: the top line is the
front of the island. It is left/right symmetric, with hedges and rocks that force routes and
alcoves around the side pads, so a drifting agent can miss its pad and end up against a wall.
The hedge rows leave wide gaps: the pads' light beams are visible from everywhere, and the
routes are ones a pixel policy can learn from a few thousand recordings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Legend. Floors are < WALL_MIN, walls >= WALL_MIN (the renderer and physics test cell >= WALL_MIN).
FLOOR_GRASS, FLOOR_PATH, FLOOR_PAD, FLOOR_SPAWN = 0, 1, 2, 3
WALL_MIN = 8
WALL_STONE, WALL_HEDGE, WALL_ROCK = 8, 9, 10

_LEGEND = {
    ".": FLOOR_GRASS,
    ",": FLOOR_PATH,
    "P": FLOOR_PAD,
    "1": FLOOR_SPAWN,
    "2": FLOOR_SPAWN,
    "3": FLOOR_SPAWN,
    "4": FLOOR_SPAWN,
    "#": WALL_STONE,
    "H": WALL_HEDGE,
    "R": WALL_ROCK,
}

# Top line = front of the island (the pads); bottom line = back (the spawns 1-4).
MAP_TEXT = """
#####################################
#...................................#
#...................................#
#...#.......#...........#.......#...#
#...#.......#...........#.......#...#
#...#.,,,,,.#...,,,,,...#.,,,,,.#...#
#..##.,PPP,.##..,PPP,..##.,PPP,.##..#
#.....,PPP,.....,PPP,.....,PPP,.....#
#.....,PPP,.....,PPP,.....,PPP,.....#
#.....,,,,,.....,,,,,.....,,,,,.....#
#...................................#
#.........RR.............RR.........#
#.........RR....HHHHH....RR.........#
#...............HHHHH...............#
#...................................#
#....HH.......................HH....#
#....HH.........RR.RR.........HH....#
#...............RR.RR...............#
#...................................#
#...................................#
#...HHHH.......HHHHHHH.......HHHH...#
#...HHHH.......HHHHHHH.......HHHH...#
#...................................#
#...................................#
#........RR.......R.......RR........#
#........RR.......R.......RR........#
#...................................#
#...................................#
#....HHHHH.................HHHHH....#
#...........HHHH.....HHHH...........#
#...................................#
#...................................#
#....,,,.....,,,.....,,,.....,,,....#
#....,1,.....,2,.....,3,.....,4,....#
#....,,,.....,,,.....,,,.....,,,....#
#...................................#
#####################################
"""

PAD_NAMES = ("left", "middle", "right")
PAD_NONE = -1  # "none": no pad reached (yet)
JUMP_PAD_LABELS = PAD_NAMES + ("none",)


def parse_map(text: str = MAP_TEXT) -> np.ndarray:
    """Map text -> grid (Y, X) int8, grid[y, x] with y = 0 at the back (bottom line)."""
    lines = [ln for ln in text.strip().splitlines()]
    width = len(lines[0])
    for i, ln in enumerate(lines):
        if len(ln) != width:
            raise ValueError(f"map line {i} has {len(ln)} cells, expected {width}")
        bad = set(ln) - set(_LEGEND)
        if bad:
            raise ValueError(f"map line {i} has unknown cells {sorted(bad)}")
    rows = [[_LEGEND[c] for c in ln] for ln in reversed(lines)]
    return np.array(rows, dtype=np.int8)


def _marked_cells(text: str, mark: str) -> list[tuple[int, int]]:
    lines = text.strip().splitlines()
    n = len(lines)
    return [(x, n - 1 - r) for r, ln in enumerate(lines) for x, c in enumerate(ln) if c == mark]


GRID = parse_map()
MAP_HEIGHT, MAP_WIDTH = GRID.shape  # (Y, X) cells


def _pad_boxes() -> np.ndarray:
    """(3, 4) float64 boxes x0, y0, x1, y1 of the pads, left to right, from the 'P' cells."""
    cells = np.array(_marked_cells(MAP_TEXT, "P"), dtype=np.float64)
    boxes = []
    for lo, hi in ((0, MAP_WIDTH / 3), (MAP_WIDTH / 3, 2 * MAP_WIDTH / 3), (2 * MAP_WIDTH / 3, MAP_WIDTH)):
        c = cells[(cells[:, 0] >= lo) & (cells[:, 0] < hi)]
        boxes.append([c[:, 0].min(), c[:, 1].min(), c[:, 0].max() + 1, c[:, 1].max() + 1])
    return np.array(boxes, dtype=np.float64)


PAD_BOXES = _pad_boxes()  # (3, 4): x0, y0, x1, y1 — reaching inside one ends the episode
PAD_CENTRES = np.stack([(PAD_BOXES[:, 0] + PAD_BOXES[:, 2]) / 2, (PAD_BOXES[:, 1] + PAD_BOXES[:, 3]) / 2], 1)
SPAWNS = np.array(
    [[x + 0.5, y + 0.5] for m in "1234" for (x, y) in _marked_cells(MAP_TEXT, m)], dtype=np.float64
)  # (4, 2) cell centres, left to right
SPAWN_YAW = np.pi / 2  # every spawn faces the front; reset adds a small random offset
SPAWN_YAW_JITTER = 0.35  # rad: enough that the visible pads differ between episodes


@dataclass(frozen=True)
class Character:
    """A playable character: how it looks and how fast it moves (cells per 10 Hz step)."""

    name: str
    speed: float
    body: tuple[int, int, int]
    head: tuple[int, int, int]
    accent: tuple[int, int, int]
    width: float = 1.0  # sprite width scale
    height: float = 1.0  # sprite height scale


# Speeds span ~1.8x, like a game's roster; the default ninja is quick but not the quickest.
CHARACTERS: tuple[Character, ...] = (
    Character("ninja", 0.62, (40, 44, 70), (230, 200, 170), (200, 30, 40), 0.9, 1.0),
    Character("knight", 0.54, (170, 175, 185), (150, 155, 165), (40, 70, 170), 1.1, 1.05),
    Character("brute", 0.50, (120, 80, 50), (190, 140, 110), (90, 90, 90), 1.4, 1.1),
    Character("archer", 0.58, (50, 110, 50), (220, 190, 150), (120, 80, 40), 0.9, 0.95),
    Character("mage", 0.52, (110, 50, 150), (230, 200, 170), (240, 210, 60), 1.0, 1.0),
    Character("robot", 0.54, (200, 120, 40), (160, 160, 170), (60, 200, 230), 1.1, 1.0),
    Character("scout", 0.72, (220, 200, 40), (230, 200, 170), (40, 40, 40), 0.8, 0.85),
    Character("medic", 0.56, (235, 235, 235), (230, 200, 170), (210, 30, 30), 1.0, 1.0),
    Character("pirate", 0.55, (30, 130, 130), (200, 160, 120), (140, 20, 20), 1.0, 1.0),
    Character("golem", 0.48, (105, 105, 100), (130, 130, 125), (80, 200, 90), 1.5, 1.2),
)
CHARACTER_NAMES = tuple(c.name for c in CHARACTERS)
DEFAULT_CHARACTER = "ninja"

# Movement and camera constants shared by physics and renderer.
CHAR_RADIUS = 0.3  # cells; collision box half-size
DASH_MULT = 2.2  # speed multiplier while dashing
DASH_STEPS = 3  # a dash lasts 0.3 s ...
DASH_COOLDOWN = 15  # ... and can be repeated every 1.5 s
TURN_RATE = 0.26  # rad per step at full right-stick deflection (~150 deg/s)
PITCH_RATE = 0.15  # horizon shift per step at full deflection, in units of the pitch range
DEFAULT_MAX_STEPS = 100  # 10 s at 10 Hz, the paper's evaluation time-out


def character_index(name: str) -> int:
    try:
        return CHARACTER_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown character {name!r}; choose one of {', '.join(CHARACTER_NAMES)}") from None


def character_table() -> tuple[np.ndarray, np.ndarray]:
    """(C, 3) float64 speed/width/height and (C, 3, 3) uint8 body/head/accent colours."""
    params = np.array([[c.speed, c.width, c.height] for c in CHARACTERS], dtype=np.float64)
    colours = np.array([[c.body, c.head, c.accent] for c in CHARACTERS], dtype=np.uint8)
    return params, colours


def pad_index(name: str) -> int:
    try:
        return PAD_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown jump pad {name!r}; choose one of {', '.join(PAD_NAMES)}") from None
