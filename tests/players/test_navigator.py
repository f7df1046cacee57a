import numpy as np
import pytest

from agentalign.envs.skygarden import world as W
from agentalign.players.navigator import NavigatorParams, path_distance
from agentalign.players.scripted import run_navigators


@pytest.mark.parametrize("character", ["ninja", "golem"])
def test_every_spawn_reaches_every_pad(character):
    targets = [p for _ in range(4) for p in W.PAD_NAMES]
    spawns = [s for s in range(4) for _ in W.PAD_NAMES]
    eps = run_navigators(targets, spawns=spawns, characters=[character] * 12, seed=0)
    assert [e.jump_pad for e in eps] == targets
    assert [e.spawn for e in eps] == spawns


def test_ninja_routes_take_40_to_70_steps():
    targets = [p for _ in range(4) for p in W.PAD_NAMES]
    eps = run_navigators(targets, spawns=[s for s in range(4) for _ in W.PAD_NAMES], seed=0)
    lengths = np.array([len(e.actions) for e in eps])
    assert lengths.min() >= 40 and lengths.max() <= 70, lengths


def test_noisy_human_like_navigators_still_arrive_mostly():
    params = NavigatorParams(steer_noise=0.3, look_around_prob=0.05, dash_prob=0.1, button_prob=0.1)
    eps = run_navigators(["left", "middle", "right"] * 4, seed=3, params=params)
    hits = np.mean([e.jump_pad == e.target for e in eps])
    assert hits >= 0.75


def test_navigator_is_deterministic_in_its_seed():
    params = NavigatorParams(steer_noise=0.3, look_around_prob=0.1)
    a = run_navigators(["left", "right"], seed=7, params=params)
    b = run_navigators(["left", "right"], seed=7, params=params)
    for x, y in zip(a, b):
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.actions, y.actions)


def test_path_distance_is_shorter_near_the_pad():
    near = path_distance(np.array([[W.PAD_CENTRES[0, 0], W.PAD_CENTRES[0, 1] - 3]]), 0)
    far = path_distance(W.SPAWNS[3:4], 0)
    assert 0 < near[0] < far[0] < np.inf
