"""The pipeline with people in it, as the README shows it: `--until prefs` stops before the reward
stage, labels arrive through the web app's API, `--from reward` exports them and goes on; the
stages after the preferences refuse stale labels instead of silently using old ones."""

import pytest
from fastapi.testclient import TestClient

from agentalign.data import open_store
from agentalign.labeling.db import LabelDB
from agentalign.labeling.server import make_app
from agentalign.pipeline import load_pipeline_config, run_pipeline
from agentalign.prefs import PreferenceSet, SyntheticLabeller, TrajectoryInfo

from .test_loop import synthetic_answer

CFG = load_pipeline_config("smoke", ["prefs.source=labels", "sweep.enabled=false", "eval.videos=0",
                                     "deploy.temperature=none"])  # fmt: skip


def _label(run, questions: int, labeller: str) -> None:
    store = open_store(run / "rollouts" / "store")
    infos = [TrajectoryInfo.from_metadata(i, store.metadata(i)) for i in range(len(store))]
    lab = SyntheticLabeller("left")
    with TestClient(make_app(run)) as api:
        h = {"Authorization": f"Bearer {LabelDB(run).add_labeller(labeller)}"}
        for _ in range(questions):
            q = api.get("/api/next?mode=rank&n=4", headers=h).json()
            assert api.post("/api/answer", json=synthetic_answer(lab, infos, q), headers=h).json()["ok"]


def test_until_prefs_then_label_then_from_reward(tmp_path):
    run = tmp_path / "people"
    lines = []
    run_pipeline(run, CFG, until="prefs", echo=lines.append)
    assert (run / "prefs" / "stage.json").exists() and not (run / "reward").exists()
    assert "stopped after prefs" in lines[-1]
    with pytest.raises(ValueError, match="holds no training comparison yet: label with `agentalign label serve"):
        run_pipeline(run, CFG, echo=lines.append)  # nothing labelled yet: the reward stage says what to do

    _label(run, 12, "alice")
    results = run_pipeline(run, CFG, from_stage="reward", echo=lines.append)
    assert results["prefs"]["labels"] == 12 and results["prefs"]["train_comparisons"] > 0
    exported = PreferenceSet.load(run / "prefs" / "prefs.jsonl")
    assert exported.meta["source"] == "labels" and len(exported) == 12
    assert "jump_pads" in results["eval_align"] and (run / "report.html").is_file()

    _label(run, 4, "bob")  # more labels: nothing after prefs goes on silently with the old ones
    with pytest.raises(ValueError, match="another config or inputs: reward"):
        run_pipeline(run, CFG, echo=lines.append)
    assert run_pipeline(run, CFG, from_stage="reward", echo=lines.append)["prefs"]["labels"] == 16
