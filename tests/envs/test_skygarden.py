import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import agentalign  # noqa: F401  (registers the ids)
from agentalign.envs import ENV_ID, SkyGardenEnv, SkyGardenVectorEnv
from agentalign.envs import gamepad as gp
from agentalign.envs.skygarden import core
from agentalign.envs.skygarden import world as W


def _actions(n_steps, n_envs=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n_steps,) if n_envs is None else (n_steps, n_envs)
    a = np.empty(shape + (16,), dtype=np.int64)
    a[..., :12] = rng.random(shape + (12,)) < 0.1
    a[..., 12:] = rng.integers(0, 11, shape + (4,))
    a[..., 13] = rng.integers(6, 11, shape)  # mostly forward, so the episode goes somewhere
    return a


def test_check_env_passes():
    env = gym.make(ENV_ID)
    check_env(env.unwrapped, skip_render_check=False)


def test_spaces_and_info():
    env = SkyGardenEnv(width=48, height=32)
    obs, info = env.reset(seed=3)
    assert obs.shape == (32, 48, 3) and obs.dtype == np.uint8
    assert env.action_space.nvec.tolist() == [2] * 12 + [11] * 4
    assert set(info) == {"pos", "yaw", "t", "character", "spawn"} and info["t"] == 0
    assert info["character"] == "ninja"


def test_same_seed_same_frames_bit_for_bit():
    acts = _actions(60)
    runs = []
    for _ in range(2):
        env = SkyGardenEnv()
        frames = [env.reset(seed=11)[0]]
        for a in acts:
            obs, _, term, trunc, _ = env.step(a)
            frames.append(obs)
            if term or trunc:
                frames.append(env.reset()[0])
        runs.append(np.stack(frames))
    assert np.array_equal(runs[0], runs[1])
    assert len({runs[0][i].tobytes() for i in range(len(runs[0]))}) > 30  # the view actually changes


def test_vector_sub_env_matches_single_env_seeded_s_plus_i():
    n, steps = 3, 40
    acts = _actions(steps, n, seed=1)
    venv = SkyGardenVectorEnv(num_envs=n)
    vframes = [venv.reset(seed=5)[0]]
    for a in acts:
        vframes.append(venv.step(a)[0])
    vframes = np.stack(vframes, 1)  # (N, T+1, H, W, 3)
    for i in range(n):
        env = SkyGardenEnv()
        frames = [env.reset(seed=5 + i)[0]]
        for t in range(steps):
            obs, _, term, trunc, _ = env.step(acts[t, i])
            frames.append(obs)
            if term or trunc:
                break
        assert np.array_equal(np.stack(frames), vframes[i, : len(frames)])


def test_make_vec_returns_native_vector_env():
    venv = gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="vector_entry_point", width=32, height=32)
    assert isinstance(venv.unwrapped, SkyGardenVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, 32, 32, 3)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP


def test_next_step_autoreset_keeps_last_frame_then_starts_new_episode():
    venv = SkyGardenVectorEnv(num_envs=2, max_steps=5)
    venv.reset(seed=0)
    a = gp.noop_action(2)
    a[:, 13] = 10
    for t in range(5):
        obs, rew, term, trunc, info = venv.step(a)
    assert trunc.all() and not term.any()
    assert info["_jump_pad"].all() and list(info["jump_pad"]) == ["none", "none"]
    last = obs.copy()
    obs, rew, term, trunc, info = venv.step(a)  # the reset step: action ignored
    assert (info["t"] == 0).all() and not (term | trunc).any() and (rew == 0).all()
    assert not info["_jump_pad"].any()
    assert not np.array_equal(obs, last)
    obs2, *_ = venv.step(a)
    assert (venv.state.t == 1).all()


def test_disabled_autoreset_requires_masked_reset():
    venv = SkyGardenVectorEnv(num_envs=2, max_steps=2, autoreset_mode=AutoresetMode.DISABLED)
    venv.reset(seed=0)
    a = gp.noop_action(2)
    venv.step(a)
    venv.step(a)
    with pytest.raises(RuntimeError, match="reset_mask"):
        venv.step(a)
    venv.reset(options={"reset_mask": np.array([True, True])})
    venv.step(a)


