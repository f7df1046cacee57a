"""Atomic writes and the metrics logger: what a reader sees, and what TensorBoard reads."""

import importlib.util
import json
import os

import pytest

from agentalign.io import MetricsLogger, atomic_write_json, read_metrics, truncate_metrics


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
    if importlib.util.find_spec("tensorboard") is None:  # CI installs the dev extra, which has it
        if os.environ.get("CI") == "true":
            pytest.fail("tensorboard is not installed in CI (the dev extra lists it)")
        pytest.skip("the optional tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(tmp_path)
    for step in range(3):
        log.log(step, **{"train/loss": 1.0 / (step + 1), "train/lr": 0.1})
    log.close()
    assert [r["train/loss"] for r in read_metrics(tmp_path)] == [1.0, 0.5, 1.0 / 3]
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr"}
    assert [round(e.value, 6) for e in acc.Scalars("train/loss")] == [1.0, 0.5, 0.333333]
    assert [e.step for e in acc.Scalars("train/loss")] == [0, 1, 2]


def test_truncated_metrics_keep_the_rows_up_to_a_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(5):
        log.log(step, x=step)
    truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    assert not (tmp_path / "tb").exists()


def test_atomic_json_writes_valid_json_with_nan_as_null(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1.5, float("inf")]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": [1.5, None]}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
