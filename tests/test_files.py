"""Failures a user meets with files (issue 42): modes, damaged checkpoints and preference files,
an unwritable output folder, a full disk. Each error names the file and says what to do."""

from __future__ import annotations

import errno
import io
import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from agentalign import io as aio
from agentalign.io import MetricsLogger, atomic_save_safetensors, atomic_write_json
from agentalign.models import Policy, model_preset
from agentalign.prefs.records import Preference, PreferenceSet
from agentalign.train.common import TRAIN_STATE, load_train_state, save_train_state


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def truncate(path: Path, keep: int = 20) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


# -- modes: the process's umask, as open() gives --------------------------------------------------


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_process_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "m.safetensors")
        PreferenceSet("abc", [Preference(ids=(0, 1), label="A")]).save(tmp_path / "prefs.jsonl")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    assert mode(tmp_path / "plain") == expected
    for name in ("a.json", "m.safetensors", "prefs.jsonl"):
        assert mode(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "m.safetensors", "plain", "prefs.jsonl"]


# -- a full disk: the OSError names the file --------------------------------------------------------


class FullDisk(io.StringIO):
    def write(self, s):  # as a real file on a full disk: no file name in the error
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_logging_metrics_names_the_metrics_file(tmp_path, monkeypatch):
    log = MetricsLogger(tmp_path, tensorboard=False)
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: FullDisk())
    with pytest.raises(OSError) as info:
        log.log(1, loss=0.5)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "metrics.jsonl")
    from agentalign.cli.common import explain

    msg, code = explain(info.value)
    assert str(tmp_path / "metrics.jsonl") in msg and "No space left" in msg and code == 1


