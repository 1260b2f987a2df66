"""GET /metrics in Prometheus' text format: requests, token timings, tokens, and the engine's own figures.

Each app has its own registry (tests build many apps in one process). Request counts come from a
middleware; token timings and usage of each finished request are recorded by the chat route; everything
the engine and the image loader count is read at scrape time, so nothing is counted twice.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.replies import Usage
from tools import calls as tool_calls

# Engine figures that only grow are exposed as counters, the rest (queue depth, batch size, bytes) as gauges.
_ENGINE_COUNTERS = re.compile(r"(compiled|reused|lookups|hits|misses|tokens|steps|_ms)$")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, state: State) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lodestar_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram("lodestar_request_duration_seconds",
                                         "Time to the end of the response, by route", ["route"],
                                         buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("lodestar_time_to_first_token_seconds",
                              "From the request's admission to its first generated token",
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("lodestar_inter_token_latency_seconds", "Gaps between a request's token events",
                             buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5),
                             registry=self.registry)
        self.queue_wait = Histogram("lodestar_queue_wait_seconds",
                                    "Time a request waited for a batch slot (embedded engine)",
                                    buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("lodestar_tokens", "Tokens in and out of finished requests", ["kind"],
                              registry=self.registry)
        self.registry.register(_StateCollector(state))

    def record_request(self, queued_s: float | None, token_gaps: Sequence[float], usage: Usage) -> None:
        """A finished request's timings (its wait for a batch slot, then the time to its first token event
        and the gaps between the others) and its tokens."""
        if queued_s is not None:
            self.queue_wait.observe(queued_s)
        for i, gap in enumerate(token_gaps):
            (self.itl if i else self.ttft).observe(gap)
        tokens = self.tokens
        tokens.labels("prompt").inc(usage.prompt_tokens)
        tokens.labels("completion").inc(usage.completion_tokens)
        tokens.labels("cached").inc(usage.prompt_tokens_details.cached_tokens)
        tokens.labels("reasoning").inc(usage.completion_tokens_details.reasoning_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Figures the served model keeps itself, read when /metrics is scraped."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        served = self.state.get("served")
        loaded = GaugeMetricFamily("lodestar_model_loaded", "1 once the model is loaded and the engine ready")
        loaded.add_metric([], 1.0 if served is not None and served.engine.unavailable() is None else 0.0)
        yield loaded
        heap = self.state.heap
        trims = CounterMetricFamily("lodestar_heap_trims", "malloc_trim calls that gave freed memory back")
        trims.add_metric([], float(heap.trims))
        spent = CounterMetricFamily("lodestar_heap_trim_seconds", "Time spent in malloc_trim")
        spent.add_metric([], heap.seconds)
        yield trims
        yield spent
        checker = self.state.grammar_checker
        checks = CounterMetricFamily("lodestar_schema_checks", "Grammar checks run in a child process (not cached)")
        checks.add_metric([], float(checker.checks))
        refused = CounterMetricFamily("lodestar_schema_checks_stopped",
                                      "Grammar checks stopped at the time budget, the memory cap or a client leaving")
        refused.add_metric([], float(checker.refused))
        yield checks
        yield refused
        mismatches = CounterMetricFamily("lodestar_tool_call_schema_mismatches",
                                         "Generated tool-call arguments that failed their schema despite the grammar")
        mismatches.add_metric([], float(tool_calls.schema_mismatches))
        yield mismatches
        if served is None:
            return
        for name, value in served.engine.stats().items():
            metric = f"lodestar_engine_{name}"
            doc = f"engine figure '{name}' (see docs/observability.md)"
            family = CounterMetricFamily(metric, doc) if _ENGINE_COUNTERS.search(name) else \
                GaugeMetricFamily(metric, doc)
            family.add_metric([], float(value))
            yield family
        if served.images is not None:
            failures = CounterMetricFamily("lodestar_image_failures", "Images that could not be used, by reason",
                                           labels=["reason"])
            for reason, count in sorted(served.images.failures.items()):
                failures.add_metric([reason], float(count))
            yield failures
            for name, value in served.images.stats().items():
                metric = f"lodestar_image_cache_{name}"
                doc = f"decoded-image cache figure '{name}' (see docs/observability.md)"
                family = GaugeMetricFamily(metric, doc) if name == "entries" else CounterMetricFamily(metric, doc)
                family.add_metric([], float(value))
                yield family


def metrics_middleware(app: ASGIApp) -> ASGIApp:
    """Count every routed request by its route template (not its path: session ids would explode labels)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_noting_status)
        finally:
            metrics: Metrics = scope["app"].state.metrics
            route = scope.get("path_template") or "unmatched"
            metrics.requests.labels(route, str(scope.get("method", "")), str(status)).inc()
            metrics.request_seconds.labels(route).observe(time.perf_counter() - started)

    return middleware


@get("/metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(state: State) -> Response[bytes]:
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
