"""Deployment files: compose validates without an engine, every referenced file exists, README stays in sync."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inference_worker.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
VLLM = ROOT / "docker-compose.vllm.yml"
DOCKER_COMPOSE = Path(sys.executable).parent / "docker-compose"


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DOCKER_COMPOSE), *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COMPOSE_PROJECT_NAME": "ci-check"})


@pytest.mark.parametrize("files", [
    ["-f", "docker-compose.yml"],
    ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml"],
    ["-f", "docker-compose.yml", "-f", "docker-compose.vllm.yml"],
    ["-f", "docker-compose.yml", "--profile", "tools"],
    ["-f", "docker-compose.yml", "--profile", "ray"],
])
def test_compose_files_validate(files):
    """docker compose config accepts the stack, the GPU override and the tools profile."""
    result = compose(*files, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_the_stack_has_the_four_services_wired():
    """minio (healthcheck, volume), minio-init (creates the bucket), worker (/ready healthcheck, HF volume, memory
    limit, MinIO settings), playground (waits for a healthy worker, points at it)."""
    s = services()
    assert {"minio", "minio-init", "inference-worker", "playground"} <= set(s)
    assert "healthcheck" in s["minio"] and any("minio-data" in v for v in s["minio"]["volumes"])
    assert "mc mb" in " ".join(s["minio-init"]["command"])
    worker = s["inference-worker"]
    assert worker["healthcheck"]["test"][-1] == "inference_worker.healthcheck"
    assert any(v.startswith("hf-cache:") for v in worker["volumes"])
    assert worker["deploy"]["resources"]["limits"]["memory"]
    assert worker["environment"]["MINIO_ENDPOINT"] == "minio:9000"
    assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    playground = s["playground"]
    assert playground["depends_on"]["inference-worker"]["condition"] == "service_healthy"
    assert playground["environment"]["INFERENCE_WS_URL"] == "ws://inference-worker:8765"
    assert f"playground-history:{playground['environment']['PLAYGROUND_HISTORY_DIR']}" in " ".join(
        v.split("   ")[0] for v in playground["volumes"])  # the history is a named volume
    gpu = yaml.safe_load(GPU.read_text())["services"]["inference-worker"]
    assert gpu["environment"]["DEVICE"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_vllm_override_runs_the_worker_on_vllm_on_a_gpu():
    """docker-compose.vllm.yml: the worker from the vLLM image with INFERENCE_ENGINE=vllm on CUDA, an NVIDIA GPU
    reserved, shared memory for vLLM's processes; its variables are real settings."""
    worker = yaml.safe_load(VLLM.read_text())["services"]["inference-worker"]
    assert worker["build"]["dockerfile"] == "docker/worker-vllm.Dockerfile"
    assert worker["environment"]["INFERENCE_ENGINE"] == "vllm" and worker["environment"]["DEVICE"] == "cuda"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert worker["ipc"] == "host"
    known = {Settings.env_name(f) for f in Settings.model_fields}
    assert set(worker["environment"]) <= known, set(worker["environment"]) - known
    dockerfile = (ROOT / worker["build"]["dockerfile"]).read_text()
    assert "requirements/vllm.txt" in dockerfile and "pip install --no-deps ." in dockerfile


def test_every_referenced_file_exists():
    """Dockerfiles, their COPY sources and bind-mount sources exist (compose config does not check these)."""
    vllm = yaml.safe_load(VLLM.read_text())["services"]["inference-worker"]
    for name, svc in [*services().items(), ("inference-worker (vllm)", vllm)]:
        build = svc.get("build")
        if build:
            dockerfile = ROOT / build["context"] / build["dockerfile"]
            assert dockerfile.is_file(), name
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY ") and "--from" not in line:
                    for src in line.split()[1:-1]:
                        assert (ROOT / build["context"] / src).exists(), f"{dockerfile.name}: {src}"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("requirements", "inference_worker", "adapters", "playground"):
        assert needed not in ignored


def test_worker_settings_in_compose_are_real_settings():
    """Every variable compose gives the worker is one the worker reads."""
    known = {Settings.env_name(f) for f in Settings.model_fields}
    for name in ("inference-worker", "adapters"):
        env = services()[name]["environment"]
        assert set(env) <= known, set(env) - known


def test_the_ray_profile_has_a_head_a_worker_node_the_deployment_and_a_front():
    """Profile ray: a head, a worker node that joins it, a one-shot deploy and a front (INFERENCE_ENGINE=ray) on the
    same cluster and application; every variable the deploy and the front get is a setting (or Ray's own)."""
    s = services()
    ray = {name for name, svc in s.items() if "ray" in svc.get("profiles", [])}
    assert ray == {"ray-head", "ray-worker", "ray-deploy", "ray-front"}
    assert "--head" in s["ray-head"]["command"]
    assert "--address=ray-head:6379" in " ".join(s["ray-worker"]["command"])
    assert s["ray-deploy"]["command"][:3] == ["python", "-m", "inference_worker.ray"]
    front, deploy = s["ray-front"], s["ray-deploy"]
    assert front["environment"]["INFERENCE_ENGINE"] == "ray"
    assert front["environment"]["RAY_ADDRESS"] == deploy["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert front["environment"]["RAY_APP_NAME"] == deploy["environment"]["RAY_APP_NAME"]
    assert front["healthcheck"]["test"][-1] == "inference_worker.healthcheck"
    known = {Settings.env_name(f) for f in Settings.model_fields} | {"RAY_AUTH_MODE", "PYTHONPATH"}
    for name in ("ray-deploy", "ray-front"):
        assert set(s[name]["environment"]) <= known, set(s[name]["environment"]) - known
    for name in ray:  # the same auth mode everywhere, or drivers fail with AuthenticationError
        assert s[name]["environment"]["RAY_AUTH_MODE"] == "disabled", name


def test_readme_matches_compose():
    """The docs name every variable compose uses and the same ports; docs/operations.md has the compose commands."""
    readme = "".join(page.read_text() for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    text = COMPOSE.read_text() + GPU.read_text() + VLLM.read_text()
    for var in sorted(set(re.findall(r"\$\{([A-Z_]+)", text))):
        assert f"`{var}`" in readme, var
    operations = (ROOT / "docs" / "operations.md").read_text()
    for port in ("8765", "8000", "8501", "9000", "9001"):
        assert port in operations, port
    assert "docker compose -f docker-compose.yml -f docker-compose.gpu.yml up" in operations
    assert "docker compose -f docker-compose.yml -f docker-compose.vllm.yml up" in operations
    assert "docker compose --profile tools run --rm adapters push" in operations


def test_container_healthcheck_reports_readiness(worker):
    """python -m inference_worker.healthcheck exits 0 for a ready worker and 1 when nothing listens."""
    run = lambda port: subprocess.run([sys.executable, "-m", "inference_worker.healthcheck"], cwd=ROOT,  # noqa: E731
                                      env={**os.environ, "INFERENCE_PORT": str(port)}, capture_output=True)
    assert run(worker.port).returncode == 0
    from tools.s3server import free_ports

    assert run(free_ports(1)[0]).returncode == 1
