"""Fixtures for the data-layer tests: small synthetic episodes and a store holding them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentalign.data import Episode

from .helpers import make_episodes, write_store


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return make_episodes()


@pytest.fixture()
def store(tmp_path: Path, episodes: list[Episode]) -> Path:
    return write_store(tmp_path / "store", episodes)
