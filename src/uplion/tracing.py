"""Traces: the one module that talks to OpenTelemetry (an import-linter contract keeps it so).

A request's trace crosses the queue inside its task: the gateway opens the request's span
(continuing the client's W3C ``traceparent``, or a new trace), with its admission and its
publication as children, and the task carries the request span's ``traceparent``. The worker
that takes the task records the time the task spent on the queue as a span from its
publication to now, child of the request span, and answers it under a worker span, child of
the queue span, whose child is the engine's span::

    uplion.request (gateway) ─┬─ uplion.admission
                              ├─ uplion.publish
                              └─ uplion.queue (worker) ── uplion.worker ── uplion.engine

Off by default: ``configure`` turns tracing on only when the standard ``OTEL_*`` environment
names an exporter (``OTEL_TRACES_EXPORTER=otlp|console``) or an OTLP endpoint, and the SDK is
imported only then. Off, nothing is recorded: a request's incoming ``traceparent`` still travels
in its task unchanged (so a worker that traces continues the client's trace) and the request log
names its trace id, at the cost of one header check.

A process has one tracer, like it has one logging configuration: ``configure`` at start-up
(the CLI), ``install`` in tests.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "HEADER", "Attributes", "RequestTrace", "Span", "configure", "delivered", "enabled",
    "install", "span", "start_request", "valid_traceparent",
]

HEADER = "traceparent"
Attributes = Mapping[str, str | bool | int | float]
Span = trace.Span
"""What ``span`` yields: ``set_attribute(key, value)`` records a finding on it."""

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_EXPORTERS = ("otlp", "console", "none")
_PROTOCOLS = ("http/protobuf", "grpc")


class _Tracing:
    """The process's tracer: ``None`` while tracing is off."""

    tracer: trace.Tracer | None = None


_active = _Tracing()


def enabled() -> bool:
    return _active.tracer is not None


def install(provider: trace.TracerProvider | None) -> None:
    """Trace to ``provider`` from now on (``None``: stop tracing). Tests install an SDK
    provider with an in-memory exporter; ``configure`` installs the environment's."""
    _active.tracer = None if provider is None else provider.get_tracer("uplion")


def configure(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Trace as the ``OTEL_*`` environment says; ``service`` names this process unless
    ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``) does. Whether
    tracing is on; ``ValueError`` naming the variable when one holds a value uplion cannot use."""
    env = os.environ if environ is None else environ
    exporters = _exporter_names(env)
    if not exporters:
        install(None)
        return False
    install(_provider(service, [_exporter(name, env) for name in exporters]))
    return True


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for; none (tracing off) unless it names one."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not named:
        endpoint = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        return ["otlp"] if endpoint else []
    names = [name.strip().lower() for name in named.split(",") if name.strip()]
    for name in names:
        if name not in _EXPORTERS:
            raise ValueError(f"OTEL_TRACES_EXPORTER={named}: uplion exports traces with "
                             f"{', '.join(_EXPORTERS)}, not {name!r}")
    return [] if "none" in names else names


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    """An exporter; the OTLP ones read their endpoint, headers, TLS files, compression and
    timeout from the ``OTEL_EXPORTER_OTLP_*`` environment themselves."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_exporter

        return grpc_exporter.OTLPSpanExporter()
    if protocol != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: uplion exports OTLP over "
                         f"{' or '.join(_PROTOCOLS)}")
    from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_exporter

    return http_exporter.OTLPSpanExporter()


def _provider(service: str, exporters: list[SpanExporter]) -> TracerProvider:
    """A provider exporting in batches (``OTEL_BSP_*``), sampling as ``OTEL_TRACES_SAMPLER``
    says (default: as the parent decided, else always); flushed at exit."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def valid_traceparent(value: str | None) -> str | None:
    """``value`` if it is a W3C ``traceparent`` (version 00, ids not zero), else ``None``."""
    if value is None:
        return None
    found = _TRACEPARENT.fullmatch(value)
    if found is None or not found[1].strip("0") or not found[2].strip("0"):
        return None
    return value


class RequestTrace:
    """The gateway's span of one request, from before its admission to its end, and the
    ``traceparent`` its task carries. Ends once; without a tracer it records nothing and
    carries on the client's ``traceparent``, if any."""

    __slots__ = ("_span", "trace_id", "traceparent")

    def __init__(self, request_span: trace.Span | None, traceparent: str | None) -> None:
        self._span = request_span
        self.traceparent = traceparent
        """What the task carries to its worker."""
        self.trace_id = traceparent[3:35] if traceparent else None
        """The trace's id (32 hex digits), for the request log."""

    @contextmanager
    def child(
        self, name: str, attributes: Attributes | None = None, *, producer: bool = False
    ) -> Iterator[None]:
        """A span of part of the request's handling (its admission, its publication)."""
        tracer = _active.tracer
        if tracer is None or self._span is None:
            yield
            return
        kind = trace.SpanKind.PRODUCER if producer else trace.SpanKind.INTERNAL
        with tracer.start_as_current_span(name, trace.set_span_in_context(self._span),
                                          kind, attributes):
            yield

    def end(self, status: int, attributes: Attributes) -> None:
        """End the request's span with the HTTP status it was answered (and billed) with; a
        status of 500 or more marks it failed."""
        request_span, self._span = self._span, None
        if request_span is None:
            return
        request_span.set_attributes(attributes)
        request_span.set_attribute("http.response.status_code", status)
        if status >= 500:
            request_span.set_status(trace.StatusCode.ERROR, f"answered {status}")
        request_span.end()


def start_request(incoming: str | None, attributes: Attributes) -> RequestTrace:
    """Open the span of a request whose client sent the ``traceparent`` ``incoming`` (checked
    here: an invalid one is ignored)."""
    parent = valid_traceparent(incoming)
    tracer = _active.tracer
    if tracer is None:
        return RequestTrace(None, parent)
    context = _PROPAGATOR.extract({HEADER: parent}) if parent else otel_context.Context()
    request_span = tracer.start_span("uplion.request", context, trace.SpanKind.SERVER,
                                     attributes)
    return RequestTrace(request_span, _traceparent_of(request_span))


@contextmanager
def delivered(
    traceparent: str | None, published_at: float, attributes: Attributes
) -> Iterator[None]:
    """A worker answers a task: record its time on the queue (``published_at``, Unix seconds,
    to now; child of ``traceparent``, the span that published it, or the root of a new trace),
    and make the worker's span of it current until the block ends."""
    tracer = _active.tracer
    if tracer is None:
        yield
        return
    parent = valid_traceparent(traceparent)
    context = _PROPAGATOR.extract({HEADER: parent}) if parent else otel_context.Context()
    now = time.time_ns()
    start = min(now, int(published_at * 1e9)) if published_at > 0 else now  # 0: not said
    queued = tracer.start_span("uplion.queue", context, trace.SpanKind.INTERNAL, attributes,
                               start_time=start)
    queued.set_attribute("uplion.queue.wait_s", (now - start) / 1e9)
    queued.end(end_time=now)
    with tracer.start_as_current_span("uplion.worker", trace.set_span_in_context(queued),
                                      trace.SpanKind.CONSUMER, attributes):
        yield


@contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[Span]:
    """A span of work inside the current one (the engine's answer in a worker); an exception
    that leaves the block is recorded on it and marks it failed."""
    tracer = _active.tracer
    if tracer is None:
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def _traceparent_of(of: trace.Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(of))
    return carrier.get(HEADER)
