"""Bounded admission: how many generates the worker holds at once, and the one count of what runs and what waits."""

from __future__ import annotations

from collections.abc import Callable

from wire.errors import CapacityError

from .metrics import Metrics


class Admission:
    """Generates in flight (waiting for or holding a batch row) are at most ``max_running`` + ``max_queue``; beyond
    that a new one is told ``busy`` at once. Which of them run is the engine's business: ``running`` is the engine's
    batch (never more than what was admitted), ``queued`` the rest. ``max_running`` is read from the engine each time:
    a Ray front's capacity follows its replicas as they come, go and autoscale."""

    def __init__(self, max_running: Callable[[], int], max_queue: int, metrics: Metrics,
                 engine_running: Callable[[], int] = lambda: 0) -> None:
        self._max_running = max_running
        self.max_queue = max_queue
        self.metrics = metrics
        self.admitted = 0
        self._engine_running = engine_running

    @property
    def max_running(self) -> int:
        return self._max_running()

    @property
    def running(self) -> int:
        return min(self._engine_running(), self.admitted)

    @property
    def queued(self) -> int:
        return self.admitted - self.running

    def admit(self) -> None:
        if self.admitted >= self.max_running + self.max_queue:
            raise CapacityError(
                f"the worker is at capacity ({self.running} running, {self.queued} queued, "
                f"MAX_BATCH_ROWS={self.max_running}, MAX_QUEUE_SIZE={self.max_queue}); retry later"
            )
        self.admitted += 1
        self.metrics.queue_depth.set(self.queued)

    def release(self) -> None:
        self.admitted -= 1
        self.metrics.queue_depth.set(self.queued)
