"""Compiled kernels of SkyGarden: batched physics and a batched third-person raycaster.

Both kernels work on a batch of N worlds stored as a structure of arrays (`WorldState`), so one
call steps or renders every instance of a vector env. The renderer is a Wolfenstein-style column
raycaster (one DDA ray per screen column for the walls, floor casting per pixel, billboard beams
over the jump pads, the character drawn as a sprite in front of the camera) with all colours —
fog included — looked up from tables precomputed in `render_tables`, so the inner loops do no
colour arithmetic. `render_batch` runs `prange` over the batch: each world is independent, so
the result does not depend on the number of threads, and the same state gives the same frame
bit for bit.

Numba compiles these functions on first use and caches the machine code on disk (cache=True),
so only the first start on a machine pays the compile time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

from agentalign.envs import gamepad
from agentalign.envs.skygarden import world as W

# ---- camera and scene constants (cell units) -------------------------------------------------
FOV_DEG = 75.0  # horizontal field of view: outer pads leave the view from the outer spawns
CAM_DIST = 2.4  # camera distance behind the character
CAM_HEIGHT = 1.0  # eye height; walls are taller, so walls always cover the horizon
WALL_HEIGHT = 1.6
CHAR_HEIGHT = 0.85
CHAR_WIDTH = 0.45
BEAM_RADIUS = 0.35  # the light beam above each pad, visible over the hedges from afar
BEAM_TOP = 7.0
HORIZON_BASE = 0.40  # fraction of the image height: the camera looks slightly down at rest
HORIZON_PITCH = 0.22  # horizon shift at full pitch (pitch in [-1, 1])
FOG_DISTANCE = 14.0  # e-folding distance of the fog
FOG_BINS_PER_CELL = 4
FOG_BINS = 48 * FOG_BINS_PER_CELL
# Renderer float flags: no NaN/inf can occur there, and contraction/reassociation are safe because
# each frame is computed by one thread in a fixed order, so frames stay deterministic.
_FAST = {"nnan", "ninf", "nsz", "contract", "arcp", "afn", "reassoc"}

_SKY_TOP = np.array([70, 120, 200], dtype=np.float64)
_SKY_HORIZON = np.array([185, 215, 240], dtype=np.float64)
_FOG = np.array([175, 205, 230], dtype=np.float64)
_FLOOR = np.array(  # (type, parity) base colours: grass, path, pad, spawn marker
    [
        [[70, 140, 60], [80, 152, 68]],
        [[196, 176, 128], [186, 166, 120]],
        [[60, 230, 235], [120, 245, 250]],
        [[170, 90, 200], [190, 110, 215]],
    ],
    dtype=np.float64,
)
_WALLS = np.array(  # (type, texture band): band 0/1 alternate across the wall, band 2 is the top trim
    [
        [[150, 150, 160], [135, 135, 148], [200, 200, 205]],  # stone (the island's rim)
        [[40, 105, 45], [34, 92, 40], [70, 150, 70]],  # hedge
        [[125, 112, 100], [112, 100, 90], [160, 150, 140]],  # rock
    ],
    dtype=np.float64,
)
_BEAM = np.array([[120, 255, 250], [230, 255, 255]], dtype=np.float64)


@dataclass
class WorldState:
    """The batch of N worlds as arrays; every field has the batch on its first axis."""

    pos: np.ndarray  # (N, 2) float64 position in cells
    yaw: np.ndarray  # (N,) float64 camera yaw
    pitch: np.ndarray  # (N,) float64 camera pitch in [-1, 1]
    facing: np.ndarray  # (N,) float64 the character's heading (its last movement direction)
    moving: np.ndarray  # (N,) uint8 moved in the last step
    dash_left: np.ndarray  # (N,) int64 steps of dash remaining
    dash_cooldown: np.ndarray  # (N,) int64 steps until the next dash
    buttons: np.ndarray  # (N, 12) uint8 buttons held in the last step (drawn as effects)
    t: np.ndarray  # (N,) int64 steps since reset
    pad: np.ndarray  # (N,) int64 first pad reached, or PAD_NONE
    character: np.ndarray  # (N,) int64 index into world.CHARACTERS
    spawn: np.ndarray  # (N,) int64 index into world.SPAWNS

    @classmethod
    def zeros(cls, n: int) -> "WorldState":
        return cls(
            pos=np.zeros((n, 2)),
            yaw=np.zeros(n),
            pitch=np.zeros(n),
            facing=np.zeros(n),
            moving=np.zeros(n, np.uint8),
            dash_left=np.zeros(n, np.int64),
            dash_cooldown=np.zeros(n, np.int64),
            buttons=np.zeros((n, gamepad.N_BUTTONS), np.uint8),
            t=np.zeros(n, np.int64),
            pad=np.full(n, W.PAD_NONE, np.int64),
            character=np.zeros(n, np.int64),
            spawn=np.zeros(n, np.int64),
        )

    def reset_rows(self, rows: np.ndarray, spawn: np.ndarray, yaw: np.ndarray, character: np.ndarray) -> None:
        """Put worlds `rows` at their spawn, facing `yaw`, as `character`."""
        self.pos[rows] = W.SPAWNS[spawn]
        self.yaw[rows] = yaw
        self.facing[rows] = yaw
        self.pitch[rows] = 0.0
        self.moving[rows] = 0
        self.dash_left[rows] = 0
        self.dash_cooldown[rows] = 0
        self.buttons[rows] = 0
        self.t[rows] = 0
        self.pad[rows] = W.PAD_NONE
        self.character[rows] = character
        self.spawn[rows] = spawn


# ---- physics ---------------------------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _blocked(grid, x, y, r):
    """Does the square of half-size r around (x, y) overlap a wall cell?"""
    x0, x1 = int(math.floor(x - r)), int(math.floor(x + r))
    y0, y1 = int(math.floor(y - r)), int(math.floor(y + r))
    for cy in range(y0, y1 + 1):
        for cx in range(x0, x1 + 1):
            if cy < 0 or cx < 0 or cy >= grid.shape[0] or cx >= grid.shape[1]:
                return True
            if grid[cy, cx] >= W.WALL_MIN:
                return True
    return False


@nb.njit(cache=True)
def step_batch(actions, active, pos, yaw, pitch, facing, moving, dash_left, dash_cooldown, buttons, t, pad,
               character, char_params, grid, pad_boxes, stick_centres):  # fmt: skip
    """Advance the active worlds by one 10 Hz step in place. actions: (N, 16) int64, validated."""
    n = actions.shape[0]
    r = W.CHAR_RADIUS
    for i in range(n):
        if not active[i]:
            continue
        a = actions[i]
        for b in range(gamepad.N_BUTTONS):
            buttons[i, b] = a[b]
        lx = stick_centres[a[12]]
        ly = stick_centres[a[13]]
        rx = stick_centres[a[14]]
        ry = stick_centres[a[15]]
        # Right stick turns the camera (+x turns right, i.e. clockwise) and tilts it.
        yaw[i] = yaw[i] - rx * W.TURN_RATE
        if yaw[i] > math.pi:
            yaw[i] -= 2 * math.pi
        elif yaw[i] < -math.pi:
            yaw[i] += 2 * math.pi
        pitch[i] = min(1.0, max(-1.0, pitch[i] + ry * W.PITCH_RATE))
        # Dash: a burst of speed with a cooldown.
        if dash_left[i] > 0:
            dash_left[i] -= 1
        if dash_cooldown[i] > 0:
            dash_cooldown[i] -= 1
        if a[gamepad.DASH] == 1 and dash_cooldown[i] == 0:
            dash_left[i] = W.DASH_STEPS
            dash_cooldown[i] = W.DASH_COOLDOWN
        # Left stick moves relative to the camera: +y forward, +x right.
        fx, fy = math.cos(yaw[i]), math.sin(yaw[i])
        rgx, rgy = fy, -fx
        mx = lx * rgx + ly * fx
        my = lx * rgy + ly * fy
        norm = math.sqrt(mx * mx + my * my)
        moving[i] = 0
        if norm > 1e-9:
            if norm > 1.0:
                mx /= norm
                my /= norm
            speed = char_params[character[i], 0] * (W.DASH_MULT if dash_left[i] > 0 else 1.0)
            dx, dy = mx * speed, my * speed
            facing[i] = math.atan2(my, mx)
            # Substeps no longer than 0.2 cells so a dash cannot tunnel through a wall.
            nsub = int(math.ceil(math.sqrt(dx * dx + dy * dy) / 0.2))
            px, py = pos[i, 0], pos[i, 1]
            for _ in range(nsub):
                if not _blocked(grid, px + dx / nsub, py, r):
                    px += dx / nsub
                if not _blocked(grid, px, py + dy / nsub, r):
                    py += dy / nsub
            if px != pos[i, 0] or py != pos[i, 1]:
                moving[i] = 1
            pos[i, 0], pos[i, 1] = px, py
        t[i] += 1
        if pad[i] < 0:
            for k in range(pad_boxes.shape[0]):
                if pad_boxes[k, 0] <= pos[i, 0] < pad_boxes[k, 2] and pad_boxes[k, 1] <= pos[i, 1] < pad_boxes[k, 3]:
                    pad[i] = k
                    break


# ---- rendering -------------------------------------------------------------------------------


@dataclass
class RenderTables:
    """Everything the renderer needs for one resolution, precomputed once."""

    height: int
    width: int
    focal: float  # pixels per unit of lateral offset at unit depth
    cam_x: np.ndarray  # (W,) float64 camera-plane offset of each column's ray
    sky: np.ndarray  # (2H + 1, 3) uint8, indexed by horizon row - pixel row + H
    floor: np.ndarray  # (8, FOG_BINS, 3) uint8 by floor code (type * 2 + checker parity), fog
    floorcode: np.ndarray  # (Y, X) int64 floor code of every cell (walls read as grass)
    walls: np.ndarray  # (3, 2, 3, FOG_BINS, 3) uint8 wall type, side, band, fog
    beam: np.ndarray  # (2, FOG_BINS, 3) uint8 band, fog
    char_colours: np.ndarray  # (C, 3, 3) uint8
    char_params: np.ndarray  # (C, 3) float64 speed, width, height


def _fogged(colour: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """(..., 3) base colour -> (..., FOG_BINS, 3) uint8 fogged by distance bin."""
    d = (np.arange(FOG_BINS) + 0.5) / FOG_BINS_PER_CELL
    keep = np.exp(-strength * d / FOG_DISTANCE)[:, None]  # (F, 1)
    c = colour[..., None, :] * keep + _FOG * (1 - keep)
    return np.clip(np.rint(c), 0, 255).astype(np.uint8)


def render_tables(height: int, width: int) -> RenderTables:
    focal = (width / 2) / math.tan(math.radians(FOV_DEG) / 2)
    cam_x = (np.arange(width) + 0.5 - width / 2) / focal
    # Sky gradient by height above the horizon, saturating at the top of the view.
    k = np.arange(2 * height + 1) - height  # rows above the horizon (negative: below)
    s = np.clip(k / (0.6 * height), 0, 1)[:, None]
    sky = np.clip(np.rint(_SKY_HORIZON * (1 - s) + _SKY_TOP * s), 0, 255).astype(np.uint8)
    walls = np.stack([_WALLS, _WALLS * 0.78])  # (side, type, band, 3): y-facing walls darker
    walls = np.transpose(walls, (1, 0, 2, 3))
    floor = _fogged(_FLOOR)
    floor[2] = _fogged(_FLOOR[2], strength=0.3)  # pads glow through the fog
    yy, xx = np.indices(W.GRID.shape)
    ftype = np.where(W.GRID >= W.WALL_MIN, W.FLOOR_GRASS, W.GRID).astype(np.int64)
    floorcode = ftype * 2 + ((xx + yy) & 1)
    params, colours = W.character_table()
    return RenderTables(
        height=height,
        width=width,
        focal=focal,
        cam_x=cam_x,
        sky=sky,
        floor=floor.reshape(8, FOG_BINS, 3),
        floorcode=floorcode,
        walls=_fogged(walls),
        beam=_fogged(_BEAM, strength=0.25),
        char_colours=colours,
        char_params=params,
    )


@nb.njit(cache=True, inline="always")
def _put(out, n, y, x, c0, c1, c2):
    out[n, y, x, 0] = c0
    out[n, y, x, 1] = c1
    out[n, y, x, 2] = c2


@nb.njit(cache=True, inline="always")
def _fog_bin(d):
    b = int(d * FOG_BINS_PER_CELL)
    return b if b < FOG_BINS else FOG_BINS - 1


@nb.njit(cache=True)
def _camera(grid, px, py, fx, fy):
    """Camera position behind the character, pulled in where a wall is in the way."""
    d = 0.0
    step = 0.1
    while d + step <= CAM_DIST:
        if _blocked(grid, px - (d + step) * fx, py - (d + step) * fy, 0.15):
            break
        d += step
    d = max(d, 0.3)  # never inside the character
    return px - d * fx, py - d * fy, d


@nb.njit(cache=True, fastmath=_FAST)
def _render_world(out, n, grid, floorcode, cx0, cy0, fx, fy, horizon, cam_x, focal, sky, floor, walls, zbuf,
                  walltop, wallbot, rowdist, rowfog):  # fmt: skip
    """Sky and walls of one world column by column, then the floor row by row; fills zbuf and
    walltop for the sprites."""
    h, w = out.shape[1], out.shape[2]
    rgx, rgy = fy, -fx
    map_h, map_w = grid.shape[0], grid.shape[1]
    # Floor distance and fog depend only on the row: compute them once per frame.
    for y in range(h):
        rowdist[y] = CAM_HEIGHT * focal / max(y + 0.5 - horizon, 1e-3)
        rowfog[y] = _fog_bin(rowdist[y])
    for x in range(w):
        rdx = fx + cam_x[x] * rgx
        rdy = fy + cam_x[x] * rgy
        mx, my = int(cx0), int(cy0)
        ddx = abs(1.0 / rdx) if rdx != 0.0 else 1e30
        ddy = abs(1.0 / rdy) if rdy != 0.0 else 1e30
        if rdx < 0:
            sx, sdx = -1, (cx0 - mx) * ddx
        else:
            sx, sdx = 1, (mx + 1.0 - cx0) * ddx
        if rdy < 0:
            sy, sdy = -1, (cy0 - my) * ddy
        else:
            sy, sdy = 1, (my + 1.0 - cy0) * ddy
        side = 0
        cell = W.WALL_STONE
        for _ in range(4 * (map_w + map_h)):
            if sdx < sdy:
                sdx += ddx
                mx += sx
                side = 0
            else:
                sdy += ddy
                my += sy
                side = 1
            if mx < 0 or my < 0 or mx >= map_w or my >= map_h:
                cell = W.WALL_STONE
                break
            cell = grid[my, mx]
            if cell >= W.WALL_MIN:
                break
        if side == 0:
            perp = sdx - ddx
            u = cy0 + perp * rdy
        else:
            perp = sdy - ddy
            u = cx0 + perp * rdx
        if perp < 1e-4:
            perp = 1e-4
        u -= math.floor(u)
        zbuf[x] = perp
        top = horizon - (WALL_HEIGHT - CAM_HEIGHT) * focal / perp
        bot = horizon + CAM_HEIGHT * focal / perp
        trim = top + 0.12 * (bot - top)
        y_top = min(max(int(math.ceil(top - 0.5)), 0), h)
        y_trim = min(max(int(math.ceil(trim - 0.5)), y_top), h)
        y_bot = min(max(int(math.ceil(bot - 0.5)), y_trim), h)
        walltop[x] = y_top
        hz = int(math.floor(horizon)) + h
        for y in range(y_top):
            k = min(max(hz - y, 0), 2 * h)
            _put(out, n, y, x, sky[k, 0], sky[k, 1], sky[k, 2])
        fb = _fog_bin(perp)
        wt = cell - W.WALL_MIN
        band = int(u * 4.0) & 1
        r, g, b = walls[wt, side, 2, fb, 0], walls[wt, side, 2, fb, 1], walls[wt, side, 2, fb, 2]
        for y in range(y_top, y_trim):
            _put(out, n, y, x, r, g, b)
        r, g, b = walls[wt, side, band, fb, 0], walls[wt, side, band, fb, 1], walls[wt, side, band, fb, 2]
        for y in range(y_trim, y_bot):
            _put(out, n, y, x, r, g, b)
        wallbot[x] = y_bot
    # The floor, row by row: along a row the ground point moves linearly with x, and the row's
    # distance and fog are shared, so each pixel costs a few adds and one table lookup.
    y0 = h
    for x in range(w):
        y0 = min(y0, wallbot[x])
    for y in range(y0, h):
        dist = rowdist[y]
        fb = rowfog[y]
        c0 = (0.5 - w / 2) / focal
        bx = cx0 + dist * (fx + c0 * rgx)
        by = cy0 + dist * (fy + c0 * rgy)
        stx = dist * rgx / focal
        sty = dist * rgy / focal
        for x in range(w):
            if y >= wallbot[x]:
                gx = min(max(int(bx + x * stx), 0), map_w - 1)
                gy = min(max(int(by + x * sty), 0), map_h - 1)
                code = floorcode[gy, gx]
                _put(out, n, y, x, floor[code, fb, 0], floor[code, fb, 1], floor[code, fb, 2])


@nb.njit(cache=True, fastmath=_FAST)
def _render_beams(out, n, cx0, cy0, fx, fy, horizon, focal, pad_centres, beam, zbuf, walltop):
    """A light beam over every pad: hidden by nearer walls, but seen above them from afar."""
    h, w = out.shape[1], out.shape[2]
    rgx, rgy = fy, -fx
    for k in range(pad_centres.shape[0]):
        relx = pad_centres[k, 0] - cx0
        rely = pad_centres[k, 1] - cy0
        depth = relx * fx + rely * fy
        if depth < 0.3:
            continue
        sx = w / 2 + (relx * rgx + rely * rgy) / depth * focal
        half = max(BEAM_RADIUS * focal / depth, 0.5)
        x0 = max(int(math.floor(sx - half)), 0)
        x1 = min(int(math.floor(sx + half)), w - 1)
        top = horizon - (BEAM_TOP - CAM_HEIGHT) * focal / depth
        bot = horizon + CAM_HEIGHT * focal / depth
        y0 = min(max(int(math.ceil(top - 0.5)), 0), h)
        fb = _fog_bin(depth)
        for x in range(x0, x1 + 1):
            y1 = min(max(int(math.ceil(bot - 0.5)), 0), h)
            if depth >= zbuf[x]:
                y1 = min(y1, walltop[x])  # behind a wall: only the part above it shows
            for y in range(y0, y1):
                height = CAM_HEIGHT + (horizon - (y + 0.5)) * depth / focal
                c = beam[int(height * 2.0) & 1, fb]
                _put(out, n, y, x, c[0], c[1], c[2])


@nb.njit(cache=True, fastmath=_FAST)
def _render_character(out, n, horizon, focal, cam_d, rel_facing, moving, dash, buttons, anim, cp, colours):
    """The character seen from behind at the centre of the view, with its button effects."""
    h, w = out.shape[1], out.shape[2]
    scale = focal / cam_d  # pixels per cell at the character's depth
    ch = CHAR_HEIGHT * cp[2]
    cw = CHAR_WIDTH * cp[1]
    lift = 0.3 if buttons[gamepad.JUMP] else 0.0
    feet = horizon + CAM_HEIGHT * scale  # image row of the ground under the character
    body, head, accent = colours[0], colours[1], colours[2]
    umax = 0.7
    if buttons[2] or buttons[3]:
        umax = 0.85
    if buttons[7]:
        umax = max(umax, 0.9)
    if dash:
        umax = 1.4
    if buttons[4] or buttons[5] or buttons[6]:
        umax = max(umax, 0.95)
    vmax = 1.45 if buttons[10] else (1.25 if buttons[9] else 1.05)
    x0 = max(int(math.floor(w / 2 - umax * cw * scale)), 0)
    x1 = min(int(math.ceil(w / 2 + umax * cw * scale)), w - 1)
    y0 = max(int(math.floor(feet - (vmax + lift) * ch * scale)), 0)
    y1 = min(int(math.ceil(feet + 0.1 * ch * scale)), h - 1)
    stride = 1 if (moving and (anim & 1)) else 0
    for y in range(y0, y1 + 1):
        v_ground = (feet - (y + 0.5)) / (ch * scale)  # height above the ground, in character heights
        v = v_ground - lift / ch
        for x in range(x0, x1 + 1):
            u = (x + 0.5 - w / 2) / (cw * scale)  # across the character, 0 at its centre
            au = abs(u)
            c0 = -1
            c1 = 0
            c2 = 0
            if v_ground < 0.04 and v_ground > -0.08:
                if buttons[4] and au < 0.95:
                    c0, c1, c2 = 250, 230, 60
                elif buttons[5] and au < 0.95:
                    c0, c1, c2 = 240, 60, 220
                elif buttons[6] and au < 0.95:
                    c0, c1, c2 = 60, 220, 250
                elif lift > 0 and au < 0.45:
                    c0, c1, c2 = 30, 50, 25  # shadow under a jump
            if 0.0 <= v < 0.38:
                lo = 0.06 if stride else 0.0
                if 0.08 < au < 0.36 and ((u < 0 and v >= lo) or (u > 0 and v >= 0.06 - lo)):
                    c0, c1, c2 = body[0] * 7 // 10, body[1] * 7 // 10, body[2] * 7 // 10
            elif 0.38 <= v < 0.78:
                if au < 0.5:
                    if 0.62 <= v < 0.70:
                        c0, c1, c2 = accent[0], accent[1], accent[2]
                    else:
                        c0, c1, c2 = body[0], body[1], body[2]
                elif au < 0.64 and 0.45 <= v < 0.76:
                    c0, c1, c2 = body[0] * 8 // 10, body[1] * 8 // 10, body[2] * 8 // 10
            elif 0.78 <= v < 1.0 and au < 0.28:
                c0, c1, c2 = head[0], head[1], head[2]
                if abs(rel_facing) > 2.3:  # facing the camera: eyes
                    if 0.84 <= v < 0.91 and 0.06 < au < 0.18:
                        c0, c1, c2 = 20, 20, 20
                elif rel_facing > 0.6 and u < -0.08 and 0.84 <= v < 0.93:
                    c0, c1, c2 = accent[0], accent[1], accent[2]  # visor on the side it faces
                elif rel_facing < -0.6 and u > 0.08 and 0.84 <= v < 0.93:
                    c0, c1, c2 = accent[0], accent[1], accent[2]
                elif abs(rel_facing) <= 0.6 and v >= 0.93:
                    c0, c1, c2 = accent[0], accent[1], accent[2]  # back of the head: a band
            if (buttons[2] or buttons[3]) and 0.64 <= u < (0.85 if buttons[3] else 0.76) and 0.35 <= v < 1.05:
                c0, c1, c2 = (255, 170, 60) if buttons[3] else (235, 235, 245)
            if buttons[7] and -0.9 <= u < -0.62 and 0.35 <= v < 0.8:
                c0, c1, c2 = accent[0], accent[1], accent[2]
            if buttons[8] and 0.5 <= u < 0.7 and 0.42 <= v < 0.55:
                c0, c1, c2 = 90, 250, 120
            if buttons[9] and au < 0.12 and 1.08 <= v < 1.2:
                c0, c1, c2 = 250, 110, 160
            if buttons[10] and au < 0.08 and 1.28 <= v < 1.42:
                c0, c1, c2 = 255, 230, 0
            if dash and 0.6 < au < 1.4 and (0.5 <= v < 0.55 or 0.66 <= v < 0.71):
                c0, c1, c2 = accent[0], accent[1], accent[2]
            if c0 >= 0:
                _put(out, n, y, x, c0, c1, c2)
    if buttons[11]:  # the menu button shows a bar across the top of the screen
        for x in range(w):
            _put(out, n, 0, x, 30, 30, 30)


@nb.njit(cache=True, parallel=True, fastmath=_FAST)
def render_batch(out, rows, pos, yaw, pitch, facing, moving, dash_left, buttons, t, character, grid, floorcode,
                 pad_centres, cam_x, focal, sky, floor, walls, beam, char_params, char_colours, zbuf, walltop, wallbot,
                 rowdist, rowfog):  # fmt: skip
    """Render worlds `rows` into out (N, H, W, 3) uint8.
    zbuf/walltop/wallbot (N, W) and rowdist/rowfog (N, H) are scratch."""
    h = out.shape[1]
    for r in nb.prange(rows.shape[0]):
        n = rows[r]
        fx, fy = math.cos(yaw[n]), math.sin(yaw[n])
        cx0, cy0, cam_d = _camera(grid, pos[n, 0], pos[n, 1], fx, fy)
        horizon = h * (HORIZON_BASE + HORIZON_PITCH * pitch[n])
        _render_world(out, n, grid, floorcode, cx0, cy0, fx, fy, horizon, cam_x, focal, sky, floor, walls, zbuf[n],
                      walltop[n], wallbot[n], rowdist[n], rowfog[n])  # fmt: skip
        _render_beams(out, n, cx0, cy0, fx, fy, horizon, focal, pad_centres, beam, zbuf[n], walltop[n])
        rel = facing[n] - yaw[n]
        rel = (rel + math.pi) % (2 * math.pi) - math.pi
        c = character[n]
        _render_character(out, n, horizon, focal, cam_d, rel, moving[n], dash_left[n] > 0, buttons[n], t[n],
                          char_params[c], char_colours[c])  # fmt: skip
