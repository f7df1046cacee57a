"""A scripted navigator: privileged path planning that drives any character to a chosen pad.

It reads the privileged world state (position, camera yaw) that the agent never sees, plans on
the map with a distance field per pad, and answers with gamepad actions, as a human player would
hold the sticks: the left stick points along the path relative to the camera, the right stick
swings the camera towards where it is going. Knobs make it human-like (steering noise, camera
habits, dashing); the synthetic player population is built on it.

Planning: the map is refined to half-cell nodes; nodes whose character-sized box touches a wall
are blocked; Dijkstra over 8-neighbours gives each node its path distance to a pad. The steering
target is the node a few nodes down the path (a look-ahead), which smooths the zig-zags of grid
paths and keeps the character off walls. Vectorised over a batch of envs with NumPy.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from agentalign.envs import gamepad
from agentalign.envs.skygarden import world as W

SUB = 2  # planning nodes per cell along each axis
LOOKAHEAD = 4  # nodes (2 cells) ahead on the path: smooth, yet tight enough for the gaps
_CLEARANCE = W.CHAR_RADIUS + 0.12  # plan a little wider than the character, to keep off walls


def _free_nodes() -> np.ndarray:
    """(Y*SUB, X*SUB) bool: nodes whose clearance box touches no wall."""
    ny, nx = W.MAP_HEIGHT * SUB, W.MAP_WIDTH * SUB
    free = np.zeros((ny, nx), dtype=bool)
    wall = W.GRID >= W.WALL_MIN
    for j in range(ny):
        for i in range(nx):
            x, y = (i + 0.5) / SUB, (j + 0.5) / SUB
            x0, x1 = int(np.floor(x - _CLEARANCE)), int(np.floor(x + _CLEARANCE))
            y0, y1 = int(np.floor(y - _CLEARANCE)), int(np.floor(y + _CLEARANCE))
            free[j, i] = not wall[y0 : y1 + 1, x0 : x1 + 1].any()
    return free


@lru_cache(maxsize=1)
def planning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Distance fields (3, NY, NX) in cells (inf where unreachable) and steering targets
    (3, NY, NX, 2) in world coordinates, one per pad."""
    free = _free_nodes()
    ny, nx = free.shape
    dist = np.full((len(W.PAD_NAMES), ny, nx), np.inf)
    target = np.zeros((len(W.PAD_NAMES), ny, nx, 2))
    steps = [(dx, dy, float(np.hypot(dx, dy)) / SUB) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]
    for k, (x0, y0, x1, y1) in enumerate(W.PAD_BOXES):
        d = dist[k]
        heap = []
        for j in range(int(y0 * SUB) + 1, int(y1 * SUB) - 1):  # seed the pad's inner nodes
            for i in range(int(x0 * SUB) + 1, int(x1 * SUB) - 1):
                d[j, i] = 0.0
                heapq.heappush(heap, (0.0, j, i))
        while heap:
            dd, j, i = heapq.heappop(heap)
            if dd > d[j, i]:
                continue
            for dx, dy, cost in steps:
                jj, ii = j + dy, i + dx
                if not (0 <= jj < ny and 0 <= ii < nx) or not free[jj, ii]:
                    continue
                if dx and dy and not (free[j, ii] and free[jj, i]):
                    continue  # no cutting corners past a wall
                if dd + cost < d[jj, ii]:
                    d[jj, ii] = dd + cost
                    heapq.heappush(heap, (dd + cost, jj, ii))
        # Follow steepest descent LOOKAHEAD nodes from every node to get its steering target.
        nxt = np.stack(np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"), -1)  # (NY, NX, 2) j, i
        for j in range(ny):
            for i in range(nx):
                if not np.isfinite(d[j, i]):
                    continue
                best, bj, bi = d[j, i], j, i
                for dx, dy, _ in steps:
                    jj, ii = j + dy, i + dx
                    if 0 <= jj < ny and 0 <= ii < nx and d[jj, ii] < best:
                        if dx and dy and not (free[j, ii] and free[jj, i]):
                            continue
                        best, bj, bi = d[jj, ii], jj, ii
                nxt[j, i] = (bj, bi)
        cur = nxt.copy()
        for _ in range(LOOKAHEAD - 1):
            cur = nxt[cur[..., 0], cur[..., 1]]
        target[k, ..., 0] = (cur[..., 1] + 0.5) / SUB
        target[k, ..., 1] = (cur[..., 0] + 0.5) / SUB
        # The pad itself: aim for its centre.
        inside = d == 0
        target[k][inside] = W.PAD_CENTRES[k]
        _fill_from_neighbours(d, target[k])
    return dist, target


def _fill_from_neighbours(d: np.ndarray, target: np.ndarray) -> None:
    """Nodes too close to a wall (distance inf) steer to their nearest planned neighbour,
    so a character pushed against a wall or a corner first steps back onto the path."""
    ny, nx = d.shape
    while True:
        todo = ~np.isfinite(d)
        changed = False
        for j, i in zip(*np.nonzero(todo)):
            best, src = np.inf, None
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    jj, ii = j + dy, i + dx
                    if 0 <= jj < ny and 0 <= ii < nx and not todo[jj, ii] and d[jj, ii] < best:
                        best, src = d[jj, ii], (jj, ii)
            if src is not None:
                d[j, i] = best + np.hypot(src[0] - j, src[1] - i) / SUB
                target[j, i] = ((src[1] + 0.5) / SUB, (src[0] + 0.5) / SUB)
                changed = True
        if not changed:
            return


def _node(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    j = np.clip((pos[:, 1] * SUB).astype(np.int64), 0, W.MAP_HEIGHT * SUB - 1)
    i = np.clip((pos[:, 0] * SUB).astype(np.int64), 0, W.MAP_WIDTH * SUB - 1)
    return j, i


def path_distance(pos: np.ndarray, pad: int | np.ndarray) -> np.ndarray:
    """(N, 2) positions -> (N,) path distance in cells to `pad` (inf where unreachable)."""
    dist, _ = planning_tables()
    j, i = _node(np.atleast_2d(pos))
    return dist[pad, j, i]


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class NavigatorParams:
    """How a navigator holds the pad. Defaults: a clean, skilled player."""

    steer_noise: float = 0.0  # rad, std of the heading error added each step
    camera_gain: float = 1.5  # right-stick deflection per rad of heading off the camera's view
    camera_deadzone: float = 0.15  # rad: small heading errors leave the camera alone, as people do
    look_around_prob: float = 0.0  # chance per step to start glancing aside with the camera
    look_around_steps: int = 4
    dash_prob: float = 0.0  # chance per step to press dash when the path ahead is straight
    button_prob: float = 0.0  # chance per step to press a harmless button (attack, ability, ...)


class Navigator:
    """Drives a batch of characters to their target pads through the privileged state."""

    def __init__(self, params: NavigatorParams, rng: np.random.Generator, n: int):
        self.p = params
        self.rng = rng
        self.n = n
        self._dist, self._target = planning_tables()
        self._look_left = np.zeros(n, dtype=np.int64)  # steps of glancing aside left
        self._look_dir = np.zeros(n)

    def reset(self, rows: np.ndarray | None = None) -> None:
        rows = slice(None) if rows is None else rows
        self._look_left[rows] = 0

    def desired_heading(self, pos: np.ndarray, pad: np.ndarray) -> np.ndarray:
        """(N, 2) positions, (N,) pad indices -> (N,) world heading along the planned path."""
        j, i = _node(pos)
        tgt = self._target[pad, j, i]  # (N, 2)
        delta = tgt - pos
        return np.arctan2(delta[:, 1], delta[:, 0])

    def act(self, pos: np.ndarray, yaw: np.ndarray, pad: np.ndarray) -> np.ndarray:
        """(N, 2) pos, (N,) camera yaw, (N,) target pad -> (N, 16) int64 actions."""
        p, rng, n = self.p, self.rng, self.n
        heading = self.desired_heading(pos, pad)
        if p.steer_noise > 0:
            heading = heading + rng.normal(0.0, p.steer_noise, n)
        rel = _wrap(heading - yaw)  # (N,) heading relative to the camera, +: to the left
        actions = gamepad.noop_action(n)
        # Left stick: the unit vector of the heading in the camera frame (+y forward, +x right).
        actions[:, 12] = gamepad.stick_to_bins(-np.sin(rel))
        actions[:, 13] = gamepad.stick_to_bins(np.cos(rel))
        # Right stick: swing the camera after the heading, or glance aside now and then.
        turn = np.where(np.abs(rel) > p.camera_deadzone, -p.camera_gain * rel, 0.0)
        if p.look_around_prob > 0:
            start = (self._look_left == 0) & (rng.random(n) < p.look_around_prob)
            self._look_left[start] = p.look_around_steps
            self._look_dir[start] = rng.choice([-1.0, 1.0], size=int(start.sum()))
            glancing = self._look_left > 0
            turn = np.where(glancing, self._look_dir, turn)
            self._look_left[glancing] -= 1
        actions[:, 14] = gamepad.stick_to_bins(np.clip(turn, -1.0, 1.0))
        if p.dash_prob > 0:
            straight = np.abs(rel) < 0.3
            actions[:, gamepad.DASH] = straight & (rng.random(n) < p.dash_prob)
        if p.button_prob > 0:
            press = rng.random(n) < p.button_prob
            which = rng.integers(gamepad.ATTACK, gamepad.N_BUTTONS - 1, n)  # never 'menu'
            actions[press, which[press]] = 1
        return actions
