"""What a front and the replicas send each other (pickled by Ray). No Ray, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engines.base import AdapterOrigin, Capabilities, EngineRequest, ModelInfo


@dataclass(frozen=True)
class ReplicaJob:
    """One request for a replica: the engine request with no adapter name (names are each process's own) and the
    adapter's origin, whose digest is the request's multiplexed model id. No deadline: the front that admitted the
    request owns it, and cancels the request's response when it passes."""

    request: EngineRequest
    adapter: AdapterOrigin | None


@dataclass(frozen=True)
class ReplicaDescription:
    info: ModelInfo
    capabilities: Capabilities
    max_running: int  # batch rows of one replica


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    ref: str
    digest: str
    running: int


@dataclass(frozen=True)
class ReplicaReport:
    """What one replica holds and does, sent to the board every RAY_STATUS_PERIOD_S and after adapter changes."""

    replica: str  # Ray Serve's replica id
    actor: str  # its actor name (namespace "serve"), e.g. for ray.kill
    node: str
    pid: int
    running: int
    max_running: int
    kv_cache_bytes: int
    kv_cache_max_bytes: int
    adapters: tuple[LoadedAdapter, ...]
    served: dict[str, int] = field(default_factory=dict)  # requests started, by adapter digest ("" for the base)
    sequence: int = 0  # increases with every report of this replica

    def as_dict(self) -> dict[str, Any]:
        return {
            "replica": self.replica, "actor": self.actor, "node": self.node, "pid": self.pid,
            "running": self.running, "max_running": self.max_running,
            "kv_cache_bytes": self.kv_cache_bytes,
            "adapters": [{"name": a.name, "ref": a.ref, "digest": a.digest, "running": a.running}
                         for a in self.adapters],
            "served": dict(self.served),
        }
