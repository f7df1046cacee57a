"""SkyGarden frames per second, with ViZDoom's `my_way_home` as a reference.

What it measures
  * Throughput of the full `SkyGardenVectorEnv.step` (action validation, physics, render,
    observation copy, info dict, NEXT_STEP autoreset) — what a user gets — in frames per second
    (environment steps x batch size per wall-clock second):
      - on one core (`numba.set_num_threads(1)`) at 64x64 and 128x128 for batch 1, 16 and 64;
      - on all of numba's threads (its default maximum, reported) for batch 64 at both sizes.
    Every configuration replays the same pre-generated, seeded gamepad action sequence, biased to
    push the left stick forward and turn the camera moderately, with held sticks and occasional
    button presses (dash, jump, ...), so the characters walk around the island, run into hedges,
    reach jump pads and auto-reset. A separate untimed pass prints how often that happens.
    Each configuration is warmed up first (the first call loads numba's cached machine code),
    then timed for `--seconds` per repeat; the best of 3 repeats is reported (this is a shared
    machine), with the spread of the 3 and the CPU time used per wall second ("cores").
  * Cold start: the first `import agentalign.envs` + construct + reset + step in a fresh
    subprocess, twice — "as found" (a stale numba cache, e.g. after an edit of core.py, shows up
    here as compile time) and "cached" (the second, with the cache the first one wrote).
  * Reference (unless `--no-vizdoom`, or the `vizdoom` package — the `bench` extra — is missing):
    ViZDoom's built-in `my_way_home` scenario at RES_160X120 (the smallest resolution ViZDoom
    offers; 64x64 is not one of its sizes), RGB24, window hidden, one uniformly random one-hot
    action (of its 5 buttons) per step, one tic per step, `get_state().screen_buffer` read every
    step, new episode when one ends. ViZDoom runs its engine in a child process; both processes
    are pinned to one CPU (`sched_setaffinity` before `init`), so it too runs on one core. The
    cost of resizing its frame to 64x64 is timed separately (PIL bilinear, and numpy
    nearest-neighbour `take` as the cheap bound) and folded into two more figures.
    The ratio SkyGarden / ViZDoom is printed per core at 64x64 for batch 1 and batch 64.

The "cores" column is a sanity check: if an all-thread row keeps about one CPU busy, the machine
did not run the threads of one process in parallel (some sandboxed VMs pack them onto one vCPU)
and a NOTE says so; that row then measures the machine, not the environment.

Targets printed beside the figures: >= 50,000 frames/s per core at 64x64 batch 64 and >= 15,000
at 128x128 batch 64.

Each run prints a table and appends one JSON line (date, machine, CPU count, versions, every
figure) to benchmarks/results/env_fps.jsonl.

Run (from the repository root, in the project venv; `pip install -e .[bench]` for ViZDoom):
    python benchmarks/env_fps.py                 # full run, 3 x 2 s per configuration (~75 s)
    python benchmarks/env_fps.py --seconds 5     # longer repeats, less noise
    python benchmarks/env_fps.py --quick         # ~20 s smoke run (figures are rough)
    python benchmarks/env_fps.py --no-vizdoom    # skip the reference
    python benchmarks/env_fps.py --no-save       # do not append to the results file
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "env_fps.jsonl"

SIZES = (64, 128)
BATCHES = (1, 16, 64)
REPEATS = 3
SEQ_LEN = 2048  # steps in the action sequence; replayed cyclically
SEQ_ENVS = max(BATCHES)  # columns of the sequence: env i of every batch uses column i
SEED = 20240611
TARGETS = {64: 50_000, 128: 15_000}  # frames/s per core at batch 64


# ---- the action sequence ---------------------------------------------------------------------


def make_actions(steps: int = SEQ_LEN, envs: int = SEQ_ENVS, seed: int = SEED) -> np.ndarray:
    """(steps, envs, 16) int64 seeded gamepad actions: mostly forward, moderate turns.

    Sticks are held for a few steps (each step keeps the previous stick position with
    probability 0.75, i.e. ~0.4 s holds at 10 Hz); buttons are short independent presses.
    """
    from agentalign.envs import gamepad

    rng = np.random.default_rng(seed)
    shape = (steps, envs)

    def draw(bins, probs):
        p = np.asarray(probs, dtype=np.float64)
        return rng.choice(np.asarray(bins, dtype=np.int64), size=shape, p=p / p.sum())

    # Proposed stick positions per step; the held value is the proposal at the last change.
    left_x = draw([5, 4, 6, 3, 7, 0, 10], [60, 10, 10, 7, 7, 3, 3])  # mostly no strafe
    left_y = draw([10, 9, 8, 7, 5, 3], [60, 15, 10, 5, 5, 5])  # forward-biased
    right_x = draw([5, 4, 6, 3, 7, 2, 8, 0, 10], [35, 12, 12, 10, 10, 6, 6, 4, 4])  # moderate turns
    right_y = draw([5, 4, 6, 3, 7], [80, 6, 6, 4, 4])  # camera tilt, rarely
    change = rng.random(shape) < 0.25
    change[0] = True
    held_from = np.maximum.accumulate(np.where(change, np.arange(steps)[:, None], 0), axis=0)
    cols = np.arange(envs)[None, :]
    sticks = np.stack([s[held_from, cols] for s in (left_x, left_y, right_x, right_y)], axis=-1)

    press = np.array([0.10, 0.05, 0.05, 0.02, 0.02, 0.02, 0.02, 0.03, 0.02, 0.01, 0.01, 0.005])
    buttons = (rng.random(shape + (gamepad.N_BUTTONS,)) < press).astype(np.int64)
    actions = np.concatenate([buttons, sticks], axis=-1)
    gamepad.validate_actions(actions.reshape(-1, gamepad.ACTION_DIM), steps * envs)
    return np.ascontiguousarray(actions)


def characters(batch: int) -> list[str]:
    from agentalign.envs.skygarden import world as W

    return [W.CHARACTER_NAMES[i % len(W.CHARACTER_NAMES)] for i in range(batch)]


# ---- SkyGarden -------------------------------------------------------------------------------


def behaviour_stats(actions: np.ndarray, size: int = 64) -> dict:
    """Untimed: replay the sequence on a batch-64 env and count what the characters do."""
    from agentalign.envs import SkyGardenVectorEnv

    steps, envs = actions.shape[:2]
    env = SkyGardenVectorEnv(num_envs=envs, width=size, height=size, character=characters(envs))
    env.reset(seed=0)
    pads = truncs = pushes = stuck = 0
    lengths = []
    for i in range(steps):
        t_before = env.state.t.copy()
        _, _, term, trunc, info = env.step(actions[i])
        pads += int(term.sum())
        truncs += int(trunc.sum())
        lengths += info["t"][term | trunc].tolist()
        # Stuck: the left stick pushed but the character did not move (a wall), on stepped worlds.
        stepped = info["t"] == t_before + 1
        pushed = stepped & ((actions[i, :, 12] != 5) | (actions[i, :, 13] != 5))
        pushes += int(pushed.sum())
        stuck += int((pushed & (env.state.moving == 0)).sum())
    env.close()
    episodes = pads + truncs
    return {
        "env_steps": steps * envs,
        "episodes": episodes,
        "pad_rate": pads / max(episodes, 1),
        "mean_episode_len": float(np.mean(lengths)) if lengths else float("nan"),
        "blocked_rate": stuck / max(pushes, 1),
    }


def time_skygarden(actions: np.ndarray, size: int, batch: int, seconds: float, warmup_s: float) -> dict:
    """Best-of-REPEATS frames/s of SkyGardenVectorEnv.step at the current numba thread count."""
    from agentalign.envs import SkyGardenVectorEnv

    acts = np.ascontiguousarray(actions[:, :batch])  # (L, batch, 16)
    n_seq = len(acts)
    env = SkyGardenVectorEnv(num_envs=batch, width=size, height=size, character=characters(batch))
    env.reset(seed=0)
    i = 0
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end or i < 20:
        env.step(acts[i % n_seq])
        i += 1
    step = env.step
    fps, cores = [], []
    for _ in range(REPEATS):
        n = 0
        c0, t0 = time.process_time(), time.perf_counter()
        end = t0 + seconds
        while True:
            step(acts[i % n_seq])
            i += 1
            n += 1
            if (n & 7) == 0 and time.perf_counter() >= end:
                break
        t1, c1 = time.perf_counter(), time.process_time()
        fps.append(n * batch / (t1 - t0))
        cores.append((c1 - c0) / (t1 - t0))
    env.close()
    best = max(fps)
    return {
        "size": size,
        "batch": batch,
        "fps": best,
        "fps_repeats": fps,
        "spread": (best - min(fps)) / best,
        "cores_used": float(np.mean(cores)),
        "steps_per_s": best / batch,
    }


COLD_SNIPPET = r"""
import time, json
t0 = time.perf_counter()
import numpy as np
from agentalign.envs import SkyGardenVectorEnv
from agentalign.envs import gamepad
t1 = time.perf_counter()
env = SkyGardenVectorEnv(num_envs=1, width=64, height=64)
t2 = time.perf_counter()
env.reset(seed=0)
t3 = time.perf_counter()
a = gamepad.noop_action(1); a[0, 13] = 10
env.step(a)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "construct_s": t2 - t1, "reset_s": t3 - t2, "step_s": t4 - t3,
                  "total_s": t4 - t0}))
