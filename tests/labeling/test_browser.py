"""The labelling page in a real browser: headless Chromium (Debian's `chromium`), driven by
Playwright for Python, against the real server on a tiny run folder. The clips play, labels are
given with the keyboard and with clicks, in pair and ranking mode, and they land in the database.

Skipped when Chromium or Playwright is missing, except under CI=true, where that is a failure.
AGENTALIGN_SCREENSHOT=PATH saves a screenshot of the page there (docs/label_page.png is one).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from agentalign.data import StoreWriter, WriterConfig
from agentalign.data.testing import synthetic_episode
from agentalign.labeling.db import LabelDB

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
TIMEOUT_MS = 20_000


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; under CI=true the browser test must run (.ci/run installs both)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


# -- a tiny run folder and the real server --------------------------------------------------------


def tiny_run(root: Path, episodes: int, train: int, length: int = 30) -> Path:
    """RUN/rollouts/store with `episodes` synthetic 64 px episodes (3 s clips), the first `train`
    the training pool, and the pipeline.json the server reads."""
    with StoreWriter(root / "rollouts" / "store", image_size=(64, 64), config=WriterConfig()) as w:
        for seed in range(episodes):
            w.add(synthetic_episode(seed, length=length, size=(64, 64)))
    (root / "pipeline.json").write_text(json.dumps({"config": {"prefs": {"train": train}, "target": "left"}}))
    return root


def add_labellers(run: Path, *names: str) -> dict[str, str]:
    with LabelDB(run) as db:
        return {name: db.add_labeller(name) for name in names}


class Served:
    """The real app (`make_app`) under uvicorn, in a thread, on a free 127.0.0.1 port."""

    def __init__(self, run: Path):
        import uvicorn

        from agentalign.labeling.server import make_app

        self.run = run
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(make_app(run), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def get(self, path: str, token: str) -> dict:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """8 episodes, 6 in the training pool: 15 training pairs, more than a test asks."""
    run = tiny_run(tmp_path_factory.mktemp("label_run"), episodes=8, train=6)
    tokens = add_labellers(run, "alice", "bob")
    s = Served(run)
    s.tokens = tokens
    yield s
    s.close()


# -- the page -------------------------------------------------------------------------------------


def open_page(browser, served: Served, token: str):
    page = browser.new_page(viewport={"width": 1180, "height": 560})
    page.set_default_timeout(TIMEOUT_MS)
    page.js_errors, page.foreign = [], []
    page.on("pageerror", lambda e: page.js_errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith((served.url, "data:")) else page.foreign.append(r.url))
    page.goto(f"{served.url}/?token={token}")
    return page


def wait_playing(page, n: int) -> list[int]:
    """Wait until the page shows n clips that all play (their playback position advances), and
    return their episodes in the order shown."""
    page.wait_for_function(
        """n => { const v = [...document.querySelectorAll('#clips video')];
                  return v.length === n && v.every(x => !x.paused && !x.error && x.currentTime > 0.2); }""",
        arg=n,
    )
    before = page.eval_on_selector_all("#clips video", "vs => vs.map(v => v.currentTime)")
    page.wait_for_function(  # advancing (or looped back to the start), for every clip
        "before => [...document.querySelectorAll('#clips video')].every((v, k) => v.currentTime !== before[k])",
        arg=before,
    )
    sizes = page.eval_on_selector_all("#clips video", "vs => vs.map(v => [v.videoWidth, v.loop, v.muted])")
    assert sizes == [[256, True, True]] * n
    return [int(e) for e in page.eval_on_selector_all("#clips figure", "fs => fs.map(f => f.dataset.episode)")]


def wait_answered(page, k: int) -> None:
    page.wait_for_function("k => document.getElementById('progress').textContent.includes(`: ${k} answered`)", arg=k)


def answers_of(run: Path, name: str):
    with LabelDB(run, create=False) as db:
        return [a for a in db.answers() if a.labeller == name]


def test_pair_mode_keyboard_and_clicks(browser, served):
    page = open_page(browser, served, served.tokens["alice"])
    shown = [wait_playing(page, 2)]
    assert page.is_visible("#left") and page.is_visible("#right") and not page.is_visible("#submit")
    if os.environ.get("AGENTALIGN_SCREENSHOT"):
        page.wait_for_timeout(700)  # a moment later, so the timer shows a time on this label
        page.screenshot(path=os.environ["AGENTALIGN_SCREENSHOT"])

    actions = [("key", "ArrowLeft", "left"), ("key", "ArrowRight", "right"), ("key", "ArrowDown", "tie"),
               ("key", "t", "tie"), ("key", "s", "skip"), ("click", "#left", "left"),
               ("click", "#right", "right"), ("click", "#tie", "tie"), ("click", "#skip", "skip")]  # fmt: skip
    for k, (how, what, _) in enumerate(actions, start=1):
        page.wait_for_timeout(150)  # so that the time per label is measurably above zero
        if how == "key":
            page.keyboard.press(what)
        else:
            page.click(what)
        wait_answered(page, k)
        shown.append(wait_playing(page, 2) if k < len(actions) else None)

    got = answers_of(served.run, "alice")
    assert [a.choice for a in got] == [choice for _, _, choice in actions]
    assert [list(a.episodes) for a in got] == shown[: len(actions)]  # each label for the pair on screen
    assert all(a.kind == "pair" and a.seconds is not None and 0.1 <= a.seconds < 60 for a in got)
    progress = served.get("/api/progress", served.tokens["alice"])
    assert progress["labeller"] == "alice" and progress["answered"] == len(actions)
    assert progress["asked"] >= len(actions)
    assert "mean" in page.inner_text("#mean") and "s on this one" in page.inner_text("#timer")
    assert page.js_errors == [] and page.foreign == []  # no script error, nothing fetched from elsewhere
    page.close()


def test_ranking_mode_keyboard_and_clicks(browser, served):
    page = open_page(browser, served, served.tokens["bob"])
    wait_playing(page, 2)
    page.select_option("#rank-n", "4")  # choosing N switches to ranking mode
    assert page.is_checked("#mode-rank")
    eps = wait_playing(page, 4)
    assert page.is_visible("#submit") and page.is_disabled("#submit") and not page.is_visible("#left")

    # Keyboard: 3, 1, 4 (the last one follows), then Enter.
    for key in "314":
        page.keyboard.press(key)
    assert page.inner_text("#clips figure:nth-child(3) .rank") == "best"
    page.keyboard.press("Enter")
    wait_answered(page, 1)
    orders = [[eps[2], eps[0], eps[3], eps[1]]]

    # Clicks, with a change of mind: 2, 4, 4 again (takes it back), 1, 4 (3 follows), submit.
    eps = wait_playing(page, 4)
    for k in (2, 4, 4, 1, 4):
        page.click(f"#clips figure:nth-child({k})")
    assert page.is_enabled("#submit")
    page.click("#submit")
    wait_answered(page, 2)
    orders.append([eps[1], eps[0], eps[3], eps[2]])

    # N = 3 from the switch, keys 2 1 (3 follows), clicked submit.
    page.select_option("#rank-n", "3")
    eps = wait_playing(page, 3)
    page.keyboard.press("2")
    page.keyboard.press("1")
    page.click("#submit")
    wait_answered(page, 3)
    orders.append([eps[1], eps[0], eps[2]])

    got = answers_of(served.run, "bob")
    assert [a.kind for a in got] == ["rank"] * 3
    assert [list(a.order) for a in got] == orders
    assert all(a.seconds is not None and a.seconds > 0 for a in got)
    assert served.get("/api/progress", served.tokens["bob"])["answered"] == 3

    page.click("#mode-pair")  # and back to pairs
    wait_playing(page, 2)
    assert page.js_errors == [] and page.foreign == []
    page.close()


def test_no_question_left(browser, tmp_path):
    """4 episodes, 2 in the training pool: a single training pair and a single held-out pair."""
    run = tiny_run(tmp_path, episodes=4, train=2, length=8)
    token = add_labellers(run, "carol")["carol"]
    served = Served(run)
    try:
        page = open_page(browser, served, token)
        for k in range(1, 10):
            page.wait_for_function("() => !document.getElementById('message').hidden || "
                                   "document.querySelectorAll('#clips video').length === 2")  # fmt: skip
            if page.is_visible("#message"):
                break
            page.click("#left")
            wait_answered(page, k)
        assert "No question left" in page.inner_text("#message")
        assert page.query_selector_all("#clips video") == [] and not page.is_visible("#left")
        assert 1 <= len(answers_of(run, "carol")) <= 3
        assert page.js_errors == []
        page.close()
    finally:
        served.close()


def test_bad_token_is_a_clear_message(browser, served):
    page = open_page(browser, served, "not-a-token")
    page.wait_for_selector("#message.error")
    assert "401" in page.inner_text("#message")
    assert page.query_selector_all("#clips video") == []
    page.close()
    page = browser.new_page()
    page.goto(f"{served.url}/")  # no token at all
    page.wait_for_selector("#message.error")
    assert "token" in page.inner_text("#message")
    page.close()
