from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sidecar
from sidecar.config import KEY, KEYS, ConfigError, Key, env_name, from_mapping, load, restart_changes


def test_defaults_are_strict_binding_and_loopback_ports() -> None:
    config = from_mapping({})
    assert config.policy.binding == "strict"
    assert (config.server.host, config.server.port, config.server.admin_port) == ("127.0.0.1", 8080, 8081)
    assert not config.idp_configured


def test_file_then_environment_overrides_every_kind_of_value(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text('[policy]\nbinding = "optional"\nrequired_scopes = ["a"]\n[cache]\nmax_ttl = 60\n')
    env = {
        "SIDECAR_POLICY__REQUIRED_SCOPES": "read, write",
        "SIDECAR_CACHE__MAX_ENTRIES": "10",
        "SIDECAR_CLIENT_CERT__XFCC_TRUST_HASH": "true",
        "SIDECAR_RESPONSE__CLAIMS": "tenant=tenant-id,acr=acr",
        "SIDECAR_IDP__KEY_PASSWORD": "",
    }
    config = load(path, env)
    assert config.policy.binding == "optional"
    assert config.policy.required_scopes == ("read", "write")
    assert config.cache.max_entries == 10 and config.cache.max_ttl == 60.0
    assert config.client_cert.xfcc_trust_hash is True
    assert config.response.claims == {"tenant": "tenant-id", "acr": "acr"}
    assert config.idp.key_password is None


def test_config_file_comes_from_sidecar_config_env(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9000\n")
    assert load(None, {"SIDECAR_CONFIG": str(path)}).server.port == 9000


@pytest.mark.parametrize(
    ("raw", "env", "key"),
    [
        ({"policy": {"binding": "sometimes"}}, {}, "policy.binding"),
        ({}, {"SIDECAR_SERVER__PORT": "http"}, "server.port"),
        ({"server": {"port": 70000}}, {}, "server.port"),
        ({"cache": {"max_ttl": "5"}}, {}, "cache.max_ttl"),
        ({"nonsense": {}}, {}, "nonsense"),
        ({"policy": {"bindng": "off"}}, {}, "policy.bindng"),
        ({"client_cert": {"trusted_proxies": ["10.0.0.0/33"]}}, {}, "client_cert.trusted_proxies"),
        ({"client_cert": {"header": "bad header"}}, {}, "client_cert.header"),
        ({"idp": {"issuer": "http://idp"}}, {}, "idp.issuer"),
        ({"idp": {"issuer": "https://idp"}}, {}, "idp.client_id"),
        ({"idp": {"issuer": "https://idp", "client_id": "s"}}, {}, "idp.cert_file"),
        ({"idp": {"issuer": "https://idp", "client_id": "s", "auth_method": "client_secret_basic"}}, {},
         "idp.client_secret"),
        ({"idp": {"issuer": "https://i", "client_id": "s", "cert_file": "/nope", "key_file": "/nope"}}, {},
         "idp.cert_file"),
        ({"idp": {"jwks_uri": "https://i/jwks", "token_format": "jwt", "jwt_algorithms": ["HS256"]}}, {},
         "idp.jwt_algorithms"),
        ({"response": {"claims": {"tenant": "bad name"}}}, {}, "response.claims.tenant"),
        ({"response": {"claims": {"tenant": "Sub"}}}, {}, "response.claims.tenant"),
        ({"response": {"prefix": ""}}, {}, "response.prefix"),
        ({"response": {"prefix": "--"}}, {}, "response.prefix"),
        ({"server": {"invalid_request_status": 500}}, {}, "server.invalid_request_status"),
        ({}, {"SIDECAR_CLIENT_CERT__XFCC_TRUST_HASH": "maybe"}, "client_cert.xfcc_trust_hash"),
        ({}, {"SIDECAR_RESPONSE__CLAIMS": "novalue"}, "response.claims"),
        ({}, {"SIDECAR_RESPONSE__FORGED_HEADERS": "strip"}, "response.forged_headers"),
        # a proof replayed to another worker would pass its per-process replay store
        ({"server": {"workers": 2, "port": 8080}, "dpop": {"enabled": True}}, {}, "server.workers"),
    ],
)
def test_invalid_values_name_the_key(raw: dict[str, object], env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_mapping(raw, env)
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: ")


def test_dpop_with_several_workers_is_accepted_in_a_fleet_or_with_one_worker(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s" * 32)
    (tmp_path / "seal").write_bytes(b"k" * 32)
    fleet = {"enabled": True, "url": "redis://127.0.0.1:6379", "secret_file": str(tmp_path / "secret"),
             "seal_key_file": str(tmp_path / "seal")}
    assert from_mapping({"server": {"workers": 2, "port": 8080}, "dpop": {"enabled": True}, "fleet": fleet}, {})
    assert from_mapping({"server": {"workers": 1, "port": 8080}, "dpop": {"enabled": True}}, {})


def test_every_key_has_an_environment_name() -> None:
    assert env_name("idp", "client_id") == "SIDECAR_IDP__CLIENT_ID"


def test_secrets_are_not_in_the_repr() -> None:
    config = from_mapping({}, {"SIDECAR_IDP__CLIENT_SECRET": "s3cret-value", "SIDECAR_IDP__KEY_PASSWORD": "pw-value"})
    assert "s3cret-value" not in repr(config) and "pw-value" not in repr(config)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], env={"PATH": "/usr/bin", **env},
                          capture_output=True, text=True, timeout=30)


def test_check_config_exits_non_zero_naming_the_key() -> None:
    result = _cli("check-config", env={"SIDECAR_POLICY__BINDING": "loose"})
    assert result.returncode == 2
    assert "policy.binding" in result.stderr


def test_check_config_requires_an_idp_and_accepts_a_valid_one(tmp_path: Path) -> None:
    assert _cli("check-config", env={}).returncode == 2
    from sidecar.dev.pki import CertificateAuthority

    cert, key = CertificateAuthority().issue("sidecar").write(tmp_path, "s")
    ok = _cli("check-config", env={"SIDECAR_IDP__ISSUER": "https://idp.example", "SIDECAR_IDP__CLIENT_ID": "s",
                                   "SIDECAR_IDP__CERT_FILE": str(cert), "SIDECAR_IDP__KEY_FILE": str(key)})
    assert ok.returncode == 0, ok.stderr
    assert "warning: client_cert.format is auto" in ok.stderr  # valid, but worth setting explicitly
    explicit = _cli("check-config", env={"SIDECAR_IDP__ISSUER": "https://idp.example", "SIDECAR_IDP__CLIENT_ID": "s",
                                         "SIDECAR_IDP__CERT_FILE": str(cert), "SIDECAR_IDP__KEY_FILE": str(key),
                                         "SIDECAR_CLIENT_CERT__FORMAT": "xfcc",
                                         "SIDECAR_CLIENT_CERT__TRUSTED_PROXIES": "0.0.0.0/0"})
    assert explicit.returncode == 0 and "format is auto" not in explicit.stderr
    assert "trusted_proxies trusts every address" in explicit.stderr
    key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    bad = _cli("check-config", env={"SIDECAR_IDP__ISSUER": "https://idp.example", "SIDECAR_IDP__CLIENT_ID": "s",
                                    "SIDECAR_IDP__CERT_FILE": str(cert), "SIDECAR_IDP__KEY_FILE": str(key)})
    assert bad.returncode == 2 and "idp.cert_file/idp.key_file" in bad.stderr
    assert "broken" not in bad.stderr


_JWT_ONLY_IDP: dict[str, Any] = {"idp": {"jwks_uri": "https://idp.example/jwks", "token_format": "jwt"},
                                  "policy": {"audiences": ["api"], "allowed_issuers": ["https://idp.example"]}}


@pytest.mark.parametrize("source", ["file", "env"])
def test_a_bad_connect_timeout_is_reported_as_idp_connect_timeout(source: str) -> None:
    raw: dict[str, Any] = {**_JWT_ONLY_IDP, "idp": {**_JWT_ONLY_IDP["idp"]}}
    env: dict[str, str] = {}
    if source == "file":
        raw["idp"]["connect_timeout"] = 0
    else:
        env["SIDECAR_IDP__CONNECT_TIMEOUT"] = "0"
    with pytest.raises(ConfigError) as error:
        from_mapping(raw, env)
    assert error.value.key == "idp.connect_timeout"
    assert str(error.value) == "idp.connect_timeout: must be > 0; got 0.0"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIDECAR_IDP__RETRIES": "6"}, "idp.retries: must be between 0 and 5; got 6"),
        ({"SIDECAR_CACHE__MAX_ENTRIES": "-1"}, "cache.max_entries: must be >= 0; got -1"),
        ({"SIDECAR_SERVER__PORT": "70000"}, "server.port: must be a TCP port (0-65535); got 70000"),
        ({"SIDECAR_SERVER__INVALID_REQUEST_STATUS": "500"}, "server.invalid_request_status: must be one of 400, 401;"
                                                            " got 500"),
        ({"SIDECAR_LOG__LEVEL": "loud"}, "log.level: must be one of debug, info, warning, error; got 'loud'"),
    ],
)
def test_bound_messages_are_derived_from_the_declaration(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_mapping({}, env)
    assert str(error.value) == message


def test_a_short_admin_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as error:
        from_mapping({}, {"SIDECAR_SERVER__ADMIN_SECRET": "tooshort-secret"})
    assert error.value.key == "server.admin_secret"
    assert "tooshort" not in str(error.value)


def _env_form(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("key", [k for k in KEYS if k.default not in (None, "", (), {})], ids=lambda k: k.dotted)
def test_every_key_reads_its_default_back_from_its_environment_variable(key: Key) -> None:
    config = from_mapping({}, {key.env: _env_form(key.default)})
    assert getattr(getattr(config, key.section), key.name) == key.default


def test_every_declared_default_passes_its_own_bounds() -> None:
    assert all(k.spec.problem(k.default) is None for k in KEYS)


def test_every_key_has_one_line_of_doc_and_a_derived_environment_variable() -> None:
    for k in KEYS:
        assert k.spec.doc and "\n" not in k.spec.doc, k.dotted
        assert k.env == f"SIDECAR_{k.section.upper()}__{k.name.upper()}"
    assert len({k.env for k in KEYS}) == len(KEYS)


def test_key_names_refuse_an_undeclared_key() -> None:
    assert KEY.idp.connect_timeout == "idp.connect_timeout"
    with pytest.raises(AttributeError):
        _ = KEY.idp.conect_timeout
    with pytest.raises(AttributeError):
        _ = KEY.ipd


def test_every_key_named_in_the_package_source_is_declared() -> None:
    """``KEY.section.name`` fails only when reached; this finds a misspelt one in a rule never run."""
    named = set()
    for path in Path(sidecar.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                    isinstance(node.value.value, ast.Name) and node.value.value.id == "KEY":
                named.add(f"{node.value.attr}.{node.attr}")
    assert "server.admin_port" in named
    assert named <= {k.dotted for k in KEYS}


@pytest.mark.parametrize(("variable", "near"), [
    ("SIDECAR_IDP__ISSUR", "SIDECAR_IDP__ISSUER"),  # a typo in the key
    ("SIDECAR_IDP_ISSUER", "SIDECAR_IDP__ISSUER"),  # one underscore where two go
    ("SIDECAR_NOTHING_LIKE_IT", None),
])
def test_an_unknown_sidecar_variable_is_refused_like_an_unknown_key(variable: str, near: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping({}, {variable: "https://idp.example"})
    assert caught.value.key == variable and "unknown environment variable" in str(caught.value)
    assert (f"did you mean {near}?" in str(caught.value)) if near else "did you mean" not in str(caught.value)


def test_the_variables_that_are_not_keys_are_accepted() -> None:
    from_mapping({}, {"SIDECAR_CONFIG": "", "SIDECAR_DEMO_IDP_PORT": "9443", "SIDECAR_ADDR": "127.0.0.1:8080",
                      "OTHER": "x"})


@pytest.mark.parametrize(("value", "expected"), [
    ('["api", "https://api.example"]', ("api", "https://api.example")),  # a JSON list
    ("api, https://api.example", ("api", "https://api.example")),  # comma-separated
    ("  [\"api\"]", ("api",)),
    ("[]", ()),
])
def test_a_list_in_a_variable_is_a_json_list_or_comma_separated(value: str, expected: tuple[str, ...]) -> None:
    assert from_mapping({}, {"SIDECAR_POLICY__AUDIENCES": value}).policy.audiences == expected


@pytest.mark.parametrize(("value", "problem"), [
    ('"api","other"', "quotes and brackets"),  # JSON items without the brackets: not one audience '"api"'
    ("[api, other]", "not a JSON list"),
    ('["api", 1]', "JSON list of strings"),
    ('{"a": "b"}', "quotes and brackets"),
])
def test_a_list_in_a_variable_that_is_neither_is_refused(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        from_mapping({}, {"SIDECAR_POLICY__AUDIENCES": value})
    assert caught.value.key == "policy.audiences"


def test_a_map_in_a_variable_is_a_json_object_or_comma_separated_pairs() -> None:
    assert dict(from_mapping({}, {"SIDECAR_RESPONSE__CLAIMS": '{"tenant": "tenant-id"}'}).response.claims) == {
        "tenant": "tenant-id"}
    assert dict(from_mapping({}, {"SIDECAR_RESPONSE__CLAIMS": "tenant=tenant-id"}).response.claims) == {
        "tenant": "tenant-id"}
    with pytest.raises(ConfigError, match="table of strings"):
        from_mapping({}, {"SIDECAR_RESPONSE__CLAIMS": '{"tenant": 1}'})


def test_the_keys_a_reload_cannot_change_are_the_listeners_and_their_limits() -> None:
    running = from_mapping({})
    assert restart_changes(running, from_mapping({"policy": {"required_scopes": ["write"]},
                                                  "server": {"invalid_request_status": 401}})) == []
    assert restart_changes(running, from_mapping({"server": {"port": 9000, "grpc_port": 9003}})) == [
        "server.port", "server.grpc_port"]
    assert {k.dotted for k in KEYS if k.spec.restart} >= {"server.port", "server.admin_port", "server.workers",
                                                          "server.host", "server.max_connections"}
    # Beyond the listeners: the admin routes a start sets up (identity keys, the SET receiver) and the
    # revocation store a reload hands over.
    assert {k.dotted for k in KEYS if k.spec.restart and k.section != "server"} == {
        "identity.key_file", "events.enabled", "events.remember", "events.max_revocations"}


def test_a_purge_secret_shorter_than_32_characters_is_warned_about_since_only_its_strength_stops_guessing() -> None:
    from sidecar.config import warnings

    def found(secret: str) -> list[str]:
        return [w for w in warnings(from_mapping({"server": {"admin_secret": secret}})) if KEY.server.admin_secret in w]

    assert len(found("x" * 31)) == 1 and found("x" * 32) == []
    assert secret_not_echoed("x" * 31)


def secret_not_echoed(secret: str) -> bool:
    from sidecar.config import warnings

    return all(secret not in w for w in warnings(from_mapping({"server": {"admin_secret": secret}})))