"""


def cold_start() -> dict:
    """Time import+construct+reset+step in a fresh interpreter (plus the interpreter's own start)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", COLD_SNIPPET], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


# ---- ViZDoom ---------------------------------------------------------------------------------


def time_vizdoom(seconds: float, warmup_s: float) -> dict:
    """Frames/s of ViZDoom my_way_home (RES_160X120, random one-hot action) pinned to one CPU."""
    try:
        import vizdoom as vzd
    except ImportError as e:
        return {"error": f"vizdoom not installed ({e}); `pip install -e .[bench]`"}
    from PIL import Image

    old_affinity = os.sched_getaffinity(0)
    cpu = min(old_affinity)
    os.sched_setaffinity(0, {cpu})  # the engine's child process inherits this at init()
    game = vzd.DoomGame()
    try:
        game.load_config(os.path.join(vzd.scenarios_path, "my_way_home.cfg"))
        game.set_window_visible(False)
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_seed(SEED)
        game.init()
        n_buttons = len(game.get_available_buttons())
        rng = np.random.default_rng(SEED)
        choices = rng.integers(n_buttons, size=SEQ_LEN)
        one_hot = [[int(j == k) for j in range(n_buttons)] for k in range(n_buttons)]
        frame = None
        i = 0

        def run(deadline: float) -> int:
            nonlocal frame, i
            n = 0
            while True:
                if game.is_episode_finished():
                    game.new_episode()
                game.make_action(one_hot[choices[i % SEQ_LEN]])
                state = game.get_state()
                if state is not None:
                    frame = state.screen_buffer
                i += 1
                n += 1
                if time.perf_counter() >= deadline:
                    return n

        run(time.perf_counter() + warmup_s)
        fps = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            n = run(t0 + seconds)
            fps.append(n / (time.perf_counter() - t0))
        shape = tuple(frame.shape)
        # Resize cost 160x120 -> 64x64, best of 3: PIL bilinear (what a preprocessing wrapper
        # typically does) and numpy nearest-neighbour indexing (about the cheapest possible).
        frames = [frame.copy() for _ in range(200)]
        ys = (np.arange(64) * shape[0]) // 64
        xs = (np.arange(64) * shape[1]) // 64

        def per_frame_us(fn) -> float:
            best_us = float("inf")
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                for f in frames:
                    fn(f)
                best_us = min(best_us, (time.perf_counter() - t0) / len(frames) * 1e6)
            return best_us

        bilinear_us = per_frame_us(lambda f: np.asarray(Image.fromarray(f).resize((64, 64), Image.BILINEAR)))
        nearest_us = per_frame_us(lambda f: f.take(ys, 0).take(xs, 1))  # take: ~4x faster than f[ys][:, xs]
    finally:
        game.close()
        os.sched_setaffinity(0, old_affinity)
    best = max(fps)
    return {
        "version": vzd.__version__,
        "scenario": "my_way_home",
        "resolution": f"{shape[1]}x{shape[0]}",
        "fps": best,
        "fps_repeats": fps,
        "spread": (best - min(fps)) / best,
        "resize_to_64_bilinear_us": bilinear_us,
        "resize_to_64_nearest_us": nearest_us,
        "fps_with_bilinear_resize": 1.0 / (1.0 / best + bilinear_us * 1e-6),
        "fps_with_nearest_resize": 1.0 / (1.0 / best + nearest_us * 1e-6),
    }


# ---- main ------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per timed repeat (3 repeats per configuration)")
    ap.add_argument("--quick", action="store_true", help="a ~20 s smoke run: short repeats, rough figures")
    ap.add_argument("--no-vizdoom", action="store_true", help="skip the ViZDoom reference")
    ap.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/env_fps.jsonl")
    args = ap.parse_args(argv)
    seconds = 0.4 if args.quick else args.seconds
    warmup_s = 0.1 if args.quick else min(1.0, max(0.25, seconds / 2))
    started = time.perf_counter()

    print("Cold start (fresh subprocess: import + construct + reset + step, 64x64, batch 1)...", flush=True)
    cold = {"as_found": cold_start()}
    if not args.quick:
        cold["cached"] = cold_start()

    import numba

    from agentalign.envs import gamepad  # noqa: F401  (imports the package once, before timing)

    max_threads = numba.config.NUMBA_NUM_THREADS
    actions = make_actions()
    print("Replaying the action sequence once to check what the characters do...", flush=True)
    behaviour = behaviour_stats(actions[: 400 if args.quick else SEQ_LEN])

    rows = []
    numba.set_num_threads(1)
    for size in SIZES:
        for batch in BATCHES:
            print(f"  timing {size}x{size} batch {batch:>2} on 1 thread...", flush=True)
            r = time_skygarden(actions, size, batch, seconds, warmup_s)
            r["threads"] = 1
            rows.append(r)
    numba.set_num_threads(max_threads)
    for size in SIZES:
        print(f"  timing {size}x{size} batch 64 on {max_threads} threads...", flush=True)
        r = time_skygarden(actions, size, 64, seconds, warmup_s)
        r["threads"] = max_threads
        rows.append(r)
    layer = numba.threading_layer()

    if args.no_vizdoom:
        vz = {"error": "skipped (--no-vizdoom)"}
    else:
        print("  timing ViZDoom my_way_home on 1 core...", flush=True)
        try:
            vz = time_vizdoom(seconds, warmup_s)
        except Exception as e:  # a broken install must not lose the SkyGarden figures
            vz = {"error": f"{type(e).__name__}: {e}"}

    # ---- report ----
    print()
    print(f"SkyGarden env.step frames/s — {cpu_model()}, {os.cpu_count()} CPUs, numba {numba.__version__} "
          f"({layer}), Python {platform.python_version()}")  # fmt: skip
    print(f"best of {REPEATS} x {seconds:g} s; spread = (best - worst) / best; cores = CPU s per wall s")
    print()
    head = (f"{'size':>7} {'batch':>5} {'threads':>7} {'frames/s':>10} {'per core':>10} {'steps/s':>8} "
            f"{'spread':>6} {'cores':>5}  target")  # fmt: skip
    print(head)
    print("-" * (len(head) + 20))
    for r in rows:
        per_core = r["fps"] / r["threads"]
        target = ""
        if r["batch"] == 64 and r["size"] in TARGETS:
            t = TARGETS[r["size"]]
            target = f">= {fmt(t)}/core: {'MET' if per_core >= t else 'MISSED'}"
        print(f"{r['size']:>3}x{r['size']:<3} {r['batch']:>5} {r['threads']:>7} {fmt(r['fps']):>10} {fmt(per_core):>10} "
              f"{fmt(r['steps_per_s']):>8} {r['spread']:>6.1%} {r['cores_used']:>5.2f}  {target}")  # fmt: skip
    for r in rows:
        if r["threads"] > 1 and r["cores_used"] < 0.75 * r["threads"]:
            print(f"NOTE: {r['size']}x{r['size']} on {r['threads']} threads kept only {r['cores_used']:.2f} CPUs busy: "
                  f"this machine did not run the threads of one process concurrently, so the all-core row "
                  f"measures its scheduler, not the env's scaling.")  # fmt: skip
    noisy = [r for r in rows if r["spread"] > 0.10]
    if noisy:
        print(f"NOTE: {len(noisy)} row(s) varied by more than 10% between repeats (shared machine); the best is kept.")
    print()
    b = behaviour
    print(f"Actions: {b['env_steps']:,} env steps of the sequence (64x64, batch 64): {b['episodes']} episodes, "
          f"{b['pad_rate']:.0%} reached a pad, mean length {b['mean_episode_len']:.0f} steps, "
          f"{b['blocked_rate']:.0%} of stick pushes blocked by a wall")  # fmt: skip
    print()
    for name, c in cold.items():
        if "error" in c:
            print(f"Cold start ({name}): FAILED — {c['error']}")
        else:
            print(f"Cold start ({name}): {c['total_s']:.2f} s in-process (import {c['import_s']:.2f}, construct "
                  f"{c['construct_s']:.2f}, reset {c['reset_s']:.2f}, first step {c['step_s']:.2f}); "
                  f"{c['process_wall_s']:.2f} s with interpreter start")  # fmt: skip
    print()
    ratios = {}
    if "error" in vz:
        print(f"ViZDoom: {vz['error']}")
    else:
        print(f"ViZDoom {vz['version']} my_way_home {vz['resolution']} (smallest it offers), 1 core, random action: "
              f"{fmt(vz['fps'])} frames/s (spread {vz['spread']:.1%}), not counting a resize")  # fmt: skip
        print(f"  resize to 64x64: PIL bilinear {vz['resize_to_64_bilinear_us']:.0f} us/frame -> "
              f"{fmt(vz['fps_with_bilinear_resize'])} frames/s; numpy nearest {vz['resize_to_64_nearest_us']:.0f} "
              f"us/frame -> {fmt(vz['fps_with_nearest_resize'])} frames/s")  # fmt: skip
        for r in rows:
            if r["threads"] == 1 and r["size"] == 64 and r["batch"] in (1, 64):
                key = f"64x64_batch{r['batch']}"
                ratios[key] = r["fps"] / vz["fps"]
                ratios[key + "_vs_nearest_resized"] = r["fps"] / vz["fps_with_nearest_resize"]
                ratios[key + "_vs_bilinear_resized"] = r["fps"] / vz["fps_with_bilinear_resize"]
                print(f"  SkyGarden/ViZDoom per core, 64x64 batch {r['batch']:>2}: {ratios[key]:.1f}x against ViZDoom at "
                      f"160x120; {ratios[key + '_vs_nearest_resized']:.1f}x / "
                      f"{ratios[key + '_vs_bilinear_resized']:.1f}x with its nearest / bilinear resize to 64x64")  # fmt: skip
    total_s = time.perf_counter() - started
    print(f"\n(run took {total_s:.0f} s)")

    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "numba_threads_max": max_threads,
        "threading_layer": layer,
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "quick": args.quick,
        "seconds_per_repeat": seconds,
        "repeats": REPEATS,
        "action_seed": SEED,
        "skygarden": rows,
        "behaviour": behaviour,
        "cold_start": cold,
        "vizdoom": vz,
        "ratio_skygarden_over_vizdoom": ratios,
        "targets_per_core_batch64": {f"{k}x{k}": v for k, v in TARGETS.items()},
        "run_s": total_s,
    }
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
