"""The offline demo: a tiny random Qwen3-VL and two adapters (``demo-a``, ``demo-b``) in a local store, built once.

The worker serves it with ``--demo``; the adapter CLI finds its store with ``--demo``; the tests run on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adapters.config import demo_store_dir

from .build import BUILDER_VERSION, build_lora_adapter, build_vl_checkpoint, load_for_building

log = logging.getLogger(__name__)


@dataclass
class DemoPaths:
    """Where the offline demo keeps its model and adapter store."""

    root: Path
    model_dir: Path = field(init=False)
    store_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.model_dir = self.root / "model"
        self.store_dir = demo_store_dir(self.root)


@dataclass(frozen=True)
class DemoSpec:
    """What the offline demo serves; its hash decides whether a cached demo is reused."""

    builder_version: int = BUILDER_VERSION
    size: str = "tiny"
    seed: int = 0
    adapters: tuple[tuple[str, int], ...] = (("demo-a", 1), ("demo-b", 2))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def ensure_demo(root: Path | str, spec: DemoSpec = DemoSpec()) -> DemoPaths:
    """Build the demo checkpoint and its adapters under ``root`` once; later calls reuse them.

    Each part is built in a temporary directory and renamed into place, so an interrupted build is never mistaken
    for a finished one. Builds hold a lock on ``root/.build.lock``: a second process waits and then reuses the
    first one's work, and whoever holds the lock removes the ``.build-*`` directories that a killed build (SIGKILL,
    power loss) left behind.
    """
    paths = DemoPaths(Path(root))
    if _demo_is_built(paths, spec):
        return paths
    paths.root.mkdir(parents=True, exist_ok=True)
    with _build_lock(paths.root):
        for stale in paths.root.glob(".build-*"):
            log.info("removing %s, left by an interrupted demo build", stale)
            shutil.rmtree(stale, ignore_errors=True)
        if not _demo_is_built(paths, spec):  # another process may have built it while we waited
            _build_demo(paths, spec)
    return paths


def _demo_is_built(paths: DemoPaths, spec: DemoSpec) -> bool:
    from adapters.local import LocalDirectoryStore

    stamp = paths.root / "demo.json"
    if not stamp.exists() or json.loads(stamp.read_text()).get("fingerprint") != spec.fingerprint():
        return False
    store = LocalDirectoryStore(paths.store_dir)
    return paths.model_dir.is_dir() and all(store.exists(name) for name, _ in spec.adapters)


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on ``root/.build.lock`` (released by the kernel if the holder dies)."""
    with (root / ".build.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_demo(paths: DemoPaths, spec: DemoSpec) -> None:
    from adapters.local import LocalDirectoryStore

    log.info("building the offline demo model and adapters in %s (random weights, meaningless output)", paths.root)
    stamp = paths.root / "demo.json"
    with tempfile.TemporaryDirectory(dir=paths.root, prefix=".build-") as tmp:
        tmp_model = Path(tmp) / "model"
        build_vl_checkpoint(tmp_model, spec.size, seed=spec.seed)
        built = []
        base = load_for_building(tmp_model)
        for name, seed in spec.adapters:
            built.append((name, build_lora_adapter(tmp_model, Path(tmp) / name, seed=seed, model=base)))
        if paths.model_dir.exists():
            shutil.rmtree(paths.model_dir)
        tmp_model.rename(paths.model_dir)
        store = LocalDirectoryStore(paths.store_dir)
        for name, src in built:
            store.publish(name, src, replace=True)
    stamp.write_text(json.dumps({"fingerprint": spec.fingerprint(), "spec": asdict(spec)}, indent=2))
