"""The server's Prometheus metrics, through prometheus-client.

Each server owns a registry: its request metrics, the standard process,
platform and garbage-collector metrics, and what is read at scrape time
(model readiness, GPU memory and utilization).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ptserve.repository import Repository, State

if TYPE_CHECKING:
    from ptserve.runtime import GpuStats

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Keep the exposition to the series named in server/README.md (no *_created twins).
prometheus_client.disable_created_metrics()


class _ScrapeTime(Collector):
    """Model readiness and GPU figures, read when /metrics is scraped."""

    def __init__(self, repository: Repository, gpus: Callable[[], list[GpuStats]]) -> None:
        self._repository = repository
        self._gpus = gpus

    def collect(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily(
            "ptserve_model_ready", "1 if the model version is loaded and ready, else 0.",
            labels=["model", "version"],
        )
        for version in self._repository.versions():
            value = 1 if version.state is State.READY else 0
            ready.add_metric([version.model, str(version.version)], value)
        yield ready
        yield from _gpu_families(self._gpus())


def _gpu_families(stats: list[GpuStats]) -> Iterator[Metric]:
    if not stats:
        return
    memory = {
        "allocated_bytes": "GPU memory held by this server's tensors.",
        "reserved_bytes": "GPU memory reserved by this server's caching allocator.",
        "used_bytes": "GPU memory in use on the device, by every process.",
        "total_bytes": "GPU memory of the device.",
    }
    for field, help_text in memory.items():
        family = GaugeMetricFamily(f"ptserve_gpu_memory_{field}", help_text, labels=["device"])
        for gpu in stats:
            family.add_metric([str(gpu.device)], getattr(gpu, field))
        yield family
    busy = [gpu for gpu in stats if gpu.utilization_percent is not None]
    if busy:
        family = GaugeMetricFamily(
            "ptserve_gpu_utilization_percent",
            "Percent of the last sample period a kernel ran on the GPU (NVML).",
            labels=["device"],
        )
        for gpu in busy:
            family.add_metric([str(gpu.device)], gpu.utilization_percent)
        yield family


class ServerMetrics:
    """The metric families of one server and the registry they are exposed from."""

    def __init__(self, repository: Repository, gpus: Callable[[], list[GpuStats]]) -> None:
        self.registry = CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        self.requests = Counter(
            "ptserve_requests",
            "HTTP requests by model (empty for non-model endpoints) and status code.",
            ["model", "code"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "ptserve_request_duration_seconds", "HTTP request latency in seconds, by model.",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "ptserve_inference_duration_seconds",
            "Model forward-pass latency in seconds, by model.",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "ptserve_batch_size", "Batch sizes run by the dynamic batcher, by model.",
            ["model"], buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.inflight = Gauge(
            "ptserve_inflight_requests", "Inference requests currently in flight.",
            registry=self.registry,
        )
        self.registry.register(_ScrapeTime(repository, gpus))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (OpenMetrics when ``accept`` asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
