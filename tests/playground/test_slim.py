"""The playground ships in a slim image: neither it nor anything it imports may load torch or transformers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from .conftest import APP, ROOT, free_port

HEAVY = ("torch", "torchvision", "transformers", "peft", "accelerate", "safetensors", "qwen_vl_utils")

PROBE = """
import json, os, sys
for name in json.loads(sys.argv[1]):
    __import__(name)
imported = set(sys.modules)
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[2], default_timeout=60)
at.run()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[3]))
print(json.dumps({"heavy": heavy, "errors": [e.value for e in at.error], "exceptions": [e.value for e in at.exception],
                  "worker_modules": sorted(m for m in sys.modules if m.startswith("inference_worker"))}))
"""


def playground_imports() -> list[str]:
    """Every module the playground's files import (absolute names; relative imports resolved to playground.*)."""
    names: set[str] = set()
    for path in sorted((ROOT / "playground").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = ".".join(parts[:-1])  # the package a relative import starts from
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if not node.level:
                    names.add(str(node.module))
                    continue
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
    return sorted(names - {"__future__"})


def test_playground_and_its_app_never_import_torch(history_dir):
    """Importing every playground dependency and running the app loads no torch, transformers or PEFT."""
    modules = playground_imports()
    expected = {"playground.client", "playground.runs", "wire.protocol", "streamlit",
                "websockets.asyncio.client"}
    assert expected <= set(modules)
    env_url = f"ws://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules), str(APP), json.dumps(HEAVY)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"INFERENCE_WS_URL": env_url, "PATH": "/usr/bin", "PLAYGROUND_HISTORY_DIR": str(history_dir)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["exceptions"] == []
    assert report["errors"] and report["errors"][0].startswith("The worker is down or unreachable")  # the app ran
    assert report["worker_modules"] == []  # its image holds the shared wire package, nothing of the worker
