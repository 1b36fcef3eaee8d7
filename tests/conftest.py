"""Session fixtures: the tiny demo checkpoint and adapters, built once with the same builders the demo uses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from inference_worker.config import Settings
from inference_worker.demo import DemoPaths, ensure_demo
from inference_worker.embedded import EmbeddedWorker

OUTPUT_DIR = Path(os.environ.get("TEST_OUTPUT_DIR", Path(__file__).resolve().parent.parent / "test-output"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoPaths:
    """The offline demo: tiny random Qwen3-VL + demo-a / demo-b in a local store."""
    return ensure_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory allowed in ADAPTER_LOCAL_ROOTS, for adapters loaded by path."""
    return tmp_path_factory.mktemp("local-adapters")


def worker_settings(demo: DemoPaths, adapter_root: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_name": str(demo.model_dir),
        "adapter_store_dir": demo.store_dir,
        "adapter_local_roots": [adapter_root],
        "host": "127.0.0.1",
        "port": 0,
        "ws_ping_interval_s": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def worker(demo: DemoPaths, adapter_root: Path) -> Iterator[EmbeddedWorker]:
    """A real worker on an ephemeral port, serving the demo model (one per test module)."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_concurrent_generations=4)) as running:
        yield running


@pytest.fixture
def output_dir() -> Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR
