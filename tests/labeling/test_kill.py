"""The server killed with SIGKILL while labellers post answers: after a restart, every answer it
acknowledged is in the database, intact, and labelling goes on."""

import http.client
import json
import signal
import sqlite3
import threading
from urllib.parse import urlsplit

from agentalign.labeling.db import db_path

LABELLERS, KILL_AFTER = 4, 300


def call(conn: http.client.HTTPConnection, token: str, method: str, path: str, body: dict | None = None):
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
    r = conn.getresponse()
    data = r.read()
    assert r.status == 200, (path, r.status, data)
    return json.loads(data)


def test_every_acknowledged_answer_survives_sigkill(make_run, add_labeller, label_server):
    run = make_run(episodes=60, train=45, length=4)
    tokens = {f"l{k}": add_labeller(run, f"l{k}") for k in range(LABELLERS)}
    proc, url = label_server(run)
    u = urlsplit(url)

    acked: dict[str, list[tuple[int, object]]] = {name: [] for name in tokens}  # answers acknowledged
    total = threading.Semaphore(0)
    stop = threading.Event()

    def label(name: str) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        j = 0
        try:
            while not stop.is_set():
                q = call(conn, tokens[name], "GET", "/api/next?mode=rank&n=4" if j % 3 == 2 else "/api/next")
                ans = ({"order": q["episodes"][::-1]} if q["kind"] == "rank"
                       else {"choice": ("left", "right", "tie", "skip")[j % 4]})  # fmt: skip
                r = call(conn, tokens[name], "POST", "/api/answer", {"id": q["id"], "seconds": 1.0 + j, **ans})
                assert r == {"ok": True, "duplicate": False}
                acked[name].append((q["id"], ans.get("choice") or ans["order"]))  # only once acknowledged
                total.release()
                j += 1
        except (OSError, http.client.HTTPException):
            pass  # the server is gone: mid-request, or between two

    threads = [threading.Thread(target=label, args=(name,), daemon=True) for name in tokens]
    for t in threads:
        t.start()
    for _ in range(KILL_AFTER):
        assert total.acquire(timeout=60), "the labellers stalled"
    proc.send_signal(signal.SIGKILL)  # mid-stream: the labellers are still posting
    proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    n_acked = sum(len(a) for a in acked.values())
    assert n_acked >= KILL_AFTER

    with sqlite3.connect(db_path(run)) as c:  # the database as the killed server left it
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {(name, q): (choice, order) for name, q, choice, order in c.execute(
            'SELECT l.name, a.question, a.choice, a."order" FROM answers a JOIN labellers l ON l.id = a.labeller')}  # fmt: skip
    for name, answers in acked.items():
        for q, want in answers:
            choice, order = stored[(name, q)]  # every acknowledged answer, as it was given
            assert (choice if isinstance(want, str) else json.loads(order)) == want
    assert len(stored) - n_acked <= LABELLERS  # at most one unacknowledged answer in flight per labeller

    _, url = label_server(run)  # restarted: it reads the same database and goes on
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    for name, token in tokens.items():
        progress = call(conn, token, "GET", "/api/progress")
        assert progress["answered"] == sum(1 for (who, _) in stored if who == name)
        q = call(conn, token, "GET", "/api/next")
        assert q["id"] not in {qid for (who, qid) in stored if who == name}  # not one they answered
        assert call(conn, token, "POST", "/api/answer", {"id": q["id"], "choice": "left"})["ok"]
    conn.close()
