"""The labelling database: `RUN/labels/labels.sqlite` (SQLite, WAL journal, synchronous=FULL).

Tables:
  meta       key -> JSON value: the run's pools ("train_ids", "test_ids"), the store's path
             ("store") and dataset id ("dataset_id"), written once by `open_pools` when the app
             first serves (or the labels are first exported), and never changed after.
  labellers  id, name (unique), token (unique), created.
  questions  id, kind ("pair" | "rank"), episodes (JSON list, in the order shown), pool
             ("train" | "test"), created, asked_by (the labeller it was asked to).
  answers    id, question, labeller, choice ("left" | "right" | "tie" | "skip", or NULL for a
             ranking), "order" (JSON list, best first, for a ranking), seconds, created;
             UNIQUE(question, labeller): answering again is idempotent, the first answer stays.

Durability: every write goes through one writer thread, which runs the writes waiting at that
moment in one transaction (each in its own savepoint, so one bad write fails alone) and commits
before any of their callers returns; with synchronous=FULL the commit is on disk. Many labellers
answering at once thus share one fsync instead of queueing for one each ("group commit").
Reads use one connection per thread (WAL lets readers run beside the writer).
"""

from __future__ import annotations

import datetime as _dt
import json
import queue
import secrets
import sqlite3
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from agentalign.prefs import Preference

