"""The labelling web app: FastAPI over the run's label database (docs/labeling.md).

`make_app(run_dir, ...)` builds the app, `serve(run_dir, ...)` runs it with uvicorn. Endpoints:

  GET  /                      the page (labeling/static/index.html); /static/* its files
  GET  /api/next?mode=pair    the labeller's next question; ?mode=rank&n=3..6 for a ranking
  POST /api/answer            {"id", "choice" | "order", "seconds"} -> {"ok", "duplicate"}
  GET  /api/progress          the labeller's counts and mean seconds per label
  GET  /clips/{episode}.webm  the clip of a store episode (rendered on first request, then cached)

Every request but the page and its static files names a labeller by `Authorization: Bearer
TOKEN` (401 otherwise). A browser's <video> cannot send that header, so the clip route also takes
the token as `?token=` or from the cookie that `GET /?token=...` sets for a known token.

Which questions: a labeller's unanswered question is asked again (reloading the page does not
pile up questions) until answered or skipped; then every tenth question is a random set from the
held-out pool, the others come from the training pool through the selector (random or active,
labeling/selection.py). A labeller is never asked the same episodes twice. Half of the held-out
questions, where possible, repeat a held-out question another labeller answered, so that
`agentalign label stats` can measure agreement between labellers (still a random held-out draw,
never chosen by the active rule).
"""

from __future__ import annotations

import math
import re
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from agentalign.data import open_store
from agentalign.labeling.clips import clip_file, clip_path
from agentalign.labeling.db import KINDS, LabelDB, Labeller, Question, comparisons, open_pools
from agentalign.labeling.selection import make_selector, random_choice

STATIC_DIR = Path(__file__).parent / "static"
HELD_OUT_EVERY = 10
RANK_SIZES = (3, 6)
COOKIE = "agentalign_label_token"
_CLIP_NAME = re.compile(r"(0|[1-9][0-9]{0,11})\.webm")


_Id = Annotated[int, Field(strict=True, ge=0, le=2**62)]


