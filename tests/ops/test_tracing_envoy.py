"""OpenTelemetry through the real parts: a client → the real Envoy (the shipped envoy-http.yaml or
envoy-grpc.yaml with the shipped deploy/envoy/tracing.yaml merged in, exporting its own spans) → the
sidecar process (tracing on) → the IdP; both export OTLP/gRPC to a receiver in the test, which must see one trace
holding Envoy's spans, the sidecar's decision span as the child of Envoy's ext_authz span, and the
introspection span as the decision's child.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.dev.otlp import OtlpReceiver, ReceivedSpan
from tests.interop.envoy import ENVOY_DIR, EnvoyFront, ThreadedFakeIdp
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.ops
TRACING = ENVOY_DIR / "tracing.yaml"


def with_tracing(document: dict[str, Any], otlp_port: int) -> dict[str, Any]:
    """The rendered Envoy file with deploy/envoy/tracing.yaml merged in as its comment says."""
    fragment = yaml.safe_load(TRACING.read_text())
    listener = document["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager.update(fragment["http_connection_manager"])
    cluster = fragment["clusters"][0]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
        "port_value"] = otlp_port
    document["static_resources"]["clusters"].append(cluster)
    # Envoy sends its spans when 5 are buffered or at each stats flush: one span is enough here.
    document["layered_runtime"] = {"layers": [{"name": "test", "static_layer": {
        "tracing.opentelemetry.min_flush_spans": 1}}]}
    return document


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver().start()
    yield started
    started.stop()


@pytest.fixture
def idp(pki: TestPki) -> Iterator[ThreadedFakeIdp]:
    started = ThreadedFakeIdp(pki)
    yield started
    started.close()


@pytest.fixture(params=["http", "grpc"])
def front(request: pytest.FixtureRequest, pki: TestPki, idp: ThreadedFakeIdp, receiver: OtlpReceiver,
          tmp_path: Path) -> Iterator[EnvoyFront]:
    overrides = {"SIDECAR_TRACING__ENABLED": "true", "SIDECAR_TRACING__ENDPOINT": receiver.endpoint,
                 "SIDECAR_POLICY__AUDIENCES": "api"}
    built = EnvoyFront(request.param, idp.issuer, pki, tmp_path, overrides,
                       {"alice": pki.alice_files, "bob": pki.bob_files})
    built.sidecar.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # the SDK's batch delay, in ms (default 5 s)
    envoy = built.envoy
    envoy.write(envoy.name, with_tracing(yaml.safe_load(envoy.config.read_text()), receiver.port))
    yield built.start()
    built.stop()


def wait_for(receiver: OtlpReceiver, found: Any, what: str, timeout: float = 15.0) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = found(receiver)
        if spans:
            return spans  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no {what} among {receiver.spans}")


def test_one_trace_holds_envoys_spans_the_sidecars_decision_and_its_introspection(
        front: EnvoyFront, idp: ThreadedFakeIdp, receiver: OtlpReceiver) -> None:
    token = idp.mint("alice")
    reply = front.call(token, "alice")
    assert reply.status == 200, front.diagnostics()
    decisions = wait_for(receiver, lambda r: [s for s in r.of("sidecar") if s.name == "sidecar check"], "decision")
    (decision,) = decisions
    trace = decision.trace_id
    envoy = wait_for(receiver, lambda r: [s for s in r.of("envoy") if s.trace_id == trace], "Envoy span in the trace")
    by_id = {span.span_id: span for span in envoy}
    assert decision.parent_span_id in by_id, (decision, envoy)  # the decision is a child of Envoy's call to it
    assert by_id[decision.parent_span_id].attributes.get("upstream_cluster") == f"sidecar_{front.mode}", by_id
    assert decision.attributes == {"sidecar.outcome": "allow", "sidecar.reason": "ok", "sidecar.cache": "miss",
                                   "sidecar.policy": "default", "http.response.status_code": 200,
                                   "sidecar.client_id": "alice"}
    (introspection,) = [s for s in receiver.of("sidecar") if s.name == "idp introspection"]
    assert (introspection.trace_id, introspection.parent_span_id) == (trace, decision.span_id)
    assert introspection.attributes["sidecar.result"] == "active"
    everything = repr(receiver.spans)
    assert token not in everything  # no span carries the token

    denied = front.call(token, "bob")  # the same token with another client's certificate: a cache hit
    assert denied.status == 401
    hits = wait_for(receiver, lambda r: [s for s in r.of("sidecar") if s.attributes.get("sidecar.cache") == "hit"],
                    "cached decision")
    assert hits[0].attributes["sidecar.reason"] == "cnf_mismatch" and hits[0].trace_id != trace
    assert hits[0].parent_span_id in {s.span_id for s in receiver.of("envoy")}