DB_NAME = "labels.sqlite"
KINDS = ("pair", "rank")
POOLS = ("train", "test")
CHOICES = ("left", "right", "tie", "skip")
_BATCH = 512  # writes per transaction at most

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labellers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS questions (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('pair', 'rank')),
    episodes TEXT NOT NULL,
    pool TEXT NOT NULL CHECK (pool IN ('train', 'test')),
    created TEXT NOT NULL,
    asked_by INTEGER NOT NULL REFERENCES labellers(id)
);
CREATE INDEX IF NOT EXISTS questions_asked_by ON questions(asked_by);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    question INTEGER NOT NULL REFERENCES questions(id),
    labeller INTEGER NOT NULL REFERENCES labellers(id),
    choice TEXT CHECK (choice IS NULL OR choice IN ('left', 'right', 'tie', 'skip')),
    "order" TEXT,
    seconds REAL,
    created TEXT NOT NULL,
    UNIQUE (question, labeller),
    CHECK ((choice IS NULL) != ("order" IS NULL))
);
CREATE INDEX IF NOT EXISTS answers_labeller ON answers(labeller);
"""


def now() -> str:
    """UTC time, ISO 8601 to the microsecond (labels per hour need better than seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def db_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "labels" / DB_NAME


@dataclass(frozen=True)
class Labeller:
    id: int
    name: str


@dataclass(frozen=True)
class Question:
    id: int
    kind: str
    episodes: tuple[int, ...]
    pool: str
    asked_by: int
    created: str


@dataclass(frozen=True)
class Answer:
    question: int
    labeller: str
    kind: str
    episodes: tuple[int, ...]  # as the question showed them
    pool: str
    choice: str | None  # pairs (and a skipped ranking)
    order: tuple[int, ...] | None  # rankings: episode ids, best first
    seconds: float | None
    created: str


class LabelDB:
    """The labelling database of one run folder. Thread-safe; `close()` when done."""

    def __init__(self, run_dir: str | Path, *, create: bool = True):
        self.path = db_path(run_dir)
        if not self.path.is_file():
            if not create:
                raise ValueError(f"{self.path} does not exist: no labels in {run_dir} yet "
                                 f"(`agentalign label add-labeller` and `agentalign label serve` make it)")  # fmt: skip
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._closed = False
        c = self._connect()
        try:  # the schema, once
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(_SCHEMA)
        finally:
            c.close()

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA foreign_keys=ON")
        c.execute("PRAGMA busy_timeout=30000")
        return c

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"{self.path} is closed")
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._connect()
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._reader().execute(sql, params).fetchall()

    # -- the writer thread ---------------------------------------------------------------------

    def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run fn(connection) in a transaction and return its result once that transaction is
        committed (on disk); fn's exception, if it raises, with nothing of fn written."""
        if self._closed:
            raise RuntimeError(f"{self.path} is closed")
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="labels-writer", daemon=True)
                self._writer.start()
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut.result()

    def _write_loop(self) -> None:
        conn = self._connect()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                batch = [item]
                while len(batch) < _BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)  # finish this batch, then stop
                        break
                    batch.append(nxt)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list) -> None:
        results: list[tuple[Future, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, fut in batch:
                conn.execute("SAVEPOINT one")
                try:
                    res = fn(conn)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    conn.execute("ROLLBACK TO one")
                    conn.execute("RELEASE one")
                    results.append((fut, None, e))
                else:
                    conn.execute("RELEASE one")
                    results.append((fut, res, None))
            conn.execute("COMMIT")
        except BaseException as e:  # noqa: BLE001 - the whole transaction failed: nothing written
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, fut in batch:
                fut.set_exception(e)
            return
        for fut, res, err in results:
            if err is None:
                fut.set_result(res)
            else:
                fut.set_exception(err)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
        with self._conns_lock:
            for c in self._conns:
                c.close()
            self._conns.clear()

    def __enter__(self) -> "LabelDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta: the pools and the store ---------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._read("SELECT key, value FROM meta")}

    def set_meta_once(self, values: dict[str, Any]) -> dict[str, Any]:
        """Write `values` into the meta table unless it already holds them (the first call wins:
        the pools of a database never change); -> the meta table afterwards."""

        def fn(c: sqlite3.Connection) -> None:
            for k, v in values.items():
                c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (k, json.dumps(v)))

        self.write(fn)
        return self.meta()

    # -- labellers -----------------------------------------------------------------------------

    def add_labeller(self, name: str) -> str:
        """A new labeller -> their token. ValueError if the name is taken or empty."""
        name = name.strip()
        if not name or len(name) > 100 or any(ch in name for ch in "\r\n\t"):
            raise ValueError(f"a labeller's name must be 1-100 characters on one line, got {name!r}")
        token = secrets.token_urlsafe(24)

        def fn(c: sqlite3.Connection) -> None:
            if c.execute("SELECT 1 FROM labellers WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"a labeller named {name!r} exists already in {self.path}")
            c.execute("INSERT INTO labellers (name, token, created) VALUES (?, ?, ?)", (name, token, now()))

        self.write(fn)
        return token

    def labeller_by_token(self, token: str) -> Labeller | None:
        rows = self._read("SELECT id, name FROM labellers WHERE token = ?", (token,))
        return Labeller(*rows[0]) if rows else None

    def labellers(self) -> dict[int, str]:
        return dict(self._read("SELECT id, name FROM labellers ORDER BY id"))

    # -- questions -----------------------------------------------------------------------------

    def add_question(self, kind: str, episodes: list[int] | tuple[int, ...], pool: str, labeller: int) -> Question:
        if kind not in KINDS or pool not in POOLS:
            raise ValueError(f"kind must be one of {KINDS} and pool one of {POOLS}, got {kind!r}, {pool!r}")
        eps = tuple(int(e) for e in episodes)
        created = now()

        def fn(c: sqlite3.Connection) -> int:
            cur = c.execute("INSERT INTO questions (kind, episodes, pool, created, asked_by) VALUES (?, ?, ?, ?, ?)",
                            (kind, json.dumps(list(eps)), pool, created, labeller))  # fmt: skip
            return int(cur.lastrowid)

        return Question(self.write(fn), kind, eps, pool, labeller, created)

    @staticmethod
    def _question(row: tuple) -> Question:
        qid, kind, eps, pool, asked_by, created = row
        return Question(qid, kind, tuple(json.loads(eps)), pool, asked_by, created)

    def question(self, qid: int) -> Question | None:
        rows = self._read("SELECT id, kind, episodes, pool, asked_by, created FROM questions WHERE id = ?", (qid,))
        return self._question(rows[0]) if rows else None

    def questions_of(self, labeller: int) -> list[Question]:
        rows = self._read("SELECT id, kind, episodes, pool, asked_by, created FROM questions WHERE asked_by = ? "
                          "ORDER BY id", (labeller,))  # fmt: skip
        return [self._question(r) for r in rows]

    def pending(self, labeller: int, kind: str, n: int) -> Question | None:
        """The oldest question of this kind and size asked to `labeller` and not answered yet."""
        rows = self._read(
            "SELECT q.id, q.kind, q.episodes, q.pool, q.asked_by, q.created FROM questions q "
            "LEFT JOIN answers a ON a.question = q.id AND a.labeller = q.asked_by "
            "WHERE q.asked_by = ? AND q.kind = ? AND a.id IS NULL ORDER BY q.id",
            (labeller, kind),
        )
        for r in rows:
            q = self._question(r)
            if len(q.episodes) == n:
                return q
        return None

    def count_questions(self, labeller: int) -> int:
        return int(self._read("SELECT COUNT(*) FROM questions WHERE asked_by = ?", (labeller,))[0][0])

    def answered_elsewhere(self, labeller: int, kind: str, pool: str) -> list[tuple[int, ...]]:
        """Episode sets of `kind` questions in `pool` that other labellers answered (not skipped)."""
        rows = self._read(
            "SELECT DISTINCT q.episodes FROM questions q JOIN answers a ON a.question = q.id "
            "WHERE q.kind = ? AND q.pool = ? AND a.labeller != ? AND (a.choice IS NULL OR a.choice != 'skip')",
            (kind, pool, labeller),
        )
        return [tuple(json.loads(r[0])) for r in rows]

    # -- answers -------------------------------------------------------------------------------

    def add_answer(self, question: int, labeller: int, *, choice: str | None = None,
                   order: list[int] | tuple[int, ...] | None = None, seconds: float | None = None) -> bool:  # fmt: skip
        """Store an answer (committed to disk on return) -> True if it was a duplicate: this
        labeller had answered this question already, and that first answer stays."""
        if (choice is None) == (order is None):
            raise ValueError("an answer has a choice (pairs, or a skipped ranking) or an order (rankings)")
        if choice is not None and choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        order_json = None if order is None else json.dumps([int(e) for e in order])
        created = now()

        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute('INSERT OR IGNORE INTO answers (question, labeller, choice, "order", seconds, created) '
                            "VALUES (?, ?, ?, ?, ?, ?)", (question, labeller, choice, order_json, seconds, created))  # fmt: skip
            return cur.rowcount == 0

        return self.write(fn)

    def answers(self) -> list[Answer]:
        """Every answer (skips too), oldest first."""
        rows = self._read(
            'SELECT a.question, l.name, q.kind, q.episodes, q.pool, a.choice, a."order", a.seconds, a.created '
            "FROM answers a JOIN questions q ON q.id = a.question JOIN labellers l ON l.id = a.labeller "
            "ORDER BY a.id"
        )
        return [Answer(qid, name, kind, tuple(json.loads(eps)), pool, choice,
                       None if order is None else tuple(json.loads(order)), seconds, created)
                for qid, name, kind, eps, pool, choice, order, seconds, created in rows]  # fmt: skip

    def progress(self, labeller: int) -> dict[str, Any]:
        answered, mean_seconds = self._read("SELECT COUNT(*), AVG(seconds) FROM answers WHERE labeller = ?",
                                            (labeller,))[0]  # fmt: skip
        total = self._read("SELECT COUNT(*) FROM answers WHERE choice IS NULL OR choice != 'skip'")[0][0]
        return {"answered": int(answered), "asked": self.count_questions(labeller), "total_labels": int(total),
                "mean_seconds": None if mean_seconds is None else float(mean_seconds)}  # fmt: skip


LABEL = {"left": "A", "right": "B", "tie": "tie"}  # a pair's answer as a Preference label


def preference(episodes, choice: str | None, order, labeller: str = "unknown", time: str | None = None) -> Preference | None:
    """The project's preference record of an answer (episodes in the order the question showed
    them); None for a skip."""
    if choice == "skip":
        return None
    when = {} if time is None else {"time": time}
    if order is None:
        return Preference(tuple(int(e) for e in episodes), label=LABEL[choice], labeller=labeller, **when)
    rank = {int(e): k for k, e in enumerate(order)}
    return Preference(tuple(int(e) for e in episodes), ranking=tuple(rank[int(e)] for e in episodes), labeller=labeller,
                      **when)  # fmt: skip


def comparisons(episodes, choice: str | None, order) -> Iterator[tuple[int, int, float]]:
    """(i, j, p) comparisons an answer implies (p = 1 if i is better, 0 if j, 0.5 a tie); none for a skip."""
    p = preference(episodes, choice, order)
    return iter(()) if p is None else p.pairs()


def answer_comparisons(a: Answer) -> Iterator[tuple[int, int, float]]:
    return comparisons(a.episodes, a.choice, a.order)


# -- the pools ------------------------------------------------------------------------------------


def default_store(run_dir: str | Path) -> Path:
    return Path(run_dir) / "rollouts" / "store"


def pipeline_train_size(run_dir: str | Path) -> int | None:
    """prefs.train from RUN/pipeline.json (written by the pipeline runner), None without one."""
    path = Path(run_dir) / "pipeline.json"
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["config"]["prefs"]["train"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot read config.prefs.train ({e}); give --train N") from None


def open_pools(db: LabelDB, run_dir: str | Path, store: str | Path | None = None,
               train: int | None = None) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The store and the pools of the run's label database, set when the database first serves:
    the store's first `train` episodes (--train, else RUN/pipeline.json's prefs.train) are the
    training pool, the rest the held-out pool. -> (StoreReader, meta). ValueError when the store
    is missing, another store than the database's, or `train` disagrees with the database."""
    from agentalign.data import open_store

    meta = db.meta()
    if store is None:
        store = meta.get("store") or default_store(run_dir)
    reader = open_store(store)
    if "train_ids" in meta:
        if meta.get("dataset_id") != reader.dataset_id:
            raise ValueError(f"{db.path} labels the store {meta.get('dataset_id')} ({meta.get('store')}), "
                             f"but {store} is {reader.dataset_id}")  # fmt: skip
        if train is not None and train != len(meta["train_ids"]):
            raise ValueError(f"{db.path} was made with a training pool of {len(meta['train_ids'])} episodes, "
                             f"not {train}; leave out --train or start a new run folder")  # fmt: skip
        return reader, meta
    if train is None:
        train = pipeline_train_size(run_dir)
    if train is None:
        raise ValueError(f"no {Path(run_dir) / 'pipeline.json'} to read prefs.train from: give --train N "
                         f"(the first N episodes of the store are the training pool)")  # fmt: skip
    n = len(reader)
    if not 2 <= train <= n - 2:
        raise ValueError(f"a training pool of {train} leaves no room in a store of {n} trajectories (need 2..{n - 2})")
    meta = db.set_meta_once({"train_ids": list(range(train)), "test_ids": list(range(train, n)),
                             "store": str(Path(store).resolve()), "dataset_id": reader.dataset_id})  # fmt: skip
    return reader, meta
