"""The JSON API of docs/labeling.md, through FastAPI's TestClient: round trips into the database,
bad input (a clear 4xx, nothing written), idempotent answers, ties and skips, pools, stats."""

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient

from agentalign.labeling.db import LabelDB, db_path
from agentalign.labeling.export import export_labels, stats
from agentalign.labeling.server import make_app
from agentalign.prefs import PreferenceSet

TRAIN, TEST = set(range(10)), set(range(10, 16))  # conftest's run folder


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(run_dir, add_labeller):
    """A client, alice's and bob's tokens."""
    tokens = {name: add_labeller(run_dir, name) for name in ("alice", "bob")}
    with TestClient(make_app(run_dir)) as client:
        client.run, client.tokens = run_dir, tokens
        client.h = {name: auth(t) for name, t in tokens.items()}
        yield client


def counts(run) -> tuple[int, int]:
    """(questions, answers) in the database, read with a separate connection."""
    with sqlite3.connect(db_path(run)) as c:
        return c.execute("SELECT COUNT(*) FROM questions").fetchone()[0], c.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


def answers(run):
    with LabelDB(run, create=False) as db:
        return db.answers()


def test_pair_round_trip(api):
    q = api.get("/api/next?mode=pair", headers=api.h["alice"]).json()
    assert q["kind"] == "pair" and len(q["episodes"]) == 2 and set(q["episodes"]) <= TRAIN
    assert q["clips"] == [f"/clips/{e}.webm" for e in q["episodes"]]
    r = api.post("/api/answer", json={"id": q["id"], "choice": "left", "seconds": 3.2}, headers=api.h["alice"])
    assert r.status_code == 200 and r.json() == {"ok": True, "duplicate": False}
    (a,) = answers(api.run)
    assert (a.question, a.labeller, a.kind, list(a.episodes), a.pool) == (q["id"], "alice", "pair", q["episodes"], "train")
    assert (a.choice, a.order, a.seconds) == ("left", None, 3.2)
    p = api.get("/api/progress", headers=api.h["alice"]).json()
    assert p == {"labeller": "alice", "answered": 1, "asked": 1, "total_labels": 1, "mean_seconds": 3.2}


def test_ranking_round_trip(api):
    q = api.get("/api/next?mode=rank&n=4", headers=api.h["bob"]).json()
    assert q["kind"] == "rank" and len(set(q["episodes"])) == 4 and set(q["episodes"]) <= TRAIN
    order = q["episodes"][::-1]
    r = api.post("/api/answer", json={"id": q["id"], "order": order, "seconds": 9.0}, headers=api.h["bob"])
    assert r.json() == {"ok": True, "duplicate": False}
    (a,) = answers(api.run)
    assert (a.kind, a.choice, list(a.order), a.labeller) == ("rank", None, order, "bob")
    for n in (3, 6):
        assert len(api.get(f"/api/next?mode=rank&n={n}", headers=api.h["bob"]).json()["episodes"]) == n


def test_next_asks_again_until_answered_and_never_repeats(make_run, add_labeller):
    """6 episodes, 3 training: 3 training pairs and 3 held-out pairs, then none."""
    run = make_run(episodes=6, train=3)
    h = auth(add_labeller(run, "carol"))
    with TestClient(make_app(run)) as api:
        seen = []
        while True:
            q = api.get("/api/next", headers=h).json()
            if q["id"] is None:
                break
            assert api.get("/api/next?mode=pair", headers=h).json() == q  # the same until answered
            seen.append(frozenset(q["episodes"]))
            api.post("/api/answer", json={"id": q["id"], "choice": "right"}, headers=h)
        assert len(seen) == len(set(seen)) == 6
        assert api.get("/api/progress", headers=h).json()["asked"] == 6


def test_every_tenth_question_is_held_out(api):
    pools = []
    for k in range(30):
        q = api.get("/api/next", headers=api.h["alice"]).json()
        pools.append("test" if set(q["episodes"]) <= TEST else ("train" if set(q["episodes"]) <= TRAIN else "mixed"))
        api.post("/api/answer", json={"id": q["id"], "choice": "tie", "seconds": 1}, headers=api.h["alice"])
    assert pools == ["test" if (k + 1) % 10 == 0 else "train" for k in range(30)]
    assert [a.pool for a in answers(api.run)] == pools


