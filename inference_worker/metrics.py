"""The Prometheus instruments of one worker (its own registry, so several servers can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inference_requests", "Generate requests by outcome (stop, length, cancelled, or an error code).",
            ["outcome"], registry=r,
        )
        self.ttft = Histogram(
            "inference_time_to_first_token_seconds", "From admission to the first generated token.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inter_token = Histogram(
            "inference_inter_token_latency_seconds", "Time between consecutive generated tokens.",
            buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.tokens = Counter("inference_generated_tokens", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter("inference_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.queue_depth = Gauge("inference_queue_depth", "Generate requests admitted, not yet in the running batch.",
                                 registry=r)
        self.running = Gauge("inference_running_generations", "Rows of the running batch.", registry=r)
        self.batch_rows = Histogram(
            "inference_batch_rows", "Rows decoded together in one decode step.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), registry=r,
        )
        self.step_seconds = Histogram(
            "inference_step_seconds", "Duration of one forward pass: a request's prefill, or a decode step.",
            ["kind"], buckets=(*_TOKEN_BUCKETS, 5, 10, 30), registry=r,
        )
        self.kv_cache_bytes = Gauge("inference_kv_cache_bytes", "KV cache memory of the running batch.", registry=r)
        self.kv_cache_max_bytes = Gauge("inference_kv_cache_max_bytes", "KV_CACHE_MAX_BYTES.", registry=r)
        self.connections = Gauge("inference_connections", "Open WebSocket connections.", registry=r)
        self.adapter_loads = Counter(
            "inference_adapter_loads", "Adapter loads by outcome (loaded, cached, or an error code).",
            ["outcome"], registry=r,
        )
        self.adapter_load_seconds = Histogram(
            "inference_adapter_load_seconds", "Adapter load latency by stage (resolve, download, verify, inject).",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.adapter_download_bytes = Counter(
            "inference_adapter_download_bytes", "Bytes downloaded from the adapter store.", registry=r
        )
        self.loaded_adapters = Gauge("inference_loaded_adapters", "Adapters loaded in memory.", registry=r)
        self.model_load_seconds = Gauge("inference_model_load_seconds", "Time the base model took to load.",
                                        registry=r)
        self.ready = Gauge("inference_ready", "1 once the model is loaded and connections are accepted.", registry=r)

    def add_cuda_memory(self, device_index: Callable[[], int | None]) -> None:
        """Report CUDA memory on each scrape (only registered when the model runs on a GPU)."""
        self.registry.register(_CudaMemoryCollector(device_index))

    def add_replicas(self, replicas: Callable[[], list[dict[str, Any]]]) -> None:
        """Report the replicas of a remote engine (INFERENCE_ENGINE=ray) and the adapters each holds, on each
        scrape."""
        self.registry.register(_ReplicasCollector(replicas))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CudaMemoryCollector:
    def __init__(self, device_index: Callable[[], int | None]) -> None:
        self.device_index = device_index

    def collect(self) -> Iterable[Metric]:
        import torch

        index = self.device_index()
        if index is None or not torch.cuda.is_available():
            return []
        allocated = GaugeMetricFamily("inference_cuda_memory_allocated_bytes", "CUDA memory allocated by tensors.")
        allocated.add_metric([], torch.cuda.memory_allocated(index))
        reserved = GaugeMetricFamily("inference_cuda_memory_reserved_bytes", "CUDA memory reserved by the allocator.")
        reserved.add_metric([], torch.cuda.memory_reserved(index))
        return [allocated, reserved]


class _ReplicasCollector:
    def __init__(self, replicas: Callable[[], list[dict[str, Any]]]) -> None:
        self.replicas = replicas

    def collect(self) -> Iterable[Metric]:
        replicas = self.replicas()
        count = GaugeMetricFamily("inference_replicas", "Model replicas that reported within 3 status periods.")
        count.add_metric([], len(replicas))
        running = GaugeMetricFamily("inference_replica_running_generations", "Rows of each replica's running batch.",
                                    labels=["replica"])
        adapters = GaugeMetricFamily(
            "inference_replica_adapter_loaded", "1 for each adapter a replica holds (by content digest).",
            labels=["replica", "adapter", "digest"],
        )
        for r in replicas:
            running.add_metric([r["replica"]], r["running"])
            for a in r["adapters"]:
                adapters.add_metric([r["replica"], a["name"], a["digest"][:16]], 1)
        return [count, running, adapters]
