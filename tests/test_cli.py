"""The CLI as a user types it: real subprocesses of the installed `agentalign` script."""

import json
import subprocess

import imageio.v3 as iio


def run(*args, cwd=None):
    return subprocess.run(["agentalign", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_env_sheet_video_and_map(tmp_path):
    r = run("env", "sheet", "--out", str(tmp_path / "sheet.png"))
    assert r.returncode == 0, r.stderr
    sheet = iio.imread(tmp_path / "sheet.png")
    assert sheet.ndim == 3 and sheet.shape[0] > 500 and sheet.std() > 20
    r = run("env", "video", "--out", str(tmp_path / "clip.gif"), "--players", "2", "--pad", "right")
    assert r.returncode == 0, r.stderr
    assert "right->right" in r.stdout
    clip = iio.imread(tmp_path / "clip.gif")
    assert clip.ndim == 4 and clip.shape[0] > 30
    r = run("env", "map", "--out", str(tmp_path / "map.png"), "--episodes", "3")
    assert r.returncode == 0, r.stderr


def test_env_info_is_json():
    r = run("env", "info")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["action_nvec"] == [2] * 12 + [11] * 4 and "ninja" in info["characters"]


def test_bad_input_is_a_clear_error(tmp_path):
    r = run("env", "video", "--out", str(tmp_path / "x.mp4"), "--pad", "top")
    assert r.returncode == 2 and "unknown jump pad 'top'" in r.stderr
    r = run("env", "video", "--out", str(tmp_path / "x.avi"), "--players", "1")
    assert r.returncode == 2 and ".mp4 or .gif" in r.stderr