def test_bad_input_is_4xx_and_writes_nothing(api):
    h = api.h["alice"]
    pair = api.get("/api/next?mode=pair", headers=h).json()
    rank = api.get("/api/next?mode=rank&n=3", headers=h).json()
    bobs = api.get("/api/next?mode=pair", headers=api.h["bob"]).json()
    before = counts(api.run)
    bad = [
        (b"{not json", 422),
        (b"", 422),
        (json.dumps({"choice": "left"}), 422),  # no id
        (json.dumps({"id": "x", "choice": "left"}), 422),
        (json.dumps({"id": pair["id"]}), 422),  # neither choice nor order
        (json.dumps({"id": 10**6, "choice": "left"}), 404),  # unknown question
        (json.dumps({"id": bobs["id"], "choice": "left"}), 404),  # bob's question
        (json.dumps({"id": pair["id"], "choice": "up"}), 422),
        (json.dumps({"id": pair["id"], "choice": "LEFT"}), 422),
        (json.dumps({"id": pair["id"], "order": pair["episodes"]}), 422),  # an order for a pair
        (json.dumps({"id": pair["id"], "choice": "left", "order": pair["episodes"]}), 422),
        (json.dumps({"id": pair["id"], "choice": "left", "seconds": -1}), 422),
        (b'{"id": %d, "choice": "left", "seconds": NaN}' % pair["id"], 422),
        (json.dumps({"id": rank["id"], "choice": "left"}), 422),  # a ranking needs an order
        (json.dumps({"id": rank["id"], "order": rank["episodes"][:2]}), 422),  # missing an episode
        (json.dumps({"id": rank["id"], "order": rank["episodes"][:2] + [rank["episodes"][0]]}), 422),  # twice
        (json.dumps({"id": rank["id"], "order": rank["episodes"][:2] + [15]}), 422),  # not in the question
        (json.dumps({"id": rank["id"], "order": rank["episodes"] + [15]}), 422),
        (json.dumps([1, 2]), 422),
    ]
    for body, code in bad:
        r = api.post("/api/answer", content=body, headers={**h, "Content-Type": "application/json"})
        assert r.status_code == code, (body, r.status_code, r.text)
        assert "detail" in r.json()
    for query in ("mode=triple", "mode=rank&n=2", "mode=rank&n=7", "mode=pair&n=3", "mode=rank&n=x"):
        assert api.get(f"/api/next?{query}", headers=h).status_code == 422, query
    assert counts(api.run) == before


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "nope"},
                                     {"Authorization": "Basic YWxpY2U6eA=="}, {"Authorization": "Bearer "}])  # fmt: skip
def test_missing_or_wrong_token_is_401(api, headers):
    q = api.get("/api/next", headers=api.h["alice"]).json()
    before = counts(api.run)
    assert api.get("/api/next", headers=headers).status_code == 401
    assert api.get("/api/progress", headers=headers).status_code == 401
    r = api.post("/api/answer", json={"id": q["id"], "choice": "left"}, headers=headers)
    assert r.status_code == 401 and "token" in r.json()["detail"]
    assert api.post("/api/answer", content=b"{bad", headers=headers).status_code in (401, 422)
    assert api.get("/clips/0.webm", headers=headers).status_code == 401
    assert counts(api.run) == before


@pytest.mark.parametrize("path", ["/clips/..%2Fx.webm", "/clips/..%2F..%2Fpipeline.json", "/clips/abc.webm",
                                  "/clips/16.webm", "/clips/99999999999999999999.webm", "/clips/-1.webm",
                                  "/clips/01.webm", "/clips/1.mp4", "/clips/1.webm.webm", "/clips/%2e%2e",
                                  "/clips/1%00.webm", "/clips/"])  # fmt: skip
def test_clip_paths_outside_the_store_are_404(api, path):
    r = api.get(path, headers=api.h["alice"])
    assert r.status_code == 404, (path, r.status_code)
    assert not (api.run / "labels" / "clips").exists()


