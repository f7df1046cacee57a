"""Benchmark of the episode store: write and sampling throughput, and peak memory.

    python benchmarks/data_store.py [--frames 200000] [--size 64] [--cache-mib 64]

Prints:
  codec     ratio and single-thread compress/decompress frames/s of zlib, zstd and lz4 on the
            same frames (lz4 is skipped if not installed), in blocks of 32 frames
  write     frames/s of StoreWriter (validation, copies, compression in threads, fsynced
            commits), and the writer process's peak RSS
  sample    frames/s of WindowSampler in one process and of WindowLoader with 2 workers, over a
            store far larger than the block cache, and the sampling process's peak RSS

Frames come from agentalign.data.testing (raycaster-like: flat-shaded walls, sky and floor
gradients, a sprite). A pool of distinct episodes is generated first and written round-robin,
so generation time is not counted. Each phase runs in its own process so that its peak RSS
(resource.getrusage) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

EPISODE_STEPS = 100  # SkyGarden's time limit


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def pool(size: int, n: int = 32) -> list:
    from agentalign.data.testing import synthetic_episode

    return [synthetic_episode(seed, length=EPISODE_STEPS, size=(size, size)) for seed in range(n)]


def phase_codec(args: argparse.Namespace) -> dict:
    import zstandard

    frames = np.concatenate([ep.frames for ep in pool(args.size, 16)])  # (1600, S, S, 3)
    blocks = [frames[i : i + 32].tobytes() for i in range(0, len(frames), 32)]
    codecs = {
        "zlib-1": (lambda b: zlib.compress(b, 1), zlib.decompress),
        "zstd-1": (zstandard.ZstdCompressor(level=1).compress, zstandard.ZstdDecompressor().decompress),
        "zstd-3": (zstandard.ZstdCompressor(level=3).compress, zstandard.ZstdDecompressor().decompress),
    }
    try:
        import lz4.block

        codecs["lz4"] = (lz4.block.compress, lz4.block.decompress)
    except ImportError:
        pass
    out = {}
    for name, (comp, decomp) in codecs.items():
        t0 = time.perf_counter()
        packed = [comp(b) for b in blocks]
        t1 = time.perf_counter()
        for p in packed:
            decomp(p)
        t2 = time.perf_counter()
        out[name] = {
            "ratio": round(sum(map(len, blocks)) / sum(map(len, packed)), 1),
            "compress_fps": round(len(frames) / (t1 - t0)),
            "decompress_fps": round(len(frames) / (t2 - t1)),
        }
    return out


def phase_write(args: argparse.Namespace) -> dict:
    from agentalign.data import StoreWriter

    episodes = pool(args.size)
    base = rss_mib()
    n = args.frames // EPISODE_STEPS
    t0 = time.perf_counter()
    with StoreWriter(args.store, image_size=(args.size, args.size)) as w:
        for i in range(n):
            ep = episodes[i % len(episodes)]
            ep.metadata["seed"] = i
            w.add(ep)
    dt = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in Path(args.store).rglob("*") if p.is_file())
    return {
        "frames": n * EPISODE_STEPS,
        "seconds": round(dt, 2),
        "frames_per_s": round(n * EPISODE_STEPS / dt),
        "disk_mib": round(disk / 2**20, 1),
        "raw_mib": round(n * EPISODE_STEPS * args.size**2 * 3 / 2**20, 1),
        "rss_before_mib": round(base),
        "peak_rss_mib": round(rss_mib()),
    }


def phase_sample(args: argparse.Namespace) -> dict:
    from agentalign.data import StoreReader, WindowConfig, WindowSampler

    cfg = WindowConfig(batch_size=32, cache_bytes=args.cache_mib * 2**20)
    reader = StoreReader(args.store, cache_bytes=cfg.cache_bytes)
    sampler = WindowSampler(reader, cfg, seed=0)
    base = rss_mib()
    n_batches = max(1, reader.num_steps // (cfg.window * cfg.batch_size))  # one pass worth of frames
    t0 = time.perf_counter()
    for g in range(n_batches):
        sampler.batch(g)
    dt = time.perf_counter() - t0
    frames = n_batches * cfg.batch_size * cfg.window
    return {
        "store_raw_mib": round(reader.num_steps * args.size**2 * 3 / 2**20),
        "cache_mib": args.cache_mib,
        "batches": n_batches,
        "frames_per_s": round(frames / dt),
        "cache_hit_rate": round(reader.cache.hits / max(1, reader.cache.hits + reader.cache.misses), 3),
        "rss_before_mib": round(base),
        "peak_rss_mib": round(rss_mib()),
    }


def phase_loader(args: argparse.Namespace) -> dict:
    from agentalign.data import LoaderConfig, WindowConfig, WindowLoader

    cfg = WindowConfig(batch_size=32, cache_bytes=args.cache_mib * 2**20)
    n_batches = 150
    loader = WindowLoader(args.store, cfg, seed=0, loader=LoaderConfig(num_workers=2), num_batches=n_batches)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in it:
        pass
    dt = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "workers": 2,
        "frames_per_s": round((n_batches - 1) * cfg.batch_size * cfg.window / dt),
        "main_peak_rss_mib": round(rss_mib()),
        "worker_peak_rss_mib": round(children),
    }


PHASES = {"codec": phase_codec, "write": phase_write, "sample": phase_sample, "loader": phase_loader}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000, help="frames to write (100-step episodes)")
    parser.add_argument("--size", type=int, default=64, help="square image size")
    parser.add_argument("--cache-mib", type=int, default=64, help="sampler block-cache budget")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a child: run one phase, print its figures as JSON
        print(json.dumps(PHASES[args.phase](args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        for phase in ("codec", "write", "sample", "loader"):
            cmd = [sys.executable, __file__, "--phase", phase, "--store", store, "--frames", str(args.frames),
                   "--size", str(args.size), "--cache-mib", str(args.cache_mib)]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            if phase == "codec":
                for name, figures in result.items():
                    print(f"codec   {name:7s} " + "  ".join(f"{k} {v}" for k, v in figures.items()))
            else:
                print(f"{phase:7s} " + "  ".join(f"{k} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
