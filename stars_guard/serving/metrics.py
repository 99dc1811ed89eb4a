"""The service's own Prometheus metrics, beside the STARS ones of `PrometheusExporter`.

`stars_server_in_flight` and `stars_server_queued` read the admission state when scraped;
`stars_server_rejected_total{reason}` counts requests turned away (429, 503) or abandoned by
their client. Names are stable (docs/operations.md); no label holds request text.
"""

from __future__ import annotations

from stars_guard.serving.service import ChatService
from stars_guard.telemetry import PrometheusExporter

REJECTION_REASONS = ("queue_full", "queue_timeout", "cancelled")


def register_server_metrics(exporter: PrometheusExporter, service: ChatService) -> None:
    """Queue gauges and the counter of turned-away requests, on the exporter's registry."""
    import prometheus_client

    on = {"registry": exporter.registry}
    prometheus_client.Gauge("stars_server_in_flight", "Chat requests whose engine is running.", **on).set_function(
        lambda: service.in_flight
    )
    prometheus_client.Gauge("stars_server_queued", "Chat requests waiting for a worker.", **on).set_function(
        lambda: service.queued
    )
    rejected = prometheus_client.Counter(
        "stars_server_rejected_total",
        "Chat requests turned away: queue_full (429), queue_timeout (503), cancelled (client left).",
        ["reason"],
        **on,
    )
    for reason in REJECTION_REASONS:
        rejected.labels(reason=reason)

    def on_count(name: str) -> None:
        if name in REJECTION_REASONS:
            rejected.labels(reason=name).inc()

    service.on_count = on_count
