import numpy as np

from agentalign.envs.skygarden import topdown
from agentalign.envs.skygarden import world as W


def test_map_image_puts_pads_at_the_top():
    img = topdown.map_image(scale=4)
    assert img.shape == (W.MAP_HEIGHT * 4, W.MAP_WIDTH * 4, 3)
    pad_rows = np.nonzero((img == topdown._CELL_COLOURS[W.FLOOR_PAD]).all(-1))[0]
    assert pad_rows.max() < img.shape[0] // 2


def test_heatmap_marks_visited_cells_only():
    pos = np.array([[10.2, 10.3]] * 50 + [[20.5, 5.5]])
    base = topdown.map_image(8)
    heat = topdown.heatmap_image(pos, scale=8)
    px = topdown.to_pixels(pos[:1], 8)[0]
    assert not np.array_equal(heat[px[1], px[0]], base[px[1], px[0]])
    assert np.array_equal(heat[2, 2], base[2, 2])
