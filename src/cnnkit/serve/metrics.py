"""The service's Prometheus metrics: requests, latency, batch sizes and times, queues, connections."""

from __future__ import annotations


class Metrics:
    """Prometheus metrics in a registry of this app's own (several apps in one process do not collide)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("cnnkit_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("cnnkit_request_seconds", "Time to answer a request", ["route"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch = Histogram("cnnkit_batch_images", "Images per forward pass", ["model", "kind"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_seconds = Histogram("cnnkit_batch_seconds", "Time of one forward pass", ["model", "kind"],
                                       registry=self.registry)
        self.queue = Gauge("cnnkit_queue_images", "Images waiting for a batch", ["model"], registry=self.registry)
        self.connections = Gauge("cnnkit_connections", "Open HTTP connections", registry=self.registry)
        self.closed_early = Counter("cnnkit_connections_closed_early", "Connections the server closed on its own: "
                                    "header_timeout (a request's headers late, 408), idle_timeout (no request "
                                    "begun), write_timeout (a client not reading its answer), evicted (the one "
                                    "waiting longest for headers, at the connection limit), refused (503 at the "
                                    "limit, every connection busy)", ["reason"], registry=self.registry)

    def text(self) -> bytes:
        """The metrics in Prometheus' text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
