"""Random fixed-length training windows over a store, deterministic and resumable.

A window is `window` = L consecutive steps (default 32, the paper's context H) of one episode:
frames o_t .. o_{t+L-1} and the actions a_t .. a_{t+L-1} the policy must predict from them.
Windows are drawn uniformly over all valid (episode, start) pairs, so an episode of T steps
weighs in proportion to its number of windows, T - L + 1 (`first_window_share` of them can be
moved to their episode's first step; see WindowConfig). Episodes shorter than the window count as
one window, padded at the end (zero frames, no-op actions, mask False) or are skipped.

No-op filtering (appendix C.1: "filter out all no-op actions"). Choices, by `noop_filter`:
  "mask" (default)  no-op steps stay in the window as context but get mask False, so they add
                    nothing to the imitation loss; windows with no non-no-op step are redrawn.
                    Why: VPT-style filtering removes no-op frames from the sequence itself, which
                    changes the time base the transformer sees (fewer, farther-apart frames) while
                    rollouts run at a steady 10 Hz with every frame. Masking keeps the frames and
                    their timing exactly as at rollout and still stops the policy learning to idle.
  "drop"            only redraw windows whose target actions are all no-ops; no-op steps inside
                    a kept window are trained on.
  "none"            train on everything.

Determinism and resume: batch number g is a pure function of (seed, g): its random stream is
seeded by SeedSequence([seed, g]). The sampler's position is the number of batches consumed, so
`state_dict()` / `load_state_dict()` restore it exactly, and DataLoader workers can each compute
a disjoint subset of batch numbers (see torch_data.py) with output independent of worker count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from agentalign.data.store import StoreReader
from agentalign.envs.gamepad import ACTION_DIM, is_noop, noop_action

SHORT_EPISODES = ("pad", "skip")
NOOP_FILTERS = ("mask", "drop", "none")


@dataclass(frozen=True)
class WindowConfig:
    """What a training batch looks like and how windows are chosen."""

    window: int = 32  # the paper's context H = 32 steps (about 3 s at 10 Hz)
    batch_size: int = 32
    short_episodes: str = "pad"  # "pad" or "skip" episodes shorter than the window
    noop_filter: str = "mask"  # "mask", "drop" or "none"; see the module docstring
    # Decompressed blocks kept per process (each DataLoader worker has its own): ~340 blocks of
    # 32 frames at 64x64. Random windows rarely revisit a block of a big store, so a larger cache
    # buys little speed (benchmarks/data_store.py); memory stays flat however big the store.
    cache_bytes: int = 128 * 2**20
    # Redraws of an all-no-op window before giving up: a store where 64 random windows in a row
    # are all no-ops is almost certainly a recording of an idle player, worth an error.
    max_redraws: int = 64
    # False: batches without "obs", for a trainer that already holds every frame's features (a
    # clone with the pixel encoder frozen; agentalign.train.bc.FrameFeatures). Decoding the frames
    # would then be wasted work.
    frames: bool = True
    # Share of windows that start at their episode's first step (the episode still drawn by its
    # number of windows). Uniform starts train step t < L of a short episode with its whole
    # rollout context only in the first window, 1 of T - L + 1: the opening steps, where an agent
    # on a small map picks its route, weigh least. 0: uniform (the paper's sampling).
    first_window_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.first_window_share <= 1.0:
            raise ValueError(f"first_window_share must be in [0, 1], got {self.first_window_share}")
        if self.window < 1 or self.batch_size < 1:
            raise ValueError(f"window and batch_size must be >= 1, got {self.window}, {self.batch_size}")
        if self.short_episodes not in SHORT_EPISODES:
            raise ValueError(f"short_episodes must be one of {SHORT_EPISODES}, got {self.short_episodes!r}")
        if self.noop_filter not in NOOP_FILTERS:
            raise ValueError(f"noop_filter must be one of {NOOP_FILTERS}, got {self.noop_filter!r}")
        if self.cache_bytes < 0 or self.max_redraws < 0:
            raise ValueError("cache_bytes and max_redraws must be >= 0")


class WindowSampler:
    """Batches of windows: obs (B, L, H, W, 3) uint8, actions (B, L, 16) int64, mask (B, L) bool.

    L is the window length. mask is True where a step counts in the loss: it exists (is not
    padding) and, with noop_filter="mask", its action is not a no-op. Each batch also carries
    `episode` (B,) and `start` (B,) int64: where its windows came from. With config.frames False
    there is no obs.
    Iterating yields batch `position`, `position + 1`, ... forever and advances `position`.
    """

    def __init__(self, store: StoreReader | str | Path, config: WindowConfig | None = None, seed: int = 0):
        self.config = config or WindowConfig()
        self.reader = store if isinstance(store, StoreReader) else StoreReader(store, cache_bytes=self.config.cache_bytes)
        self.seed = int(seed)
        self.position = 0
        w = self.config.window
        lengths = self.reader.lengths
        short = 1 if self.config.short_episodes == "pad" else 0
        windows_per_episode = np.where(lengths >= w, lengths - w + 1, short)  # (N,)
        self._cum_windows = np.cumsum(windows_per_episode)  # (N,) int64
        if len(lengths) == 0 or self._cum_windows[-1] == 0:
            raise ValueError(
                f"{self.reader.path}: no window to sample: {len(lengths)} episodes, none with >= {w} steps "
                f"(short_episodes={self.config.short_episodes!r})"
            )
        self._noop_action = noop_action().astype(np.int64)  # (16,) padding for short episodes

    @property
    def num_windows(self) -> int:
        """Distinct (episode, start) windows the sampler draws from, before no-op filtering."""
        return int(self._cum_windows[-1])

    # -- single windows -------------------------------------------------------------------------

    def locate(self, g: int) -> tuple[int, int]:
        """Window number g in 0 .. num_windows - 1 -> (episode, start)."""
        ep = int(np.searchsorted(self._cum_windows, g, side="right"))
        start = g - (int(self._cum_windows[ep - 1]) if ep else 0)
        return ep, start

    def window_into(self, episode: int, start: int, obs_out: np.ndarray | None, actions_out: np.ndarray,
                    mask_out: np.ndarray) -> bool:  # fmt: skip
        """Fill one window's arrays; returns False if the no-op filter rejects the window.

        obs_out (L, H, W, 3) uint8 (None: no frames), actions_out (L, 16) int64, mask_out (L,) bool.
        """
        w = self.config.window  # L
        actions = self.reader.actions_view(episode)  # (T, 16) uint8, cached
        n = min(w, len(actions) - start)  # steps that exist; the rest is padding
        target = actions[start : start + n]
        noop = is_noop(target)  # (n,)
        if self.config.noop_filter != "none" and noop.all():
            return False
        if obs_out is not None:
            self.reader.read_frames_into(episode, start, obs_out[:n])
            obs_out[n:] = 0
        actions_out[:n] = target
        mask_out[:n] = ~noop if self.config.noop_filter == "mask" else True
        if n < w:
            actions_out[n:] = self._noop_action
            mask_out[n:] = False
        return True

    # -- batches ---------------------------------------------------------------------------------

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index`: the same arrays for the same (seed, index), in any process."""
        cfg = self.config
        b, length = cfg.batch_size, cfg.window
        h, w = self.reader.image_size
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(index)])))
        obs = np.empty((b, length, h, w, 3), dtype=np.uint8) if cfg.frames else None
        actions = np.empty((b, length, ACTION_DIM), dtype=np.int64)
        mask = np.empty((b, length), dtype=bool)
        episode = np.empty(b, dtype=np.int64)
        start = np.empty(b, dtype=np.int64)
        for j in range(b):
            for _ in range(cfg.max_redraws + 1):
                ep, s = self.locate(int(rng.integers(self.num_windows)))
                if cfg.first_window_share and rng.random() < cfg.first_window_share:
                    s = 0  # no draw when the share is 0: uniform batches stay as they were
                if self.window_into(ep, s, None if obs is None else obs[j], actions[j], mask[j]):
                    break
            else:
                raise RuntimeError(
                    f"{self.reader.path}: {cfg.max_redraws + 1} windows in a row had only no-op actions; "
                    f"is the data all idle? (noop_filter={cfg.noop_filter!r})"
                )
            episode[j], start[j] = ep, s
        out = {"actions": actions, "mask": mask, "episode": episode, "start": start}
        return out if obs is None else {"obs": obs, **out}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            out = self.batch(self.position)
            self.position += 1  # counted before the yield: a state saved now resumes after it
            yield out

    # -- resume ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position; restoring it continues with exactly the next batch."""
        return {
            "seed": self.seed,
            "position": self.position,
            "config": asdict(self.config),
            "dataset_id": self.reader.dataset_id,
            "num_windows": self.num_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; refuses a state from another dataset or window layout."""
        mine = self.state_dict()
        for key in ("dataset_id", "num_windows"):
            if state.get(key) != mine[key]:
                raise ValueError(f"sampler state is for {key}={state.get(key)!r}, this sampler has {mine[key]!r}")
        for key in ("window", "batch_size", "short_episodes", "noop_filter"):
            theirs = state.get("config", {}).get(key)
            if theirs != mine["config"][key]:
                raise ValueError(f"sampler state has config.{key}={theirs!r}, this sampler has {mine['config'][key]!r}")
        self.seed = int(state["seed"])
        self.position = int(state["position"])
