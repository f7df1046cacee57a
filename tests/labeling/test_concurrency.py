"""20 labellers answering 500 questions each, all at once, against a live server (`agentalign label
serve` in its own process): no answer lost, none duplicated, every repeat acknowledged as one."""

import http.client
import json
import sqlite3
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

from agentalign.labeling.db import db_path

LABELLERS, ANSWERS = 20, 500


class Client:
    """One keep-alive connection (http.client: light enough for 20 threads in one process)."""

    def __init__(self, url: str, token: str):
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=self.headers)
        r = self.conn.getresponse()
        data = r.read()
        assert r.status == 200, (method, path, body, r.status, data)
        return json.loads(data)


def test_20_labellers_500_answers_each_at_once(make_run, add_labeller, label_server):
    run = make_run(episodes=60, train=45, length=4)  # 990 training pairs, 105 held-out pairs
    tokens = [add_labeller(run, f"labeller{k:02d}") for k in range(LABELLERS)]
    _, url = label_server(run)

    acked: list[list[tuple[int, bool]]] = [[] for _ in range(LABELLERS)]  # (question, duplicate) per labeller
    errors: list[BaseException] = []
    start = threading.Barrier(LABELLERS)

    def label(k: int) -> None:
        try:
            c = Client(url, tokens[k])
            start.wait()
            for j in range(ANSWERS):
                q = c.call("GET", "/api/next?mode=rank&n=3" if j % 5 == 4 else "/api/next?mode=pair")
                assert q["id"] is not None
                body = ({"id": q["id"], "order": q["episodes"][::-1], "seconds": 1.0} if q["kind"] == "rank"
                        else {"id": q["id"], "choice": ("left", "right", "tie", "skip")[j % 4], "seconds": 0.5})  # fmt: skip
                r = c.call("POST", "/api/answer", body)
                acked[k].append((q["id"], r["duplicate"]))
                if j % 50 == 0:  # a repeat (a double click, a retried request): acknowledged as a duplicate
                    again = c.call("POST", "/api/answer", body)
                    assert again == {"ok": True, "duplicate": True}
            c.conn.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=label, args=(k,)) for k in range(LABELLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    assert not errors, errors[:3]

    assert all(len(a) == ANSWERS and not any(dup for _, dup in a) for a in acked)
    with sqlite3.connect(db_path(run)) as c:
        rows = c.execute("SELECT a.question, l.name, q.asked_by = a.labeller FROM answers a "
                         "JOIN labellers l ON l.id = a.labeller JOIN questions q ON q.id = a.question").fetchall()  # fmt: skip
        n_questions = c.execute("SELECT COUNT(*) FROM questions").fetchone()[0]
    assert len(rows) == LABELLERS * ANSWERS == sum(len(a) for a in acked)  # none lost, none duplicated
    assert Counter(q for q, _, _ in rows).most_common(1)[0][1] == 1  # each question answered once
    assert {q for q, _, _ in rows} == {q for a in acked for q, _ in a}
    assert Counter(name for _, name, _ in rows) == {f"labeller{k:02d}": ANSWERS for k in range(LABELLERS)}
    assert all(own for _, _, own in rows) and n_questions == LABELLERS * ANSWERS
    print(f"{LABELLERS * ANSWERS} answers in {seconds:.1f} s ({LABELLERS * ANSWERS / seconds:.0f}/s)")
