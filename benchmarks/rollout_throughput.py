"""Agent steps per second with the policy in the loop: the cached rollout against naive re-encoding.

What it measures
  * (a) cached: `agentalign.rollout` as shipped — per step, `encode` on the new frames only, the
    transformer over the window of stored embeddings (<= 32 tokens), the head on its last position.
  * (b) naive: the same loop, seeds and episodes, but every step re-encodes every frame of the
    window (up to 32 per env) — what a rollout that calls `policy(obs_window, prev_actions)`
    does. Both run the same episodes (same actions), so their steps/s compare like for like.
  * the random-policy baseline through the same loop: the cost of env + loop without a model.
  Agent steps/s = episode steps / wall time over whole waves (64 episodes started together, run
  until all end; a randomly initialised policy reaches no pad, so every episode runs 100 steps).
  Also: seconds per wave, ms per batched step, and how the time splits between env (physics +
  rendering), encoder, transformer (+ head), sampling and the rest; and, to explain the design,
  the transformer's cost by window length and the encoder's for one batch of frames.
  Policy: `model_preset("cpu")` (random init, seeded), 64x64 frames, batch 64, torch's default
  threads (all cores), numba's default threads for the env.

On a machine shared with other busy processes, torch's spinning OpenMP threads make every op
wait for its partner thread (10-35x slower); run with OMP_WAIT_POLICY=PASSIVE there. The header
prints the setting and the load average.

Each run prints a table and appends one JSON line to benchmarks/results/rollout_throughput.jsonl
(unless --no-save).

Run (from the repository root, in the project venv):
    python benchmarks/rollout_throughput.py              # 2 cached waves, 1 naive wave (~40 s on 2 cores)
    python benchmarks/rollout_throughput.py --quick      # 1 wave each of 40-step episodes (~10 s)
    python benchmarks/rollout_throughput.py --no-save
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from agentalign.models import Policy, model_preset
from agentalign.rollout import PolicyActor, RandomActor, RolloutConfig, RolloutStats, rollout

RESULTS = Path(__file__).parent / "results" / "rollout_throughput.jsonl"


def run(actor, episodes: int, num_envs: int, max_steps: int) -> RolloutStats:
    stats = RolloutStats()
    rollout(actor, RolloutConfig(episodes=episodes, num_envs=num_envs, max_steps=max_steps, seed=0), stats)
    return stats


def time_it(fn, repeats: int = 5) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--num-envs", type=int, default=64)
    ap.add_argument("--waves", type=int, default=2, help="cached waves")
    ap.add_argument("--naive-waves", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="1 wave each, 40-step episodes")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.waves, args.naive_waves, args.max_steps = 1, 1, 40
    n = args.num_envs

    torch.manual_seed(0)
    policy = Policy(model_preset(args.preset)).eval()
    cfg = policy.cfg
    print(f"policy {args.preset}: {policy.num_parameters() / 1e6:.2f}M parameters, {cfg.image_size}px, "
          f"context {cfg.context}, width {cfg.width}; batch {n}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {os.cpu_count()} CPUs; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip

    run(PolicyActor(policy), n, n, 3)  # warm-up: numba's cached machine code, oneDNN kernels
    cached = run(PolicyActor(policy), args.waves * n, n, args.max_steps)
    naive = run(PolicyActor(policy, reencode=True), args.naive_waves * n, n, args.max_steps)
    rand = run(RandomActor(cfg.image_size), n, n, args.max_steps)

    # Costs by window length: why waves (short windows early) and why no KV cache.
    z = torch.randn(n, cfg.context, cfg.width)
    prev = torch.zeros(n, cfg.context, 16, dtype=torch.int64)
    frames = torch.randint(0, 256, (n, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    with torch.inference_mode():
        tf_ms = {L: 1e3 * time_it(lambda L=L: policy.head(policy.forward_embedded(z[:, :L], prev[:, :L])[:, -1]))
                 for L in (1, 8, 16, cfg.context)}  # fmt: skip
        enc_ms = 1e3 * time_it(lambda: policy.encode(frames))

    def row(name: str, s: RolloutStats) -> dict:
        return {
            "name": name,
            "steps_per_second": s.steps_per_second,
            "episodes": s.episodes,
            "steps": s.steps,
            "seconds": s.seconds,
            "seconds_per_wave": float(np.mean(s.wave_seconds)),
            "ms_per_batch_step": 1e3 * s.seconds / max(s.batch_steps, 1),
            "split": {k: v / s.seconds for k, v in (("env", s.env_s), ("encoder", s.encode_s),
                      ("transformer", s.transformer_s), ("sampling", s.sample_s), ("other", s.other_s))},  # fmt: skip
        }

    rows = [row("cached (encode new frames once)", cached), row("naive (re-encode the window)", naive),
            row("random policy (env + loop only)", rand)]  # fmt: skip
    print(f"\n{'':34s} {'steps/s':>9s} {'s/wave':>7s} {'ms/step':>8s}   split of the time: env / encoder / "
          f"transformer / sampling / other")  # fmt: skip
    for r in rows:
        split = " / ".join(f"{100 * r['split'][k]:.0f}%" for k in ("env", "encoder", "transformer", "sampling", "other"))
        print(f"{r['name']:34s} {r['steps_per_second']:9.0f} {r['seconds_per_wave']:7.2f} {r['ms_per_batch_step']:8.1f}"
              f"   {split}")  # fmt: skip
    ratio = cached.steps_per_second / naive.steps_per_second
    print(f"\ncached / naive: {ratio:.1f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    print(f"batch {n}: encoder {enc_ms:.1f} ms per {n} frames; transformer + head by window length L: "
          + ", ".join(f"L={L} {ms:.1f} ms" for L, ms in tf_ms.items()))
    print(f"{args.waves * n} + {args.naive_waves * n} + {n} episodes of up to {args.max_steps} steps")

    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps({
                "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
                "processor": platform.processor(), "cpus": os.cpu_count(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "load_average": os.getloadavg()[0], "preset": args.preset, "num_envs": n, "max_steps": args.max_steps,
                "rows": rows, "ratio": ratio, "transformer_ms_by_window": tf_ms, "encoder_ms": enc_ms,
            }) + "\n")  # fmt: skip
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
