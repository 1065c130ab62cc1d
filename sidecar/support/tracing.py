"""OpenTelemetry traces: one span per sampled decision, joined to the caller's trace, and a child
span per IdP, JWK Set and Redis call made while it waits.

Off (``tracing.enabled = false``, the default) nothing of OpenTelemetry is imported: no
:class:`Tracing` exists, the decision path tests one attribute for ``None``, and :func:`child`
returns a shared object whose ``end`` does nothing.

On, a check joins the trace of a W3C ``traceparent`` (and ``tracestate``) header that a trusted
proxy sent (Envoy and Istio put their ext_authz span there, Traefik its own, nginx passes the
client's): the caller's sampled flag decides. A check without one starts a trace with the
probability ``tracing.sample_ratio``. An unsampled check costs a header read and a string
comparison; nothing is created for it. The span of a cache hit is made after the answer, with the
check's own start and end times, so the hit path does not change shape. A check that waits for the
IdP makes its span first and marks it active (a context variable, copied into the single-flight
task), so that :func:`child` spans of the calls it causes are its children.

Attributes are the outcome, the reason, the cache result, the policy, the status and the
``client_id``: never a token. Spans leave through OTLP/gRPC in batches (the SDK's
``BatchSpanProcessor``, tuned by the standard ``OTEL_BSP_*`` variables), on a thread of the SDK.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

TRACEPARENT_V00 = 55  # "00-" + 32 hex + "-" + 16 hex + "-" + 2 hex
Attributes = Mapping[str, str | int | bool]


class Headers(Protocol):
    """A request's headers as the decision log and the tracer read them (lower-case names)."""

    def get(self, name: str, /) -> str | None: ...


class ChildSpan(Protocol):
    def end(self, result: str, *, error: bool = False) -> None: ...


class _NoSpan:
    __slots__ = ()

    def end(self, result: str, *, error: bool = False) -> None:
        return None


NO_SPAN: ChildSpan = _NoSpan()
_ACTIVE: ContextVar[tuple[Tracing, Span] | None] = ContextVar("sidecar_active_span", default=None)


class Tracing:
    """The tracer and OTLP exporter of one configuration (built only when tracing is on)."""

    def __init__(self, endpoint: str, *, service_name: str = "sidecar", version: str = "",
                 sample_ratio: float = 1.0, ca_file: str | None = None, exporter: SpanExporter | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name,
                                                                  "service.version": version}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter or _otlp(endpoint, ca_file)))
        self._tracer = self._provider.get_tracer("sidecar", version)
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._ratio = sample_ratio

    def parent(self, headers: Headers | None, trusted: bool) -> Context | bool | None:
        """Whether a check is sampled, and under which trace: False (not sampled), the caller's
        context, or None (a new trace). ``trusted``: the peer may speak for the request (its trace
        context counts)."""
        context = None
        if trusted and headers is not None and (parent := headers.get("traceparent")):
            if len(parent) == TRACEPARENT_V00 and parent.endswith("-00"):
                return False  # the caller records nothing of this trace
            carrier = {"traceparent": parent}
            if state := headers.get("tracestate"):
                carrier["tracestate"] = state
            context = self._propagator.extract(carrier)
            found = self._trace.get_current_span(context).get_span_context()
            if not found.is_valid:
                context = None  # malformed: as if there were none
            elif not found.trace_flags.sampled:
                return False
        if context is None and self._ratio < 1.0 and random.random() >= self._ratio:  # noqa: S311 - sampling
            return False
        return context

    def start(self, parent: Context | None, started: float, attributes: Attributes | None = None) -> Span:
        """The span of a sampled check begun at ``started`` (``time.time``) under ``parent``."""
        return self._tracer.start_span("sidecar check", parent, self._trace.SpanKind.SERVER, attributes=attributes,
                                       start_time=int(started * 1e9))

    def finish(self, span: Span, attributes: Attributes | None = None, *, error: bool = False) -> None:
        if attributes:
            span.set_attributes(attributes)
        if error:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()

    @contextmanager
    def active(self, span: Span) -> Iterator[None]:
        """``span`` is the parent of every :func:`child` span opened in this block (and the tasks it starts)."""
        token = _ACTIVE.set((self, span))
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    def child_of(self, parent: Span, name: str, attributes: Attributes) -> ChildSpan:
        span = self._tracer.start_span(name, self._trace.set_span_in_context(parent), self._trace.SpanKind.CLIENT,
                                       attributes=attributes)
        return _Child(self, span)

    def trace_id(self, span: Span) -> str:
        return format(span.get_span_context().trace_id, "032x")

    async def aclose(self) -> None:
        """Export what is queued and stop (in a thread: the SDK's shutdown blocks)."""
        await asyncio.to_thread(self._provider.shutdown)


class _Child:
    __slots__ = ("_span", "_tracing")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self._tracing, self._span = tracing, span

    def end(self, result: str, *, error: bool = False) -> None:
        self._tracing.finish(self._span, {"sidecar.result": result}, error=error)


def child(name: str, **attributes: str) -> ChildSpan:
    """A span for one outgoing call (IdP, JWK Set, Redis) under the decision waiting for it; the
    shared no-op when tracing is off or no sampled decision waits. End it with its result."""
    active = _ACTIVE.get()
    if active is None:
        return NO_SPAN
    tracing, parent = active
    return tracing.child_of(parent, name, attributes)


def _otlp(endpoint: str, ca_file: str | None) -> SpanExporter:
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    if endpoint.startswith("http://"):
        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    roots = Path(ca_file).read_bytes() if ca_file else None
    credentials: Any = grpc.ssl_channel_credentials(root_certificates=roots)
    return OTLPSpanExporter(endpoint=endpoint, insecure=False, credentials=credentials)