class AnswerBody(BaseModel):
    """POST /api/answer's body: {"id", "choice"} for a pair (or a skipped ranking), {"id", "order"}
    for a ranking; "seconds" the time the person took. Other fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    id: _Id
    choice: Optional[Literal["left", "right", "tie", "skip"]] = None
    order: Optional[list[_Id]] = Field(None, max_length=64)
    seconds: Optional[float] = None


def _make_selector(selection: str, run_dir: Path, store_path: str | Path, train_pool: list[int], seed: int,
                   options: dict | None):  # fmt: skip
    # A live server refits the active ensemble in a thread, answering from the previous one meanwhile.
    options = {"background": True, **(options or {})} if selection == "active" else dict(options or {})
    # Its own reader: a StoreReader is not thread-safe, and clips render from the app's.
    return make_selector(selection, run_dir, open_store(store_path), list(train_pool), seed, **options)


class Labelling:
    """The state behind the app: the database, the store, the pools, the selector."""

    def __init__(self, run_dir: str | Path, store: str | Path | None = None, selection: str = "random",
                 seed: int = 0, train: int | None = None, selector_options: dict | None = None):  # fmt: skip
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise ValueError(f"run folder {self.run_dir} does not exist")
        self.labels_dir = self.run_dir / "labels"
        self.db = LabelDB(self.run_dir)
        try:
            self.store, meta = open_pools(self.db, self.run_dir, store, train)
            self.train_pool: list[int] = [int(i) for i in meta["train_ids"]]
            self.test_pool: list[int] = [int(i) for i in meta["test_ids"]]
            self._train_set = set(self.train_pool)
            self.selector = _make_selector(selection, self.run_dir, self.store.path, self.train_pool, seed,
                                           selector_options)
        except BaseException:
            self.db.close()
            raise
        self.selection = selection
        self.rng = np.random.default_rng(seed)
        self._draw_lock = threading.Lock()  # one question drawn at a time (the selector, the rng)
        self._locks_guard = threading.Lock()
        self._labeller_locks: dict[int, threading.Lock] = {}
        self._store_lock = threading.Lock()  # a StoreReader is not thread-safe
        self._labels_lock = threading.Lock()
        self._labels: list[tuple[int, int, float]] = []  # training-pool comparisons, every labeller
        for a in self.db.answers():
            self._note(a.episodes, a.pool, a.choice, a.order)
        self._exclude: dict[int, set[frozenset[int]]] = {}  # labeller -> episode sets asked
        self._tokens: dict[str, Labeller] = {}

    def close(self) -> None:
        """Stop the selector's background work (the active ensemble's refit), close the database."""
        try:
            close = getattr(self.selector, "close", None)
            if close is not None:
                close()
        finally:
            self.db.close()

    def labeller(self, token: str) -> Labeller | None:
        """The labeller with this token (known ones cached: a token never changes hands)."""
        lab = self._tokens.get(token)
        if lab is None:
            lab = self.db.labeller_by_token(token)
            if lab is not None:
                self._tokens[token] = lab
        return lab

    def _note(self, episodes, pool: str, choice: str | None, order) -> None:
        if pool == "train":
            with self._labels_lock:
                self._labels.extend(comparisons(episodes, choice, order))

    def training_labels(self) -> list[tuple[int, int, float]]:
        with self._labels_lock:
            return list(self._labels)

    # -- questions -----------------------------------------------------------------------------

    def _lock_of(self, labeller: int) -> threading.Lock:
        with self._locks_guard:
            return self._labeller_locks.setdefault(labeller, threading.Lock())

    def next_question(self, lab: Labeller, kind: str, n: int) -> Question | None:
        """The labeller's oldest unanswered question of this kind and size, else a new one
        (committed before it is returned), else None when none is left to ask them."""
        with self._lock_of(lab.id):  # one labeller's requests in turn; other labellers run beside
            q = self.db.pending(lab.id, kind, n)
            if q is not None:
                return q
            exclude = self._exclude.get(lab.id)
            if exclude is None:
                exclude = self._exclude[lab.id] = {frozenset(q.episodes) for q in self.db.questions_of(lab.id)}
            held_out_turn = (self.db.count_questions(lab.id) + 1) % HELD_OUT_EVERY == 0
            for pool in ("test", "train") if held_out_turn else ("train", "test"):
                with self._draw_lock:  # the selector and the rng, one draw at a time
                    eps = self._draw_held_out(lab, kind, n, exclude) if pool == "test" else self._draw_train(n, exclude)
                if eps:
                    # Durable before anyone sees its id: an id lost in a crash could be reused.
                    q = self.db.add_question(kind, eps, pool, lab.id)
                    exclude.add(frozenset(q.episodes))
                    return q
            return None

    def _draw_train(self, n: int, exclude: set[frozenset[int]]) -> list[int]:
        eps = [int(e) for e in self.selector.choose(n, self.training_labels(), set(exclude), self.rng)]
        if eps and (len(eps) != n or len(set(eps)) != n or not set(eps) <= self._train_set
                    or frozenset(eps) in exclude):  # fmt: skip
            raise RuntimeError(f"the {self.selection} selector chose {eps}: not {n} new distinct episodes "
                               f"of the training pool")  # fmt: skip
        return eps

    def _draw_held_out(self, lab: Labeller, kind: str, n: int, exclude: set[frozenset[int]]) -> list[int]:
        if self.rng.random() < 0.5:  # repeat another labeller's held-out question, for agreement
            seen = [e for e in self.db.answered_elsewhere(lab.id, kind, "test")
                    if len(e) == n and frozenset(e) not in exclude]  # fmt: skip
            if seen:
                pick = [int(e) for e in seen[int(self.rng.integers(len(seen)))]]
                self.rng.shuffle(pick)
                return pick
        return random_choice(self.test_pool, n, exclude, self.rng)

    # -- clips ---------------------------------------------------------------------------------

    def clip(self, episode: int) -> Path:
        path = clip_file(self.labels_dir, episode)
        if path.is_file():
            return path
        with self._store_lock:
            return clip_path(self.labels_dir, self.store, episode)


def _token_from_header(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def make_app(run_dir: str | Path, store: str | Path | None = None, selection: str = "random", seed: int = 0,
             train: int | None = None, selector_options: dict | None = None) -> FastAPI:  # fmt: skip
    """The labelling app over `run_dir`'s label database (made on first use) and store (`store`,
    default RUN/rollouts/store), questions chosen by `selection` ("random" or "active") from `seed`;
    `train`: the training pool's size (default RUN/pipeline.json's prefs.train); `selector_options`
    go to `selection.make_selector` (active: ensemble, refit_every, ...; background defaults to
    True here). ValueError for a missing run folder or store, or pools that do not fit. The
    state (database, pools, selector) is `app.state.labelling`; the database closes with the
    app's lifespan (a TestClient used as a context manager, or uvicorn's shutdown)."""
    state = Labelling(run_dir, store, selection, seed, train, selector_options)

    @asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = FastAPI(title="agentalign labelling", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.labelling = state

    def labeller_for(token: str | None) -> Labeller:
        lab = state.labeller(token) if token else None
        if lab is None:
            raise HTTPException(401, "missing or unknown labeller token (header Authorization: Bearer TOKEN; "
                                     "`agentalign label add-labeller RUN NAME` prints one)")  # fmt: skip
        return lab

    # async: run on the event loop, not as one more thread hop per request (a cached lookup)
    async def api_labeller(authorization: Optional[str] = Header(None)) -> Labeller:
        return labeller_for(_token_from_header(authorization))

    async def clip_labeller(request: Request, authorization: Optional[str] = Header(None)) -> Labeller:
        token = (_token_from_header(authorization) or request.query_params.get("token")
                 or request.cookies.get(COOKIE))  # fmt: skip
        return labeller_for(token)

    def question_json(q: Question | None) -> dict:
        if q is None:
            return {"id": None}
        return {"id": q.id, "kind": q.kind, "episodes": list(q.episodes),
                "clips": [f"/clips/{e}.webm" for e in q.episodes]}  # fmt: skip

    @app.get("/")
    def page(request: Request):
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise HTTPException(503, f"the page is missing ({index})")
        resp = FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-store"})
        token = request.query_params.get("token")
        if token and state.labeller(token) is not None:  # lets <video> fetch the clips
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return resp

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")

    @app.get("/api/next")
    def next_question(mode: str = Query("pair"), n: Optional[int] = Query(None),
                      lab: Labeller = Depends(api_labeller)) -> dict:  # fmt: skip
        if mode not in KINDS:
            raise HTTPException(422, f"mode must be one of {', '.join(KINDS)}, got {mode!r}")
        if mode == "pair":
            if n not in (None, 2):
                raise HTTPException(422, f"a pair shows 2 episodes, not n={n}")
            n = 2
        else:
            n = 4 if n is None else n
            if not RANK_SIZES[0] <= n <= RANK_SIZES[1]:
                raise HTTPException(422, f"a ranking shows {RANK_SIZES[0]} to {RANK_SIZES[1]} episodes, not n={n}")
        return question_json(state.next_question(lab, mode, n))

    @app.post("/api/answer")
    def answer(body: AnswerBody, lab: Labeller = Depends(api_labeller)) -> dict:
        if body.seconds is not None and not (math.isfinite(body.seconds) and body.seconds >= 0):
            raise HTTPException(422, f"seconds must be a finite number >= 0, got {body.seconds}")
        q = state.db.question(body.id)
        if q is None or q.asked_by != lab.id:
            raise HTTPException(404, f"no question {body.id} was asked to {lab.name}")
        if (body.choice is None) == (body.order is None):
            raise HTTPException(422, "give a choice (left, right, tie, skip) or, for a ranking, an order; not both")
        if q.kind == "pair" and body.order is not None:
            raise HTTPException(422, f"question {q.id} is a pair: answer with a choice, not an order")
        if q.kind == "rank":
            if body.choice not in (None, "skip"):
                raise HTTPException(422, f"question {q.id} is a ranking: answer with an order (or skip), "
                                         f"not {body.choice!r}")  # fmt: skip
            if body.order is not None and sorted(body.order) != sorted(q.episodes):
                raise HTTPException(422, f"the order must name each episode of question {q.id} once "
                                         f"({sorted(q.episodes)}), got {body.order}")  # fmt: skip
        dup = state.db.add_answer(q.id, lab.id, choice=body.choice, order=body.order, seconds=body.seconds)
        if not dup:
            state._note(q.episodes, q.pool, body.choice, body.order)
        return {"ok": True, "duplicate": dup}

    @app.get("/api/progress")
    def progress(lab: Labeller = Depends(api_labeller)) -> dict:
        return {"labeller": lab.name, **state.db.progress(lab.id)}

    @app.get("/clips/{name}")
    def clip(name: str, lab: Labeller = Depends(clip_labeller)):
        m = _CLIP_NAME.fullmatch(name)
        episode = int(m.group(1)) if m else -1
        if not 0 <= episode < len(state.store):
            raise HTTPException(404, f"no clip {name!r}: clips are /clips/EPISODE.webm for the store's "
                                     f"episodes 0..{len(state.store) - 1}")  # fmt: skip
        return FileResponse(state.clip(episode), media_type="video/webm",
                            headers={"Cache-Control": "private, max-age=86400"})  # fmt: skip

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, store: str | Path | None = None,
          selection: str = "random", seed: int = 0, train: int | None = None, selector_options: dict | None = None,
          log=print) -> None:  # fmt: skip
    """Run the labelling app (`make_app`) with uvicorn until interrupted."""
    import uvicorn

    app = make_app(run_dir, store=store, selection=selection, seed=seed, train=train, selector_options=selector_options)
    state: Labelling = app.state.labelling
    shown = f"[{host}]" if ":" in host else host
    log(f"labelling {state.store.path} ({len(state.train_pool)} training / {len(state.test_pool)} held-out "
        f"episodes, {selection} selection) at http://{shown}:{port}/?token=TOKEN")  # fmt: skip
    names = list(state.db.labellers().values())
    log(f"labellers: {', '.join(names)}" if names else
        f"no labellers yet: `agentalign label add-labeller {run_dir} NAME` prints a token")  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
