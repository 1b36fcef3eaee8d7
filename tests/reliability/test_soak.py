"""A short soak in CI: 8 clients with mixed adapters; nothing lost, replies valid, RSS flat after warm-up."""

from __future__ import annotations

import asyncio
import os

from inference_worker.embedded import EmbeddedWorker
from tools.soak import format_report, soak

from ..conftest import worker_settings

DURATION = float(os.environ.get("SOAK_SECONDS", "20"))


def test_short_soak_loses_nothing(demo, adapter_root, output_dir):
    """8 clients for SOAK_SECONDS (default 20): zero lost requests, zero invalid replies, RSS growth ≤ 10%."""
    settings = worker_settings(demo, adapter_root, max_batch_rows=2, max_queue_size=16,
                               max_loaded_adapters=2)
    with EmbeddedWorker(settings) as w:
        report = asyncio.run(soak(w.url, duration_s=DURATION, clients=8, max_tokens=32, rss_every_s=0.5))
        assert w.service.admission.admitted == 0
    (output_dir / "soak.txt").write_text(format_report(report) + "\n")
    assert report.client_failures == []
    assert report.sent > 50 and report.lost == 0 and report.invalid_replies == 0
    assert report.done > 0 and set(report.errors) <= {"busy"}
    assert report.finish_reasons.get("cancelled", 0) > 0, "the soak cancels some requests too"
    growth = report.rss_growth_after_warmup()
    assert growth is not None and growth <= 1.10, format_report(report)
