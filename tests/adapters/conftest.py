from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints.demo import DemoPaths

from ..helpers import copy_adapter


@pytest.fixture
def good_adapter(demo: DemoPaths, tmp_path: Path) -> Path:
    """A private copy of demo-a (a valid PEFT LoRA directory, no manifest)."""
    return copy_adapter(demo.store_dir / "demo-a", tmp_path / "good")
