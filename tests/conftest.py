"""Session fixtures: the tiny demo checkpoint and adapters, built once with the same builders the demo uses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from checkpoints.demo import DemoPaths, ensure_demo
from diagrams import DiagramRenderer, DiagramSettings, Kind
from inference_worker.config import Settings
from inference_worker.embedded import EmbeddedWorker

DIAGRAMS_DATA = Path(__file__).resolve().parent / "diagrams" / "data"
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
        "http_port": 0,
        "ws_ping_interval_s": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def worker(demo: DemoPaths, adapter_root: Path) -> Iterator[EmbeddedWorker]:
    """A real worker on an ephemeral port, serving the demo model (one per test module)."""
    with EmbeddedWorker(worker_settings(demo, adapter_root)) as running:
        yield running


@pytest.fixture
def output_dir() -> Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR


class S3Target:
    """The S3 server the tests use: SeaweedFS started here, or a real MinIO named by MINIO_* variables."""

    def __init__(self, server, endpoint: str, access_key: str, secret_key: str) -> None:
        self.server = server  # None for an external server (which the tests cannot stop)
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self._buckets = 0

    def client(self, secret_key: str | None = None, timeout_s: float = 5.0, retries: int = 1):
        from adapters.s3 import make_client

        return make_client(self.endpoint, self.access_key, secret_key or self.secret_key, timeout_s=timeout_s,
                           retries=retries)

    def new_bucket(self, prefix: str = "t") -> str:
        self._buckets += 1
        name = f"{prefix}-{os.getpid()}-{self._buckets}"
        self.client().make_bucket(name)
        return name

    def env(self, bucket: str) -> dict[str, str]:
        return {"MINIO_ENDPOINT": self.endpoint, "MINIO_ACCESS_KEY": self.access_key,
                "MINIO_SECRET_KEY": self.secret_key, "MINIO_BUCKET": bucket, "MINIO_SECURE": "false"}


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Target]:
    external = os.environ.get("TEST_MINIO_ENDPOINT")
    if external:
        yield S3Target(None, external, os.environ["TEST_MINIO_ACCESS_KEY"], os.environ["TEST_MINIO_SECRET_KEY"])
        return
    from tools.s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield S3Target(server, server.endpoint, ACCESS_KEY, SECRET_KEY)
    finally:
        server.stop()


def unavailable(why: str) -> NoReturn:
    """A prerequisite of the test is missing: skipped here, a failure in CI (``CI`` set), where everything is
    installed."""
    if os.environ.get("CI"):
        pytest.fail(f"missing in CI: {why}")
    pytest.skip(why)


def require(renderer: DiagramRenderer, *kinds: Kind) -> None:
    """Skip where a diagram renderer is not installed (``make renderers``); in CI (``CI`` set) that is a failure."""
    missing = [f"{kind.label}: {why}" for kind in kinds if (why := renderer.missing(kind)) is not None]
    if missing:
        unavailable("renderers: " + "; ".join(missing))


@pytest.fixture(scope="session")
def renderer() -> Iterator[DiagramRenderer]:
    """The diagram renderer of the session (one Chromium for every test that draws a diagram)."""
    with DiagramRenderer(DiagramSettings()) as shared:
        yield shared