def test_a_full_disk_while_writing_a_file_names_it_and_leaves_no_temporary(tmp_path):
    def fill(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    from agentalign.io import atomic_replace

    with pytest.raises(OSError) as info:
        atomic_replace(tmp_path / "model.safetensors", fill)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


# -- an output folder that cannot be written ---------------------------------------------------------


def read_only(path: Path, monkeypatch) -> None:
    """Make `path` unwritable: by its mode, or (as root, who ignores modes) by an injected failure."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    real = tempfile.NamedTemporaryFile

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == path.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / "tmpXXXX"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)


def test_check_writable_says_not_writable_for_a_read_only_folder(tmp_path, monkeypatch):
    aio.check_writable(tmp_path / "new" / "deeper")  # a folder to be created under a writable one: fine
    aio.check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind, creates nothing
    ro = tmp_path / "ro"
    read_only(ro, monkeypatch)
    try:
        with pytest.raises(ValueError, match=rf"^{ro} is not writable \(.*Permission denied\); choose a folder you can write to$"):
            aio.check_writable(ro)
        with pytest.raises(ValueError, match=rf"^{ro / 'out' / 'eval'} is not writable \(.*Permission denied\); choose a folder you can write to$"):
            aio.check_writable(ro / "out" / "eval")  # the nearest existing parent decides
    finally:
        ro.chmod(0o755)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file is not writable \(.*not a folder"):
        aio.check_writable(tmp_path / "file")
    with pytest.raises(ValueError, match=r"file/sub is not writable \(.*not a folder"):
        aio.check_writable(tmp_path / "file" / "sub")


def test_evaluate_refuses_a_read_only_out_before_any_work(tmp_path, monkeypatch):
    import importlib

    evaluate_module = importlib.import_module("agentalign.eval.evaluate")  # the module, not the function

    ro = tmp_path / "ro"
    read_only(ro, monkeypatch)
    monkeypatch.setattr(evaluate_module, "rollout", lambda *a, **k: pytest.fail("episodes ran"))
    monkeypatch.setattr(evaluate_module, "load_actor", lambda *a, **k: pytest.fail("a checkpoint was loaded"))
    try:
        with pytest.raises(ValueError, match=r"ro is not writable"):
            evaluate_module.evaluate("random", ro, episodes=2, num_envs=2, videos=0)
    finally:
        ro.chmod(0o755)


# -- a garbage preference file -------------------------------------------------------------------------


def test_a_garbage_preference_file_is_an_error_naming_it_and_the_line(tmp_path):
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xde\xad\xbe\xef" * 16)
    with pytest.raises(ValueError, match=rf"^{binary}: not a preference file \(line 1: .*codec can't decode.*\)$"):
        PreferenceSet.load(binary)
    text = tmp_path / "text.jsonl"
    text.write_text("hello world\n")
    with pytest.raises(ValueError, match=rf"^{text}: not a preference file \(line 1: .*\)$"):
        PreferenceSet.load(text)
    good = tmp_path / "good.jsonl"
    PreferenceSet("abc", [Preference(ids=(0, 1), label="A")] * 2).save(good)
    lines = good.read_text().splitlines()
    later = tmp_path / "later.jsonl"
    later.write_bytes(("\n".join(lines[:2]) + "\n\n").encode() + b"\xff\xfe{\n" + lines[2].encode() + b"\n")
    with pytest.raises(ValueError, match=rf"^{later}: not a preference file \(line 4: "):
        PreferenceSet.load(later)
    bad_json = tmp_path / "bad_json.jsonl"
    bad_json.write_text("\n".join(lines[:2] + ["", "{oops"]) + "\n")
    with pytest.raises(ValueError, match=rf"^{bad_json}: not a preference file \(line 4: "):
        PreferenceSet.load(bad_json)
    for header in ("[1, 2]", '{"schema": 1}'):
        odd = tmp_path / "odd.jsonl"
        odd.write_text(header + "\n")
        with pytest.raises(ValueError, match=rf"^{odd}: not a preference file \(line 1: "):
            PreferenceSet.load(odd)
    assert len(PreferenceSet.load(good)) == 2


# -- a damaged final model -----------------------------------------------------------------------------


def test_a_damaged_model_is_an_error_naming_the_file_and_what_to_do(tmp_path):
    d = tmp_path / "sft" / "model"
    Policy(model_preset("tiny")).save_pretrained(d)
    good = (d / "model.safetensors").read_bytes()
    for damage in (lambda p: truncate(p, 20), lambda p: truncate(p, 3), lambda p: p.write_bytes(good[:-100])):
        damage(d / "model.safetensors")
        with pytest.raises(ValueError, match=rf"^{d / 'model.safetensors'} is damaged \(.+\); rerun the stage that made it$"):
            Policy.from_pretrained(d)
    (d / "model.safetensors").write_bytes(good)
    cfg = (d / "config.json").read_text()
    for garbled in ("{", "\xde\xad", "[]", '{"schema": 1, "kind": "policy"}', cfg.replace('"width"', '"wdith"')):
        (d / "config.json").write_text(garbled)
        with pytest.raises(ValueError, match=rf"^{d / 'config.json'} is damaged \(.+\); rerun the stage that made it$"):
            Policy.from_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(ValueError, match=rf"^{d / 'config.json'} is missing.*; rerun the stage that made it$"):
        Policy.from_pretrained(d)
    (d / "config.json").write_text(cfg)
    assert Policy.from_pretrained(d).cfg == model_preset("tiny")


# -- a damaged resume checkpoint -----------------------------------------------------------------------


def tiny_run(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def step(model, optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()


def snapshot_states(out: Path) -> dict[int, dict[str, torch.Tensor]]:
    model, optimizer = tiny_run()
    saved = {}
    for s in (1, 2, 3):
        step(model, optimizer)
        save_train_state(out, s, model, optimizer, extra={"loader": {"position": s}})
        saved[s] = {k: v.clone() for k, v in model.state_dict().items()}
    return saved


def test_train_state_keeps_the_previous_snapshot(tmp_path):
    snapshot_states(tmp_path)
    root = tmp_path / TRAIN_STATE
    import json

    latest = json.loads((root / "latest.json").read_text())
    assert latest["step"] == 3 and latest["previous"].startswith("step-000000002-")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted([latest["snapshot"], latest["previous"]])


@pytest.mark.parametrize("damage", ["truncate", "empty", "missing", "optimizer", "rng"])
def test_a_damaged_latest_snapshot_falls_back_to_the_previous_with_a_warning(tmp_path, damage):
    import json

    saved = snapshot_states(tmp_path)
    root = tmp_path / TRAIN_STATE
    snap = root / json.loads((root / "latest.json").read_text())["snapshot"]
    name = {"optimizer": "optimizer.safetensors", "rng": "rng.safetensors"}.get(damage, "model.safetensors")
    bad = snap / name
    if damage == "missing":
        bad.unlink()
    else:
        truncate(bad, 0 if damage == "empty" else 20)
    model, optimizer = tiny_run(seed=1)
    with pytest.warns(UserWarning, match=rf"{bad} is damaged .*resuming from the previous checkpoint \(step 2\)"):
        meta = load_train_state(tmp_path, model, optimizer)
    assert meta["step"] == 2 and meta["loader"] == {"position": 2}
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[2][k]), k
    # The next snapshot keeps the good one as its previous, never the damaged one.
    save_train_state(tmp_path, 3, model, optimizer, extra={"loader": {"position": 3}})
    latest = json.loads((root / "latest.json").read_text())
    assert latest["previous"].startswith("step-000000002-") and not snap.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_train_state(tmp_path, *tiny_run())["step"] == 3


def test_no_usable_snapshot_is_an_error_naming_the_file_and_what_to_do(tmp_path):
    import json

    model, optimizer = tiny_run()
    step(model, optimizer)
    save_train_state(tmp_path, 1, model, optimizer)
    root = tmp_path / TRAIN_STATE
    bad = root / json.loads((root / "latest.json").read_text())["snapshot"] / "model.safetensors"
    truncate(bad)
    with pytest.raises(ValueError, match=rf"^{bad} is damaged \(.+\).*delete {tmp_path} or rerun the stage"):
        load_train_state(tmp_path, *tiny_run())
    # Both damaged: the same error, naming the latest.
    snapshot_states(tmp_path / "two")
    root = tmp_path / "two" / TRAIN_STATE
    latest = json.loads((root / "latest.json").read_text())
    for name in (latest["snapshot"], latest["previous"]):
        truncate(root / name / "model.safetensors")
    with pytest.raises(ValueError, match=rf"^{root / latest['snapshot'] / 'model.safetensors'} is damaged .*and so is"):
        load_train_state(tmp_path / "two", *tiny_run())
    (root / "latest.json").write_text("{")
    with pytest.raises(ValueError, match=rf"^{root / 'latest.json'} is damaged \(.+\); delete"):
        load_train_state(tmp_path / "two", *tiny_run())
