import numpy as np
import pytest

from agentalign.envs import gamepad as gp


def test_bins_follow_bleeding_edge_edges():
    # A value on each side of every inner edge lands in the bin the edges define.
    inner = gp.STICK_EDGES[1:-1]
    below = gp.stick_to_bins(inner - 1e-9)
    above = gp.stick_to_bins(inner + 1e-9)
    assert below.tolist() == list(range(10))
    assert above.tolist() == list(range(1, 11))
    assert gp.stick_to_bins(0.0) == gp.STICK_REST_BIN
    assert gp.stick_to_bins(np.array([-1.0, 1.0])).tolist() == [0, 10]


def test_scalar_fast_path_agrees_with_the_array_codec():
    values = np.random.default_rng(0).uniform(-1.05, 1.05, 2000)
    values = np.r_[values, gp.STICK_EDGES[1:-1], 0.0, -1.05, 1.05]
    assert [gp.stick_bin(float(v)) for v in values] == gp.stick_to_bins(values).tolist()
    with pytest.raises(ValueError, match="outside"):
        gp.stick_bin(1.5)


def test_centres_round_trip():
    bins = np.arange(gp.N_STICK_BINS)
    assert (gp.stick_to_bins(gp.bins_to_stick(bins)) == bins).all()
    assert gp.bins_to_stick(gp.STICK_REST_BIN) == 0.0


def test_out_of_range_stick_raises_not_clips():
    with pytest.raises(ValueError, match="outside"):
        gp.stick_to_bins(1.2)
    with pytest.raises(ValueError, match="0..10"):
        gp.bins_to_stick(np.array([11]))


def test_noop_detection():
    a = gp.noop_action(3)
    a[1, 13] = 7
    a[2, gp.DASH] = 1
    assert gp.is_noop(a).tolist() == [True, False, False]


@pytest.mark.parametrize(
    "action, match",
    [
        (np.zeros(15, np.int64), "shape"),
        (np.zeros(16, np.float32), "integer dtype"),
        (np.r_[np.zeros(12, np.int64), [5, 5, 5, 11]], "right_y"),
        (np.r_[[2], np.zeros(11, np.int64), [5, 5, 5, 5]], "dash"),
        (np.r_[np.zeros(12, np.int64), [-1, 5, 5, 5]], "left_x"),
    ],
)
def test_validate_names_the_field(action, match):
    with pytest.raises(ValueError, match=match):
        gp.validate_actions(action)
