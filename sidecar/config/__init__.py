"""Typed configuration: a TOML file plus environment overrides, validated at start.

Every key is declared once in :mod:`sidecar.config.sections` (type, default, bounds, one line of
doc). Its dotted name (``idp.client_id``), its environment variable (``SIDECAR_IDP__CLIENT_ID``:
``SIDECAR_`` + section + ``__`` + key, upper-cased), its checks and error messages, and the README
table (``python -m sidecar.config.table``) are derived from that declaration. An invalid value
raises :class:`ConfigError`, whose message starts with the dotted key.
"""

from sidecar.config.declare import ENV_PREFIX, ConfigError, env_name
from sidecar.config.load import from_mapping, load, restart_changes
from sidecar.config.rules import admin_secret, client_secret, fleet_password, validate, warnings
from sidecar.config.sections import (
    DPOP_HEADERS,
    KEY,
    KEYS,
    STANDARD_HEADERS,
    AdmissionConfig,
    AuthMethod,
    BindingMode,
    CacheConfig,
    CertFormat,
    ClientCertConfig,
    Config,
    DecisionLogging,
    DpopConfig,
    EventsConfig,
    FleetConfig,
    FleetMode,
    IdentityConfig,
    IdpConfig,
    Key,
    LogConfig,
    PolicyConfig,
    ResponseConfig,
    RouteConfig,
    RoutingConfig,
    ServerConfig,
    TokenFormat,
    TracingConfig,
)

__all__ = [
    "DPOP_HEADERS",
    "ENV_PREFIX",
    "KEY",
    "KEYS",
    "STANDARD_HEADERS",
    "AdmissionConfig",
    "AuthMethod",
    "BindingMode",
    "CacheConfig",
    "CertFormat",
    "ClientCertConfig",
    "Config",
    "ConfigError",
    "DecisionLogging",
    "DpopConfig",
    "EventsConfig",
    "FleetConfig",
    "FleetMode",
    "IdentityConfig",
    "IdpConfig",
    "Key",
    "LogConfig",
    "PolicyConfig",
    "ResponseConfig",
    "RouteConfig",
    "RoutingConfig",
    "ServerConfig",
    "TokenFormat",
    "TracingConfig",
    "admin_secret",
    "client_secret",
    "env_name",
    "fleet_password",
    "from_mapping",
    "load",
    "restart_changes",
    "validate",
    "warnings",
]
