"""The Envoy and sidecar files in deploy/envoy/, loaded the way Envoy and the sidecar load them.

Each Envoy YAML is parsed into Envoy's own ``envoy.config.bootstrap.v3.Bootstrap`` message with
``json_format.ParseDict``: an unknown field, a wrong type or an ``@type`` without a registered
message fails. The ``*_pb2`` module of every ``typed_config`` is imported first so ``Any`` resolves.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from sidecar import config as config_module

ROOT = Path(__file__).resolve().parents[2]
ENVOY_DIR = ROOT / "deploy" / "envoy"
ISTIO_DIR = ROOT / "deploy" / "istio"

# Every typed_config the deploy files use → the module that registers its message.
TYPED_CONFIG_MODULES = {
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext":
        "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
        "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": "envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2",
    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation":
        "envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2",
    "envoy.extensions.filters.http.router.v3.Router": "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication":
        "envoy.extensions.filters.http.jwt_authn.v3.config_pb2",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions":
        "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
}
TYPE_PREFIX = "type.googleapis.com/"


def type_urls(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        if "@type" in node:
            yield str(node["@type"])
        for value in node.values():
            yield from type_urls(value)
    elif isinstance(node, list):
        for item in node:
            yield from type_urls(item)


def parse_bootstrap(document: Mapping[str, Any]) -> Any:
    """Bootstrap message of a YAML document; raises json_format.ParseError on anything unknown."""
    for url in set(type_urls(document)):
        name = url.removeprefix(TYPE_PREFIX)
        if name not in TYPED_CONFIG_MODULES:
            raise json_format.ParseError(f"no message module registered for {url}")
        importlib.import_module(TYPED_CONFIG_MODULES[name])
    return json_format.ParseDict(document, bootstrap_pb2.Bootstrap())


def load_bootstrap(name: str) -> Any:
    return parse_bootstrap(yaml.safe_load((ENVOY_DIR / name).read_text()))


def sidecar_toml(path: Path, files: Mapping[str, Path]) -> config_module.Config:
    """The sidecar TOML through config.load(), with the IdP files pointed at test files via the
    documented environment overrides (the TOML names production paths)."""
    env = {config_module.env_name("idp", key): str(value) for key, value in files.items()}
    return config_module.load(path, env)


@dataclass(frozen=True)
class ExtAuthz:
    """The ext_authz filter and the cluster it calls, out of one Bootstrap."""

    filter: Any  # envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
    hcm: Any  # HttpConnectionManager
    listener: Any
    cluster: Any


def ext_authz_of(bootstrap: Any) -> ExtAuthz:
    from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    (listener,) = bootstrap.static_resources.listeners
    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    hcm = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(hcm)
    authz = ext_authz_pb2.ExtAuthz()
    found = [f for f in hcm.http_filters if f.name == "envoy.filters.http.ext_authz"]
    assert len(found) == 1 and found[0].typed_config.Unpack(authz)
    assert hcm.http_filters[-1].name == "envoy.filters.http.router"
    kind = authz.WhichOneof("services")
    http, grpc = authz.http_service, authz.grpc_service
    name = http.server_uri.cluster if kind == "http_service" else grpc.envoy_grpc.cluster_name
    (cluster,) = [c for c in bootstrap.static_resources.clusters if c.name == name]
    return ExtAuthz(authz, hcm, listener, cluster)


def endpoint_port(cluster: Any) -> int:
    (group,) = cluster.load_assignment.endpoints
    (lb_endpoint,) = group.lb_endpoints
    return int(lb_endpoint.endpoint.address.socket_address.port_value)


def duration_seconds(duration: Any) -> float:
    return float(duration.seconds) + duration.nanos / 1e9


def pgv_errors(message: Any, path: str = "") -> list[str]:
    """The protoc-gen-validate rules Envoy checks at load time (``validate.rules`` options on the
    fields of its protos), for the kinds our files use: required messages and oneofs, string
    lengths, number and duration bounds, repeated sizes, defined enums. ``Any`` is unpacked."""
    from google.protobuf import any_pb2, symbol_database
    from validate import validate_pb2

    errors: list[str] = []
    if isinstance(message, any_pb2.Any):
        concrete = symbol_database.Default().GetSymbol(message.TypeName())()
        message.Unpack(concrete)
        return pgv_errors(concrete, path)
    descriptor = message.DESCRIPTOR
    for oneof in descriptor.oneofs:
        options = oneof.GetOptions()
        required = options.HasExtension(validate_pb2.required) and options.Extensions[validate_pb2.required]
        if required and message.WhichOneof(oneof.name) is None:
            errors.append(f"{path}{oneof.name}: one of its fields is required")
    for field in descriptor.fields:
        where = f"{path}{field.name}"
        options = field.GetOptions()
        rules = options.Extensions[validate_pb2.rules] if options.HasExtension(validate_pb2.rules) else None
        repeated = bool(field.is_repeated)
        value = getattr(message, field.name)
        oneof = field.containing_oneof
        if oneof is not None and message.WhichOneof(oneof.name) != field.name:
            continue  # rules of a oneof member apply only when it is the one set
        if rules is not None:
            errors += _rule_errors(where, rules, message, field, value, repeated)
        if field.message_type is not None and not (field.message_type.GetOptions().map_entry):
            if repeated:
                for index, item in enumerate(value):
                    errors += pgv_errors(item, f"{where}[{index}].")
            elif message.HasField(field.name):
                errors += pgv_errors(value, f"{where}.")
    return errors


def _rule_errors(where: str, rules: Any, message: Any, field: Any, value: Any, repeated: bool) -> list[str]:
    kind = rules.WhichOneof("type")
    if kind == "message":
        return [f"{where}: required"] if rules.message.required and not message.HasField(field.name) else []
    if kind == "repeated" and repeated:
        r = rules.repeated
        short = r.HasField("min_items") and len(value) < r.min_items
        return [f"{where}: needs at least {r.min_items} items"] if short else []
    if repeated:
        return []
    if kind == "string":
        r = rules.string
        if r.HasField("min_len") and len(value) < r.min_len:
            return [f"{where}: shorter than {r.min_len}"]
        return [f"{where}: longer than {r.max_len}"] if r.HasField("max_len") and len(value) > r.max_len else []
    if kind == "duration" and (message.HasField(field.name) or rules.duration.required):
        return _bounds(where, rules.duration, duration_seconds(value), message.HasField(field.name), duration=True)
    if kind in ("uint32", "uint64", "int32", "int64", "double"):
        if field.message_type is not None:  # a wrapper (UInt32Value, ...): checked when set
            if not message.HasField(field.name):
                return []
            value = value.value
        return _bounds(where, getattr(rules, kind), float(value), True, duration=False)
    if kind == "enum" and rules.enum.defined_only:
        return [] if field.enum_type.values_by_number.get(value) else [f"{where}: undefined enum value {value}"]
    return []


def _bounds(where: str, r: Any, number: float, present: bool, *, duration: bool) -> list[str]:
    if duration and r.required and not present:
        return [f"{where}: required"]
    errors = []
    for name, ok in (("gt", lambda b: number > b), ("gte", lambda b: number >= b),
                     ("lt", lambda b: number < b), ("lte", lambda b: number <= b)):
        if r.HasField(name):
            bound = duration_seconds(getattr(r, name)) if duration else float(getattr(r, name))
            if not ok(bound):
                errors.append(f"{where}: must be {name} {bound}")
    return errors
