"""People's labels out of the label database: the project's preference file, and statistics.

`export_labels` writes an `agentalign.prefs.PreferenceSet` that the reward stage reads exactly as
the synthetic labeller's: one `Preference` per answer ("left" -> label "A", "right" -> "B", "tie"
-> "tie"; a ranking -> `ranking`, 0 = best), recording the labeller and the time; skips are
never exported. Its header carries the pools as the split: {"train_ids", "test_ids",
"labeller": "people", "source": "labels"}.

`stats` reports labels per labeller, agreement between labellers where two or more compared the
same two episodes, labels per hour, and skips.
"""

from __future__ import annotations

import datetime as _dt
import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

from agentalign.labeling.db import Answer, LabelDB, answer_comparisons, db_path, open_pools, preference
from agentalign.prefs import Preference, PreferenceSet


def to_preference(a: Answer) -> Preference | None:
    """The preference record of an answer; None for a skip."""
    return preference(a.episodes, a.choice, a.order, labeller=a.labeller, time=a.created)


def export_labels(run_dir: str | Path, out_path: str | Path, store: str | Path | None = None) -> dict[str, Any]:
    """Write the labels of `run_dir`'s database to `out_path` as a PreferenceSet over the store
    (`store`, default the database's, else RUN/rollouts/store). With no labels yet the file holds
    the header (the pools) and no record. -> {"labels", "train_comparisons", "test_comparisons",
    "labellers", "skipped", "out"}."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist")
    with LabelDB(run_dir) as db:
        reader, meta = open_pools(db, run_dir, store)
        answers = db.answers()
    train, test = [int(i) for i in meta["train_ids"]], [int(i) for i in meta["test_ids"]]
    prefs = [p for p in map(to_preference, answers) if p is not None]
    pset = PreferenceSet(reader.dataset_id, prefs,
                         meta={"train_ids": train, "test_ids": test, "labeller": "people", "source": "labels"})  # fmt: skip
    pset.check_ids(len(reader))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pset.save(out)
    train_set, test_set = set(train), set(test)
    count = lambda ids: sum(sum(1 for _ in p.pairs()) for p in prefs if set(p.ids) <= ids)  # noqa: E731
    return {"labels": len(prefs), "train_comparisons": count(train_set), "test_comparisons": count(test_set),
            "labellers": len({p.labeller for p in prefs}), "skipped": len(answers) - len(prefs), "out": str(out)}  # fmt: skip


def _time(s: str) -> float:
    return _dt.datetime.fromisoformat(s).timestamp()


def stats(run_dir: str | Path) -> dict[str, Any]:
    """Labels per labeller (and skips), labels per hour, and agreement between labellers.

    per_hour: labels (skips too: each took a person's time) per hour of the seconds the page
    recorded; per_hour_wall: per hour between the labeller's first and last answer (None for
    fewer than two). agreement: over every two labellers who both compared the same two episodes
    (in a pair or a ranking; a labeller's latest answer counts), the share who agree (same
    preferred episode, or both a tie); None where no two labellers overlap."""
    run_dir = Path(run_dir)
    if not db_path(run_dir).is_file():
        raise ValueError(f"{db_path(run_dir)} does not exist: no labels in {run_dir} yet")
    with LabelDB(run_dir, create=False) as db:
        names = list(db.labellers().values())
        answers = db.answers()
    by: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by[a.labeller].append(a)
    labellers = {}
    for name in names:
        mine = by.get(name, [])
        skipped = sum(1 for a in mine if a.choice == "skip")
        seconds = [a.seconds for a in mine if a.seconds is not None]
        times = [_time(a.created) for a in mine]
        span = max(times) - min(times) if len(times) >= 2 else 0.0
        labellers[name] = {
            "labels": len(mine) - skipped,
            "skipped": skipped,
            "mean_seconds": sum(seconds) / len(seconds) if seconds else None,
            "per_hour": 3600 * len(seconds) / sum(seconds) if seconds and sum(seconds) > 0 else None,
            "per_hour_wall": 3600 * (len(times) - 1) / span if span > 0 else None,
        }
    # Each labeller's latest verdict on each unordered pair of episodes: 1 if the smaller id wins.
    verdict: dict[frozenset[int], dict[str, float]] = defaultdict(dict)
    for a in answers:
        for i, j, p in answer_comparisons(a):
            verdict[frozenset((i, j))][a.labeller] = p if i < j else 1.0 - p
    agree = pairs = 0
    overlap = 0
    for votes in verdict.values():
        if len(votes) < 2:
            continue
        overlap += 1
        for x, y in itertools.combinations(votes.values(), 2):
            pairs += 1
            agree += x == y
    return {
        "labels": sum(v["labels"] for v in labellers.values()),
        "skipped": sum(v["skipped"] for v in labellers.values()),
        "labellers": labellers,
        "agreement": agree / pairs if pairs else None,
        "agreement_pairs": pairs,  # pairs of labellers' verdicts compared
        "shared_comparisons": overlap,  # episode pairs compared by two or more labellers
    }
