"""Counters, gauges and histograms rendered in the Prometheus text format (0.0.4)."""

from __future__ import annotations

import bisect
import math
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

Labels = tuple[str, ...]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (integers without a fraction)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def escape_label(value: str) -> str:
    """Escape a label value: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metric:
    """A named metric family with fixed label names."""

    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Labels = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = labelnames
        self._lock = threading.Lock()

    def _labels(self, values: Labels, extra: str = "") -> str:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        pairs = [f'{k}="{escape_label(v)}"' for k, v in zip(self.labelnames, values)]
        if extra:
            pairs.append(extra)
        return "{" + ",".join(pairs) + "}" if pairs else ""

    def samples(self) -> list[str]:
        """The family's sample lines."""
        raise NotImplementedError

    def render(self) -> str:
        """HELP, TYPE and sample lines."""
        head = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        return "\n".join(head + self.samples()) + "\n"


class Counter(Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Labels = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self._labels(labels)
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{self._labels(k)} {format_value(v)}" for k, v in items]


class Gauge(Metric):
    """A value per label set that can go up and down."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labelnames: Labels = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[Labels, float] = {}

    def set(self, value: float, labels: Labels = ()) -> None:
        self._labels(labels)
        with self._lock:
            self._values[labels] = value

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{self._labels(k)} {format_value(v)}" for k, v in items]


class Histogram(Metric):
    """Observations counted into cumulative ``le`` buckets, with sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Labels = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = {}

    def observe(self, value: float, labels: Labels = ()) -> None:
        self._labels(labels)
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts = self._counts.setdefault(labels, [0] * (len(self.buckets) + 1))
            counts[index] += 1
            self._sums[labels] = self._sums.get(labels, 0.0) + value

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(c), self._sums[k]) for k, c in self._counts.items())
        lines = []
        for labels, counts, total in items:
            cumulative = 0
            for bound, count in zip(self.buckets + (math.inf,), counts):
                cumulative += count
                le = f'le="{format_value(bound)}"'
                lines.append(f"{self.name}_bucket{self._labels(labels, le)} {cumulative}")
            lines.append(f"{self.name}_sum{self._labels(labels)} {format_value(total)}")
            lines.append(f"{self.name}_count{self._labels(labels)} {cumulative}")
        return lines


class ServerMetrics:
    """The server's metric families, rendered together for ``GET /metrics``."""

    def __init__(self) -> None:
        self.requests = Counter(
            "ptserve_requests_total",
            "HTTP requests by model (empty for non-model endpoints) and status code.",
            ("model", "code"),
        )
        self.request_seconds = Histogram(
            "ptserve_request_duration_seconds",
            "HTTP request latency in seconds, by model.",
            ("model",),
        )
        self.inference_seconds = Histogram(
            "ptserve_inference_duration_seconds",
            "Model forward-pass latency in seconds, by model.",
            ("model",),
        )
        self.inflight = Gauge(
            "ptserve_inflight_requests", "Inference requests currently in flight."
        )
        self.model_ready = Gauge(
            "ptserve_model_ready", "1 if the model version is loaded and ready, else 0.",
            ("model", "version"),
        )
        self.gpu_memory = Gauge(
            "ptserve_gpu_memory_allocated_bytes",
            "GPU memory allocated by tensors, by device index.",
            ("device",),
        )
        self.inflight.set(0)

    def render(self) -> str:
        """All families in the text exposition format."""
        families = (
            self.requests, self.request_seconds, self.inference_seconds,
            self.inflight, self.model_ready, self.gpu_memory,
        )
        return "".join(family.render() for family in families)
