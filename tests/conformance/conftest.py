"""The ``target`` fixture: the suite runs once per engine, with one worker of that engine up for all its tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoints.demo import DemoPaths

from .targets import StartContext, Target, selected_engines, started


@pytest.fixture(scope="session", params=selected_engines())
def target(request: pytest.FixtureRequest, demo: DemoPaths, adapter_root: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from started(request.param, StartContext(demo, adapter_root, tmp_path_factory))
