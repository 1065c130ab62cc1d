"""The Envoy gRPC ext_authz front: ``envoy.service.auth.v3.Authorization/Check`` over grpc.aio.

It only translates (answer.py is the edge): a ``CheckRequest`` proto into the core's
:class:`~sidecar.core.request.CheckRequest`, and the answer into a ``CheckResponse``:

- token: ``attributes.request.http.headers["authorization"]`` (Envoy lower-cases the keys and
  joins repeated headers with ``,``, which a b64token never holds: we split them back, so a
  duplicated header is ``token_duplicated`` as on the HTTP front); ``header_map`` when Envoy
  sends raw headers (``encode_raw_headers``).
- certificate: ``attributes.source.certificate`` (URL-encoded PEM of the TLS peer Envoy itself
  verified, sent with ``include_peer_certificate``) and every copy of the ``client_cert.header``
  request header (XFCC); which one counts, and whether the peer may vouch for either, is the
  core's rule (core/presented.py), the same as on the HTTP front.
- the original request: ``attributes.request.http`` ``method``, ``path``, ``host``, ``scheme``, and
  its headers (read after the answer: ``x-request-id`` for the decision log); with tracing on, the
  trace context of the call itself (Envoy's ext_authz span, in the gRPC metadata);
  the policy: the route's ``context_extensions["policy"]`` (``ExtAuthzPerRoute.check_settings``);
  every ``dpop`` header (RFC 9449); the client address Envoy reports (admission).
- allow: ``status`` OK and ``ok_response.headers`` with every credential header set with
  ``OVERWRITE_IF_EXISTS_OR_ADD`` (the proto default appends to a client-sent copy), plus
  ``headers_to_remove`` from ``response.remove_upstream_headers``, plus every client-sent name in the
  credential namespace the answer does not set (``response.forged_headers``, fronts/forged.py), plus
  the DPoP nonce for the client in ``response_headers_to_add`` (``dpop.nonce``, RFC 9449 §9).
- deny: ``denied_response`` (HTTP status, ``WWW-Authenticate``, JSON body) and ``status``
  UNAUTHENTICATED (401), PERMISSION_DENIED (403), INVALID_ARGUMENT (400) or UNAVAILABLE (503).
  Envoy treats every non-OK ``status`` as a denial and sends ``denied_response`` to the client,
  so an IdP outage reaches the client as 503 + ``Retry-After`` and never as
  ``status_on_error``, and ``failure_mode_allow`` can never open it. Only a failed RPC (sidecar
  down, deadline exceeded) is an ext_authz error.

Health (``grpc.health.v1``) follows :meth:`Sidecar.readiness`; reflection only with
``server.grpc_reflection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.core.headers import REMOVE_HEADER, CredentialHeaders
from sidecar.core.outcome import Pending
from sidecar.core.request import CheckRequest
from sidecar.fronts.answer import Allow, Edge, LiveEdge
from sidecar.fronts.render import NONCE_HEADER, RenderedDenial
from sidecar.runtime import Sidecar
from sidecar.support.memo import Memo

log = logging.getLogger(__name__)

SERVICE = "envoy.service.auth.v3.Authorization"
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
RPC_CODES = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED,
             403: code_pb2.PERMISSION_DENIED, 429: code_pb2.RESOURCE_EXHAUSTED, 503: code_pb2.UNAVAILABLE}
MEMO_SIZE = 4096
HEALTH_POLL = 0.25  # seconds between readiness checks for the health service


def peer_address(peer: str) -> str | None:
    """The IP of a grpc peer string: ``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000`` (or ``%5B::1%5D``)."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0] or None
    return None  # unix sockets and anything else are never trusted


def _options(headers: Iterable[tuple[str, str]]) -> list[Any]:
    return [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=OVERWRITE,
                                       keep_empty_value=True) for k, v in headers]


class _Headers:
    """The check's headers as the decision log and the tracer read them: the original request's,
    and the trace context of the gRPC call (Envoy's ext_authz span) copied from its metadata."""

    __slots__ = ("_call", "_http")

    def __init__(self, http: Any, metadata: Any) -> None:
        self._http = dict(http) if not hasattr(http, "get") else http
        self._call = {key: value for key, value in metadata if key in ("traceparent", "tracestate")}

    def get(self, name: str, /) -> str | None:
        found = self._call.get(name)
        return found if found is not None else self._http.get(name)