def test_clip_served_with_header_query_or_cookie(api):
    r = api.get("/clips/3.webm", headers=api.h["alice"])
    assert r.status_code == 200 and r.headers["content-type"] == "video/webm"
    assert r.content[:4] == b"\x1a\x45\xdf\xa3"  # WebM (Matroska's EBML header)
    assert (api.run / "labels" / "clips" / "3.webm").read_bytes() == r.content
    assert api.get(f"/clips/3.webm?token={api.tokens['bob']}").content == r.content
    partial = api.get("/clips/3.webm", headers={**api.h["alice"], "Range": "bytes=0-9"})
    assert partial.status_code == 206 and partial.content == r.content[:10]  # seekable, for <video>

    page = api.get(f"/?token={api.tokens['alice']}")  # the page sets a cookie that <video> sends
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert api.get("/clips/3.webm").status_code == 200
    api.cookies.clear()
    api.get("/?token=wrong")
    assert api.get("/clips/3.webm").status_code == 401


def test_same_answer_twice_is_idempotent(api):
    h = api.h["alice"]
    q = api.get("/api/next", headers=h).json()
    first = api.post("/api/answer", json={"id": q["id"], "choice": "left", "seconds": 2}, headers=h).json()
    again = api.post("/api/answer", json={"id": q["id"], "choice": "left", "seconds": 2}, headers=h).json()
    other = api.post("/api/answer", json={"id": q["id"], "choice": "right", "seconds": 5}, headers=h).json()
    assert first == {"ok": True, "duplicate": False}
    assert again == other == {"ok": True, "duplicate": True}
    (a,) = answers(api.run)
    assert (a.choice, a.seconds) == ("left", 2)  # the first answer stays
    assert api.get("/api/progress", headers=h).json()["answered"] == 1


def test_tie_stored_skip_stored_not_exported(api):
    h = api.h["alice"]
    got = {}
    for choice in ("tie", "skip", "left", "right"):
        q = api.get("/api/next", headers=h).json()
        api.post("/api/answer", json={"id": q["id"], "choice": choice, "seconds": 1.5}, headers=h)
        got[choice] = tuple(q["episodes"])
    rq = api.get("/api/next?mode=rank&n=4", headers=h).json()
    order = [rq["episodes"][k] for k in (2, 0, 3, 1)]
    api.post("/api/answer", json={"id": rq["id"], "order": order, "seconds": 8}, headers=h)
    q = api.get("/api/next?mode=rank&n=3", headers=h).json()
    api.post("/api/answer", json={"id": q["id"], "choice": "skip"}, headers=h)  # a skipped ranking
    assert [a.choice for a in answers(api.run)] == ["tie", "skip", "left", "right", None, "skip"]

    out = api.run / "prefs" / "prefs.jsonl"
    r = export_labels(api.run, out)
    assert r == {"labels": 4, "train_comparisons": 3 + 6, "test_comparisons": 0, "labellers": 1, "skipped": 2,
                 "out": str(out)}  # fmt: skip
    pset = PreferenceSet.load(out)
    assert pset.meta == {"train_ids": list(range(10)), "test_ids": list(range(10, 16)), "labeller": "people",
                         "source": "labels"}  # fmt: skip
    pairs = [p for p in pset.prefs if p.ranking is None]
    assert [(p.ids, p.label) for p in pairs] == [(got["tie"], "tie"), (got["left"], "A"), (got["right"], "B")]
    assert got["skip"] not in [p.ids for p in pset.prefs]
    (ranked,) = [p for p in pset.prefs if p.ranking is not None]
    assert ranked.ids == tuple(rq["episodes"]) and ranked.ranking == (1, 3, 0, 2)
    assert [ranked.ids[k] for k in sorted(range(4), key=lambda k: ranked.ranking[k])] == order  # best first
    assert all(p.labeller == "alice" and p.time for p in pset.prefs)
    assert 0.5 in pset.comparisons()[2]  # the tie, at 0.5 in the Bradley-Terry loss


