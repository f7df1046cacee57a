"""Benchmark of behaviour-cloning throughput: frames/s of the real trainer (train_bc, fed by the
window loader from a generated store) against the same model's update on batches already in
memory, and where the time of an update goes.

    python benchmarks/bc_throughput.py [--episodes 300] [--steps 30] [--workers 0 1 2] [--repeats 2]
                                       [--parts feeds split train_only]

Both sides run the same TrainStep (augmentation, forward, loss, backward, clipping, AdamW) of the
`cpu` model preset at the trainer's defaults (32 windows of 32 steps = 1,024 frames an update).
The store is generated first (the `pretrain` population preset, --episodes of it). Two views:
  paired      one process, two identical models; each update fed from memory is followed by one
              fed by the loader (num_workers=0), so both see the same load from other work on the
              machine. The headline ratio.
  whole runs  train_bc itself (with its logging) for each worker count, against in-memory runs,
              interleaved --repeats times. Sensitive to other work on the machine.
Timings are per-update medians after --warm updates. Target: loader-fed within 10 % of in-memory.
Where other processes share the cores, run with OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads
then make every update several times slower (4.5 s instead of 0.7 s measured at load average 4).
Also prints where an update's time goes (augmentation, encoder, transformer + head) and, paired
the same way, an update of the whole network against one with the pixel encoder frozen
(train_only="transformer", as the alignment's clones train), and that against the same on the
store's frame features computed once (cache_features, what the clones do). Prints the figures and
appends JSON to benchmarks/results/bc_throughput.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def loader_run(cfg, store: Path, model, out: Path, warm: int) -> list[float]:
    """Seconds per update of train_bc (log_every=1: each metrics row is one update, loader wait included)."""
    from agentalign.io import read_metrics
    from agentalign.train.bc import train_bc

    train_bc(cfg, store, out, model=model, stage="benchmark", progress=False)
    frames = cfg.batch_size * cfg.window
    return [frames / r["train/frames_per_s"] for r in read_metrics(out)][warm:]


def memory_run(cfg, store: Path, model, batches: list[dict], steps: int, warm: int) -> list[float]:
    """Seconds per update of the same TrainStep on batches already in memory."""
    from agentalign.train.bc import TrainStep, _set_mode, build_policy, make_optimizer
    from agentalign.train.common import seed_everything

    seed_everything(cfg.seed)
    device = torch.device("cpu")
    policy = build_policy(cfg, model, device, data=store)
    step = TrainStep(policy, make_optimizer(policy, cfg), cfg, device)
    _set_mode(policy, cfg.train_only)
    times = []
    for n in range(1, steps + 1):
        t = time.perf_counter()
        metrics, _, _ = step(batches[n % len(batches)], n)
        float(metrics["loss"])  # the trainer syncs at each log row; so does this
        times.append(time.perf_counter() - t)
    return times[warm:]


def paired_run(cfg, store: Path, model, batches: list[dict], steps: int, warm: int) -> tuple[list[float], list[float]]:
    """Seconds per update, in-memory and loader-fed (num_workers=0) alternating update by update
    in one process, so both see the same load from anything else running on the machine."""
    from agentalign.train.bc import TrainStep, _set_mode, build_policy, make_loader, make_optimizer
    from agentalign.train.common import seed_everything

    device = torch.device("cpu")
    cfg = replace(cfg, num_workers=0)
    steppers = []
    for _ in range(2):
        seed_everything(cfg.seed)
        policy = build_policy(cfg, model, device, data=store)
        _set_mode(policy, cfg.train_only)
        steppers.append(TrainStep(policy, make_optimizer(policy, cfg), cfg, device))
    batches_from_disk = iter(make_loader(cfg, store, device, num_batches=steps))
    mem, ldr = [], []
    for n in range(1, steps + 1):
        t = time.perf_counter()
        float(steppers[0](batches[n % len(batches)], n)[0]["loss"])
        t1 = time.perf_counter()
        float(steppers[1](next(batches_from_disk), n)[0]["loss"])
        t2 = time.perf_counter()
        mem.append(t1 - t)
        ldr.append(t2 - t1)
    return mem[warm:], ldr[warm:]


def paired_train_only(cfg, store: Path, model, batches: list[dict], steps: int, warm: int) -> dict[str, float]:
    """Seconds per update of the whole network, of train_only="transformer" (the encoder frozen, as
    the alignment's clones train) re-running the encoder on each window, and of the same on the
    store's FrameFeatures computed once (cache_features, what the clones do), alternating update
    by update in one process. "encode_store_s": the one-off cost of those features."""
    from agentalign.data import StoreReader
    from agentalign.train.bc import FrameFeatures, TrainStep, _set_mode, build_policy, make_optimizer
    from agentalign.train.common import seed_everything

    device = torch.device("cpu")
    steppers, out = {}, {}
    for name, mode in (("all", "all"), ("transformer", "transformer"), ("transformer_cached", "transformer")):
        c = replace(cfg, train_only=mode)
        seed_everything(c.seed)
        policy = build_policy(c, model, device, data=store)
        _set_mode(policy, mode)
        features = None
        if name == "transformer_cached":
            t = time.perf_counter()
            features = FrameFeatures(policy, StoreReader(store), device, autocast=False)
            out["encode_store_s"] = time.perf_counter() - t
        steppers[name] = TrainStep(policy, make_optimizer(policy, c), c, device, features)
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for n in range(1, steps + 1):
        for name, step in steppers.items():
            t = time.perf_counter()
            float(step(batches[n % len(batches)], n)[0]["loss"])
            times[name].append(time.perf_counter() - t)
    return out | {name: statistics.median(ts[warm:]) for name, ts in times.items()}


def split_run(model, batch: dict, repeats: int = 7) -> dict[str, float]:
    """Milliseconds of one update's parts: augmentation, encoder fwd+bwd, transformer+head fwd+bwd."""
    from agentalign.models import Policy
    from agentalign.train.augment import augment
    from agentalign.train.bc import previous_actions
    from agentalign.train.losses import bc_loss

    policy = Policy(model).train()
    obs, actions, mask = batch["obs"], batch["actions"], batch["mask"]
    prev = previous_actions(actions)
    x = augment(obs, torch.Generator().manual_seed(0))

    def time_ms(fn) -> float:  # best of `repeats`: the cost without interference from other work
        fn()
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return 1000 * min(out)

    def encoder():
        policy.zero_grad(set_to_none=True)
        policy.encode(x.clone()).sum().backward()  # clone: encode divides its float input in place

    z = policy.encode(x.clone()).detach()

    def transformer():
        policy.zero_grad(set_to_none=True)
        zz = z.requires_grad_(True)
        bc_loss(policy.head(policy.forward_embedded(zz, prev)), actions, mask)[0].backward()

    return {
        "augment_ms": time_ms(lambda: augment(obs, torch.Generator().manual_seed(0))),
        "encoder_fwd_bwd_ms": time_ms(encoder),
        "transformer_head_fwd_bwd_ms": time_ms(transformer),
    }


def feeds(args, cfg, store: Path, model, batches: list[dict], total: int, frames: int, rows: dict, tmp: Path) -> float:
    """Parts 1 and 2: the loader against in-memory batches; fills `rows`, returns s/update in memory."""
    # 1. Paired: the same update fed from memory and from the loader, alternating.
    mem_ts, ldr_ts = paired_run(cfg, store, model, batches, total, args.warm)
    mem, ldr = statistics.median(mem_ts), statistics.median(ldr_ts)
    rows["paired_memory"] = {"median_s": round(mem, 4), "frames_per_s": round(frames / mem)}
    rows["paired_loader_w0"] = {"median_s": round(ldr, 4), "frames_per_s": round(frames / ldr), "ratio": round(mem / ldr, 3)}
    print(f"paired, update by update: in-memory {mem:.3f} s ({frames / mem:,.0f} frames/s), "
          f"loader-fed {ldr:.3f} s ({frames / ldr:,.0f} frames/s): {mem / ldr:.1%} of in-memory (target >= 90 %)")

    # 2. Whole runs: train_bc itself (logging and all) against the in-memory step, interleaved.
    times: dict[str, list[float]] = {"memory": []} | {f"loader_w{w}": [] for w in args.workers}
    for r in range(args.repeats):
        times["memory"] += memory_run(cfg, store, model, batches, total, args.warm)
        for w in args.workers:
            out = tmp / f"run-{r}-w{w}"
            times[f"loader_w{w}"] += loader_run(replace(cfg, num_workers=w), store, model, out, args.warm)
    mem_run = statistics.median(times["memory"])
    print(f"{'whole runs':<24}{'s/update':>10}{'frames/s':>10}{'vs memory':>11}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[f"run_{name}"] = {"median_s": round(med, 4), "frames_per_s": round(frames / med),
                               "ratio": round(mem_run / med, 3)}  # fmt: skip
        label = "in-memory tensors" if name == "memory" else f"train_bc, {name[8:]} workers"
        print(f"{label:<24}{med:>10.3f}{frames / med:>10,.0f}{mem_run / med:>10.1%}")
    rows["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(f"load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus (above ~2.2 other work shares the cores)")
    return mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=300, help="pretrain-preset episodes in the store")
    ap.add_argument("--steps", type=int, default=30, help="timed updates per run")
    ap.add_argument("--warm", type=int, default=5, help="untimed updates first (worker start, allocator)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts to try")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--store", type=Path, default=None, help="use this store instead of generating one")
    ap.add_argument("--parts", nargs="+", choices=["feeds", "split", "train_only"], default=["feeds", "split", "train_only"],
                    help="what to measure: the loader against memory, the split of an update, all against transformer")  # fmt: skip
    args = ap.parse_args()

    from agentalign.data import WindowConfig, WindowSampler
    from agentalign.data.torch_data import batch_to_torch
    from agentalign.models import Policy, model_preset
    from agentalign.players.generate import generate, preset
    from agentalign.train.bc import BCConfig

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = Path(tmp) / "store"
            t = time.perf_counter()
            info = generate(store, preset("pretrain", episodes=args.episodes))
            print(f"store: {info['episodes']} episodes, {info['frames']} frames, generated in {time.perf_counter() - t:.1f} s")
        total = args.warm + args.steps
        cfg, model = BCConfig(steps=total, checkpoint_every=0, log_every=1), model_preset("cpu")
        sampler = WindowSampler(store, WindowConfig(window=cfg.window, batch_size=cfg.batch_size), seed=0)
        batches = [batch_to_torch(sampler.batch(i)) for i in range(4)]
        frames = cfg.batch_size * cfg.window
        print(f"model cpu preset ({Policy(model).num_parameters() / 1e6:.2f}M "
              f"parameters), batch {cfg.batch_size} x window {cfg.window} = {frames} frames/update, "
              f"augment {cfg.augment}, torch threads {torch.get_num_threads()}, {os.cpu_count()} cpus")  # fmt: skip

        rows, split = {}, {}
        if "feeds" in args.parts:
            mem = feeds(args, cfg, store, model, batches, total, frames, rows, Path(tmp))
        if "split" in args.parts:
            split = split_run(model, batches[0])
            fb = split["encoder_fwd_bwd_ms"] + split["transformer_head_fwd_bwd_ms"]
            print(f"forward+backward of {frames} frames: encoder {split['encoder_fwd_bwd_ms']:.0f} ms "
                  f"({split['encoder_fwd_bwd_ms'] / fb:.0%}), transformer+head {split['transformer_head_fwd_bwd_ms']:.0f} ms "
                  f"({split['transformer_head_fwd_bwd_ms'] / fb:.0%}); augmentation {split['augment_ms']:.0f} ms"
                  + (f" ({split['augment_ms'] / (1000 * mem):.0%} of an update)" if "feeds" in args.parts else ""))  # fmt: skip
        if "train_only" in args.parts:
            cmp = paired_train_only(replace(cfg, augment=False), store, model, batches, total, args.warm)
            rows["train_only"] = {m: {"median_s": round(cmp[m], 4), "frames_per_s": round(frames / cmp[m])}
                                  for m in ("all", "transformer", "transformer_cached")}  # fmt: skip
            rows["train_only"]["speedup"] = round(cmp["all"] / cmp["transformer"], 3)
            rows["train_only"]["cache_speedup"] = round(cmp["transformer"] / cmp["transformer_cached"], 3)
            rows["train_only"]["encode_store_s"] = round(cmp["encode_store_s"], 2)
            print(f"paired, no augmentation: whole network {cmp['all']:.3f} s/update, encoder frozen "
                  f"(train_only=transformer) {cmp['transformer']:.3f} s/update -> {cmp['all'] / cmp['transformer']:.2f}x; "
                  f"on cached frame features {cmp['transformer_cached']:.3f} s/update -> "
                  f"{cmp['transformer'] / cmp['transformer_cached']:.2f}x more (encoding the store once: "
                  f"{cmp['encode_store_s']:.1f} s)")  # fmt: skip

    rec = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
           "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
           "frames_per_update": frames, "parts": args.parts, "feeds": rows,
           "split_ms": {k: round(v, 1) for k, v in split.items()}}  # fmt: skip
    path = Path(__file__).parent / "results" / "bc_throughput.jsonl"
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
