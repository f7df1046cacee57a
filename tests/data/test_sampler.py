"""Training windows: exact slices of stored episodes, padding, no-op filtering, determinism, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agentalign.data import Episode, StoreReader, WindowConfig, WindowSampler
from agentalign.envs.gamepad import is_noop, noop_action

from .helpers import write_store


def _check_batch_matches_store(batch: dict[str, np.ndarray], episodes: list[Episode], cfg: WindowConfig) -> None:
    w = cfg.window
    for j, (ep, s) in enumerate(zip(batch["episode"], batch["start"])):
        stored = episodes[ep]
        n = min(w, len(stored) - s)
        assert n >= 1 and (n == w or cfg.short_episodes == "pad")
        assert np.array_equal(batch["obs"][j, :n], stored.frames[s : s + n])
        assert np.array_equal(batch["actions"][j, :n], stored.actions[s : s + n])
        real = np.ones(n, dtype=bool) if cfg.noop_filter != "mask" else ~is_noop(stored.actions[s : s + n])
        assert np.array_equal(batch["mask"][j, :n], real)
        if cfg.noop_filter != "none":
            assert batch["mask"][j].any() or cfg.noop_filter == "drop"
            assert not is_noop(stored.actions[s : s + n]).all()
        # Padding: blank frames, no-op actions, masked out.
        assert not batch["obs"][j, n:].any()
        assert (batch["actions"][j, n:] == noop_action()).all()
        assert not batch["mask"][j, n:].any()


@pytest.mark.parametrize(
    "cfg",
    [
        WindowConfig(window=32, batch_size=16),
        WindowConfig(window=32, batch_size=16, short_episodes="skip", noop_filter="drop"),
        WindowConfig(window=8, batch_size=16, noop_filter="none"),
    ],
)
def test_windows_are_exact_slices_of_the_stored_episodes(store: Path, episodes: list[Episode], cfg: WindowConfig) -> None:
    sampler = WindowSampler(store, cfg, seed=3)
    for g in range(4):
        batch = sampler.batch(g)
        h, w = sampler.reader.image_size
        assert batch["obs"].shape == (16, cfg.window, h, w, 3) and batch["obs"].dtype == np.uint8
        assert batch["actions"].shape == (16, cfg.window, 16) and batch["actions"].dtype == np.int64
        assert batch["mask"].shape == (16, cfg.window) and batch["mask"].dtype == bool
        _check_batch_matches_store(batch, episodes, cfg)


def test_windows_without_frames_are_the_same_windows(store: Path) -> None:
    cfg = WindowConfig(window=32, batch_size=16)
    full = WindowSampler(store, cfg, seed=3)
    bare = WindowSampler(store, WindowConfig(window=32, batch_size=16, frames=False), seed=3)
    for g in range(3):
        a, b = full.batch(g), bare.batch(g)
        assert "obs" not in b and set(a) == set(b) | {"obs"}
        for key in b:
            assert np.array_equal(a[key], b[key]), key


def test_a_share_of_windows_starts_at_the_first_step(store: Path, episodes: list[Episode]) -> None:
    uniform = WindowSampler(store, WindowConfig(window=8, batch_size=64), seed=3)
    some = WindowSampler(store, WindowConfig(window=8, batch_size=64, first_window_share=0.5), seed=3)
    every = WindowSampler(store, WindowConfig(window=8, batch_size=64, first_window_share=1.0), seed=3)
    u, s, e = ([x.batch(g) for g in range(4)] for x in (uniform, some, every))
    starts = [np.concatenate([b["start"] for b in bs]) for bs in (u, s, e)]
    assert (starts[2] == 0).all()
    assert 0.35 < np.mean(starts[1] == 0) < 0.65 and np.mean(starts[0] == 0) < 0.2
    for b in s:  # still exact slices, and the same for the same seed
        _check_batch_matches_store(b, episodes, some.config)
    assert all(np.array_equal(a["start"], b["start"]) for a, b in zip(s, [some.batch(g) for g in range(4)]))


def test_window_weights_and_skipping(store: Path, episodes: list[Episode]) -> None:
    lengths = np.array([len(e) for e in episodes])
    padded = WindowSampler(store, WindowConfig(window=32))
    skipped = WindowSampler(store, WindowConfig(window=32, short_episodes="skip"))
    assert padded.num_windows == int(np.where(lengths >= 32, lengths - 31, 1).sum())
    assert skipped.num_windows == int(np.clip(lengths - 31, 0, None).sum())
    drawn = np.concatenate([skipped.batch(g)["episode"] for g in range(20)])
    assert set(drawn) <= set(np.flatnonzero(lengths >= 32))
    # Weighted by windows: the 100-step episode (69 of the 106 windows) dominates.
    assert np.mean(drawn == 0) > 0.5


def test_same_seed_same_batches_other_seed_other_batches(store: Path) -> None:
    a = WindowSampler(store, WindowConfig(batch_size=8), seed=11)
    b = WindowSampler(StoreReader(store), WindowConfig(batch_size=8), seed=11)
    c = WindowSampler(store, WindowConfig(batch_size=8), seed=12)
    for g in (0, 5, 1):
        for key in ("obs", "actions", "mask", "episode", "start"):
            assert np.array_equal(a.batch(g)[key], b.batch(g)[key])
    assert not all(np.array_equal(a.batch(g)["start"], c.batch(g)["start"]) for g in range(3))


def test_resume_continues_with_exactly_the_next_batch(store: Path) -> None:
    cfg = WindowConfig(batch_size=4)
    straight = WindowSampler(store, cfg, seed=5)
    expected = [next(iter(straight)) for _ in range(6)]

    first = WindowSampler(store, cfg, seed=5)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint

    resumed = WindowSampler(store, cfg, seed=0)
    resumed.load_state_dict(state)
    for want in expected[3:]:
        got = next(iter(resumed))
        assert np.array_equal(got["obs"], want["obs"]) and np.array_equal(got["start"], want["start"])
    assert resumed.position == 6


def test_resume_refuses_another_layout(store: Path) -> None:
    state = WindowSampler(store, WindowConfig(window=32)).state_dict()
    with pytest.raises(ValueError, match="num_windows"):
        WindowSampler(store, WindowConfig(window=16)).load_state_dict(state)


def test_all_noop_data_is_an_error_not_a_hang(tmp_path: Path, episodes: list[Episode]) -> None:
    idle = Episode(episodes[0].frames, np.tile(noop_action().astype(np.uint8), (len(episodes[0]), 1)))
    write_store(tmp_path / "idle", [idle])
    with pytest.raises(RuntimeError, match="only no-op actions"):
        WindowSampler(tmp_path / "idle", WindowConfig(max_redraws=3)).batch(0)
    # With filtering off the same data samples fine.
    assert WindowSampler(tmp_path / "idle", WindowConfig(noop_filter="none")).batch(0)["mask"].all()


def test_nothing_to_sample_is_a_clear_error(tmp_path: Path, episodes: list[Episode]) -> None:
    write_store(tmp_path / "short", [episodes[4]])  # 7 steps
    with pytest.raises(ValueError, match="no window to sample"):
        WindowSampler(tmp_path / "short", WindowConfig(window=32, short_episodes="skip"))


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="noop_filter"):
        WindowConfig(noop_filter="remove")
    with pytest.raises(ValueError, match="short_episodes"):
        WindowConfig(short_episodes="crop")
    with pytest.raises(ValueError, match="first_window_share"):
        WindowConfig(first_window_share=1.5)
