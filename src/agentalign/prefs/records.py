"""The preference record shared by every labeller, and its on-disk set.

A `Preference` names two (or N) trajectories of one trajectory store by episode index, and says
which is preferred: "A", "B" or "tie" for a pair, or a ranking (best first, equal ranks allowed)
for N. It records who labelled it and when. A `PreferenceSet` is a JSON-lines file whose first
line is a header naming the trajectory store (its dataset id) the indices refer to; it is
rewritten atomically on every save, so a crash never leaves half a file.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from agentalign.io import atomic_replace

PREFS_SCHEMA = 1
PAIR_LABELS = ("A", "B", "tie")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Preference:
    ids: tuple[int, ...]  # episode indices in the trajectory store
    label: str | None = None  # pairs: "A" (ids[0] preferred), "B" or "tie"
    ranking: tuple[int, ...] | None = None  # N-way: rank of each id, 0 = best; equal ranks are ties
    labeller: str = "unknown"
    time: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if len(self.ids) < 2:
            raise ValueError(f"a preference compares at least 2 trajectories, got ids {self.ids}")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"a preference cannot compare a trajectory with itself: ids {self.ids}")
        if self.ranking is None:
            if len(self.ids) != 2:
                raise ValueError(f"{len(self.ids)} trajectories need a ranking, not a label")
            if self.label not in PAIR_LABELS:
                raise ValueError(f"label must be one of {PAIR_LABELS}, got {self.label!r}")
        else:
            if self.label is not None:
                raise ValueError("give a label (pairs) or a ranking, not both")
            if len(self.ranking) != len(self.ids) or min(self.ranking) < 0:
                raise ValueError(f"ranking {self.ranking} must give a rank >= 0 to each of the {len(self.ids)} ids")

    def pairs(self) -> Iterator[tuple[int, int, float]]:
        """(i, j, p) comparisons this record implies: p = 1 if i is preferred, 0.5 for a tie."""
        if self.ranking is None:
            yield self.ids[0], self.ids[1], {"A": 1.0, "B": 0.0, "tie": 0.5}[self.label]
            return
        for (a, ra), (b, rb) in itertools.combinations(zip(self.ids, self.ranking), 2):
            yield a, b, 1.0 if ra < rb else (0.0 if ra > rb else 0.5)

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict, where: str = "preference") -> "Preference":
        try:
            return cls(ids=tuple(int(i) for i in d["ids"]), label=d.get("label"),
                       ranking=None if d.get("ranking") is None else tuple(int(r) for r in d["ranking"]),
                       labeller=str(d.get("labeller", "unknown")), time=str(d.get("time", "")))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad preference record {d!r}: {e}") from None


@dataclass
class PreferenceSet:
    """Preferences about the trajectories of one store (`dataset_id`), with an optional train/test
    split of the trajectories recorded in the header."""

    dataset_id: str
    prefs: list[Preference] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # e.g. {"target": "left", "train_ids": [...], "test_ids": [...]}

    def __len__(self) -> int:
        return len(self.prefs)

    def add(self, prefs: Iterable[Preference]) -> None:
        self.prefs.extend(prefs)

    def check_ids(self, n_trajectories: int, allow_ties: bool = True) -> None:
        """Raise if a record names a trajectory the store does not hold, or ties where forbidden."""
        for k, p in enumerate(self.prefs):
            bad = [i for i in p.ids if not 0 <= i < n_trajectories]
            if bad:
                raise ValueError(f"preference {k} names trajectories {bad} but the store holds {n_trajectories}")
            if not allow_ties and (p.label == "tie" or (p.ranking and len(set(p.ranking)) < len(p.ranking))):
                raise ValueError(f"preference {k} is a tie, which this format forbids")

    def comparisons(self) -> tuple[list[int], list[int], list[float]]:
        """All implied pairwise comparisons as parallel lists (i, j, p_i_preferred)."""
        i, j, p = [], [], []
        for pref in self.prefs:
            for a, b, q in pref.pairs():
                i.append(a)
                j.append(b)
                p.append(q)
        return i, j, p

    def save(self, path: str | Path) -> None:
        header = {"schema": PREFS_SCHEMA, "dataset_id": self.dataset_id, "meta": self.meta}
        lines = [json.dumps(header)] + [json.dumps(p.to_json()) for p in self.prefs]
        data = ("\n".join(lines) + "\n").encode()
        atomic_replace(Path(path), lambda f: f.write(data))

    @classmethod
    def load(cls, path: str | Path) -> "PreferenceSet":
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"preference file {p} does not exist")

        def garbage(line: int, why: object) -> ValueError:
            return ValueError(f"{p}: not a preference file (line {line}: {why})")

        data = p.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:  # a binary file, or one in another encoding
            raise garbage(data.count(b"\n", 0, e.start) + 1, e) from None
        # (file line number, text) of each non-blank line: numbers a person finds in an editor.
        lines = [(k + 1, ln) for k, ln in enumerate(text.split("\n")) if ln.strip()]
        if not lines:
            raise ValueError(f"{p}: empty preference file (no header)")
        rows = []
        for k, ln in lines:
            try:
                rows.append((k, json.loads(ln)))
            except ValueError as e:
                raise garbage(k, e) from None
        (k0, header), records = rows[0], rows[1:]
        if not isinstance(header, dict) or "schema" not in header:
            raise garbage(k0, f"the header is not an object with a schema: {lines[0][1][:60]!r}")
        if header.get("schema") != PREFS_SCHEMA:
            raise ValueError(f"{p}: preference schema {header.get('schema')!r}, this version reads {PREFS_SCHEMA}")
        if not isinstance(header.get("dataset_id"), str):
            raise garbage(k0, "the header names no dataset_id")
        prefs = [Preference.from_json(d, where=f"{p}:{k}") for k, d in records]
        return cls(header["dataset_id"], prefs, header.get("meta", {}))