def test_reaching_a_pad_terminates_with_its_name_and_reward():
    env = SkyGardenEnv(target_pad="left")
    env.reset(seed=0)
    env.state.pos[0] = W.PAD_CENTRES[0] - [0, 1.2]  # just short of the left pad
    env.state.yaw[0] = math.pi / 2
    a = gp.noop_action()
    a[13] = 10
    for _ in range(5):
        obs, rew, term, trunc, info = env.step(a)
        if term:
            break
    assert term and info["jump_pad"] == "left" and rew == 1.0


def test_run_past_the_pad_when_not_terminating():
    env = SkyGardenEnv(terminate_on_pad=False, max_steps=8)
    env.reset(seed=0)
    env.state.pos[0] = W.PAD_CENTRES[1] - [0, 1.0]
    env.state.yaw[0] = math.pi / 2
    a = gp.noop_action()
    a[13] = 10
    for t in range(8):
        obs, rew, term, trunc, info = env.step(a)
        assert not term
    assert trunc and info["jump_pad"] == "middle"


def test_walls_block_movement():
    env = SkyGardenEnv()
    env.reset(seed=0, options={"spawn": 0})
    a = gp.noop_action()
    a[12] = 0  # full left, towards the island's rim
    env.state.yaw[0] = math.pi / 2
    for _ in range(60):
        env.step(a)
    assert env.state.pos[0, 0] >= 1.0 + W.CHAR_RADIUS - 1e-9  # stopped by the stone rim at x = 1


def test_dash_moves_faster_and_buttons_show():
    env = SkyGardenEnv()
    base_obs, _ = env.reset(seed=0, options={"spawn": 1})
    start = env.state.pos[0].copy()
    a = gp.noop_action()
    a[13] = 10
    env.step(a)
    walk = np.linalg.norm(env.state.pos[0] - start)
    env.reset(seed=0, options={"spawn": 1})
    a[gp.DASH] = 1
    env.step(a)
    dash = np.linalg.norm(env.state.pos[0] - start)
    assert dash > 1.8 * walk
    for b in range(1, 12):  # every other button changes the picture, and nothing else
        env.reset(seed=0, options={"spawn": 1})
        pressed = gp.noop_action()
        pressed[b] = 1
        obs_b, *_ = env.step(pressed)
        env.reset(seed=0, options={"spawn": 1})
        obs_0, *_ = env.step(gp.noop_action())
        assert not np.array_equal(obs_b, obs_0), gp.BUTTON_NAMES[b]


def test_characters_differ_in_look_and_speed():
    assert len(W.CHARACTERS) >= 8 and "ninja" in W.CHARACTER_NAMES
    frames, speeds = [], []
    for c in W.CHARACTER_NAMES:
        env = SkyGardenEnv(character=c)
        frames.append(env.reset(seed=0, options={"spawn": 1})[0].tobytes())
        speeds.append(W.CHARACTERS[W.character_index(c)].speed)
    assert len(set(frames)) == len(frames)
    assert max(speeds) / min(speeds) > 1.3


def test_not_every_pad_is_in_view_from_a_spawn():
    # Geometry of the renderer: a pad is in view when its bearing is within half the field of view.
    half = math.radians(core.FOV_DEG) / 2
    hidden = 0
    for sx, sy in W.SPAWNS:
        cam = np.array([sx, sy]) - core.CAM_DIST * np.array([0.0, 1.0])
        for px, py in W.PAD_CENTRES:
            bearing = math.atan2(px - cam[0], py - cam[1])
            hidden += abs(bearing) > half
    assert hidden >= 2


def test_high_resolution_renders():
    env = SkyGardenEnv(width=128, height=128)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (128, 128, 3) and obs.std() > 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "width"),
        ({"height": -4}, "height"),
        ({"width": 8}, "at least 16"),
        ({"character": "wizard"}, "unknown character 'wizard'"),
        ({"target_pad": "top"}, "unknown jump pad 'top'"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SkyGardenEnv(**kwargs)


def test_bad_actions_and_options():
    env = SkyGardenEnv()
    with pytest.raises(ValueError, match="spawn"):
        env.reset(seed=0, options={"spawn": 4})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(12, np.int64))
    with pytest.raises(ValueError, match="dtype"):
        env.step(np.zeros(16, np.float64))
    with pytest.raises(ValueError, match="left_y"):
        env.step(np.r_[np.zeros(12, np.int64), [5, 12, 5, 5]])
    venv = SkyGardenVectorEnv(num_envs=2)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 16\)"):
        venv.step(gp.noop_action(3))
    with pytest.raises(ValueError, match="num_envs"):
        SkyGardenVectorEnv(num_envs=0)
