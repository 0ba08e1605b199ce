"""``uplion.tracing``: off unless the ``OTEL_*`` environment names an exporter; on, a process
exports its spans over OTLP (HTTP or gRPC) to the collector the environment names, flushed when
it exits; tasks carry their ``traceparent`` and decode whether or not they have one."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.ports import free_port
from tests.threaded_server import ThreadedServer
from uplion import protocol, tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
SRC = str(Path(__file__).parent.parent / "src")

# A worker's spans of one task, in a process of its own that exits when done.
WORKER = """
import sys, time
from uplion import tracing
assert tracing.configure("uplion-worker")
with tracing.delivered(sys.argv[1], time.time() - 0.25, {"uplion.task_id": "t1"}):
    with tracing.span("uplion.engine", {"uplion.engine": "Echo"}):
        pass
"""

ExportRequest = trace_service_pb2.ExportTraceServiceRequest


@pytest.mark.parametrize("env", [
    {},
    {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
    {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    {"OTEL_SERVICE_NAME": "gateway-eu"},
])
def test_tracing_is_off_unless_the_environment_names_an_exporter(env: dict[str, str]) -> None:
    assert tracing.configure("uplion", env) is False
    assert not tracing.enabled()


@pytest.mark.parametrize(("env", "named"), [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER=jaeger"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "OTEL_EXPORTER_OTLP_PROTOCOL=http/json"),
])
def test_a_value_uplion_cannot_use_is_an_error_naming_it(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        tracing.configure("uplion", env)
    assert not tracing.enabled()


def test_off_a_request_carries_its_clients_traceparent_and_records_nothing() -> None:
    tracing.install(None)
    carried = tracing.start_request(TRACEPARENT, {"uplion.model": "m"})
    assert (carried.traceparent, carried.trace_id) == (TRACEPARENT, TRACE)
    with carried.child("uplion.admission"):
        pass
    carried.end(200, {})
    assert tracing.start_request(None, {}).traceparent is None


@pytest.mark.parametrize("value", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    f"00-{TRACE}-0000000000000000-01",  # zero span id
    f"01-{TRACE}-00f067aa0ba902b7-01",  # unknown version
    f"00-{TRACE.upper()}-00f067aa0ba902b7-01",
    f"00-{TRACE}-00f067aa0ba902b7-01-extra",
    "",
])
def test_invalid_traceparents_are_ignored(value: str) -> None:
    assert tracing.valid_traceparent(value) is None
    assert tracing.start_request(value, {}).trace_id is None


def test_tasks_decode_with_or_without_a_traceparent() -> None:
    task = protocol.Task(id="t", model="m", version="1", protocol=protocol.Protocol.OPENAI_CHAT,
                         payload={}, stream=False, deadline=1.0, reply_to="r",
                         traceparent=TRACEPARENT)
    assert protocol.decode_task(protocol.encode(task)) == task
    old = msgspec.json.decode(protocol.encode(task))
    del old["traceparent"]  # a task published by a gateway of the previous release
    assert protocol.decode_task(msgspec.json.encode(old)).traceparent is None

    class OldTask(msgspec.Struct):  # a worker of the previous release reads a new task
        id: str
        model: str
        reply_to: str

    assert msgspec.json.decode(protocol.encode(task), type=OldTask).id == "t"


class _HttpCollector(ThreadedServer):
    """An OTLP/HTTP receiver: ``requests`` holds what it was sent."""

    def __init__(self) -> None:
        self.requests: list[ExportRequest] = []
        self.received = threading.Event()
        super().__init__(Starlette(routes=[Route("/v1/traces", self._export,
                                                 methods=["POST"])]), "otlp-http")

    async def _export(self, request: Request) -> Response:
        self.requests.append(ExportRequest.FromString(await request.body()))
        self.received.set()
        return Response(trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                        media_type="application/x-protobuf")


class _GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver on a free port."""

    def __init__(self) -> None:
        self.requests: list[ExportRequest] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    def Export(  # the gRPC method's name
        self, request: ExportRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def __enter__(self) -> _GrpcCollector:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)


_Collector = _HttpCollector | _GrpcCollector


@pytest.fixture(params=["http/protobuf", "grpc"])
def collector(request: pytest.FixtureRequest) -> Iterator[tuple[str, _Collector]]:
    receiver: _Collector = (
        _HttpCollector() if request.param == "http/protobuf" else _GrpcCollector())
    with receiver:
        yield request.param, receiver


def test_a_process_exports_its_spans_to_the_otlp_endpoint_when_it_exits(
    collector: tuple[str, _Collector],
) -> None:
    otlp_protocol, receiver = collector
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(PYTHONPATH=SRC, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
               OTEL_EXPORTER_OTLP_PROTOCOL=otlp_protocol,
               OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test")
    done = subprocess.run([sys.executable, "-c", WORKER, TRACEPARENT], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert receiver.requests, f"nothing exported\n{done.stderr}"
    [resource_spans] = [rs for export in receiver.requests for rs in export.resource_spans]
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert resource["service.name"] == "uplion-worker"
    assert resource["deployment.environment"] == "test"
    exported = {span.name: span for scope in resource_spans.scope_spans for span in scope.spans}
    assert set(exported) == {"uplion.queue", "uplion.worker", "uplion.engine"}
    assert {span.trace_id.hex() for span in exported.values()} == {TRACE}
    assert exported["uplion.queue"].parent_span_id.hex() == "00f067aa0ba902b7"
    assert exported["uplion.worker"].parent_span_id == exported["uplion.queue"].span_id
    assert exported["uplion.engine"].parent_span_id == exported["uplion.worker"].span_id
    queued = exported["uplion.queue"]
    assert queued.end_time_unix_nano - queued.start_time_unix_nano >= 250_000_000
