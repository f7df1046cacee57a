"""The whole loop: the app serves, the synthetic labeller answers through the HTTP API, the labels
are exported in the project's preference format, and the reward stage trains on them unchanged.
And the `agentalign label` commands around it."""

import re

import pytest
from fastapi.testclient import TestClient

from agentalign.cli import main
from agentalign.data import open_store
from agentalign.labeling.export import export_labels
from agentalign.labeling.server import make_app
from agentalign.prefs import PreferenceSet, SyntheticLabeller, TrajectoryInfo
from agentalign.train.reward import RewardTrainConfig, run_reward

QUESTIONS = 60


def synthetic_answer(lab: SyntheticLabeller, infos: list[TrajectoryInfo], q: dict) -> dict:
    """The synthetic labeller's answer to a question of the API, in the API's words."""
    eps = q["episodes"]
    if q["kind"] == "pair":
        verdict = lab.compare(infos[eps[0]], infos[eps[1]])
        return {"id": q["id"], "choice": {"A": "left", "B": "right", "tie": "tie"}[verdict], "seconds": 2.0}
    scores = lab.scores([infos[e] for e in eps])
    return {"id": q["id"], "order": [eps[k] for k in sorted(range(len(eps)), key=lambda k: -scores[k])],
            "seconds": 6.0}  # fmt: skip


def test_serve_synthetic_labeller_export_reward_model(make_run, add_labeller, tmp_path):
    run = make_run(episodes=24, train=16, length=10)
    store = open_store(run / "rollouts" / "store")
    infos = [TrajectoryInfo.from_metadata(i, store.metadata(i)) for i in range(len(store))]
    lab = SyntheticLabeller("left")
    token = add_labeller(run, lab.name)
    h = {"Authorization": f"Bearer {token}"}

    with TestClient(make_app(run)) as api:
        for k in range(QUESTIONS):
            q = api.get("/api/next?mode=rank&n=4" if k % 4 == 3 else "/api/next?mode=pair", headers=h).json()
            assert q["id"] is not None
            r = api.post("/api/answer", json=synthetic_answer(lab, infos, q), headers=h)
            assert r.json() == {"ok": True, "duplicate": False}
        assert api.get("/api/progress", headers=h).json()["answered"] == QUESTIONS

    out = run / "prefs" / "prefs.jsonl"
    counts = export_labels(run, out)
    assert counts["labels"] == QUESTIONS and counts["labellers"] == 1 and counts["skipped"] == 0
    assert counts["train_comparisons"] + counts["test_comparisons"] == 45 * 1 + 15 * 6  # 45 pairs, 15 rankings of 4
    assert counts["test_comparisons"] > 0  # every tenth question, from the held-out pool
    pset = PreferenceSet.load(out)
    assert pset.dataset_id == store.dataset_id and pset.meta["train_ids"] == list(range(16))
    for i, j, p in zip(*pset.comparisons()):  # exactly what the labeller said
        want = {"A": 1.0, "B": 0.0, "tie": 0.5}[lab.compare(infos[i], infos[j])]
        assert p == want or (want == 0.5 and p in (0.0, 1.0))  # a ranking cannot say "tie"

    cfg = RewardTrainConfig(encoder="random", max_steps=20, random_dim=32)
    r = run_reward(run / "rollouts" / "store", out, tmp_path / "reward", cfg, policy=None)
    train = set(range(16))
    distinct = {frozenset((i, j)) for i, j, _ in zip(*pset.comparisons()) if {i, j} <= train}
    assert r["comparisons"] == len(distinct) and r["steps"] > 0  # a pair asked twice is one comparison
    assert 0.0 <= r["reward/accuracy"] <= 1.0 and r["reward/pairs"] > 0  # scored on the held-out labels
    assert (tmp_path / "reward" / "metrics.json").is_file()


def cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    got = capsys.readouterr()
    return e.value.code or 0, got.out, got.err


def test_label_commands(run_dir, capsys):
    code, out, _ = cli(capsys, "label", "add-labeller", str(run_dir), "alice")
    assert code == 0
    token = re.search(r"token (\S+)", out).group(1)
    assert f"http://127.0.0.1:8000/?token={token}" in out
    code, _, err = cli(capsys, "label", "add-labeller", str(run_dir), "alice")
    assert code == 2 and "exists already" in err and len(err.strip().splitlines()) == 1

    with TestClient(make_app(run_dir)) as api:
        h = {"Authorization": f"Bearer {token}"}
        for choice in ("left", "skip", "tie"):
            q = api.get("/api/next", headers=h).json()
            api.post("/api/answer", json={"id": q["id"], "choice": choice, "seconds": 4}, headers=h)

    code, out, _ = cli(capsys, "label", "stats", str(run_dir))
    assert code == 0 and "2 labels, 1 skipped, 1 labellers" in out and "alice: 2 labels" in out
    assert "900 per hour" in out  # 3 answers in 12 s
    code, out, _ = cli(capsys, "label", "export", str(run_dir))
    assert code == 0 and "2 labels from 1 labellers" in out and "1 skipped" in out
    assert len(PreferenceSet.load(run_dir / "prefs" / "prefs.jsonl")) == 2
    code, out, _ = cli(capsys, "label", "export", str(run_dir), "--out", str(run_dir / "elsewhere.jsonl"))
    assert code == 0 and (run_dir / "elsewhere.jsonl").is_file()

    nowhere = str(run_dir / "nowhere")
    for args, msg in [
        (["label", "stats", nowhere], "does not exist"),
        (["label", "export", nowhere], "does not exist"),
        (["label", "add-labeller", nowhere, "bob"], "does not exist"),
        (["label", "add-labeller", str(run_dir), " "], "name"),
        (["label", "serve", nowhere], "does not exist"),
        (["label", "serve", str(run_dir), "--selection", "clever"], "--selection"),
        (["label", "serve", str(run_dir), "--port", "0"], "--port"),
        (["label", "serve", str(run_dir), "--train", "3"], "training pool of 10"),
        (["label", "serve", str(run_dir), "--store", nowhere], nowhere),
    ]:
        code, _, err = cli(capsys, *args)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, code, err)
