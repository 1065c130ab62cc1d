from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import ConfigError, env_name, from_mapping, load


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
    ],
)
def test_invalid_values_name_the_key(raw: dict[str, object], env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_mapping(raw, env)
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: ")


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
    key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    bad = _cli("check-config", env={"SIDECAR_IDP__ISSUER": "https://idp.example", "SIDECAR_IDP__CLIENT_ID": "s",
                                    "SIDECAR_IDP__CERT_FILE": str(cert), "SIDECAR_IDP__KEY_FILE": str(key)})
    assert bad.returncode == 2 and "idp.cert_file/idp.key_file" in bad.stderr
    assert "broken" not in bad.stderr
