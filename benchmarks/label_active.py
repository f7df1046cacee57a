"""Active against random question selection in the labelling app: the held-out accuracy of a reward
model trained on the first k labels, for each way of choosing what to ask.

What it measures
  For each selection ("active": the ensemble-disagreement rule of labeling/selection.py; "random")
  and each of --seeds seeds, the synthetic labeller (`agentalign.prefs.SyntheticLabeller`, target
  pad from RUN/pipeline.json) answers pair questions through the labelling app's HTTP API (FastAPI's
  TestClient on `labeling.server.make_app`, a fresh label database in a temporary folder, the
  run's rollouts as the store, RUN/pipeline.json's prefs.train as the training pool) until it has
  given max(--labels) answers. As the app does for people, every tenth question is a random pair
  of the held-out pool, which trains nothing; so k answers hold about 0.9 k training comparisons,
  the same share for both selections. For each k in --labels, one reward model
  (`train.reward.train_reward_model`, RewardTrainConfig's defaults but --eval-steps, seed = the
  seed) is trained on the training comparisons among the first k answers and scored on every pair
  of the held-out pool, labelled by the synthetic labeller (ties left out): held-out pairs drawn
  at random in the plainest way, all of them, never by the active rule. Embeddings: the frozen
  SFT agent's (RUN/sft/model; the random encoder when the run has none), from the reward stage's
  cache RUN/reward/cache when it holds them, else computed (and cached in the temporary folder).
  The active selector runs in the foreground (`background=False`, reproducible for a seed) with
  --ensemble members of --selector-steps steps each, refitted every --refit-every comparisons,
  random pairs until --min-labels, the most disputed of --candidates random candidate pairs.

The run folder is only read (labels go to a temporary folder). Each run prints a table (held-out
accuracy, mean +- standard error over the seeds) and appends one JSON line to
benchmarks/results/label_active.jsonl (unless --no-save).

Run (from the repository root, in the project venv; a finished `agentalign pipeline --out RUN`):
    python benchmarks/label_active.py --run runs/cpu
    python benchmarks/label_active.py --run runs/cpu --labels 25,50,100,200,400 --seeds 5
Default size: about 10 minutes on 2 CPU cores (1 torch thread).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agentalign.data import open_store
from agentalign.labeling.db import LabelDB
from agentalign.labeling.selection import pool_embeddings
from agentalign.prefs import SyntheticLabeller, TrajectoryInfo
from agentalign.train.reward import RewardTrainConfig, pairwise_metrics, train_reward_model

RESULTS = Path(__file__).parent / "results" / "label_active.jsonl"
CHOICE = {"A": "left", "B": "right", "tie": "tie"}
P_OF = {"left": 1.0, "right": 0.0, "tie": 0.5}


def pair_matrix(pairs: list[tuple[int, int, float]], ids: list[int]) -> torch.Tensor:
    """(len(ids), len(ids)) preference matrix of `pairs` (episode ids), NaN where unlabelled."""
    at = {e: k for k, e in enumerate(ids)}
    P = torch.full((len(ids), len(ids)), float("nan"))
    for i, j, p in pairs:
        P[at[i], at[j]], P[at[j], at[i]] = p, 1.0 - p
    return P


def held_out_truth(scores: np.ndarray) -> torch.Tensor:
    """Every pair of the held-out pool as the synthetic labeller orders them (1, 0, 0.5 a tie)."""
    s = torch.from_numpy(scores)
    P = (s[:, None] > s[None, :]).float() + 0.5 * (s[:, None] == s[None, :]).float()
    P.fill_diagonal_(float("nan"))
    return P


def label_through_api(work: Path, store_path: Path, train: int, selection: str, seed: int, answers: int,
                      labeller: SyntheticLabeller, infos: list[TrajectoryInfo], options: dict | None) -> dict:  # fmt: skip
    """The synthetic labeller answering `answers` pair questions of a fresh app -> the answers in
    order ((i, j, p, pool)) and the selector's record."""
    from fastapi.testclient import TestClient

    from agentalign.labeling.server import make_app

    run = work / f"{selection}-s{seed}"
    run.mkdir(parents=True)
    with LabelDB(run) as db:
        token = db.add_labeller("synthetic")
    h = {"Authorization": f"Bearer {token}"}
    app = make_app(run, store=store_path, selection=selection, seed=seed, train=train, selector_options=options)
    state = app.state.labelling
    train_set = set(state.train_pool)
    out, start = [], time.perf_counter()
    with TestClient(app) as client:
        for _ in range(answers):
            q = client.get("/api/next?mode=pair", headers=h).json()
            if q["id"] is None:
                break
            i, j = q["episodes"]
            choice = CHOICE[labeller.compare(infos[i], infos[j])]
            r = client.post("/api/answer", json={"id": q["id"], "choice": choice, "seconds": 0.0}, headers=h)
            r.raise_for_status()
            out.append((int(i), int(j), P_OF[choice], "train" if {i, j} <= train_set else "test"))
    sel = state.selector
    return {"answers": out, "seconds": time.perf_counter() - start, "fits": getattr(sel, "fits", 0),
            "fit_seconds": float(sum(getattr(sel, "fit_seconds", []))),
            "train_pool": state.train_pool, "test_pool": state.test_pool}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/cpu"), help="a finished pipeline run folder (read only)")
    ap.add_argument("--labels", default="25,50,100,200", help="answer counts k to train on (comma-separated)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ensemble", type=int, default=5, help="active: reward models in the ensemble")
    ap.add_argument("--refit-every", type=int, default=20, help="active: comparisons between refits")
    ap.add_argument("--min-labels", type=int, default=10, help="active: random pairs until this many comparisons")
    ap.add_argument("--candidates", type=int, default=2000, help="active: random candidate pairs per question")
    ap.add_argument("--selector-steps", type=int, default=100, help="active: training steps of each member")
    ap.add_argument("--eval-steps", type=int, default=200, help="steps of the reward model that is scored")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the cores may be shared)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    ks = sorted({int(k) for k in args.labels.split(",")})
    if not ks or ks[0] < 1 or args.seeds < 1:
        ap.error("--labels must be positive counts and --seeds at least 1")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    head = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    print(f"{head['date']}  {head['cores']} cores, {head['threads']} torch threads, torch {head['torch']}")

    run = args.run
    cfg = json.loads((run / "pipeline.json").read_text())["config"]
    target, train = str(cfg["target"]), int(cfg["prefs"]["train"])
    store_path = run / "rollouts" / "store"
    store = open_store(store_path)
    n = len(store)
    train_pool, test_pool = list(range(train)), list(range(train, n))
    labeller = SyntheticLabeller(target)
    infos = [TrajectoryInfo.from_metadata(i, store.metadata(i)) for i in range(n)]
    policy = run / "sft" / "model"
    encoder = "agent" if (policy / "model.safetensors").is_file() else "random"
    if encoder == "random":
        print(f"note: {run} has no SFT model; the random encoder stands in for the agent's")

    with tempfile.TemporaryDirectory(prefix="label_active-") as tmp:
        work = Path(tmp)
        # The whole store's embeddings: from RUN/reward/cache, else computed into work/labels/cache
        # (a read-only view of the run: pool_embeddings writes only under the folder it is given).
        view = work / "view"
        (view / "reward").mkdir(parents=True)
        if (run / "reward" / "cache").is_dir():
            (view / "reward" / "cache").symlink_to((run / "reward" / "cache").resolve())
        t = time.perf_counter()
        emb = pool_embeddings(view, store, list(range(n)), encoder, policy if encoder == "agent" else None)
        print(f"embeddings ({encoder} encoder) of {n} episodes: {time.perf_counter() - t:.1f} s")
        emb_train, emb_test = emb[:train], emb[train:]
        P_test = held_out_truth(SyntheticLabeller(target).scores(infos)[train:])
        scfg = RewardTrainConfig(max_steps=args.selector_steps, traj_per_step=64)
        options = {"embeddings": emb_train, "encoder": encoder, "ensemble": args.ensemble, "refit_every": args.refit_every,
                   "min_labels": args.min_labels, "candidates": args.candidates, "train_cfg": scfg, "background": False}  # fmt: skip

        rows, runs = [], []
        for selection in ("active", "random"):
            for seed in range(args.seeds):
                r = label_through_api(work, store_path, train, selection, seed, max(ks), labeller, infos,
                                      options if selection == "active" else None)  # fmt: skip
                assert r["train_pool"] == train_pool and r["test_pool"] == test_pool
                answers = r["answers"]
                runs.append({"selection": selection, "seed": seed, "answers": len(answers),
                             "label_seconds": round(r["seconds"], 2), "fits": r["fits"],
                             "fit_seconds": round(r["fit_seconds"], 2)})  # fmt: skip
                for k in ks:
                    pairs = [(i, j, p) for i, j, p, pool in answers[:k] if pool == "train"]
                    ids = sorted({e for i, j, _ in pairs for e in (i, j)})
                    ecfg = RewardTrainConfig(encoder=encoder, seed=seed, max_steps=args.eval_steps)
                    model, info = train_reward_model(emb_train[torch.tensor(ids)], pair_matrix(pairs, ids), ecfg)
                    with torch.no_grad():
                        m = pairwise_metrics(model(emb_test), P_test)
                    ties = sum(p == 0.5 for _, _, p in pairs)
                    rows.append({"selection": selection, "seed": seed, "labels": min(k, len(answers)),
                                 "train_comparisons": len(pairs), "trajectories": len(ids), "ties": ties,
                                 "steps": info["steps"], "accuracy": m["reward/accuracy"]})  # fmt: skip
                    print(f"  {selection:6s} seed {seed}  {k:4d} labels ({len(pairs)} training, {ties} ties): "
                          f"held-out accuracy {100 * m['reward/accuracy']:.1f}%", flush=True)  # fmt: skip
                print(f"{selection} seed {seed}: {len(answers)} answers in {r['seconds']:.1f} s "
                      f"({r['fits']} ensemble fits, {r['fit_seconds']:.1f} s)", flush=True)  # fmt: skip

    summary = {}
    for k in ks:
        summary[k] = {}
        for selection in ("active", "random"):
            acc = [100 * r["accuracy"] for r in rows if r["selection"] == selection and r["labels"] == k]
            mean = float(np.mean(acc)) if acc else math.nan
            se = float(np.std(acc, ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else math.nan
            summary[k][selection] = {"mean": round(mean, 2), "se": round(se, 2), "n": len(acc)}
    seconds = time.perf_counter() - t0
    print(f"\nheld-out accuracy (%) of a reward model on the first k labels, mean +- s.e. over {args.seeds} seeds")
    print(f"run {run}, target {target}, {encoder} encoder, pools {train} / {n - train}, "
          f"{int(torch.isfinite(P_test).sum()) // 2} held-out pairs")  # fmt: skip
    print(f"{'labels':>7}  {'active':>14}  {'random':>14}")
    for k in ks:
        a, b = summary[k]["active"], summary[k]["random"]
        print(f"{k:>7}  {a['mean']:>7.1f} +- {a['se']:<4.1f}  {b['mean']:>7.1f} +- {b['se']:<4.1f}")
    print(f"{seconds:.0f} s in all")
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: getattr(args, k) for k in ("seeds", "ensemble", "refit_every", "min_labels", "candidates",
                                                   "selector_steps", "eval_steps")}  # fmt: skip
        with RESULTS.open("a") as f:
            f.write(json.dumps({**head, "run": str(run), "target": target, "encoder": encoder, "train_pool": train,
                                "test_pool": n - train, "labels": ks, **settings, "summary": summary, "runs": runs,
                                "rows": rows, "seconds": round(seconds, 1)}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
