"""Benchmark of dataset generation: recorded frames/s of `agentalign data generate` (players,
physics, rendering, compression and atomic writes together) and its peak memory.

    python benchmarks/data_generate.py [--episodes 600 3000] [--size 64]

Each run is a fresh subprocess recording the `pretrain` preset with that many episodes, so its
peak RSS (resource.getrusage) is its own: flat peak RSS across sizes means memory is bounded by
the writer's buffers, not by the dataset. Prints one line per run and appends JSON to
benchmarks/results/data_generate.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from agentalign.players.generate import generate, preset
episodes, size, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
generate(out + "-warm", preset("smoke-finetune"), size=size)  # loads numba's cached code
t = time.perf_counter()
r = generate(out, preset("pretrain", episodes=episodes), size=size)
dt = time.perf_counter() - t
print(json.dumps({"episodes": episodes, "size": size, "frames": r["frames"], "seconds": round(dt, 2),
                  "frames_per_s": round(r["frames"] / dt), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, nargs="+", default=[600, 3000])
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.episodes:
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(args.size), f"{tmp}/gen{n}"],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"generate pretrain  episodes {n:>6}  {row['size']}x{row['size']}  frames {row['frames']:>8}  "
                  f"{row['seconds']:>6.1f} s  {row['frames_per_s']:>7,} frames/s  peak RSS {row['peak_rss_mib']} MiB"
                  f"   (target >= 20,000 frames/s on 2 cores)")  # fmt: skip
    rec = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(), "runs": rows}
    path = Path(__file__).parent / "results" / "data_generate.jsonl"
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
