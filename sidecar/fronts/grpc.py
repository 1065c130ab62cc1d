"""The Envoy gRPC ext_authz front: ``envoy.service.auth.v3.Authorization/Check`` over grpc.aio.

It turns a ``CheckRequest`` into the same :class:`~sidecar.core.request.CheckRequest` the HTTP front
builds and renders the same decision (RFC 6750 §3 challenge, RFC 8705 §3 binding, via
:func:`sidecar.core.response.render_denial`) as a ``CheckResponse``:

- token: ``attributes.request.http.headers["authorization"]`` (Envoy lower-cases the keys and
  joins repeated headers with ``,``, which a b64token never holds: we split them back, so a
  duplicated header is ``token_duplicated`` as on the HTTP front); ``header_map`` when Envoy
  sends raw headers (``encode_raw_headers``).
- certificate, only when the gRPC peer address is in ``client_cert.trusted_proxies``:
  ``attributes.source.certificate`` (URL-encoded PEM of the TLS peer Envoy itself verified,
  sent with ``include_peer_certificate``) first, else the ``client_cert.header`` request header
  (XFCC) read in ``client_cert.format``. Whoever can reach this port can fill both fields, so
  the peer check guards both, exactly as on the HTTP front.
- allow: ``status`` OK and ``ok_response.headers`` with every credential header set with
  ``OVERWRITE_IF_EXISTS_OR_ADD`` (the proto default appends to a client-sent copy), plus
  ``headers_to_remove`` from ``response.remove_upstream_headers``, plus every client-sent name in the
  credential namespace the answer does not set (``response.forged_headers``, core/forged.py).
- DPoP (RFC 9449): every ``dpop`` header, and the original request from
  ``attributes.request.http`` (``method``, ``path``, ``host``, ``scheme``) for ``htm``/``htu``.
- deny: ``denied_response`` (HTTP status, ``WWW-Authenticate``, JSON body) and ``status``
  UNAUTHENTICATED (401), PERMISSION_DENIED (403), INVALID_ARGUMENT (400) or UNAVAILABLE (503).
  Envoy treats every non-OK ``status`` as a denial and sends ``denied_response`` to the client,
  so an IdP outage reaches the client as 503 + ``Retry-After`` and never as
  ``status_on_error``, and ``failure_mode_allow`` can never open it. Only a failed RPC (sidecar
  down, deadline exceeded) is an ext_authz error.

- the original request: ``attributes.request.http`` ``method``, ``path``, ``host``, ``scheme``;
  the policy: the route's ``context_extensions["policy"]`` (``ExtAuthzPerRoute.check_settings``).
  Both count only from a trusted peer (the core's rule, :mod:`sidecar.core.routes`).

Health (``grpc.health.v1``) follows :meth:`Sidecar.readiness`; reflection only with
``server.grpc_reflection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.core.decision import Allow, Pending
from sidecar.core.errors import Denial
from sidecar.core.forged import ForgedHeaders
from sidecar.core.request import CheckRequest
from sidecar.core.response import REMOVE_HEADER, render_denial, unset
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


class AuthorizationService(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    """``Check``: CheckRequest → Decider.decide() → CheckResponse."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        self._cert_header = sidecar.cert_header.lower()
        self._keep_commas = sidecar.config.client_cert.format in ("xfcc", "traefik", "auto")
        self._source_reader = sidecar.decider.reader_for("escaped_pem")  # attributes.source.certificate
        config = sidecar.config
        self._realm = config.response.realm
        self._invalid_request_status = config.server.invalid_request_status
        self._removals = sidecar.decider.headers.removals
        self._forged = ForgedHeaders(config.response.prefix)
        # Rendered answers, reused: a cache hit builds no protobuf (entry headers are per token).
        self._ok: Memo[int, tuple[Mapping[str, str], Any]] = Memo(MEMO_SIZE)
        self._denied: Memo[tuple[type[Denial], str, str | None, int, bool], Any] = Memo(MEMO_SIZE)

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        attributes = request.attributes
        http = attributes.request.http
        authorization, forwarded, dpop = self._read_headers(http)
        forged = self._forged.in_names(http.headers if http.headers else
                                       [entry.key for entry in http.header_map.headers])
        source = attributes.source.certificate  # the TLS peer Envoy verified (include_peer_certificate)
        facts = CheckRequest(authorization, [source] if source else forwarded, peer_address(context.peer()),
                             reader=self._source_reader if source else None,
                             forwarded=attributes.source.address.socket_address.address or None,
                             method=http.method or None, path=http.path or None, host=http.host or None,
                             scheme=http.scheme or None, dpop=dpop,
                             policy=attributes.context_extensions.get("policy"), forged=forged)
        decider = self._sidecar.decider
        decision = decider.decide_now(facts)  # a cached token is answered here, without awaiting
        if isinstance(decision, Pending):
            decision = await decider.decide(facts, decision)
        if isinstance(decision, Allow):
            if forged and (names := unset(decision.headers, forged)):  # Envoy drops the client's copies
                return self._allow_removing(decision.headers, names)
            return self._allow(decision.headers)
        return self._deny(decision.denial, decision.dpop)

    def _read_headers(self, http: Any) -> tuple[list[str], list[str], list[str]]:
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
            dpop = [] if joined is None else [v.strip(" \t") for v in joined.split(",")]
            value = http.headers.get(self._cert_header)
            if value is None:
                return authorization, [], dpop
            certificates = [value] if self._keep_commas else [v.strip(" \t") for v in value.split(",")]
            return authorization, certificates, dpop
        authorization, certificates, dpop = [], [], []
        for entry in http.header_map.headers:
            key = entry.key.lower()
            value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
            if key == "authorization":
                authorization.append(value)
            elif key == self._cert_header:
                certificates.append(value)
            elif key == "dpop":
                dpop.append(value)
        return authorization, certificates, dpop

    def _allow(self, headers: Mapping[str, str]) -> Any:
        found = self._ok.get(id(headers))
        if found is not None and found[0] is headers:
            return found[1]
        ok = pb.OkHttpResponse(headers=_options((k, v) for k, v in headers.items() if k != REMOVE_HEADER),
                               headers_to_remove=self._removals)
        response = pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)
        self._ok.put(id(headers), (headers, response))  # holding headers keeps its id unique
        return response

    def _allow_removing(self, headers: Mapping[str, str], names: tuple[str, ...]) -> Any:
        """An allow that also removes ``names`` (built per request: only forged requests pay)."""
        ok = pb.OkHttpResponse(headers=_options((k, v) for k, v in headers.items() if k != REMOVE_HEADER),
                               headers_to_remove=[*self._removals, *names])
        return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)

    def _deny(self, denial: Denial, dpop: bool) -> Any:
        key = (type(denial), denial.reason, denial.scope, denial.retry_after, dpop)
        response = self._denied.get(key)
        if response is None:
            rendered = render_denial(denial, self._realm, self._invalid_request_status,
                                     dpop_algs=self._sidecar.decider.dpop_algs, dpop=dpop)
            response = pb.CheckResponse(
                status=status_pb2.Status(code=RPC_CODES.get(rendered.status, code_pb2.PERMISSION_DENIED),
                                         message=denial.reason),
                denied_response=pb.DeniedHttpResponse(
                    status=http_status_pb2.HttpStatus(code=rendered.status),
                    headers=_options(rendered.headers.items()), body=rendered.body.decode(),
                ),
            )
            self._denied.put(key, response)
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