class AuthorizationService(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    """``Check``: CheckRequest → the edge → CheckResponse."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._live = LiveEdge(sidecar)
        self._edge = self._live.edge  # the one the memos below were built for
        # Protos reused: a cache hit builds none (entry headers and rendered denials are reused objects).
        self._ok: Memo[int, tuple[CredentialHeaders, Any]] = Memo(MEMO_SIZE)
        self._denied: Memo[int, tuple[RenderedDenial, Any]] = Memo(MEMO_SIZE)

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        edge = self._live.edge  # this configuration's, to the answer (a reload swaps it between checks)
        if edge is not self._edge:  # reloaded: the reused protos carry the old removal list
            self._edge = edge
            self._ok, self._denied = Memo(MEMO_SIZE), Memo(MEMO_SIZE)
        attributes = request.attributes
        http = attributes.request.http
        authorization, certificates, dpop_proofs = self._read_headers(http, edge)
        raw = None if http.headers else {entry.key.lower(): entry.raw_value.decode("utf-8", "replace") or entry.value
                                          for entry in http.header_map.headers}
        facts = CheckRequest(authorization, certificates, peer_address(context.peer()),
                             peer_certificate=attributes.source.certificate or None,
                             forwarded=attributes.source.address.socket_address.address or None,
                             method=http.method or None, path=http.path or None, host=http.host or None,
                             scheme=http.scheme or None, dpop_proofs=dpop_proofs,
                             policy=attributes.context_extensions.get("policy"),
                             forged=edge.forged.in_names(http.headers if raw is None else list(raw)),
                             headers=_Headers(raw or http.headers, context.invocation_metadata() or ())
                             if edge.traced else raw or http.headers)
        answer = edge.answer_now(facts)  # a cached token is answered here, without awaiting
        if isinstance(answer, Pending):
            answer = await edge.answer(facts, answer)
        if isinstance(answer, RenderedDenial):
            return self._deny(answer)
        if isinstance(answer, Allow):  # Envoy drops the client's copies; a DPoP client gets a nonce
            return self._ok_response(answer.headers, answer.names, answer.nonce)
        return self._allow(answer.headers)

    def _read_headers(self, http: Any, edge: Edge) -> tuple[list[str], list[str], list[str]]:
        """(every Authorization, certificate header and DPoP value) from ``headers`` or ``header_map``.

        In ``headers`` Envoy joins repeated fields with ``,``. A b64token never holds one, nor does a
        certificate in a single-certificate format, so those are split back and a duplicated field
        reaches the core as two values (denied there). XFCC (``,`` separates its elements: the last
        one is the nearest proxy's), Traefik lists and ``auto`` (which reads XFCC) keep the value whole.
        """
        if http.headers:
            joined = http.headers.get("authorization")
            authorization = [] if joined is None else [v.strip(" \t") for v in joined.split(",")]
            joined = http.headers.get("dpop")  # a compact JWS holds no comma either
            dpop_proofs = [] if joined is None else [v.strip(" \t") for v in joined.split(",")]
            value = http.headers.get(edge.cert_header)
            if value is None:
                return authorization, [], dpop_proofs
            certificates = [value] if edge.keep_commas else [v.strip(" \t") for v in value.split(",")]
            return authorization, certificates, dpop_proofs
        authorization, certificates, dpop_proofs = [], [], []
        for entry in http.header_map.headers:
            key = entry.key.lower()
            value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
            if key == "authorization":
                authorization.append(value)
            elif key == edge.cert_header:
                certificates.append(value)
            elif key == "dpop":
                dpop_proofs.append(value)
        return authorization, certificates, dpop_proofs

    def _allow(self, headers: CredentialHeaders) -> Any:
        found = self._ok.get(id(headers))
        if found is not None and found[0] is headers:
            return found[1]
        response = self._ok_response(headers, ())
        self._ok.put(id(headers), (headers, response))  # holding headers keeps its id unique
        return response

    def _ok_response(self, headers: CredentialHeaders, removals: tuple[str, ...], nonce: str | None = None) -> Any:
        ok = pb.OkHttpResponse(headers=_options((k, v) for k, v in headers.items() if k != REMOVE_HEADER),
                               headers_to_remove=[*self._edge.removals, *removals],
                               response_headers_to_add=_options(() if nonce is None else ((NONCE_HEADER, nonce),)))
        return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)

    def _deny(self, rendered: RenderedDenial) -> Any:
        found = self._denied.get(id(rendered))
        if found is not None and found[0] is rendered:
            return found[1]
        response = pb.CheckResponse(
            status=status_pb2.Status(code=RPC_CODES.get(rendered.status, code_pb2.PERMISSION_DENIED),
                                     message=rendered.reason),
            denied_response=pb.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=rendered.status),
                headers=_options(rendered.headers.items()), body=rendered.body.decode(),
            ),
        )
        self._denied.put(id(rendered), (rendered, response))
        return response


class GrpcFront:
    """The gRPC server of one sidecar: Authorization, health, and (optionally) reflection."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.health = health.aio.HealthServicer()
        self.service = AuthorizationService(sidecar)
        self.port = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 = any free port) and return the bound port."""
        pb_grpc.add_AuthorizationServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if self.sidecar.config.server.grpc_reflection:
            from grpc_reflection.v1alpha import reflection  # optional: the grpc-reflection extra

            names = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self.server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address} for gRPC")
        await self._publish_health()
        await self.server.start()
        self._task = asyncio.create_task(self._follow_readiness())
        return self.port

    async def _publish_health(self) -> bool:
        ready = self.sidecar.readiness()[0]
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE):
            await self.health.set(service, status)
        return ready

    async def _follow_readiness(self) -> None:
        """Serving status follows readiness (discovery done, not draining)."""
        last: bool | None = None
        while True:
            ready = self.sidecar.readiness()[0]
            if ready != last:
                last = await self._publish_health()
            await asyncio.sleep(HEALTH_POLL)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING for everyone, then let RPCs in flight finish for up to ``grace`` seconds."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