def test_stats_agreement_and_rates(run_dir, add_labeller):
    for name in ("alice", "bob", "carol"):
        add_labeller(run_dir, name)
    with LabelDB(run_dir) as db:
        ids = {name: lid for lid, name in db.labellers().items()}

        def label(name, eps, choice=None, order=None, seconds=10.0):
            q = db.add_question("rank" if order else "pair", eps, "test", ids[name])
            db.add_answer(q.id, ids[name], choice=choice, order=order, seconds=seconds)

        label("alice", (10, 11), "left")
        label("bob", (11, 10), "right")  # shown the other way round: agrees with alice
        label("carol", (10, 11), "right")  # disagrees with both
        label("alice", (12, 13), "tie")
        label("bob", (12, 13), "tie")  # agrees
        label("bob", (14, 15), "skip")
        label("carol", (12, 13, 14), order=(13, 12, 14), seconds=30.0)  # 13 > 12: disagrees with the ties
    s = stats(run_dir)
    assert s["labels"] == 6 and s["skipped"] == 1
    assert s["labellers"]["alice"]["labels"] == 2 and s["labellers"]["bob"]["skipped"] == 1
    assert s["labellers"]["alice"]["per_hour"] == pytest.approx(360.0)  # 10 s a label
    assert s["labellers"]["carol"]["mean_seconds"] == pytest.approx(20.0)
    # {10, 11}: alice-bob agree, alice-carol and bob-carol not; {12, 13}: alice-bob agree, carol not.
    assert s["agreement_pairs"] == 6 and s["agreement"] == pytest.approx(2 / 6)
    assert s["shared_comparisons"] == 2


def test_pools_are_fixed_when_the_database_is_made(run_dir, add_labeller):
    add_labeller(run_dir, "alice")
    make_app(run_dir).state.labelling.close()
    (run_dir / "pipeline.json").write_text(json.dumps({"config": {"prefs": {"train": 5}}}))
    state = make_app(run_dir).state.labelling  # the database's pools win over a changed config
    assert state.train_pool == list(range(10)) and state.test_pool == list(range(10, 16))
    state.close()
    with pytest.raises(ValueError, match="training pool of 10"):
        make_app(run_dir, train=5)


@pytest.mark.parametrize("train", [1, 15, 16, 100])
def test_pools_must_fit_the_store(run_dir, train):
    with pytest.raises(ValueError, match="training pool"):
        make_app(run_dir, train=train)


def test_missing_store_or_config(tmp_path, run_dir):
    with pytest.raises(ValueError):
        make_app(tmp_path / "nowhere")
    with pytest.raises(ValueError):
        make_app(run_dir, store=tmp_path / "nostore")
    (run_dir / "pipeline.json").unlink()
    with pytest.raises(ValueError, match="--train"):
        make_app(run_dir)


def test_active_selection_through_the_api(run_dir, add_labeller):
    """`selection="active"`: after a few labels the ensemble is fitted and picks the training
    questions; every tenth question stays a held-out one; nothing is asked twice."""
    from agentalign.train.reward import RewardTrainConfig

    h = auth(add_labeller(run_dir, "alice"))
    options = {"background": False, "ensemble": 2, "min_labels": 3, "refit_every": 4,
               "train_cfg": RewardTrainConfig(max_steps=5, traj_per_step=8, random_dim=16)}  # fmt: skip
    with pytest.warns(UserWarning, match="no SFT model"), TestClient(
        make_app(run_dir, selection="active", selector_options=options)
    ) as api:
        selector = api.app.state.labelling.selector
        seen = []
        for k in range(20):
            q = api.get("/api/next", headers=h).json()
            assert set(q["episodes"]) <= (TEST if (k + 1) % 10 == 0 else TRAIN)
            seen.append(frozenset(q["episodes"]))
            choice = "left" if q["episodes"][0] < q["episodes"][1] else "right"  # lower ids are better
            api.post("/api/answer", json={"id": q["id"], "choice": choice, "seconds": 1}, headers=h)
        assert selector.kind == "active" and selector.fits >= 2 and selector.last["rule"] == "active"
        assert len(set(seen)) == len(seen)
