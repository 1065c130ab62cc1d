"""An OTLP/gRPC trace receiver on loopback: what the sidecar and Envoy export spans to in the tests
(tests/ops/) and the benches (bench/run.py). No OpenTelemetry Collector is packaged where these run;
this is the collector's receiving end and nothing more: it keeps every span it is sent (up to
``max_spans``) and answers OK.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    kind: int
    attributes: dict[str, Any] = field(default_factory=dict)


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self._receiver.take(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """``grpc.server`` on ``127.0.0.1:port`` (0: any free port) serving ``TraceService/Export``."""

    def __init__(self, port: int = 0, *, max_spans: int = 100_000) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Service(self), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._max = max_spans
        self._lock = threading.Lock()
        self.spans: list[ReceivedSpan] = []
        self.received = 0  # spans sent to it, kept or not

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def take(self, request: Any) -> None:
        found = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(ReceivedSpan(
                        service, span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                        span.kind, {a.key: _value(a.value) for a in span.attributes}))
        with self._lock:
            self.received += len(found)
            self.spans.extend(found[: max(0, self._max - len(self.spans))])

    def of(self, service: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.service == service]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "int_value", "bool_value", "double_value") else str(value)
