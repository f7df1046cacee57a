"""Online alignment's speed: the sliding-window transformer with and without `last_only`, and
online episodes per second of REINFORCE (`run_reinforce`) on a pipeline run's checkpoints.

What it measures
  * (a) windows: `windowed_transformer` as REINFORCE uses it (train_only="transformer"): the
    transformer over every step's 32-step window, forward + backward, for a batch of 16 episodes of
    150 steps. "full" runs each window's last block on all 32 tokens and keeps the last; "last_only"
    (shipped) runs the last block on the last token alone. Same weights, same inputs; the ratio
    full / last_only is the speed-up, and the largest difference between their outputs is printed.
  * (b) online episodes/s: `run_reinforce` with the cpu preset's [align.reinforce] settings for
    `--episodes` episodes from RUN/pft/model, RUN/sft/model and RUN/reward/model (needs a finished
    `agentalign pipeline --out RUN`; skipped when RUN lacks them).
  * (c) frames encoded once: for one batch of 16 episodes of RUN/pft/model, the reward model's
    input built the reference way (every trajectory padded to 100 frames, all encoded:
    `AgentEncoder(pad_trajectory(...))`) against `AgentEncoder.padded` (the real frames encoded,
    the padding's embedding repeated), and the update's `policy.encode` of the batch, which a
    transformer-only update now takes from the rollout instead. Medians of --repeats.
Model: `model_preset("cpu")`, seeded random weights for (a). Torch's default threads (all cores).

Each run prints a table and appends one JSON line to benchmarks/results/align_throughput.jsonl
(unless --no-save).

Run (from the repository root, in the project venv):
    python benchmarks/align_throughput.py                    # (a), and (b) on runs/cpu if it exists
    python benchmarks/align_throughput.py --run runs/cpu --episodes 160
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agentalign.models import Policy, model_preset
from agentalign.models.reward import windowed_transformer

RESULTS = Path(__file__).parent / "results" / "align_throughput.jsonl"


def full_windows(policy: Policy, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The reference: `windowed_transformer` with every window's last block on all its tokens."""
    return windowed_transformer(policy, z, actions, last_only=False)


def time_fwd_bwd(fn, policy: Policy, z: torch.Tensor, actions: torch.Tensor, repeats: int) -> float:
    """Median seconds of fn's forward and backward (a sum of the outputs as the loss)."""
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        policy.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        fn(policy, z, actions).sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def windows(episodes: int, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    policy = Policy(model_preset("cpu")).train()
    z = torch.randn(episodes, steps, policy.cfg.width)  # (B, T, width): the frozen encoder's output
    actions = torch.zeros(episodes, steps, 16, dtype=torch.int64)
    with torch.no_grad():
        diff = float((full_windows(policy, z, actions) - windowed_transformer(policy, z, actions)).abs().max())
    full = time_fwd_bwd(full_windows, policy, z, actions, repeats)
    last = time_fwd_bwd(windowed_transformer, policy, z, actions, repeats)
    return {"episodes": episodes, "steps": steps, "full_s": round(full, 4), "last_only_s": round(last, 4),
            "speedup": round(full / last, 3), "max_abs_diff": diff}  # fmt: skip


def online(run: Path, episodes: int) -> dict | None:
    from agentalign.pipeline import load_pipeline_config
    from agentalign.train.reinforce import run_reinforce

    if not all((run / s / "model").is_dir() for s in ("pft", "sft", "reward")):
        return None
    # The cpu preset's [align.reinforce] (which it runs with --set align.reinforce.episodes=N).
    cfg = load_pipeline_config("cpu", [f"align.reinforce.episodes={episodes}"]).align.reinforce
    with tempfile.TemporaryDirectory() as out:
        s = run_reinforce(run / "pft" / "model", run / "sft" / "model", run / "reward" / "model", Path(out), cfg,
                          target="left", seed=0)  # fmt: skip
    return {"run": str(run), "episodes": s["episodes"], "seconds": round(s["seconds"], 2),
            "episodes_per_s": round(s["episodes"] / s["seconds"], 2)}  # fmt: skip


def frame_reuse(run: Path, repeats: int) -> dict | None:
    from agentalign.models.reward import AgentEncoder, pad_trajectory
    from agentalign.rollout import RolloutConfig, iter_waves

    if not all((run / s / "model").is_dir() for s in ("pft", "sft")):
        return None
    policy, enc = Policy.from_pretrained(run / "pft" / "model").eval(), AgentEncoder(Policy.from_pretrained(run / "sft" / "model"))
    wave = next(iter_waves(policy, RolloutConfig(episodes=16, num_envs=16, keep_frames=None, keep_z=True)))
    frames = [torch.from_numpy(tr.frames[: tr.length]) for tr in wave]
    actions = [torch.from_numpy(tr.actions) for tr in wave]

    def all_padded():
        f, a = zip(*(pad_trajectory(fi, ai) for fi, ai in zip(frames, actions)))
        return enc(torch.stack(f), torch.stack(a))

    def median_s(fn) -> float:
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    with torch.no_grad():
        diff = float((all_padded() - enc.padded(frames, actions)).abs().max())
        stacked = torch.zeros(16, max(len(a) for a in actions), *frames[0].shape[1:], dtype=torch.uint8)
        old_reward, new_reward = median_s(all_padded), median_s(lambda: enc.padded(frames, actions))
        update_encode = median_s(lambda: policy.encode(stacked))
    return {"mean_length": round(sum(len(a) for a in actions) / 16, 1), "reward_all_padded_s": round(old_reward, 4),
            "reward_padded_once_s": round(new_reward, 4), "update_encode_s": round(update_encode, 4),
            "saved_per_batch_s": round(old_reward - new_reward + update_encode, 4), "max_abs_diff": diff}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/cpu"), help="a finished pipeline run folder for (b)")
    ap.add_argument("--episodes", type=int, default=160, help="online episodes for (b)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    head = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    print(f"{head['date']}  {head['cores']} cores, {head['threads']} torch threads, torch {head['torch']}")
    w = windows(16, 150, args.repeats)
    print(f"(a) windows fwd+bwd, 16 x 150 steps: full {w['full_s'] * 1e3:.0f} ms, last_only {w['last_only_s'] * 1e3:.0f} ms"
          f"  -> {w['speedup']:.2f}x  (max |diff| {w['max_abs_diff']:.1e})")  # fmt: skip
    o = online(args.run, args.episodes)
    if o is None:
        print(f"(b) skipped: {args.run} has no pft/sft/reward models (run `agentalign pipeline --out {args.run}`)")
    else:
        print(f"(b) online alignment, {o['episodes']} episodes: {o['seconds']:.1f} s -> {o['episodes_per_s']:.2f} episodes/s")
    r = frame_reuse(args.run, args.repeats)
    if r is None:
        print(f"(c) skipped: {args.run} has no pft/sft models")
    else:
        print(f"(c) one batch of 16 episodes ({r['mean_length']} steps on average): reward input "
              f"{r['reward_all_padded_s'] * 1e3:.0f} ms padded to 100 and all encoded -> {r['reward_padded_once_s'] * 1e3:.0f} ms "
              f"padding encoded once (max |diff| {r['max_abs_diff']:.1e}); the update's encode, now skipped: "
              f"{r['update_encode_s'] * 1e3:.0f} ms; saved {r['saved_per_batch_s']:.2f} s a batch")  # fmt: skip
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps({**head, "windows": w, "online": o, "frame_reuse": r}) + "\n")


if __name__ == "__main__":
    main()
