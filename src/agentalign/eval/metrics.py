"""Evaluation numbers: the jump-pad distribution of the paper's figures 3-5 over N episodes.

Standard errors are binomial, sqrt(p (1 - p) / N), over the episodes of one run: the uncertainty
of the fractions from a finite evaluation. The paper's success-rate curves (figures 8, 9) take
standard errors over training seeds instead; combining runs is left to the caller.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

PAD_ORDER = ("none", "left", "middle", "right")  # the bars of figures 3-5, failure first


def _share(count: int, n: int) -> dict[str, float | int]:
    p = count / n if n else 0.0
    return {"count": int(count), "fraction": p, "stderr": math.sqrt(p * (1 - p) / n) if n else 0.0}


def pad_distribution(pads: Sequence[str]) -> dict:
    """Jump pads reached, one label per episode -> counts, fractions and standard errors.

    {"episodes": N, "jump_pads": {pad: {"count", "fraction", "stderr"}} for none/left/middle/right,
     "success": {"count", "fraction", "stderr"}}  (success = any pad)."""
    bad = set(pads) - set(PAD_ORDER)
    if bad:
        raise ValueError(f"unknown jump pad labels {sorted(bad)}; expected {PAD_ORDER}")
    n = len(pads)
    c = Counter(pads)
    return {
        "episodes": n,
        "jump_pads": {p: _share(c[p], n) for p in PAD_ORDER},
        "success": _share(n - c["none"], n),
    }


def length_summary(lengths: Iterable[int], pads: Sequence[str]) -> dict:
    """Mean episode length overall and per pad reached (None where a pad was never reached)."""
    lengths = np.asarray(list(lengths), dtype=np.float64)
    pads = np.asarray(pads)
    out: dict = {"mean": float(lengths.mean()) if len(lengths) else None, "by_pad": {}}
    for p in PAD_ORDER:
        m = pads == p
        out["by_pad"][p] = float(lengths[m].mean()) if m.any() else None
    ok = pads != "none"
    out["mean_success"] = float(lengths[ok].mean()) if ok.any() else None
    return out


def by_spawn(spawns: Sequence[int], pads: Sequence[str]) -> dict[str, dict[str, int]]:
    """Counts of each pad per spawn (spawn 0..3, left to right)."""
    return _pad_counts([(int(s),) for s in spawns], pads)


def _pad_counts(keys: Sequence[tuple[int, ...]], pads: Sequence[str]) -> dict[str, dict[str, int]]:
    """Counts of episodes and of each pad per key, keys in numeric order and written "a/b"."""
    out: dict[tuple[int, ...], dict[str, int]] = {}
    for key, p in zip(keys, pads):
        row = out.setdefault(key, {k: 0 for k in ("episodes",) + PAD_ORDER})
        row["episodes"] += 1
        row[p] += 1
    return {"/".join(map(str, key)): row for key, row in sorted(out.items())}


def by_start(spawns: Sequence[int], yaw0: Sequence[float], pads: Sequence[str],
             yaw_edges: Sequence[float]) -> dict[str, dict[str, int]]:  # fmt: skip
    """Counts of each pad per start cell: spawn and bin of initial yaw ("1/0": spawn 1, lowest yaws).

    `yaw_edges` (K + 1,) bound K bins; a yaw outside them falls in the nearest end bin. The aligned
    agents' misses gather in a few such cells, which a per-spawn count averages away."""
    inner = np.asarray(yaw_edges, dtype=np.float64)[1:-1]
    bins = np.searchsorted(inner, np.asarray(yaw0, dtype=np.float64), side="right")
    return _pad_counts([(int(s), int(b)) for s, b in zip(spawns, bins)], pads)


def stuck(positions: Sequence[np.ndarray], pads: Sequence[str], window: int = 30, radius: float = 2.0) -> dict:
    """Episodes that reached no pad and ended pinned: over their last `window` steps the agent stayed
    within `radius` world units of where it stopped — pressing into a wall or a corner, the collapse
    #6 warns of ("the agent still reaches the pad, not a wall"), not still searching.

    positions: one (T + 1, 2) array per episode -> {"count", "fraction" (of all episodes), "of_none"}."""
    n_none, count = 0, 0
    for pos, p in zip(positions, pads):
        if p != "none":
            continue
        n_none += 1
        tail = np.asarray(pos, dtype=np.float64)[-(window + 1):]
        if len(tail) > window and np.linalg.norm(tail - tail[-1], axis=1).max() <= radius:
            count += 1
    n = len(pads)
    return {"count": count, "fraction": count / n if n else 0.0, "of_none": count / n_none if n_none else 0.0,
            "window": window, "radius": radius}  # fmt: skip


def flat_metrics(dist: dict) -> dict[str, float]:
    """Namespaced scalars for metrics.jsonl: eval/success, eval/success_stderr, eval/left, ..."""
    m = {"eval/success": dist["success"]["fraction"], "eval/success_stderr": dist["success"]["stderr"]}
    for p in PAD_ORDER:
        m[f"eval/{p}"] = dist["jump_pads"][p]["fraction"]
        m[f"eval/{p}_stderr"] = dist["jump_pads"][p]["stderr"]
    return m


def format_distribution(dist: dict) -> str:
    """One readable line: 'left 30.1% ± 1.5 | middle ... | none ... | success 88.9% ± 1.0 (N = 1000)'."""
    parts = [f"{p} {100 * d['fraction']:.1f}% ± {100 * d['stderr']:.1f}"
             for p, d in ((p, dist["jump_pads"][p]) for p in ("left", "middle", "right", "none"))]  # fmt: skip
    s = dist["success"]
    success = f"success {100 * s['fraction']:.1f}% ± {100 * s['stderr']:.1f} (N = {dist['episodes']})"
    return " | ".join(parts + [success])
